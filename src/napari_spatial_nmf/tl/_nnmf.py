"""Neighbourhood NMF of cell point clouds (Laursen et al. 2026) and its read-outs."""

from __future__ import annotations

import warnings
from collections.abc import Generator

import anndata as ad
import numpy as np
import pandas as pd

from ..core import nnmf as _nn
from ..core._progress import Progress
from ..core._validation import check_int, check_n_components, check_positive
from ._common import blocking, check_adata, signature_names, store_result, stored_matrix, target, tool


def spatial_unit(adata: ad.AnnData) -> str:
    """The unit of ``obsm["spatial"]``: ``uns["spatial_unit"]`` if the data say, else
    "coordinate units" (never µm by assumption).
    """
    unit = adata.uns.get("spatial_unit")
    return str(unit) if unit is not None else "coordinate units"


def cell_input(adata: ad.AnnData, *, layer, spatial_key, slice_key, filter_cells: bool, need_coords: bool = False):
    """Check a cell AnnData for the NNMF tools.

    Returns ``(keep, X, coords, slices, filtered)``: the mask of cells fitted, their counts
    as CSR float64 (one copy), coordinates (or None with ``spatial_key=None``), slice labels
    (or None) and the numbers of cells left out.

    Raises
    ------
    KeyError
        ``spatial_key`` not in ``obsm`` (pass None for plain KL-NMF), ``slice_key`` not in
        ``obs``, a missing ``layer``.
    ValueError
        Bad counts or coordinates (see :func:`napari_spatial_nmf.core.nnmf.check_counts`),
        slice labels with missing values.
    """
    check_adata(adata)
    X = stored_matrix(adata, layer)
    coords = None
    if spatial_key is not None:
        if spatial_key not in adata.obsm:
            raise KeyError(f"No obsm[{spatial_key!r}] with cell coordinates (obsm has {list(adata.obsm)}). Store "
                           "x, y[, z] there, name the key with spatial_key=..., or pass spatial_key=None to fit "
                           "plain KL-NMF without space.")
        coords = np.asarray(adata.obsm[spatial_key], dtype=np.float64)
        if coords.ndim != 2 or coords.shape[1] not in (2, 3):
            raise ValueError(f"obsm[{spatial_key!r}] must be (n_cells, 2 or 3) coordinates; got {coords.shape}.")
        if coords.shape[0] != X.shape[0]:
            raise ValueError(f"obsm[{spatial_key!r}] has {coords.shape[0]} rows but X has {X.shape[0]} cells.")
    elif need_coords:
        raise ValueError("This tool needs cell coordinates: pass spatial_key (default 'spatial').")
    slices = None
    if slice_key is not None:
        if slice_key not in adata.obs:
            raise KeyError(f"slice_key {slice_key!r} is not a column of adata.obs "
                           f"(columns: {list(adata.obs.columns)}).")
        col = adata.obs[slice_key]
        if col.isna().any():
            raise ValueError(f"obs[{slice_key!r}] has {int(col.isna().sum())} missing values: every cell needs "
                             "its slice (fill them or drop those cells).")
        slices = col.astype(str).to_numpy()
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
        if slices is None:
            warn_overlapping_sections(adata, spatial_key)
    return keep, X, coords, slices, {"zero_count_cells": n_zero, "duplicate_coordinate_cells": n_dup}


SECTION_WORDS = ("slice", "section", "sample", "batch", "replicate", "library", "donor", "fov_group")


def warn_overlapping_sections(adata: ad.AnnData, spatial_key: str) -> None:
    """Warn when an obs column looks like a section label and its sections' coordinates
    overlap: without ``slice_key`` their cells would be treated as neighbours.
    """
    C = np.asarray(adata.obsm[spatial_key], dtype=np.float64)[:, :2]
    for col in adata.obs.columns:
        if not any(w in str(col).lower() for w in SECTION_WORDS):
            continue
        groups = adata.obs[col].astype(str).to_numpy()
        names = pd.unique(groups)
        if not 2 <= len(names) <= 64:
            continue
        boxes = [(C[groups == g].min(axis=0), C[groups == g].max(axis=0)) for g in names]
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                lo = np.maximum(boxes[i][0], boxes[j][0])
                hi = np.minimum(boxes[i][1], boxes[j][1])
                inter = float(np.prod(np.clip(hi - lo, 0, None)))
                small = min(float(np.prod(b[1] - b[0])) for b in (boxes[i], boxes[j]))
                if small > 0 and inter > 0.5 * small:
                    warnings.warn(f"obs[{col!r}] has {len(names)} sections whose coordinates overlap (e.g. "
                                  f"{names[i]!r} and {names[j]!r}); without slice_key={col!r} cells of different "
                                  "sections are treated as neighbours.", UserWarning, stacklevel=5)
                    return


