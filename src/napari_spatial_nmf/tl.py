"""scverse-style tools: compute on an AnnData and write results under new keys.

Every function takes an AnnData (observations x genes, ``obsm["spatial"]`` in µm) and
adds results under new keys, never overwriting the user's data:

============================  ==============================================
``obsm[f"X_{key}"]``           principal patterns, (n_obs, K) float32
``varm[f"{key}_coefficients"]`` gene coefficients, (n_genes, K) float32
``uns[key]``                   parameters, seed, versions, errors, pattern names
``layers["imputed"]``          :func:`impute_knn` output
============================  ==============================================

Each long computation has a generator twin (``iter_*``) that yields
:class:`~napari_spatial_nmf.core.Progress` and returns the AnnData holding the results.
"""

from __future__ import annotations

from collections.abc import Generator

import anndata as ad
import numpy as np
import pandas as pd

from .core import grid as _grid
from .core._progress import Progress, drain
from .core._validation import as_float_matrix, check_n_components
from .core.impute import impute_knn as _impute_knn
from .core.nmf import iter_fit_nmf
from .core.ontology import Ontology
from .core.provenance import provenance
from .core.regions import region_correlation as _region_correlation
from .core.stability import iter_stability as _iter_stability

MISSING_MODES = ("raise", "zero")


def _stored_matrix(adata: ad.AnnData, layer: str | None):
    """``adata.X`` or ``adata.layers[layer]`` as stored (dense or sparse), checked to exist."""
    if not isinstance(adata, ad.AnnData):
        raise TypeError(f"Expected an AnnData; got {type(adata).__name__}.")
    if layer is None:
        X = adata.X
    elif layer in adata.layers:
        X = adata.layers[layer]
    else:
        raise KeyError(f"No layer {layer!r} in the AnnData; it has {list(adata.layers)}.")
    if X is None:
        raise ValueError("The AnnData has no X matrix.")
    return X


def _matrix(adata: ad.AnnData, layer: str | None) -> np.ndarray:
    X = _stored_matrix(adata, layer)
    return np.asarray(X.toarray() if hasattr(X, "toarray") else X)


def pattern_names(k: int) -> list[str]:
    """Names of the K patterns of a result: ``PP1`` ... ``PPK`` (1-based, as in the papers)."""
    return [f"PP{i + 1}" for i in range(k)]


def check_nmf_input(adata: ad.AnnData, n_components: int, *, layer: str | None = None,
                    missing: str = "raise") -> np.ndarray:
    """Check the input of :func:`nmf` and return the matrix it will factorize.

    Raises
    ------
    ValueError, TypeError, KeyError
        As :func:`nmf`; cheap, so a GUI can call it before starting a worker.
    """
    if missing not in MISSING_MODES:
        raise ValueError(f"missing must be one of {MISSING_MODES}; got {missing!r}.")
    X = _matrix(adata, layer)
    if missing == "zero":
        X = np.nan_to_num(X, nan=0.0)
    X = as_float_matrix(X)
    check_n_components(n_components, *X.shape)
    return X


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
    """Generator twin of :func:`nmf`: checks input at once, yields per iteration.

    Returns (as the generator's value) the AnnData holding the results: ``adata`` itself,
    or a copy when ``copy=True``.
    """
    X = check_nmf_input(adata, n_components, layer=layer, missing=missing)
    gen = iter_fit_nmf(X, n_components, init=init, max_iter=max_iter, tol=tol,
                       random_state=random_state)
    params = {"n_components": int(n_components), "layer": layer, "missing": missing, "init": init,
              "max_iter": int(max_iter), "tol": float(tol), "random_state": random_state,
              "solver": "cd (HALS), scikit-learn order", "beta_loss": "frobenius",
              "n_obs": adata.n_obs, "n_genes": adata.n_vars}

    def run():
        res = yield from gen
        out = adata.copy() if copy else adata
        out.obsm[f"X_{key_added}"] = res.patterns.astype(np.float32)
        out.varm[f"{key_added}_coefficients"] = res.coefficients.T.astype(np.float32)
        rec = provenance("nmf", params)
        rec.update({
            "pattern_names": pattern_names(res.patterns.shape[1]),
            "n_iter": res.n_iter,
            "converged": res.converged,
            "reconstruction_err": res.reconstruction_err,
            "relative_error": res.relative_error,
        })
        out.uns[key_added] = rec
        return out

    return run()


def nmf(adata: ad.AnnData, n_components: int, *, copy: bool = False, **kwargs) -> ad.AnnData | None:
    """Frobenius NMF of ``adata.X`` into principal patterns and gene coefficients.

    X (n_obs x n_genes) ~= W H, W >= 0 the principal patterns (one value per observation and
    pattern: a voxel's pattern intensity or a cell's weight), H >= 0 the gene coefficients.
    Each pattern is scaled to a maximum of 1 and its coefficients carry the scale. Solver:
    coordinate descent in scikit-learn's order (see :mod:`napari_spatial_nmf.core.nmf`);
    osNMF and staNMF use scikit-learn's NMF with these defaults.

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
    init, max_iter, tol : see :func:`napari_spatial_nmf.core.iter_fit_nmf`
    random_state : int or None
        Seed; a fixed seed gives identical results.
    key_added : str
        Results go to ``obsm[f"X_{key_added}"]``, ``varm[f"{key_added}_coefficients"]``,
        ``uns[key_added]``.
    copy : bool
        Work on and return a copy instead of adding keys to ``adata``.

    Returns
    -------
    anndata.AnnData or None
        The copy if ``copy=True``, else None (keys added to ``adata``).

    Raises
    ------
    ValueError
        NaN (with ``missing="raise"``), negative or infinite values, K out of range.
    """
    out = drain(iter_nmf(adata, n_components, copy=copy, **kwargs))
    return out if copy else None


