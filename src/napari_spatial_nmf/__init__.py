"""napari-spatial-nmf: principal spatial patterns of gene expression over anatomical atlases.

The import is light: ``core``, ``io``, ``tl``, ``pl`` and ``datasets`` never import napari
or Qt, so the same analysis runs in scripts and on servers without a display.

>>> import napari_spatial_nmf as nsn
>>> adata = nsn.datasets.osmfish()
>>> nsn.tl.nmf(adata, n_components=8, random_state=0)
>>> adata.obsm["X_nmf"].shape
(6471, 8)
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-spatial-nmf")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

from . import core, datasets, io, pl, tl

__all__ = ["__version__", "core", "datasets", "io", "pl", "tl"]