@tool
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
    random_state: int | None = 0,
    key_added: str = "nnmf",
    copy: bool = False,
) -> Generator[Progress, None, ad.AnnData]:
    """Neighbourhood NMF of a cell point cloud (Laursen et al. 2026): spatial gene programs.

    Cells x genes counts X ~ W H with generalized-KL multiplicative updates; every
    iteration each cell's factor proportions are smoothed over its spatial neighbours with
    the row-normalised kernel exp(-d^2 / l^2), cut at ``kernel_cutoff``. The update order,
    normalisation, stopping rule and defaults are the authors' R/C++ code's
    (:mod:`napari_spatial_nmf.core.nnmf`); the kernel is a sparse k-d tree graph, so there is
    no 50,000-cell batch limit.

    Parameters
    ----------
    adata : anndata.AnnData
        Cells x genes counts (dense or sparse), coordinates (x, y[, z]) in
        ``obsm[spatial_key]`` (unit: ``uns["spatial_unit"]``, e.g. µm).
    n_components : int
        K, the number of signatures.
    lengthscale : float, optional
        l in the coordinates' unit; default the mean distance to the 14th nearest
        neighbour (the R default). :func:`estimate_lengthscale` scans a grid.
    kernel_cutoff : float
        Kernel entries below it are zero (default 0.1: radius 1.517 l).
    slice_key : str, optional
        Column of ``obs``; cells of different slices/samples are never neighbours.
    spatial_key : str or None
        Key of the coordinates in ``obsm``. None fits plain KL-NMF in the same order (a
        key that is absent raises, so a misspelt key never drops space silently).
    layer : str, optional
        Counts from ``layers[layer]`` instead of ``X``.
    normalize : bool
        Scale each cell to sum G (the number of genes), the method's default.
    filter_cells : bool
        Leave out cells with zero counts and cells that repeat an earlier cell's
        coordinates (within a slice); they get NaN weights and no domain. False (default)
        raises on such cells instead.
    max_iter, tol, initial, small_iter, error_freq : int, float, int, int, int
        R defaults 1000, 1e-10, 3, 50, 10 (:func:`napari_spatial_nmf.core.nnmf.iter_fit_nnmf`).
    desmooth : bool
        The R option ``not_sc``: one unsmoothed W step at the end (spot-level data).
    random_state : int or None
        Seed of the random starts; a fixed seed gives identical results.
    key_added : str
        Results go to ``obsm[f"X_{key}"]`` (weights, (n_cells, K) float32, rows sum to the
        cell's normalised total), ``varm[f"{key}_signatures"]`` ((n_genes, K) float32, each
        signature sums to 1 over genes), ``obs[f"{key}_domain"]`` (argmax of the weights,
        categorical S1..SK) and ``uns[key]`` (parameters, versions, l, mean neighbour count,
        GKL trace, why the fit stopped).
    copy : bool
        Return a copy with the results instead of adding keys to ``adata``.

    Returns
    -------
    anndata.AnnData or None
        ``nnmf``: the copy if ``copy=True``, else None. ``iter_nnmf``: a generator of
        :class:`~napari_spatial_nmf.core.Progress` returning the AnnData with the results.

    Raises
    ------
    ValueError
        NaN, infinite or negative counts; all-zero cells or genes; coordinates that do not
        match the cells; duplicate coordinates (unless ``filter_cells``); l <= 0; K out of
        range; a kernel that would not fit in memory (the message gives the estimate).
    KeyError
        A missing ``spatial_key``, ``slice_key`` or ``layer``.
    """
    keep, X, coords, slices, filtered = cell_input(adata, layer=layer, spatial_key=spatial_key,
                                                   slice_key=slice_key, filter_cells=filter_cells)
    K = check_n_components(n_components, *X.shape)
    if lengthscale is not None:
        lengthscale = check_positive(lengthscale, "lengthscale")
    if not 0 < kernel_cutoff < 1:
        raise ValueError(f"kernel_cutoff must be in (0, 1); got {kernel_cutoff!r}.")
    for name, v in (("max_iter", max_iter), ("error_freq", error_freq), ("initial", initial),
                    ("small_iter", small_iter)):
        check_int(v, name, minimum=0 if name in ("initial", "small_iter") else 1)
    unit = spatial_unit(adata)
    if coords is not None:
        ls = _nn.resolve_lengthscale(coords, lengthscale, slices, unit)
        _nn.check_kernel_memory(coords, ls, kernel_cutoff, slices, unit=unit)
    _nn.warn_if_not_counts(X)
    params = {"n_components": K, "lengthscale": lengthscale, "kernel_cutoff": float(kernel_cutoff),
              "slice_key": slice_key, "spatial_key": spatial_key, "layer": layer, "normalize": bool(normalize),
              "filter_cells": bool(filter_cells), "max_iter": int(max_iter), "tol": float(tol),
              "initial": int(initial), "small_iter": int(small_iter), "error_freq": int(error_freq),
              "desmooth": bool(desmooth), "random_state": random_state, "n_obs": adata.n_obs,
              "n_genes": adata.n_vars, "spatial_unit": unit}
    total = int(initial) * int(small_iter) + int(max_iter)
    yield Progress(0, total, f"NNMF, K = {K}, {X.shape[0]:,} cells x {X.shape[1]:,} genes")
    Xn = _nn.normalize_cells(X) if normalize else X
    kernel = None
    if coords is not None:
        kernel = _nn.spatial_kernel(coords, ls, kernel_cutoff, slices)
        yield Progress(0, total, f"kernel: lengthscale {ls:.3g} {unit}, "
                                 f"{kernel.mean_neighbors:.1f} neighbours per cell")
    res = yield from _nn.iter_fit_nnmf(Xn, K, None if kernel is None else kernel.S, max_iter=max_iter, tol=tol,
                                       initial=initial, small_iter=small_iter, error_freq=error_freq,
                                       desmooth=desmooth, random_state=random_state)
    names = signature_names(K)
    W = np.full((adata.n_obs, K), np.nan, np.float32)
    W[keep] = res.weights
    dom = np.full(adata.n_obs, None, object)
    dom[keep] = np.asarray(names, object)[res.weights.argmax(axis=1)]
    return store_result(target(adata, copy), key_added, "nnmf" if kernel is not None else "kl-nmf", params,
                 obsm={f"X_{key_added}": W}, varm={f"{key_added}_signatures": res.signatures.T.astype(np.float32)},
                 obs={f"{key_added}_domain": pd.Categorical(dom, categories=names)},
                 record={"signature_names": names,
                         "lengthscale": float("nan") if kernel is None else kernel.lengthscale,
                         "mean_neighbors": float("nan") if kernel is None else kernel.mean_neighbors,
                         "gkl": res.gkl, "gkl_trace": res.trace, "initial_gkl": np.asarray(res.initial_gkl),
                         "n_iter": res.n_iter, "converged": res.converged, "stop_reason": res.stop_reason,
                         "n_fitted_cells": int(keep.sum()), "filtered": filtered,
                         "source": "Laursen et al. 2026, Genome Biol; ragnhildlaursen/NNMF@739ac09"})