def impute_knn(
    adata: ad.AnnData,
    *,
    n_neighbors: int = 6,
    layer: str | None = None,
    key_added: str = "imputed",
    copy: bool = False,
) -> ad.AnnData | None:
    """Fill missing values (NaN) from the k nearest measured observations, per gene.

    The osNMF scheme (distance-weighted k-NN regression on voxel coordinates, k=6; see
    :func:`napari_spatial_nmf.core.impute_knn`). The result goes to
    ``layers[key_added]``; ``X`` is left as it was.

    Raises
    ------
    ValueError
        No ``obsm["spatial"]``; a gene with fewer than ``n_neighbors`` measured values.
    """
    if "spatial" not in adata.obsm:
        raise ValueError("impute_knn needs coordinates in adata.obsm['spatial'].")
    X = _matrix(adata, layer).astype(np.float32)
    filled = _impute_knn(X, np.asarray(adata.obsm["spatial"]), n_neighbors=n_neighbors)
    out = adata.copy() if copy else adata
    out.layers[key_added] = filled
    out.uns[key_added] = provenance("impute_knn", {"n_neighbors": n_neighbors, "layer": layer,
                                                   "n_imputed": int(np.isnan(X).sum())})
    return out if copy else None


def region_correlation(
    adata: ad.AnnData,
    annotation: np.ndarray,
    ontology: Ontology,
    *,
    key: str = "nmf",
    genes: list[str] | None = None,
    layer: str | None = None,
    min_voxels: int = 1,
) -> pd.DataFrame:
    """Correlate principal patterns (or genes) of a volume AnnData with atlas structures.

    Parameters
    ----------
    adata : anndata.AnnData
        A volume AnnData (``uns["grid"]``) on the annotation's grid.
    annotation : numpy.ndarray of int, shape grid_shape
        Structure ids per voxel.
    ontology : Ontology
    key : str
        Which NMF result to use (``obsm[f"X_{key}"]``); ignored when ``genes`` is given.
    genes : list of str, optional
        Correlate these genes' volumes instead of patterns (missing voxels excluded).
    layer : str, optional
        With ``genes``: take values from this layer instead of ``X``.
    min_voxels : int
        Leave out structures with fewer valid voxels.

    Returns
    -------
    pandas.DataFrame
        As :func:`napari_spatial_nmf.core.region_correlation`. With patterns, it is also
        stored in ``uns[key]["region_correlation"]``.
    """
    if genes is not None:
        missing = [g for g in genes if g not in adata.var_names]
        if missing:
            raise KeyError(f"Genes not in the AnnData: {missing}.")
        values = _matrix(adata, layer)[:, adata.var_names.get_indexer(genes)]
        names = list(genes)
    else:
        if f"X_{key}" not in adata.obsm:
            raise KeyError(f"No obsm['X_{key}']: run tl.nmf(adata, ..., key_added={key!r}) first.")
        values = np.asarray(adata.obsm[f"X_{key}"])
        names = adata.uns.get(key, {}).get("pattern_names", pattern_names(values.shape[1]))
    _annotation_on_grid(adata, annotation)
    df = _region_correlation(_grid.to_volume(adata, values), annotation, ontology,
                             names=list(names), min_voxels=min_voxels)
    if genes is None:
        adata.uns[key]["region_correlation"] = df
    return df


def iter_stability(
    adata: ad.AnnData,
    k_range,
    n_replicates: int = 100,
    *,
    layer: str | None = None,
    resample: str = "genes",
    matching: str = "hungarian",
    similarity: str = "cosine",
    random_state: int = 0,
    batch_size: int = 25,
    max_iter: int = 200,
    tol: float = 1e-4,
    store=None,
    backend: str = "local",
    scheduler=None,
    fit_final: bool = True,
    key_added: str = "stability",
    nmf_key: str = "nmf",
    copy: bool = False,
) -> Generator[Progress, None, ad.AnnData]:
    """Generator twin of :func:`stability` (input checked at the call)."""
    X = check_nmf_input(adata, 2, layer=layer)
    sweep = _iter_stability(X, k_range, n_replicates, resample=resample, matching=matching,
                            similarity=similarity, seed=random_state, batch_size=batch_size,
                            max_iter=max_iter, tol=tol, store=store, backend=backend, scheduler=scheduler)

    def run():
        res = yield from sweep
        out = adata.copy() if copy else adata
        rec = provenance("stability", {**res.params, "layer": layer,
                                       "store": str(store) if store is not None else None, "backend": backend})
        rec.update({"table": res.table, "best_k": res.best_k})
        out.uns[key_added] = rec
        if fit_final:
            yield Progress(0, 1, f"final NMF at K = {res.best_k}")
            yield from iter_nmf(out, res.best_k, layer=layer, random_state=random_state, key_added=nmf_key)
            out.uns[nmf_key]["selected_by"] = key_added
        return out

    return run()


