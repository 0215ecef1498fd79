"""The compute core: numpy / scipy / scikit-learn only, never napari or Qt.

Long computations are generators (``iter_*``) that yield :class:`Progress` records and
return their result, so a GUI can show progress and cancel between steps; each has a
blocking twin that drains it.
"""

import os as _os


def _numba_cache_dir() -> str:
    """Numba's on-disk cache of compiled kernels: NUMBA_CACHE_DIR if set, else a per-user cache
    folder (never inside the installed package, nor the source tree of an editable install).
    """
    base = _os.environ.get("XDG_CACHE_HOME") or _os.path.join(_os.path.expanduser("~"), ".cache")
    return _os.environ.get("NUMBA_CACHE_DIR") or _os.path.join(base, "napari-spatial-nmf", "numba")


def _configure_numba() -> None:
    import numba

    numba.config.CACHE_DIR = _numba_cache_dir()  # read when a cached kernel is first compiled


_configure_numba()

from ._progress import Progress, drain  # noqa: E402
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