nnmf = blocking(iter_nnmf, "nnmf")


@tool
def iter_estimate_lengthscale(
    adata: ad.AnnData,
    *,
    lengthscales=None,
    max_avg_nn: int = 20,
    n_grid: int = 10,
    slice_key: str | None = None,
    spatial_key: str = "spatial",
    layer: str | None = None,
    filter_cells: bool = False,
    kernel_cutoff: float = 0.1,
) -> Generator[Progress, None, tuple[float, pd.DataFrame]]:
    """Choose the NNMF lengthscale by leave-one-out smoothing error (``estimate_lengthscale``, R/utils.R).

    For each candidate l (default: ``n_grid`` values from the smallest cell-cell distance
    to the mean distance to the ``max_avg_nn``-th neighbour), the proportions P = X /
    rowsums are predicted from each cell's neighbours with the kernel exp(-d^2/l^2)
    (cutoff 0.1, diagonal excluded, rows normalised; a cell without neighbours is
    predicted by its slice's mean, the R code's all-ones row); the error is
    ``mean((P - S P)^2)``. Memory stays bounded for any l: a kernel that would not fit is
    refused with its estimate before it is built.

    Parameters
    ----------
    adata : anndata.AnnData
        Cells x genes counts with coordinates in ``obsm[spatial_key]``.
    lengthscales : array-like of float, optional
        Candidates (coordinate units) instead of the default grid.
    max_avg_nn, n_grid : int
        The default grid's upper end (neighbour rank) and size (R: 20 and 10).
    slice_key, spatial_key, layer, filter_cells, kernel_cutoff
        As :func:`nnmf`.

    Returns
    -------
    (float, pandas.DataFrame)
        The l with the lowest error, and the curve: columns ``lengthscale``, ``error``,
        ``mean_neighbors``. The generator yields one step per candidate. A minimum at
        either end of the grid, or a flat curve, warns and says which way to extend it.

    Raises
    ------
    ValueError
        No coordinates; non-positive candidates; the checks of :func:`nnmf`.
    """
    _, X, coords, slices, _ = cell_input(adata, layer=layer, spatial_key=spatial_key, slice_key=slice_key,
                                         filter_cells=filter_cells, need_coords=True)
    if lengthscales is None:
        grid = _nn.lengthscale_grid(coords, slices, max_avg_nn=check_int(max_avg_nn, "max_avg_nn", minimum=1),
                                    n_grid=check_int(n_grid, "n_grid", minimum=2))
    else:
        grid = np.array([check_positive(v, "each candidate lengthscale") for v in np.atleast_1d(lengthscales)])
        if grid.size == 0:
            raise ValueError("lengthscales is empty: give at least one candidate, or None for the default grid.")
    unit = spatial_unit(adata)
    for v in grid:
        _nn.resolve_lengthscale(coords, float(v), slices, unit)
    _nn.check_kernel_memory(coords, float(grid.max()), kernel_cutoff, slices, unit=unit)
    yield Progress(0, len(grid), f"scanning {len(grid)} lengthscales, {grid[0]:.3g}–{grid[-1]:.3g} {unit}")
    P = _nn.proportions(X)
    rows = []
    for i, ls in enumerate(grid):
        err, nn = _nn.smoothing_error(P, coords, float(ls), slices, kernel_cutoff)
        rows.append((float(ls), err, nn))
        yield Progress(i + 1, len(grid), f"lengthscale {ls:.3g} {unit}: error {err:.4g}, {nn:.1f} neighbours")
    curve = pd.DataFrame(rows, columns=["lengthscale", "error", "mean_neighbors"])
    best = int(curve["error"].to_numpy().argmin())
    _warn_grid_edge(curve, best, unit)
    return float(curve["lengthscale"].iloc[best]), curve


