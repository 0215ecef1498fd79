"""The compact real samples shipped inside the package (see ``data/README.md``).

No napari here: these return the same objects as :mod:`napari_spatial_nmf.io`.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from . import io

DATA = Path(str(files("napari_spatial_nmf") / "data"))


def allen_200um() -> tuple[io.Stack, io.Atlas]:
    """Allen ISH expression energy of Pdyn and Nrp1 (200 µm grid) with the CCFv3 annotation.

    Returns
    -------
    (Stack, Atlas)
        Stack (2, 67, 41, 58) float32, axes (AP, DV, ML), -1 as NaN; Atlas with the 2017
        CCF annotation on the same grid and the Allen ontology (1,327 structures).
    """
    stack = io.read_allen_energy(DATA / "Pdyn_P56_coronal_71717084_200um.zip").concat(
        io.read_allen_energy(DATA / "Nrp1_P56_coronal_74272479_200um.zip"))
    stack.meta["source"] = "napari-spatial-nmf sample: Allen Mouse Brain Atlas, 200 µm energy grids"
    atlas = io.read_atlas(DATA / "annotation_200um_ccf2017_ishgrid.nrrd", DATA / "structure_tree_safe_2017.csv.gz")
    return stack, atlas


SAMPLE_FILES = {
    "Pdyn_P56_coronal_71717084_200um.zip": "Allen ISH energy, Pdyn (200 µm grid)",
    "Nrp1_P56_coronal_74272479_200um.zip": "Allen ISH energy, Nrp1 (200 µm grid)",
    "annotation_200um_ccf2017_ishgrid.nrrd": "CCFv3 annotation on the 200 µm ISH grid (--atlas)",
    "structure_tree_safe_2017.csv.gz": "the Allen ontology (found next to the annotation)",
    "bdgp_wu2016_405px_1640images.npz": "BDGP embryo images (--volumes; with the template beside it)",
    "embryoTemplate_16x32.csv": "the BDGP embryo template",
    "osmfish_sscortex_6471cells_33genes.h5ad": "osmFISH cells with expert regions (--cells, --label-key region)",
    "starmap_3d_33598cells_28genes.h5ad": "STARmap 3D cells (--cells)",
    "stahl2016_breast_cancer_4layers_3000genes.h5ad": "Ståhl 2016, 4 serial sections (--cells, --section-key section)",
}


def copy_samples(folder) -> list[Path]:
    """Copy the shipped sample files into ``folder`` (created), so command-line examples work on
    them (``napari-spatial-nmf samples --out samples``); returns the paths.

    Raises
    ------
    ValueError
        ``folder`` is a file.
    """
    import shutil

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file: give a folder for the samples.")
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in SAMPLE_FILES:
        shutil.copyfile(DATA / name, folder / name)
        out.append(folder / name)
    (folder / "README.md").write_text((DATA / "README.md").read_text())
    return out


def bdgp() -> io.Stack:
    """The staNMF BDGP Drosophila embryo ISH images: (1640, 16, 32) float32, NaN outside the embryo."""
    with np.load(DATA / "bdgp_wu2016_405px_1640images.npz", allow_pickle=False) as z:
        table, names = z["table"], [str(n) for n in z["image_names"]]
    template = pd.read_csv(DATA / "embryoTemplate_16x32.csv", index_col=0).to_numpy()
    return io.Stack(io.bdgp_stack(table, template, names), names, (1.0, 1.0), axes=("DV", "AP"),
                    meta={"source": "napari-spatial-nmf sample: BDGP embryos (Wu et al. 2016)", "format": "bdgp",
                          "unit": "pixel"})


def osmfish() -> ad.AnnData:
    """OsmFISH somatosensory cortex: 6,471 cells x 33 genes (counts), x/y in µm, region labels."""
    adata = io.read_cells(DATA / "osmfish_sscortex_6471cells_33genes.h5ad")
    adata.uns["spatial_unit"] = "µm"
    return adata


def starmap_3d() -> ad.AnnData:
    """STARmap 3D mouse visual cortex (Wang et al. 2018): 33,598 cells x 28 genes, x/y/z.

    X int32 as stored in the source (a per-cell signal, NOT molecule counts; 753 cells are
    all zero); ``obsm["spatial"]`` = (x, y, z) in image voxels (the source gives no
    physical voxel size). NNMF normalises each cell, so the signal scale does not matter;
    pass ``filter_cells=True`` to leave out the empty cells.
    """
    adata = io.read_cells(DATA / "starmap_3d_33598cells_28genes.h5ad")
    adata.uns["spatial_unit"] = "image voxels"
    return adata


def stahl_breast_cancer(split: bool = True):
    """Four consecutive sections of a human breast cancer biopsy (Spatial Transcriptomics;
    Ståhl et al. 2016 Science 353:78), PASTE's alignment example (Zeira et al. 2022).

    1,031 spots (254 / 251 / 264 / 262) x the 3,000 genes with the most counts among those
    all four layers share; raw counts (int32, CSR); ``obs["section"]`` layer1..layer4;
    ``obsm["spatial"]`` in ST array units (one unit = the 200 µm spot pitch; not registered
    across layers).

    Parameters
    ----------
    split : bool
        Return one AnnData per section (the input of :func:`napari_spatial_nmf.tl.integrate`)
        instead of one with the ``section`` column.

    Returns
    -------
    list of anndata.AnnData, or anndata.AnnData
    """
    adata = io.read_cells(DATA / "stahl2016_breast_cancer_4layers_3000genes.h5ad")
    if not split:
        return adata
    out = []
    for s in adata.obs["section"].cat.categories:
        part = adata[(adata.obs["section"] == s).to_numpy()].copy()
        part.obs_names = [n.rsplit("-", 1)[0] for n in part.obs_names]
        out.append(part)
    return out
