"""The data model and the scverse-style tools on the real samples."""

import anndata as ad
import numpy as np
import pytest

from napari_spatial_nmf import tl
from napari_spatial_nmf.core import grid_of, to_volume, volumes_to_anndata


def test_volume_round_trip_and_coordinates(allen):
    stack, atlas = allen
    adata = stack.to_anndata(mask=atlas.mask)
    assert adata.n_obs == atlas.mask.sum() and list(adata.var_names) == ["Pdyn", "Nrp1"]
    back = to_volume(adata, np.asarray(adata.X))
    assert np.array_equal(np.isnan(back[:, atlas.mask]), np.isnan(stack.data[:, atlas.mask]))
    assert np.allclose(back[:, atlas.mask], stack.data[:, atlas.mask], equal_nan=True)
    assert np.isnan(back[:, ~atlas.mask]).all()
    # obsm["spatial"] = voxel centres in µm, (x, y, z) = (ML, DV, AP)
    i = 123
    ap, dv, ml = np.unravel_index(adata.obs["voxel"].iloc[i], atlas.annotation.shape)
    assert np.allclose(adata.obsm["spatial"][i], [ml * 200, dv * 200, ap * 200])
    assert grid_of(adata).axes == ("AP", "DV", "ML")


def test_grid_errors(allen):
    stack, atlas = allen
    with pytest.raises(ValueError, match="same grid"):
        volumes_to_anndata(stack.data, stack.genes, mask=atlas.mask[:-1])
    with pytest.raises(ValueError, match="mask is empty"):
        volumes_to_anndata(stack.data, stack.genes, mask=np.zeros_like(atlas.mask))


def test_nmf_on_allen_requires_imputation_then_runs(allen):
    stack, atlas = allen
    adata = stack.to_anndata(mask=atlas.mask)
    X_before = adata.X.copy()
    with pytest.raises(ValueError, match="missing values"):
        tl.nmf(adata, 2)
    with pytest.raises(ValueError, match=r"min\(n_obs, n_genes\)"):
        tl.nmf(adata, 3, missing="zero")
    tl.impute_knn(adata)
    assert not np.isnan(adata.layers["imputed"]).any()
    assert np.array_equal(np.isnan(adata.X), np.isnan(X_before))  # X untouched
    tl.nmf(adata, 2, layer="imputed", random_state=0)
    assert adata.obsm["X_nmf"].shape == (adata.n_obs, 2)
    assert adata.varm["nmf_coefficients"].shape == (2, 2)
    rec = adata.uns["nmf"]
    assert rec["params"]["random_state"] == 0 and rec["params"]["layer"] == "imputed"
    assert "scikit-learn" in rec["versions"] and rec["pattern_names"] == ["PP1", "PP2"]
    df = tl.region_correlation(adata, atlas.annotation, atlas.ontology, min_voxels=50)
    assert set(df["pattern"]) == {"PP1", "PP2"}
    best = {p: g.iloc[0]["acronym"] for p, g in df.groupby("pattern")}
    striatal = set(atlas.ontology.table.loc[atlas.ontology.descendants("STR"), "acronym"])
    assert any(b in striatal for b in best.values())  # one pattern is Pdyn's striatum


def test_cells_copy_leaves_input_untouched(osmfish, tmp_path):
    X0 = osmfish.X.copy()
    res = tl.nmf(osmfish, 11, copy=True, random_state=0)
    assert "X_nmf" not in osmfish.obsm and "nmf" not in osmfish.uns
    assert np.array_equal(osmfish.X, X0)
    assert res.obsm["X_nmf"].shape == (6471, 11)
    res.write_h5ad(tmp_path / "r.h5ad")
    back = ad.read_h5ad(tmp_path / "r.h5ad")
    assert back.uns["nmf"]["params"]["n_components"] == 11
    assert np.allclose(back.obsm["X_nmf"], res.obsm["X_nmf"])
