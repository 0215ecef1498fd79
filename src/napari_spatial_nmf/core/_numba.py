"""numba's on-disk cache of compiled kernels: a per-user cache folder.

NUMBA_CACHE_DIR if set, else ``$XDG_CACHE_HOME/napari-spatial-nmf/numba`` (``~/.cache/...``):
never inside the installed package, nor the source tree of an editable install. Imported
by :mod:`napari_spatial_nmf.core` before any kernel is defined (numba reads the setting
when a cached kernel is first compiled).
"""

from __future__ import annotations

import os

import numba


def cache_dir() -> str:
    """The folder numba writes compiled kernels to."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get("NUMBA_CACHE_DIR") or os.path.join(base, "napari-spatial-nmf", "numba")


numba.config.CACHE_DIR = cache_dir()