def stability(adata: ad.AnnData, k_range, n_replicates: int = 100, *, copy: bool = False,
              **kwargs) -> ad.AnnData | None:
    """Choose K by staNMF: bootstrap replicates, instability per K, argmin, final NMF.

    For each K in ``k_range``, NMF is fitted to ``n_replicates`` bootstrap replicates (all
    replicates of a K share one pass through X; see :mod:`napari_spatial_nmf.core.batched`)
    and the instability score is the mean dissimilarity of their dictionaries over all
    pairs (Hungarian matching or Amari-type error, on cosine or Pearson similarity; Wu et al.
    2016 PNAS; osNMF, Cahill et al. 2024 PNAS). The K with the lowest score is chosen and,
    with ``fit_final=True``, NMF is fitted on the full data at that K and stored as
    :func:`nmf` stores it.

    Parameters
    ----------
    adata : anndata.AnnData
        Observations x genes; the dictionaries are over observations.
    k_range : iterable of int
        K values, each in [2, min(n_obs, n_genes)].
    n_replicates : int
        N >= 2 replicates per K.
    layer : str, optional
    resample : {"genes", "obs", "none"}
        "genes" (osNMF: resample genes / images), "obs", or "none" (random restarts, Wu 2016).
    matching : {"hungarian", "amari"}
    similarity : {"cosine", "pearson"}
    random_state : int
        Replicate b uses random_state + b.
    batch_size, max_iter, tol : solver settings (see :func:`napari_spatial_nmf.core.stability.iter_stability`)
    store : str or Path, optional
        Results folder: every finished fit is kept; re-running resumes with identical numbers.
    backend : {"local", "dask"}
    scheduler : str or dask.distributed.Client, optional
        dask scheduler address or client (default: a LocalCluster).
    fit_final : bool
        Fit and store the final model at the chosen K.
    key_added : str
        The table goes to ``uns[key_added]["table"]`` (k, instability, sd, n_replicates) with
        ``best_k``, parameters and versions.
    nmf_key : str
        Where the final model goes (as :func:`nmf`'s ``key_added``).
    copy : bool

    Returns
    -------
    anndata.AnnData or None

    Raises
    ------
    ValueError
        K outside [2, min(n_obs, n_genes)], fewer than 2 replicates, NaN / negative values,
        all-zero rows or columns, a store holding another sweep.
    """
    out = drain(iter_stability(adata, k_range, n_replicates, copy=copy, **kwargs))
    return out if copy else None


# --------------------------------------------------------------------------- NNMF

def signature_names(k: int) -> list[str]:
    """Names of the K signatures of an NNMF result: ``S1`` ... ``SK``."""
    return [f"S{i + 1}" for i in range(k)]


def _cell_input(adata: ad.AnnData, *, layer, spatial_key, slice_key, filter_cells: bool):
    """Check an NNMF input; return (kept cells mask, counts CSR, coords or None, slices or None, counts of filtered)."""
    from .core import nnmf as _nn

    X = _stored_matrix(adata, layer)  # check_counts below makes the one CSR copy the fit uses
    coords = None
    if spatial_key is not None and spatial_key in adata.obsm:
        coords = np.asarray(adata.obsm[spatial_key], dtype=np.float64)
        if coords.ndim != 2 or coords.shape[1] not in (2, 3):
            raise ValueError(f"obsm[{spatial_key!r}] must be (n_cells, 2 or 3) coordinates in µm; got {coords.shape}.")
        if coords.shape[0] != X.shape[0]:
            raise ValueError(f"obsm[{spatial_key!r}] has {coords.shape[0]} rows but X has {X.shape[0]} cells.")
    slices = None
    if slice_key is not None:
        if slice_key not in adata.obs:
            raise KeyError(f"slice_key {slice_key!r} is not a column of adata.obs (columns: {list(adata.obs.columns)}).")
        slices = adata.obs[slice_key].astype(str).to_numpy()
    keep = np.ones(X.shape[0], bool)
    n_zero = n_dup = 0
    if filter_cells:
        zero = np.asarray((X != 0).sum(axis=1)).ravel() == 0  # NaN counts as non-zero: check_counts reports it
        n_zero = int(zero.sum())
        keep &= ~zero
        if coords is not None:
            dup = np.zeros_like(keep)
            dup[keep] = _nn.duplicated_cells(coords[keep], None if slices is None else slices[keep])
            n_dup = int(dup.sum())
            keep &= ~dup
        X = X[keep]
        coords = None if coords is None else coords[keep]
        slices = None if slices is None else slices[keep]
    X = _nn.check_counts(X)
    if coords is not None:
        coords, slices = _nn.check_coordinates(coords, X.shape[0], slices)
    return keep, X, coords, slices, {"zero_count_cells": n_zero, "duplicate_coordinate_cells": n_dup}


