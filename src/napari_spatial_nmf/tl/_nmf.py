"""NMF into principal patterns and gene coefficients, and the k-NN imputation before it."""

from __future__ import annotations

from collections.abc import Generator

import anndata as ad
import numpy as np

from ..core._progress import Progress
from ..core._validation import as_float_matrix, check_n_components
from ..core.impute import iter_impute_knn as _iter_impute_knn
from ..core.nmf import iter_fit_nmf
from ._common import blocking, check_adata, dense_matrix, pattern_names, store_result, target, tool

MISSING_MODES = ("raise", "zero")


def check_nmf_input(adata: ad.AnnData, n_components: int, *, layer: str | None = None,
                    missing: str = "raise") -> np.ndarray:
    """Check the input of :func:`nmf` and return the matrix it will factorize.

    Parameters
    ----------
    adata : anndata.AnnData
        Observations (voxels or cells) x genes.
    n_components : int
        K, between 1 and the smaller of the numbers of observations and genes.
    layer : str, optional
        Use ``adata.layers[layer]`` instead of ``X``.
    missing : {"raise", "zero"}
        NaN raise, or count as zero. Infinite values always raise.

    Returns
    -------
    numpy.ndarray, (n_obs, n_genes), float32 or float64

    Raises
    ------
    ValueError, TypeError, KeyError
        As :func:`nmf`; cheap, so a GUI can call it before starting a worker.
    """
    if missing not in MISSING_MODES:
        raise ValueError(f"missing must be one of {MISSING_MODES}; got {missing!r}.")
    X = dense_matrix(check_adata(adata), layer)
    if missing == "zero" and X.dtype.kind == "f":
        X = np.where(np.isnan(X), X.dtype.type(0), X)  # only NaN: infinities still raise below
    X = as_float_matrix(X)
    check_n_components(n_components, *X.shape)
    return X


@tool
def iter_nmf(
    adata: ad.AnnData,
    n_components: int,
    *,
    layer: str | None = None,
    missing: str = "raise",
    init: str = "nndsvda",
    max_iter: int = 200,
    tol: float = 1e-4,
    random_state: int | None = 0,
    key_added: str = "nmf",
    copy: bool = False,
) -> Generator[Progress, None, ad.AnnData]:
    """Frobenius NMF of ``adata.X`` into principal patterns and gene coefficients.

    X (n_obs x n_genes) ~= W H, W >= 0 the principal patterns (one value per observation and
    pattern: a voxel's pattern intensity or a cell's weight), H >= 0 the gene coefficients.
    Each pattern is scaled to a maximum of 1 and its coefficients carry the scale. Solver:
    coordinate descent in scikit-learn's order (:mod:`napari_spatial_nmf.core.nmf`); osNMF
    and staNMF use scikit-learn's NMF with these defaults.

    Parameters
    ----------
    adata : anndata.AnnData
        Observations (voxels or cells) x genes.
    n_components : int
        K, between 1 and min(n_obs, n_genes).
    layer : str, optional
        Use ``adata.layers[layer]`` instead of ``X`` (e.g. ``"imputed"``).
    missing : {"raise", "zero"}
        What to do with NaN (missing voxels): "raise" (default) asks you to impute first
        (:func:`impute_knn`); "zero" counts them as no expression.
    init : {"nndsvda", "nndsvd", "nndsvdar", "random"}
        Start (:mod:`napari_spatial_nmf.core.starts`); "nndsvda" is scikit-learn's default.
    max_iter : int
        Maximum iterations (scikit-learn's 200). Stopping there warns
        (``sklearn.exceptions.ConvergenceWarning``).
    tol : float
        Relative tolerance on the projected-gradient violation (scikit-learn's 1e-4).
    random_state : int or None
        Seed; a fixed seed gives identical results.
    key_added : str
        Results go to ``obsm[f"X_{key_added}"]`` (patterns, (n_obs, K) float32),
        ``varm[f"{key_added}_coefficients"]`` ((n_genes, K) float32) and
        ``uns[key_added]`` (parameters, versions, pattern names, iterations, why the fit
        stopped, errors).
    copy : bool
        Work on and return a copy instead of adding keys to ``adata``.

    Returns
    -------
    anndata.AnnData or None
        ``nmf``: the copy if ``copy=True``, else None (keys added to ``adata``).
        ``iter_nmf``: a generator of :class:`~napari_spatial_nmf.core.Progress` (one per
        iteration) whose return value is the AnnData holding the results.

    Raises
    ------
    ValueError
        NaN (with ``missing="raise"``), negative or infinite values, K out of range,
        all-zero data.
    KeyError
        A missing ``layer``.
    """
    X = check_nmf_input(adata, n_components, layer=layer, missing=missing)
    gen = iter_fit_nmf(X, n_components, init=init, max_iter=max_iter, tol=tol, random_state=random_state)
    params = {"n_components": int(n_components), "layer": layer, "missing": missing, "init": init,
              "max_iter": int(max_iter), "tol": float(tol), "random_state": random_state,
              "solver": "cd (HALS), scikit-learn order", "beta_loss": "frobenius",
              "n_obs": adata.n_obs, "n_genes": adata.n_vars}
    yield Progress(0, int(max_iter), f"NMF, K = {n_components}, {X.shape[0]:,} observations x {X.shape[1]:,} genes")
    res = yield from gen
    return store_result(target(adata, copy), key_added, "nmf", params,
                 obsm={f"X_{key_added}": res.patterns.astype(np.float32)},
                 varm={f"{key_added}_coefficients": res.coefficients.T.astype(np.float32)},
                 record={"pattern_names": pattern_names(res.patterns.shape[1]), "n_iter": res.n_iter,
                         "converged": res.converged, "stop_reason": res.stop_reason,
                         "reconstruction_err": res.reconstruction_err, "relative_error": res.relative_error})


