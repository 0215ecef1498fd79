"""The compute core: numpy / scipy / scikit-learn only, never napari or Qt.

Long computations are generators (``iter_*``) that yield :class:`Progress` records and
return their result, so a GUI can show progress and cancel between steps; each has a
blocking twin that drains it.
"""

from . import _numba  # noqa: F401  (first: numba's cache folder, before any kernel is defined)
from ._progress import Progress, drain
from .grid import Grid, grid_of, to_volume, volumes_to_anndata
from .impute import impute_knn
from .nmf import NMFResult, fit_nmf, iter_fit_nmf
from .ontology import Ontology
from .regions import region_correlation

__all__ = [
    "Grid",
    "NMFResult",
    "Ontology",
    "Progress",
    "drain",
    "fit_nmf",
    "grid_of",
    "impute_knn",
    "iter_fit_nmf",
    "region_correlation",
    "to_volume",
    "volumes_to_anndata",
]