def iter_nnmf(
    adata: ad.AnnData,
    n_components: int,
    *,
    lengthscale: float | None = None,
    kernel_cutoff: float = 0.1,
    slice_key: str | None = None,
    spatial_key: str | None = "spatial",
    layer: str | None = None,
    normalize: bool = True,
    filter_cells: bool = False,
    max_iter: int = 1000,
    tol: float = 1e-10,
    initial: int = 3,
    small_iter: int = 50,
    error_freq: int = 10,
    desmooth: bool = False,
    seed: int | None = 0,
    key_added: str = "nnmf",
    copy: bool = False,
) -> Generator[Progress, None, ad.AnnData]:
    """Generator twin of :func:`nnmf`: checks the input at once, then yields per iteration."""
    from .core import nnmf as _nn

    keep, X, coords, slices, filtered = _cell_input(adata, layer=layer, spatial_key=spatial_key,
                                                    slice_key=slice_key, filter_cells=filter_cells)
    K = check_n_components(n_components, *X.shape)
    if lengthscale is not None and (not np.isfinite(lengthscale) or lengthscale <= 0):
        raise ValueError(f"lengthscale must be a positive distance in µm (or None for the default); got {lengthscale!r}.")
    if not 0 < kernel_cutoff < 1:
        raise ValueError(f"kernel_cutoff must be in (0, 1); got {kernel_cutoff!r}.")
    for name, v in (("max_iter", max_iter), ("error_freq", error_freq)):
        if int(v) < 1:
            raise ValueError(f"{name} must be at least 1; got {v!r}.")
    params = {"n_components": K, "lengthscale": lengthscale, "kernel_cutoff": float(kernel_cutoff),
              "slice_key": slice_key, "spatial_key": spatial_key, "layer": layer, "normalize": bool(normalize),
              "filter_cells": bool(filter_cells), "max_iter": int(max_iter), "tol": float(tol),
              "initial": int(initial), "small_iter": int(small_iter), "error_freq": int(error_freq),
              "desmooth": bool(desmooth), "seed": seed, "n_obs": adata.n_obs, "n_genes": adata.n_vars}

    def run():
        Xn = _nn.normalize_cells(X) if normalize else X
        kernel = None
        if coords is not None:
            ls = _nn.default_lengthscale(coords, slices) if lengthscale is None else float(lengthscale)
            kernel = _nn.spatial_kernel(coords, ls, kernel_cutoff, slices)
            yield Progress(0, 1, f"kernel: lengthscale {ls:.3g} µm, {kernel.mean_neighbors:.1f} neighbours per cell")
        res = yield from _nn.iter_fit_nnmf(Xn, K, None if kernel is None else kernel.S, max_iter=max_iter, tol=tol,
                                           initial=initial, small_iter=small_iter, error_freq=error_freq,
                                           desmooth=desmooth, seed=seed)
        out = adata.copy() if copy else adata
        names = signature_names(K)
        W = np.full((adata.n_obs, K), np.nan, np.float32)
        W[keep] = res.weights
        out.obsm[f"X_{key_added}"] = W
        out.varm[f"{key_added}_signatures"] = res.signatures.T.astype(np.float32)
        dom = np.full(adata.n_obs, None, object)
        dom[keep] = np.asarray(names, object)[res.weights.argmax(axis=1)]
        out.obs[f"{key_added}_domain"] = pd.Categorical(dom, categories=names)
        rec = provenance("nnmf" if kernel is not None else "kl-nmf", params)
        rec.update({
            "signature_names": names,
            "lengthscale": float("nan") if kernel is None else kernel.lengthscale,
            "mean_neighbors": float("nan") if kernel is None else kernel.mean_neighbors,
            "gkl": res.gkl, "gkl_trace": res.trace, "initial_gkl": np.asarray(res.initial_gkl),
            "n_iter": res.n_iter, "converged": res.converged, "n_fitted_cells": int(keep.sum()),
            "filtered": filtered, "source": "Laursen et al. 2026, Genome Biol; ragnhildlaursen/NNMF@739ac09",
        })
        out.uns[key_added] = rec
        return out

    return run()