def _warn_grid_edge(curve: pd.DataFrame, best: int, unit: str) -> None:
    err = curve["error"].to_numpy()
    if len(err) > 2 and (err.max() - err.min()) <= 1e-3 * abs(err.max()):
        warnings.warn("The smoothing error is flat over the lengthscale grid (it varies by less than 0.1 %): the "
                      "data do not choose a lengthscale. Try a wider grid (lengthscales=...).", UserWarning,
                      stacklevel=4)
    elif best == 0:
        warnings.warn(f"The lowest error is at the smallest candidate lengthscale ({curve['lengthscale'].iloc[0]:.3g} "
                      f"{unit}): extend the grid towards smaller values.", UserWarning, stacklevel=4)
    elif best == len(err) - 1:
        warnings.warn(f"The lowest error is at the largest candidate lengthscale ({curve['lengthscale'].iloc[-1]:.3g} "
                      f"{unit}): extend the grid towards larger values (max_avg_nn=...).", UserWarning, stacklevel=4)


estimate_lengthscale = blocking(iter_estimate_lengthscale, "estimate_lengthscale")


def nnmf_top_genes(adata: ad.AnnData, key: str = "nnmf", n_top: int = 10) -> pd.DataFrame:
    """Top genes per signature with the NNMF package's ``topfeatures`` score (true second maximum).

    ``score_gk = h_gk log(1 + h_gk / (mm_gk + 1e-10))``, mm the gene's largest loading on
    the other signatures (its second largest for its own top signature); see
    :func:`napari_spatial_nmf.core.nnmf.top_features` for the R code's bug we do not copy.
    Genes whose score is negligible (below 1e-6 of the signature's best) are not listed.

    Parameters
    ----------
    adata : anndata.AnnData
        With an NNMF result (``varm[f"{key}_signatures"]``).
    key : str
        The result's ``key_added``.
    n_top : int
        Genes per signature at most.

    Returns
    -------
    pandas.DataFrame
        Columns ``signature``, ``rank`` (1 = best), ``gene``, ``score``, ``loading``.

    Raises
    ------
    KeyError
        No NNMF result under ``key``.
    """
    from ..core.nnmf import top_features

    if f"{key}_signatures" not in check_adata(adata).varm:
        raise KeyError(f"No NNMF result {key!r}: run tl.nnmf(adata, K, key_added={key!r}) first.")
    H = np.asarray(adata.varm[f"{key}_signatures"], dtype=np.float64).T
    scores = top_features(H)
    names = list(adata.uns[key]["signature_names"]) if key in adata.uns else signature_names(H.shape[0])
    rows = []
    for k, name in enumerate(names):
        order = np.argsort(-scores[k], kind="stable")[:n_top]
        floor = 1e-6 * max(float(scores[k, order[0]]), 0.0)
        for r, g in enumerate(o for o in order if scores[k, o] > floor):
            rows.append((name, r + 1, str(adata.var_names[g]), float(scores[k, g]), float(H[k, g])))
    return pd.DataFrame(rows, columns=["signature", "rank", "gene", "score", "loading"])


