"""Readers on the original public files in ../shared/data (not only the shipped copies)."""

import numpy as np
import pytest

from napari_spatial_nmf import io
from napari_spatial_nmf._layers import cells_layer

pytestmark = pytest.mark.shared_data


def test_bdgp_original_csv_equals_shipped_sample(shared_data, bdgp):
    d = shared_data / "drosophila_bdgp_stanmf"
    s = io.read_bdgp(d / "WuExampleExpression.csv.gz", d / "embryoTemplate_16x32.csv")
    assert s.genes == bdgp[0].genes
    assert np.allclose(s.data, bdgp[0].data, equal_nan=True, atol=1e-7)
    derived = np.load(d / "images_16x32_derived.npz", allow_pickle=False)["images"]
    assert np.allclose(s.data, derived, equal_nan=True)  # the SOURCE.md's own column-major layout


def test_allen_original_folder(shared_data):
    s = io.read_allen_energy(shared_data / "allen_ish_energy_200um")
    assert s.genes == ["Nrp1", "Pdyn"]
    assert s.meta["skipped_label_grids"] == ["P56_Mouse_gridAnnotation.zip"]
    z = np.load(shared_data / "allen_ish_energy_200um" / "ish_energy_200um_2genes.npz", allow_pickle=False)
    energy = np.where(z["energy"] == -1, np.nan, z["energy"])
    assert np.array_equal(s.data, energy, equal_nan=True)


def test_starmap_3d_cells_become_3d_points(shared_data):
    adata = io.read_cells(shared_data / "starmap_3d_visual_cortex" / "starmap_3d_33598cells_28genes.h5ad")
    data, kwargs, kind = cells_layer(adata)
    assert kind == "points" and data.shape == (33598, 3)
    assert np.array_equal(data[:, 0], adata.obsm["spatial"][:, 2])  # napari (z, y, x)
    assert kwargs["metadata"]["adata"] is adata and kwargs["size"] > 0


def test_merfish_multi_slice_cells(shared_data):
    adata = io.read_cells(shared_data / "merfish_mop_zhuang_4slices" / "merfish_mop_4slices_254genes.h5ad")
    assert adata.obsm["spatial"].shape == (7924, 2)
    assert "slice" in cells_layer(adata)[1]["features"]
    with pytest.raises(ValueError, match="no obsm"):
        io.read_cells(shared_data / "merfish_mop_zhuang_4slices" / "merfish_mop_4slices_254genes.h5ad",
                      spatial_key="X_umap")