def nnmf(adata: ad.AnnData, n_components: int, *, copy: bool = False, **kwargs) -> ad.AnnData | None:
    """Neighbourhood NMF of a cell point cloud (Laursen et al. 2026): spatial gene programs.

    Cells x genes counts X ~ W H with generalized-KL multiplicative updates; every
    iteration each cell's factor proportions are smoothed over its spatial neighbours with
    the row-normalised kernel exp(-d^2 / l^2), cut at ``kernel_cutoff``. The update order,
    normalisation, stopping rule and defaults are the authors' R/C++ code's
    (:mod:`napari_spatial_nmf.core.nnmf`); the kernel is a sparse k-d tree graph, so there is
    no 50,000-cell batch limit. Without coordinates it is plain KL-NMF in the same order.

    Parameters
    ----------
    adata : anndata.AnnData
        Cells x genes counts (dense or sparse), coordinates (x, y[, z]) in µm in
        ``obsm[spatial_key]``.
    n_components : int
        K, the number of signatures.
    lengthscale : float, optional
        l in µm; default the mean distance to the 14th nearest neighbour (the R default).
        :func:`estimate_lengthscale` scans a grid.
    kernel_cutoff : float
        Kernel entries below it are zero (default 0.1: radius 1.517 l).
    slice_key : str, optional
        Column of ``obs``; cells of different slices/samples are never neighbours.
    spatial_key : str or None
        Key of the coordinates in ``obsm``. None, or a key that is absent, fits plain KL-NMF.
    layer : str, optional
        Counts from ``layers[layer]`` instead of ``X``.
    normalize : bool
        Scale each cell to sum G (the number of genes), the method's default.
    filter_cells : bool
        Leave out cells with zero counts and cells that repeat an earlier cell's
        coordinates (within a slice); they get NaN weights and no domain. False (default)
        raises on such cells instead.
    max_iter, tol, initial, small_iter, error_freq
        R defaults 1000, 1e-10, 3, 50, 10 (see :func:`napari_spatial_nmf.core.nnmf.iter_fit_nnmf`).
    desmooth : bool
        The R option ``not_sc``: one unsmoothed W step at the end (spot-level data).
    seed : int or None
        Seed of the random starts; a fixed seed gives identical results.
    key_added : str
        Results go to ``obsm[f"X_{key}"]`` (weights, (n_cells, K) float32, rows sum to the
        cell's normalised total), ``varm[f"{key}_signatures"]`` ((n_genes, K) float32, each
        signature sums to 1 over genes), ``obs[f"{key}_domain"]`` (argmax of the weights,
        categorical S1..SK) and ``uns[key]`` (parameters, seed, versions, l, mean
        neighbour count, GKL trace).
    copy : bool
        Return a copy with the results instead of adding keys to ``adata``.

    Returns
    -------
    anndata.AnnData or None

    Raises
    ------
    ValueError
        NaN, infinite or negative counts; all-zero cells or genes; coordinates that do not
        match the cells; duplicate coordinates (unless ``filter_cells``); l <= 0; K out of
        range.
    KeyError
        A missing ``slice_key`` or ``layer``.
    """
    out = drain(iter_nnmf(adata, n_components, copy=copy, **kwargs))
    return out if copy else None


def iter_estimate_lengthscale(adata: ad.AnnData, *, lengthscales=None, max_avg_nn: int = 20, n_grid: int = 10,
                              slice_key: str | None = None, spatial_key: str = "spatial",
                              layer: str | None = None, filter_cells: bool = False,
                              kernel_cutoff: float = 0.1) -> Generator[Progress, None, pd.DataFrame]:
    """Generator twin of :func:`estimate_lengthscale`: checks at once, one progress step per candidate."""
    from .core import nnmf as _nn

    _, X, coords, slices, _ = _cell_input(adata, layer=layer, spatial_key=spatial_key, slice_key=slice_key,
                                          filter_cells=filter_cells)
    if coords is None:
        raise ValueError(f"estimate_lengthscale needs cell coordinates in obsm[{spatial_key!r}].")
    grid = (_nn.lengthscale_grid(coords, slices, max_avg_nn=max_avg_nn, n_grid=n_grid)
            if lengthscales is None else np.asarray(lengthscales, dtype=np.float64))
    if (grid <= 0).any():
        raise ValueError("Candidate lengthscales must be positive (µm).")
    def run():
        P = _nn.proportions(X)
        rows = []
        for i, ls in enumerate(grid):
            err, nn = _nn.smoothing_error(P, coords, float(ls), slices, kernel_cutoff)
            rows.append((float(ls), err, nn))
            yield Progress(i + 1, len(grid), f"lengthscale {ls:.3g} µm: error {err:.4g}")
        return pd.DataFrame(rows, columns=["lengthscale", "error", "mean_neighbors"])

    return run()


def estimate_lengthscale(adata: ad.AnnData, **kwargs) -> tuple[float, pd.DataFrame]:
    """Choose the NNMF lengthscale by leave-one-out smoothing error (``estimate_lengthscale``, R/utils.R).

    For each candidate l (default: 10 values from the smallest cell-cell distance to the
    mean distance to the ``max_avg_nn``-th neighbour), the proportions P = X / rowsums are
    predicted from each cell's neighbours with the kernel exp(-d^2/l^2) (cutoff 0.1,
    diagonal excluded, rows normalised); the error is ``mean((P - S P)^2)``.

    Returns
    -------
    (float, pandas.DataFrame)
        The l (µm) with the lowest error, and the curve: columns ``lengthscale`` (µm),
        ``error``, ``mean_neighbors``.

    Raises
    ------
    ValueError
        No coordinates; the checks of :func:`nnmf`.
    """
    curve = drain(iter_estimate_lengthscale(adata, **kwargs))
    return float(curve["lengthscale"].iloc[int(curve["error"].to_numpy().argmin())]), curve


def nnmf_top_genes(adata: ad.AnnData, key: str = "nnmf", n_top: int = 10) -> pd.DataFrame:
    """Top genes per signature with the NNMF package's ``topfeatures`` score (true second maximum).

    ``score_gk = h_gk log(1 + h_gk / (mm_gk + 1e-10))``, mm the gene's largest loading on
    the other signatures (its second largest for its own top signature); see
    :func:`napari_spatial_nmf.core.nnmf.top_features` for the R code's bug we do not copy.

    Returns
    -------
    pandas.DataFrame
        Columns ``signature``, ``rank`` (1 = best), ``gene``, ``score``, ``loading``.
    """
    from .core.nnmf import top_features

    if f"{key}_signatures" not in adata.varm:
        raise KeyError(f"No NNMF result {key!r}: run tl.nnmf(adata, K, key_added={key!r}) first.")
    H = np.asarray(adata.varm[f"{key}_signatures"], dtype=np.float64).T
    scores = top_features(H)
    names = list(adata.uns[key]["signature_names"])
    rows = []
    for k, name in enumerate(names):
        order = np.argsort(-scores[k], kind="stable")[:n_top]
        for r, g in enumerate(order):
            rows.append((name, r + 1, str(adata.var_names[g]), float(scores[k, g]), float(H[k, g])))
    return pd.DataFrame(rows, columns=["signature", "rank", "gene", "score", "loading"])