def spatially_variable_genes(
    adata: ad.AnnData,
    *,
    lengthscale: float | None = None,
    slice_key: str | None = None,
    spatial_key: str = "spatial",
    layer: str | None = None,
    filter_cells: bool = False,
    kernel_cutoff: float = 0.1,
    key_added: str = "svg_score",
    copy: bool = False,
) -> ad.AnnData | None:
    """Spatial-variability score per gene: leave-one-out kernel-smoothing error / mean proportion.

    ``colMeans((P - S P)^2) / colMeans(P)`` (the NNMF package's removed ``spatial_data()``,
    commit 71c612d); lower = better predicted by the neighbours = more spatially variable.

    Parameters
    ----------
    adata : anndata.AnnData
        Cells x genes counts with coordinates.
    lengthscale : float, optional
        l (coordinate units); default as :func:`nnmf`.
    slice_key, spatial_key, layer, filter_cells, kernel_cutoff
        As :func:`nnmf`.
    key_added : str
        Writes ``var[key_added]``, ``var[f"{key_added}_rank"]`` (1 = most variable) and
        ``uns[key_added]``.
    copy : bool
        Return a copy instead of adding keys.

    Returns
    -------
    anndata.AnnData or None

    Raises
    ------
    ValueError, KeyError
        As :func:`estimate_lengthscale`.
    """
    _, X, coords, slices, _ = cell_input(adata, layer=layer, spatial_key=spatial_key, slice_key=slice_key,
                                         filter_cells=filter_cells, need_coords=True)
    ls = _nn.resolve_lengthscale(coords, lengthscale, slices, spatial_unit(adata))
    _nn.check_kernel_memory(coords, ls, kernel_cutoff, slices, unit=spatial_unit(adata))
    score = _nn.svg_score(_nn.proportions(X), coords, ls, slices, kernel_cutoff)
    out = target(adata, copy)
    rank = pd.Series(score).rank(method="first").astype(int).to_numpy()
    params = {"lengthscale": ls, "kernel_cutoff": kernel_cutoff, "slice_key": slice_key, "layer": layer}
    store_result(out, key_added, "svg_score", params, var={key_added: score, f"{key_added}_rank": rank})
    return out if copy else None
