"""Readers for ISH volumes, image stacks, atlases and cell point clouds (no napari).

Every reader checks its input and raises a ``ValueError`` (or ``FileNotFoundError``) that
names the file and says what is wrong; none unpickles anything. Volumes come back as a
:class:`Stack` (genes x grid, float32, NaN = missing) that :meth:`Stack.to_anndata` turns
into the package's data model; atlases as an :class:`Atlas` (an annotation NRRD with its
ontology, or a BrainGlobe atlas); cells as an AnnData (``.h5ad`` or a SpatialData store).
"""

from ._allen import ALLEN_MISSING, is_allen_zip, is_label_grid, read_allen_energy
from ._atlas import (
    BRAINGLOBE_PREFIX,
    download_brainglobe_atlas,
    find_ontology,
    iter_download_brainglobe_atlas,
    local_brainglobe_atlases,
    read_atlas,
    read_brainglobe_atlas,
)
from ._cells import check_cells, is_spatialdata, read_cells, read_h5ad, read_spatialdata, write_spatialdata
from ._fetch import (
    cache_dir,
    check_genes,
    experiment_index,
    fetch_allen,
    fetch_allen_all,
    gene_names,
    iter_fetch_allen,
    iter_fetch_allen_all,
)
from ._stacks import bdgp_stack, read_bdgp, read_image_stack
from ._types import Atlas, Stack

__all__ = [
    "ALLEN_MISSING",
    "BRAINGLOBE_PREFIX",
    "Atlas",
    "Stack",
    "bdgp_stack",
    "cache_dir",
    "check_cells",
    "check_genes",
    "download_brainglobe_atlas",
    "experiment_index",
    "fetch_allen",
    "fetch_allen_all",
    "find_ontology",
    "gene_names",
    "is_allen_zip",
    "is_label_grid",
    "is_spatialdata",
    "iter_download_brainglobe_atlas",
    "iter_fetch_allen",
    "iter_fetch_allen_all",
    "local_brainglobe_atlases",
    "read_allen_energy",
    "read_atlas",
    "read_bdgp",
    "read_brainglobe_atlas",
    "read_cells",
    "read_h5ad",
    "read_image_stack",
    "read_spatialdata",
    "write_spatialdata",
]