def spatially_variable_genes(adata: ad.AnnData, *, lengthscale: float | None = None, slice_key: str | None = None,
                             spatial_key: str = "spatial", layer: str | None = None, filter_cells: bool = False,
                             kernel_cutoff: float = 0.1, key_added: str = "svg_score",
                             copy: bool = False) -> ad.AnnData | None:
    """Spatial-variability score per gene: leave-one-out kernel-smoothing error / mean proportion.

    ``colMeans((P - S P)^2) / colMeans(P)`` (the NNMF package's removed ``spatial_data()``,
    commit 71c612d); lower = better predicted by the neighbours = more spatially variable.
    Writes ``var[key_added]`` and ``var[f"{key_added}_rank"]`` (1 = most variable).
    """
    from .core import nnmf as _nn

    _, X, coords, slices, _ = _cell_input(adata, layer=layer, spatial_key=spatial_key, slice_key=slice_key,
                                          filter_cells=filter_cells)
    if coords is None:
        raise ValueError(f"spatially_variable_genes needs cell coordinates in obsm[{spatial_key!r}].")
    ls = _nn.default_lengthscale(coords, slices) if lengthscale is None else float(lengthscale)
    score = _nn.svg_score(_nn.proportions(X), coords, ls, slices, kernel_cutoff)
    out = adata.copy() if copy else adata
    out.var[key_added] = score
    out.var[f"{key_added}_rank"] = pd.Series(score, index=out.var_names).rank(method="first").astype(int).to_numpy()
    out.uns[key_added] = provenance("svg_score", {"lengthscale": ls, "kernel_cutoff": kernel_cutoff,
                                                  "slice_key": slice_key, "layer": layer})
    return out if copy else None


# --------------------------------------------------------------------------- osNMF analysis suite

def _volume_result(adata: ad.AnnData, key: str):
    if f"X_{key}" not in adata.obsm or f"{key}_coefficients" not in adata.varm:
        raise KeyError(f"No NMF result {key!r} in the AnnData: run tl.nmf(adata, K, key_added={key!r}) first.")
    W = np.asarray(adata.obsm[f"X_{key}"], dtype=np.float64)
    H = np.asarray(adata.varm[f"{key}_coefficients"], dtype=np.float64).T
    names = list(adata.uns[key]["pattern_names"]) if key in adata.uns else pattern_names(W.shape[1])
    return W, H, names


def _annotation_on_grid(adata: ad.AnnData, annotation) -> np.ndarray:
    """The annotation as an array, checked to be on the AnnData's grid (ValueError if not)."""
    ann = np.asarray(annotation)
    grid = _grid.grid_of(adata)
    if ann.shape != tuple(grid.shape):
        raise ValueError(f"The annotation has shape {ann.shape} but the patterns are on a {tuple(grid.shape)} grid: "
                         "use the annotation of the same grid (resample one of them).")
    return ann


def _store_region_combinations(adata, W, names, labels, ontology, *, key, level, max_size, score, n_top,
                               all_singles=False):
    """Run :func:`core.atlas_stats.region_combinations` on the pattern volumes and store the
    counts and the best combinations in ``uns[f"{key}_region_combinations"]``."""
    from .core import atlas_stats as _A

    table, counts = _A.region_combinations(_grid.to_volume(adata, W.astype(np.float32)), labels, ontology,
                                           names=names, max_size=max_size, score=score, n_top=n_top,
                                           all_singles=all_singles)
    adata.uns[f"{key}_region_combinations"] = {
        **provenance("region_combinations", {"key": key, "level": str(level), "max_size": max_size,
                                             "score": score, "n_top": n_top}),
        **counts, "best": _A.best_combinations(table)}
    return table, counts


def region_combinations(adata: ad.AnnData, annotation: np.ndarray, ontology: Ontology, *, key: str = "nmf",
                        level=None, max_size: int = 3, score: str = "pearson", n_top: int = 20) -> pd.DataFrame:
    """Best single structure, contiguous pair and triple per principal pattern (osNMF).

    Exhaustive and exact from per-structure sums
    (:func:`napari_spatial_nmf.core.atlas_stats.region_combinations`); structures touch
    if a 6-connected binary dilation of one meets the other. ``level``: None (the
    annotation's own structures), "coarse" (the 12 major divisions), "medium" (their
    children, the osNMF medium level), an ontology depth, or a list of structures. Stores
    the best combination per pattern and the counts of
    structures, pairs and triples in ``uns[f"{key}_region_combinations"]``.

    Returns
    -------
    pandas.DataFrame
        The ranked table (``pattern, size, rank, structures, ids, score, n_voxels``).

    Raises
    ------
    ValueError
        Annotation and patterns on different grids; an ontology without the level; an
        empty mask. KeyError: no NMF result ``key``.
    """
    from .core import atlas_stats as _A

    W, _, names = _volume_result(adata, key)
    labels = _A.structure_labels(_annotation_on_grid(adata, annotation), ontology, level)
    table, _ = _store_region_combinations(adata, W, names, labels, ontology, key=key, level=level,
                                          max_size=max_size, score=score, n_top=n_top)
    return table


