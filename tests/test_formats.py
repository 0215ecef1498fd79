"""The ecosystem's formats: SpatialData stores (cells in, results out) and BrainGlobe atlases."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from brainglobe_fixture import NAME, write_ccf_200um

from napari_spatial_nmf import datasets, io, pipeline, tl
from napari_spatial_nmf._reader import get_reader


@pytest.fixture(scope="module")
def osmfish_store(tmp_path_factory):
    """A SpatialData store of the shipped osmFISH cells: circles (Xenium-style) + a table."""
    sd = pytest.importorskip("spatialdata", reason="the spatialdata extra is not installed")
    from spatialdata.models import ShapesModel, TableModel

    a = datasets.osmfish()
    n = a.n_obs
    circles = ShapesModel.parse(np.asarray(a.obsm["spatial"]), geometry=0, radius=np.full(n, 5.0),
                                index=pd.Index(np.arange(100, 100 + n)))
    obs = pd.DataFrame({"region_name": pd.Categorical(["cells"] * n), "cell": np.arange(100, 100 + n)[::-1],
                        "region": a.obs["region"].to_numpy()[::-1]}, index=a.obs_names[::-1])
    table = TableModel.parse(ad.AnnData(a.X[::-1].copy(), obs=obs, var=a.var), region="cells",
                             region_key="region_name", instance_key="cell")
    path = tmp_path_factory.mktemp("sd") / "osmfish.zarr"
    sd.SpatialData(shapes={"cells": circles}, tables={"table": table}).write(path)
    return path, a


def test_spatialdata_cells_in_results_out(osmfish_store):
    import spatialdata as sd

    path, original = osmfish_store
    cells = io.read_cells(path, unit="µm")
    # rows were stored in reverse order against the shapes' index: matched by instance id, not position
    np.testing.assert_allclose(cells.obsm["spatial"], np.asarray(original.obsm["spatial"])[::-1])
    assert cells.uns["spatial_unit"] == "µm" and cells.uns["spatialdata"]["region"] == "cells"
    tl.nmf(cells, 5, random_state=0, max_iter=50)
    io.write_spatialdata(cells)
    back = sd.read_zarr(path)
    assert set(back.tables) == {"table", "napari_spatial_nmf"}
    res = back.tables["napari_spatial_nmf"]
    assert res.obsm["X_nmf"].shape == (original.n_obs, 5)
    assert res.uns["spatialdata_attrs"]["region"] == "cells"  # annotates the same cells
    with pytest.raises(ValueError, match="already has a table"):
        io.write_spatialdata(cells)
    layers = get_reader(str(path))(str(path))
    assert layers[0][2] == "points" and layers[0][0].shape == (original.n_obs, 2)


def test_brainglobe_atlas_equals_the_allen_files(tmp_path, allen, monkeypatch):
    stack, atlas = allen
    manifest = write_ccf_200um(tmp_path, atlas)
    assert io.local_brainglobe_atlases(tmp_path) == [NAME]
    bg = io.read_brainglobe_atlas(NAME, brainglobe_dir=tmp_path)
    assert np.array_equal(bg.annotation, atlas.annotation) and bg.axes == ("AP", "DV", "ML")
    assert bg.voxel_size == (200.0, 200.0, 200.0) and len(bg.ontology) == len(atlas.ontology)
    cp = bg.ontology["CP"]
    assert cp["name"] == "Caudoputamen" and cp["color"] == "98D6F9"
    assert set(bg.ontology.descendants("STR")) == set(atlas.ontology.descendants("STR"))
    # accepted wherever the annotation + ontology are: the same region table
    adata = stack.to_anndata(mask=bg.mask)
    tl.impute_knn(adata)
    tl.nmf(adata, 2, layer="imputed", random_state=0)
    a = tl.region_correlation(adata, bg.annotation, bg.ontology, min_voxels=50)
    b = tl.region_correlation(adata, atlas.annotation, atlas.ontology, min_voxels=50)
    key = ["pattern", "id"]  # ties (e.g. STRd and its only child CP) may come in another order
    pd.testing.assert_frame_equal(a.sort_values(key, ignore_index=True), b.sort_values(key, ignore_index=True))
    # "brainglobe:NAME" for the command line and the reader of the manifest for napari
    monkeypatch.setattr(io._atlas, "brainglobe_folder", lambda folder=None: tmp_path if folder is None else folder)
    assert np.array_equal(io.read_atlas(f"brainglobe:{NAME}").annotation, atlas.annotation)
    layers = get_reader(str(manifest))(str(manifest))
    assert layers[0][2] == "labels" and "features" in layers[0][1]
    _, summary = pipeline.run_volumes(stack, 2, tmp_path / "run", atlas=io.read_atlas(f"brainglobe:{NAME}"))
    assert summary["best_structure_per_gene"]["Pdyn"]["acronym"] == "STR"


def test_missing_brainglobe_atlas_is_not_downloaded(tmp_path):
    with pytest.raises(FileNotFoundError, match="napari-spatial-nmf fetch --brainglobe allen_mouse_25um"):
        io.read_brainglobe_atlas("allen_mouse_25um", brainglobe_dir=tmp_path)