nmf = blocking(iter_nmf, "nmf")


@tool
def iter_impute_knn(
    adata: ad.AnnData,
    *,
    n_neighbors: int = 6,
    layer: str | None = None,
    key_added: str = "imputed",
    copy: bool = False,
) -> Generator[Progress, None, ad.AnnData]:
    """Fill missing values (NaN) from the k nearest measured observations, per gene.

    The osNMF scheme: a distance-weighted k-NN regression on the voxel coordinates, k = 6
    (``KNeighborsRegressor(n_neighbors=6, weights="distance")`` in osNMF's
    ``knn_impute.py``; :func:`napari_spatial_nmf.core.impute_knn`). ``X`` is left as it was.

    Parameters
    ----------
    adata : anndata.AnnData
        Observations x genes with ``obsm["spatial"]`` (µm) and NaN where data are missing.
    n_neighbors : int
        k (osNMF: 6).
    layer : str, optional
        Impute ``layers[layer]`` instead of ``X``.
    key_added : str
        The filled matrix goes to ``layers[key_added]`` (float32), the record to
        ``uns[key_added]``.
    copy : bool
        Return a copy instead of adding keys.

    Returns
    -------
    anndata.AnnData or None
        As :func:`nmf`; the generator yields one step per gene with missing values.

    Raises
    ------
    ValueError
        No ``obsm["spatial"]``; a gene with fewer than ``n_neighbors`` measured values.
    """
    if "spatial" not in check_adata(adata).obsm:
        raise ValueError("impute_knn needs coordinates in adata.obsm['spatial'].")
    X = dense_matrix(adata, layer).astype(np.float32)
    gen = _iter_impute_knn(X, np.asarray(adata.obsm["spatial"]), n_neighbors=n_neighbors, names=list(adata.var_names))
    n_missing = int(np.isnan(X).any(axis=0).sum())
    yield Progress(0, n_missing, f"imputing {n_missing} gene(s) with missing values (k-NN, k={n_neighbors})")
    filled = yield from gen
    return store_result(target(adata, copy), key_added, "impute_knn",
                 {"n_neighbors": n_neighbors, "layer": layer}, layers={key_added: filled},
                 record={"n_imputed": int(np.isnan(X).sum())})


impute_knn = blocking(iter_impute_knn, "impute_knn")