def pca_baseline(adata: ad.AnnData, n_components: int, *, layer: str | None = None) -> tuple:
    """PCA at the same K as an NMF result, the osNMF comparison (genes as samples; NaN as 0).

    Returns ``(patterns (n_obs, K), loadings (K, n_genes), mean (n_obs,))``
    (:func:`napari_spatial_nmf.core.atlas_stats.pca_patterns`); pass it as ``pca=`` to
    :func:`morans_i` and :func:`reconstruction_accuracy` to fit it once.
    """
    from .core import atlas_stats as _A

    return _A.pca_patterns(np.nan_to_num(_matrix(adata, layer).astype(np.float64)), n_components)


def morans_i(adata: ad.AnnData, *, key: str = "nmf", layer: str | None = None, compare_pca: bool = True,
             threshold: float = 0.0, pca: tuple | None = None) -> pd.DataFrame:
    """Moran's I of each principal pattern's hard map, rook adjacency in the mask (osNMF).

    Each voxel goes to its largest pattern if that exceeds ``threshold``; Moran's I of each
    pattern's 0/1 map with sparse rook (face-neighbour) weights among the mask voxels
    (:func:`napari_spatial_nmf.core.atlas_stats.morans_i`; no dense voxels^2 matrix, no
    downsampling). With ``compare_pca``, the same for PCA patterns at the same K (hard
    map of components > 0, as osNMF's ``runManyMoranI``) from the same data.

    Returns
    -------
    pandas.DataFrame
        ``pattern, morans_i`` (and ``pca_morans_i``); the mean is the paper's summary
        (osNMF tutorial, K=11: 0.577 at half resolution).
    """
    from .core import atlas_stats as _A

    W, _, names = _volume_result(adata, key)
    grid = _grid.grid_of(adata)
    mask = np.zeros(int(np.prod(grid.shape)), bool)
    mask[grid.voxel] = True
    wts = _A.rook_weights(mask.reshape(grid.shape))
    perm = np.argsort(grid.voxel)  # rook_weights numbers the mask voxels in C order
    out = pd.DataFrame({"pattern": names,
                        "morans_i": _A.morans_i(_A.hard_map_indicators(W[perm], threshold).astype(float), wts)})
    if compare_pca:
        pcs, _, _ = pca if pca is not None else pca_baseline(adata, W.shape[1], layer=layer)
        out["pca_morans_i"] = _A.morans_i(_A.hard_map_indicators(pcs[perm], 0.0).astype(float), wts)
    adata.uns[f"{key}_morans_i"] = {**provenance("morans_i", {"key": key, "threshold": threshold,
                                                              "compare_pca": compare_pca}), "table": out}
    return out


def reconstruction_accuracy(adata: ad.AnnData, *, key: str = "nmf", layer: str | None = None,
                            compare_pca: bool = True, pca: tuple | None = None) -> pd.DataFrame:
    """Pearson r per gene between the data and its reconstruction W H (osNMF
    ``geneReconstructionAcccuracy``), and PCA at the same K for comparison.

    Writes ``var[f"{key}_reconstruction_r"]`` (and ``var["pca_reconstruction_r"]``) and
    returns them as a DataFrame indexed by gene.
    """
    from .core import atlas_stats as _A

    W, H, _ = _volume_result(adata, key)
    X = np.nan_to_num(_matrix(adata, layer).astype(np.float64))
    out = pd.DataFrame({f"{key}_reconstruction_r": _A.reconstruction_accuracy(X, W @ H)}, index=adata.var_names)
    if compare_pca:
        pcs, loadings, mean = pca if pca is not None else pca_baseline(adata, W.shape[1], layer=layer)
        # genes are the PCA samples: gene j over the voxels ~ mean + pcs @ loadings[:, j]
        out["pca_reconstruction_r"] = _A.reconstruction_accuracy(X, mean[:, None] + pcs @ loadings)
    for c in out.columns:
        adata.var[c] = out[c].to_numpy()
    return out


def marker_genes(adata: ad.AnnData, *, key: str = "nmf", n_top: int = 10) -> pd.DataFrame:
    """osNMF marker genes per pattern: genes whose largest coefficient is the pattern, ranked by
    the importance a_kj / sum_k a_kj. Columns ``pattern, rank, gene, importance, coefficient``."""
    from .core import atlas_stats as _A

    _, H, names = _volume_result(adata, key)
    return _A.marker_genes(H, list(adata.var_names), names, n_top=n_top)


