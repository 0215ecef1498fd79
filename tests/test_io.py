"""Readers on the real shipped files, and their messages on malformed input."""

import shutil
import zipfile

import anndata as ad
import h5py
import nrrd
import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_spatial_nmf import io
from napari_spatial_nmf.datasets import DATA

PDYN = DATA / "Pdyn_P56_coronal_71717084_200um.zip"
NRP1 = DATA / "Nrp1_P56_coronal_74272479_200um.zip"


def test_allen_zip():
    s = io.read_allen_energy(PDYN)
    assert s.genes == ["Pdyn"] and s.data.shape == (1, 67, 41, 58)
    assert s.voxel_size == (200.0, 200.0, 200.0) and s.axes == ("AP", "DV", "ML")
    assert s.meta["section_data_set_ids"] == [71717084]
    # Allen's -1 ("no data") became NaN: 37.9 % of the grid (SOURCE.md), never a value
    assert np.isnan(s.data).mean() == pytest.approx(0.379, abs=0.001)
    assert np.nanmin(s.data) >= 0 and np.nanmax(s.data) == pytest.approx(40.6, abs=0.1)


def test_allen_folder_skips_label_grids(tmp_path):
    for f in (PDYN, NRP1):
        shutil.copy(f, tmp_path)
    ann = nrrd.read(str(DATA / "annotation_200um_ccf2017_ishgrid.nrrd"))[0]
    with zipfile.ZipFile(tmp_path / "gridAnnotation.zip", "w") as zf:  # Allen's label-grid layout
        zf.writestr("gridAnnotation.mhd", "NDims = 3\nDimSize = 67 41 58\nElementType = MET_UINT\n"
                    "ElementSpacing = 200 200 200\nElementDataFile = gridAnnotation.raw\n")
        zf.writestr("gridAnnotation.raw", ann.transpose().astype("<u4").tobytes())
    s = io.read_allen_energy(tmp_path)
    assert s.genes == ["Nrp1", "Pdyn"] and s.data.shape == (2, 67, 41, 58)
    assert s.meta["skipped_label_grids"] == ["gridAnnotation.zip"]


def test_allen_truncated_raw(tmp_path):
    with zipfile.ZipFile(PDYN) as src, zipfile.ZipFile(tmp_path / "Pdyn_bad.zip", "w") as dst:
        dst.writestr("energy.mhd", src.read("energy.mhd"))
        dst.writestr("energy.raw", src.read("energy.raw")[:1000])
    with pytest.raises(ValueError, match="truncated"):
        io.read_allen_energy(tmp_path / "Pdyn_bad.zip")
    (tmp_path / "not.zip").write_text("hello")
    with pytest.raises(ValueError, match="not a zip"):
        io.read_allen_energy(tmp_path / "not.zip")


def test_npz_nrrd_tif_round_trips(tmp_path, allen):
    stack = allen[0]
    np.savez(tmp_path / "s.npz", energy=np.nan_to_num(stack.data, nan=-1), genes=np.array(stack.genes),
             voxel_size_um=200.0, missing_value=-1.0)
    s = io.read_image_stack(tmp_path / "s.npz")
    assert s.genes == stack.genes and s.voxel_size == (200.0,) * 3
    assert np.array_equal(np.isnan(s.data), np.isnan(stack.data))
    nrrd.write(str(tmp_path / "pdyn.nrrd"), np.nan_to_num(stack.data[0]),
               {"space directions": np.diag([200.0] * 3), "space": "left-posterior-superior"})
    s = io.read_image_stack(tmp_path / "pdyn.nrrd")
    assert s.data.shape == (1, 67, 41, 58) and s.voxel_size == (200.0,) * 3 and s.genes == ["pdyn"]
    tifffile.imwrite(tmp_path / "two.tif", np.nan_to_num(stack.data[:, 30]))
    s = io.read_image_stack(tmp_path / "two.tif")
    assert s.data.shape == (2, 41, 58)


def test_npz_with_pickled_objects_is_refused(tmp_path):
    np.savez(tmp_path / "p.npz", stack=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickled"):
        io.read_image_stack(tmp_path / "p.npz")


def test_bdgp_table_and_template(tmp_path, bdgp):
    stack, X = bdgp
    table = pd.DataFrame(X, index=np.arange(1, 406), columns=stack.genes)
    table.to_csv(tmp_path / "WuExampleExpression.csv.gz")
    shutil.copy(DATA / "embryoTemplate_16x32.csv", tmp_path)
    s = io.read_bdgp(tmp_path / "WuExampleExpression.csv.gz")
    assert s.data.shape == (1640, 16, 32) and s.genes[:3] == ["pnr", "Abd.B", "Abd.B.1"]
    assert np.allclose(np.nan_to_num(s.data), np.nan_to_num(stack.data), atol=1e-6)
    table.iloc[:400].to_csv(tmp_path / "short.csv")
    with pytest.raises(ValueError, match="405 embryo pixels"):
        io.read_bdgp(tmp_path / "short.csv")


def test_atlas(tmp_path):
    atlas = io.read_atlas(DATA / "annotation_200um_ccf2017_ishgrid.nrrd", DATA / "structure_tree_safe_2017.csv.gz")
    assert atlas.annotation.shape == (67, 41, 58) and atlas.voxel_size == (200.0,) * 3
    assert atlas.axes == ("AP", "DV", "ML") and len(atlas.ontology) == 1327
    shutil.copy(DATA / "annotation_200um_ccf2017_ishgrid.nrrd", tmp_path)
    assert io.read_atlas(tmp_path / "annotation_200um_ccf2017_ishgrid.nrrd").ontology is None
    (tmp_path / "structure_tree.csv").write_text(
        "id,acronym,name,parent_structure_id\n997,root,root,\n8,grey,Grey,997\n")
    with pytest.raises(ValueError, match="not structures of the ontology"):
        io.read_atlas(tmp_path / "annotation_200um_ccf2017_ishgrid.nrrd")
    nrrd.write(str(tmp_path / "float.nrrd"), np.zeros((3, 3, 3), np.float32))
    with pytest.raises(ValueError, match="integer structure ids"):
        io.read_atlas(tmp_path / "float.nrrd")


def test_cells(tmp_path, osmfish):
    assert osmfish.obsm["spatial"].shape == (6471, 2)
    (tmp_path / "text.h5ad").write_text("not hdf5")
    with pytest.raises(ValueError, match="not an AnnData"):
        io.read_cells(tmp_path / "text.h5ad")
    with h5py.File(tmp_path / "plain.h5ad", "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(ValueError, match="not an AnnData"):
        io.read_cells(tmp_path / "plain.h5ad")
    ad.AnnData(np.ones((4, 2), np.float32)).write_h5ad(tmp_path / "nocoords.h5ad")
    with pytest.raises(ValueError, match=r"no obsm\['spatial'\]"):
        io.read_cells(tmp_path / "nocoords.h5ad")
