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

__all__ = ["__version__", "core", "datasets", "io", "pl", "tl"]
_SUBMODULES = {"core", "datasets", "io", "pl", "tl", "pipeline", "results"}


def __getattr__(name: str):
    """Import the submodules on first use, so the command line's ``--help`` and napari's plugin
    discovery do not pay for scanpy, scikit-learn and numba (PEP 562).
    """
    if name in _SUBMODULES:
        import importlib

        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_SUBMODULES})