def coexpression_networks(adata: ad.AnnData, *, key: str = "nmf", n_genes: int = 20, rule: str = "paper") -> dict:
    """Spatial gene co-expression network per pattern (networkx.Graph), keyed by pattern name.

    Nodes: the pattern's ``n_genes`` most important genes; edges: the top 5% of pairwise
    Pearson correlations of their reconstructed volumes (``rule="paper"``) or all r > 0
    (``rule="reference"``, the osNMF tutorial code). See
    :func:`napari_spatial_nmf.core.atlas_stats.coexpression_network`.
    """
    from .core import atlas_stats as _A

    W, H, names = _volume_result(adata, key)
    n_genes = min(n_genes, adata.n_vars)
    if n_genes < 2:
        raise ValueError("A co-expression network needs at least 2 genes.")
    return {name: _A.coexpression_network(W, H, list(adata.var_names), k, n_genes=n_genes, rule=rule)
            for k, name in enumerate(names)}


def imputation_holdout(adata: ad.AnnData, *, fraction: float = 0.05, n_neighbors: int = 6, seed: int = 0,
                       layer: str | None = None) -> pd.DataFrame:
    """Hold-out check of :func:`impute_knn` per gene: hide ``fraction`` of the measured voxels,
    impute them, report mean absolute error and Pearson r (columns ``gene, n_held_out, mae, r,
    mean_value``). The osNMF paper reports this check for its k-NN imputation."""
    from .core import atlas_stats as _A

    if "spatial" not in adata.obsm:
        raise ValueError("imputation_holdout needs coordinates in adata.obsm['spatial'].")
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1); got {fraction!r}.")
    X = _matrix(adata, layer)
    res = _A.imputation_holdout(X, np.asarray(adata.obsm["spatial"]), fraction=fraction,
                                n_neighbors=n_neighbors, seed=seed)
    res.insert(0, "gene", np.asarray(adata.var_names)[res.pop("gene_index").to_numpy()])
    return res


def iter_osnmf_suite(adata: ad.AnnData, annotation: np.ndarray | None = None, ontology: Ontology | None = None, *,
                     key: str = "nmf", layer: str | None = None, level=None, score: str = "pearson",
                     n_top: int = 20, n_marker_genes: int = 20, n_network_genes: int = 20,
                     network_rule: str = "paper", compare_pca: bool = True) -> Generator[Progress, None, dict]:
    """All osNMF read-outs of a volume NMF result, one step per yield (Cancel between steps).

    Steps: marker genes (:func:`marker_genes`); reconstruction accuracy and Moran's I,
    each beside PCA at the same K fitted once (:func:`pca_baseline`); a co-expression
    network per pattern (:func:`coexpression_networks`); with an atlas, the region
    combinations (:func:`region_combinations`), keeping every single structure of the
    level (the pattern × structure bubble chart). Inputs are
    checked before the first step: a missing result, an annotation on another grid or an
    unknown level raise before anything runs.

    Returns
    -------
    dict
        ``marker_genes, reconstruction_accuracy, morans_i, region_combinations``
        (DataFrames; the last None without an atlas; all its ``size == 1`` rows), ``labels``
        (the annotation relabelled at ``level``, or None), ``structure_order`` (the
        ontology's structure ids in its own order, for the chart's columns), ``networks``
        ({pattern: networkx.Graph}, empty with fewer than 3 genes), ``counts`` (structures,
        pairs, triples) and ``params`` (the call's parameters, versions, time).
    """
    from .core import atlas_stats as _A

    W, _, names = _volume_result(adata, key)
    labels = None
    if annotation is not None:
        if ontology is None:
            raise ValueError("Region combinations need the atlas ontology with the annotation.")
        labels = _A.structure_labels(_annotation_on_grid(adata, annotation), ontology, level)
    if network_rule not in ("paper", "reference"):
        raise ValueError(f"network_rule must be 'paper' or 'reference'; got {network_rule!r}.")
    if score not in ("pearson", "dice"):
        raise ValueError(f"score must be 'pearson' or 'dice'; got {score!r}.")
    rec = provenance("osnmf_suite", {"key": key, "layer": layer, "level": str(level), "score": score,
                                     "n_top": n_top, "n_marker_genes": n_marker_genes,
                                     "n_network_genes": n_network_genes, "network_rule": network_rule})
    out = {"params": rec, "region_combinations": None, "counts": {}, "networks": {},
           "labels": labels, "structure_order": None if ontology is None else [int(i) for i in ontology.table.index]}
    total = 5 if labels is not None else 4
    yield Progress(0, total, "marker genes")
    out["marker_genes"] = marker_genes(adata, key=key, n_top=n_marker_genes)
    yield Progress(1, total, "PCA at the same K and reconstruction accuracy")
    pca = pca_baseline(adata, W.shape[1], layer=layer) if compare_pca else None
    out["reconstruction_accuracy"] = reconstruction_accuracy(adata, key=key, layer=layer, pca=pca,
                                                             compare_pca=compare_pca)
    yield Progress(2, total, "Moran's I")
    out["morans_i"] = morans_i(adata, key=key, layer=layer, pca=pca, compare_pca=compare_pca)
    yield Progress(3, total, "co-expression networks")
    if adata.n_vars >= 3:
        out["networks"] = coexpression_networks(adata, key=key, n_genes=n_network_genes, rule=network_rule)
    if labels is not None:
        yield Progress(4, total, "region combinations (singles, contiguous pairs and triples)")
        table, counts = _store_region_combinations(adata, W, names, labels, ontology, key=key, level=level,
                                                   max_size=3, score=score, n_top=n_top, all_singles=True)
        out.update(region_combinations=table, counts=counts)
    yield Progress(total, total, "done")
    return out
