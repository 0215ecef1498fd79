"""Neighbourhood NMF (NNMF; Laursen et al. 2026, Genome Biology, doi:10.1186/s13059-025-03846-6).

Cells x genes counts X (n x G) ~ W H with generalized-KL (Poisson) multiplicative updates;
once per iteration each cell's factor *proportions* are replaced by a Gaussian-kernel
average over its spatial neighbours, and its total is kept. This module follows the
authors' R/C++ code (ragnhildlaursen/NNMF @739ac09, ``src/NMFspatial2.cpp`` and
``R/NNMFfunction.R``; ``methods-digest.md`` §1.3-§1.8):

* kernel ``S~_ij = exp(-d_ij^2 / l^2)`` (no factor 2, S~_ii = 1), entries below
  ``kernel_cutoff`` (0.1) set to zero, rows normalised to sum 1;
* default lengthscale ``l`` = mean distance to the 14th nearest neighbour (the R code's
  ``sort(dist)[15]`` counts the zero self-distance);
* update order of ``nmfspatial`` (see :func:`iter_fit_nnmf`), clamp at 1e-10, GKL with
  delta = 1e-6, stop when ``2 (D_old - D_new) / (0.1 + |2 D_new|) < tol`` checked every
  ``error_freq`` iterations, ``initial`` warm starts of ``small_iter`` plain KL iterations
  keeping the lowest GKL;
* cells are normalised to sum G (``normalize=True``), not 1e4, and not logged.

What differs, by design:

* The kernel is a sparse neighbour graph from a k-d tree (radius ``l sqrt(-ln cutoff)``),
  never the dense n x n matrix that limits the R package to 50,000 cells per batch. Cells
  of different slices are never neighbours (block-diagonal kernel), and no cell loses
  neighbours at an arbitrary batch edge.
* X stays sparse: the updates need ``X / (W H)`` only at the non-zeros of X. The GKL is
  computed over the non-zeros plus ``sum(W H)``; the R code's dense +1e-6 terms at the
  zero entries (each at most ``1e-6 log(mu / 1e-6)``) are left out.
* Random numbers come from numpy's generator, so runs are reproducible from ``random_state`` but
  not equal to R's.

The kernels are numba-compiled loops over the non-zeros, parallel over cells.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Generator
from dataclasses import dataclass, field

import numba
import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree
from sklearn.exceptions import ConvergenceWarning

from ._progress import Progress

CLAMP = 1e-10
_N_CHUNKS = 64  # static work split of the row loops (more chunks than threads balances uneven rows)
GKL_DELTA = 1e-6


# --------------------------------------------------------------------------- input

def check_counts(X, *, name: str = "X") -> sp.csr_matrix:
    """Check a cells x genes count matrix and return it as CSR float64 (a new object).

    Raises
    ------
    ValueError
        Not 2-D, NaN/inf, negative values, all-zero cells or genes (the message says how
        many and how to drop them).
    """
    if sp.issparse(X):
        M = sp.csr_matrix(X, dtype=np.float64, copy=True)
    else:
        A = np.asarray(X)
        if A.dtype.kind not in "fiub":
            raise ValueError(f"{name} must be numeric; got dtype {A.dtype}.")
        if A.ndim != 2:
            raise ValueError(f"{name} must be a 2-D cells x genes matrix; got shape {A.shape}.")
        M = sp.csr_matrix(A.astype(np.float64))
    if M.shape[0] == 0 or M.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {M.shape}).")
    if not np.isfinite(M.data).all():
        raise ValueError(f"{name} holds {int((~np.isfinite(M.data)).sum())} NaN or infinite values; "
                         "NNMF needs counts. Remove or fill them first.")
    if (M.data < 0).any():
        raise ValueError(f"{name} has {int((M.data < 0).sum())} negative values (min {M.data.min():g}); "
                         "NNMF models counts, which are non-negative. Pass raw counts, not scaled data.")
    M.eliminate_zeros()
    M.sort_indices()
    zero_cells = np.flatnonzero(np.diff(M.indptr) == 0)
    if zero_cells.size:
        raise ValueError(f"{zero_cells.size} cell(s) have no counts (first rows: {zero_cells[:5].tolist()}). "
                         "Drop them (adata[adata.X.sum(1) > 0]) or pass filter_cells=True.")
    zero_genes = np.flatnonzero(np.bincount(M.indices, minlength=M.shape[1]) == 0)
    if zero_genes.size:
        raise ValueError(f"{zero_genes.size} gene(s) have no counts in any cell (first columns: "
                         f"{zero_genes[:5].tolist()}). Drop them (adata[:, adata.X.sum(0) > 0]).")
    return M


def check_coordinates(coords, n_cells: int, groups=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Check cell coordinates (n, 2 or 3) in µm and optional slice labels.

    Raises
    ------
    ValueError
        Shape mismatch with the counts, NaN/inf, fewer than 2 dimensions, duplicate
        coordinates within a slice (the message says how many and how to filter).
    """
    C = np.asarray(coords, dtype=np.float64)
    if C.ndim != 2 or C.shape[1] not in (2, 3):
        raise ValueError(f"Coordinates must be (n_cells, 2) or (n_cells, 3); got shape {C.shape}.")
    if C.shape[0] != n_cells:
        raise ValueError(f"There are {C.shape[0]} coordinate rows but {n_cells} cells in the count "
                         "matrix: they must describe the same cells in the same order.")
    if not np.isfinite(C).all():
        raise ValueError(f"{int((~np.isfinite(C)).any(axis=1).sum())} cell(s) have NaN or infinite "
                         "coordinates; drop them first.")
    g = None
    if groups is not None:
        g = np.asarray(groups)
        if g.shape != (n_cells,):
            raise ValueError(f"The slice labels have shape {g.shape}; expected ({n_cells},).")
    dup = duplicated_cells(C, g)
    if dup.any():
        raise ValueError(f"{int(dup.sum())} cell(s) share their coordinates with an earlier cell of the same "
                         "slice (duplicated records?). A kernel over space cannot tell them apart: drop the "
                         "repeats (napari_spatial_nmf.core.nnmf.duplicated_cells) or pass filter_cells=True.")
    return C, g


def duplicated_cells(coords: np.ndarray, groups=None) -> np.ndarray:
    """Boolean (n,): True for a cell whose coordinates (within its slice) repeat an earlier cell's."""
    import pandas as pd

    df = pd.DataFrame(np.asarray(coords, dtype=np.float64))
    if groups is not None:
        df["_slice"] = np.asarray(groups)
    return df.duplicated(keep="first").to_numpy()


def normalize_cells(X: sp.csr_matrix) -> sp.csr_matrix:
    """The method's normalisation: each cell scaled to sum G (``sweep(X, 1, rowSums, "/") * G``)."""
    rs = np.asarray(X.sum(axis=1)).ravel()
    out = X.copy()
    out.data *= np.repeat(X.shape[1] / rs, np.diff(X.indptr))
    return out


# --------------------------------------------------------------------------- kernel

def _groups_index(n: int, groups) -> list[np.ndarray]:
    if groups is None:
        return [np.arange(n)]
    codes = np.unique(np.asarray(groups), return_inverse=True)[1].ravel()
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    return np.split(order, bounds)


def default_lengthscale(coords: np.ndarray, groups=None, n_neighbors: int = 14) -> float:
    """Mean distance (µm) to the 14th nearest neighbour: the R package's default lengthscale.

    ``mean(apply(sqrt(dist), 1, function(x) sort(x)[15]))`` in ``R/NNMFfunction.R`` (the
    sorted row starts with the zero self-distance). With slices, neighbours are searched
    within each slice and the mean is over all cells (R uses the first batch only).

    Raises
    ------
    ValueError
        A slice with fewer than ``n_neighbors + 1`` cells.
    """
    C = np.asarray(coords, dtype=np.float64)
    dists = []
    for idx in _groups_index(len(C), groups):
        if len(idx) <= n_neighbors:
            raise ValueError(f"A slice has {len(idx)} cells; the default lengthscale needs at least "
                             f"{n_neighbors + 1}. Pass lengthscale explicitly or merge small slices.")
        d, _ = cKDTree(C[idx]).query(C[idx], k=n_neighbors + 1)
        dists.append(d[:, n_neighbors])
    return float(np.concatenate(dists).mean())


MAX_LENGTHSCALE_EXTENTS = 100.0  # a lengthscale over this many times the tissue's extent erases all structure


def resolve_lengthscale(coords: np.ndarray, lengthscale: float | None, groups=None, unit: str = "units") -> float:
    """The kernel lengthscale to use: the given one (checked) or the data's default.

    Parameters
    ----------
    coords : numpy.ndarray, (n, 2 or 3)
        Cell coordinates.
    lengthscale : float or None
        The user's lengthscale; None for :func:`default_lengthscale`.
    groups : array-like, optional
        Slices (the default is computed within each).
    unit : str
        The coordinates' unit, for messages.

    Returns
    -------
    float

    Raises
    ------
    TypeError
        A lengthscale that is not a number.
    ValueError
        A non-positive or non-finite lengthscale; coordinates that span no distance (all
        cells at one point, or coordinates scaled to ~0); a lengthscale over 100 times the
        tissue's extent (every cell a neighbour of every other: no spatial structure left).
    """
    from ._validation import check_positive

    C = np.asarray(coords, dtype=np.float64)
    extent = float(np.linalg.norm(np.ptp(C, axis=0))) if len(C) else 0.0
    if lengthscale is None:
        ls = default_lengthscale(C, groups)
        if not np.isfinite(ls) or ls <= 0 or extent <= 0:
            raise ValueError(f"The cells' coordinates span {extent:g} {unit} and the mean distance to the 14th "
                             f"neighbour is {ls:g}: the default lengthscale cannot be computed. The coordinates are "
                             "all at one point or scaled to almost zero; rescale them (e.g. to µm).")
        return ls
    ls = check_positive(lengthscale, "lengthscale")
    if extent > 0 and ls > MAX_LENGTHSCALE_EXTENTS * extent:
        raise ValueError(f"lengthscale {ls:g} {unit} is over {MAX_LENGTHSCALE_EXTENTS:g} times the tissue's extent "
                         f"({extent:.4g} {unit}): every cell would be a neighbour of every other and the smoothing "
                         "would erase all spatial structure. Choose a lengthscale within the tissue (the default, the "
                         f"mean distance to the 14th neighbour, is {default_lengthscale(C, groups):.4g} {unit}).")
    return ls


@dataclass
class SpatialKernel:
    """Row-stochastic sparse smoothing matrix S (n x n, CSR float64) and its diagnostics.

    ``lonely`` lists the cells without any neighbour in a leave-one-out kernel
    (``include_self=False``); their rows of S are empty, and :func:`smooth_loo` predicts
    them by their slice's mean (the R code's all-ones row), without storing that row.
    """

    S: sp.csr_matrix
    lengthscale: float
    kernel_cutoff: float
    mean_neighbors: float  # mean non-zeros per row minus self (the R package's avg_nn)
    lonely: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    groups: np.ndarray | None = None


def neighbor_pairs(coords: np.ndarray, radius: float, groups=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i < j) of cells of the same slice within ``radius``: i, j, squared distance."""
    C = np.asarray(coords, dtype=np.float64)
    I, J = [], []
    for idx in _groups_index(len(C), groups):
        pairs = cKDTree(C[idx]).query_pairs(radius, output_type="ndarray")
        I.append(idx[pairs[:, 0]])
        J.append(idx[pairs[:, 1]])
    i = np.concatenate(I) if I else np.empty(0, np.int64)
    j = np.concatenate(J) if J else np.empty(0, np.int64)
    d2 = ((C[i] - C[j]) ** 2).sum(axis=1)
    return i, j, d2


KERNEL_BYTES_PER_NONZERO = 64  # pair arrays, COO triplets and the CSR while the kernel is built


def expected_neighbors(coords: np.ndarray, radius: float, groups=None, *, sample: int = 2000,
                       random_state: int = 0) -> float:
    """Mean number of cells (self included) within ``radius`` of a cell, estimated from a
    random sample of at most ``sample`` cells per slice (counts only, no pair lists).
    """
    C = np.asarray(coords, dtype=np.float64)
    rng = np.random.default_rng(random_state)
    total = 0.0
    for idx in _groups_index(len(C), groups):
        pick = idx if idx.size <= sample else rng.choice(idx, sample, replace=False)
        counts = cKDTree(C[idx]).query_ball_point(C[pick], radius, return_length=True)
        total += float(np.mean(counts)) * idx.size
    return total / max(len(C), 1)


def check_kernel_memory(coords: np.ndarray, lengthscale: float, kernel_cutoff: float = 0.1, groups=None, *,
                        unit: str = "coordinate units") -> float:
    """Refuse (before building it) a kernel whose estimated memory exceeds the limit.

    Returns the estimated mean number of neighbours per cell (self included).

    Raises
    ------
    napari_spatial_nmf.core._memory.MemoryLimitError
        With the estimate, the limit and what to change (a ValueError).
    """
    from ._memory import check_memory

    radius = lengthscale * np.sqrt(-np.log(kernel_cutoff))
    per_cell = expected_neighbors(coords, radius, groups)
    nnz = per_cell * len(coords)
    check_memory(nnz * KERNEL_BYTES_PER_NONZERO,
                 f"the spatial kernel at lengthscale {lengthscale:.4g} {unit} ({per_cell:,.0f} neighbours per cell, "
                 f"{nnz:.3g} non-zeros)",
                 "Choose a smaller lengthscale (the default is the mean distance to the 14th neighbour), or check "
                 "the unit of the coordinates.")
    return per_cell


def spatial_kernel(coords: np.ndarray, lengthscale: float, kernel_cutoff: float = 0.1,
                   groups=None, *, include_self: bool = True) -> SpatialKernel:
    """The NNMF smoothing kernel as a sparse matrix, built from a k-d tree.

    ``S~_ij = exp(-d_ij^2 / l^2)`` if it is at least ``kernel_cutoff``, else 0, then
    ``S = D^-1 S~`` (rows sum to 1). Exactly the R code's dense kernel
    (``methods-digest.md`` §1.4), restricted to pairs within the radius
    ``l sqrt(-ln cutoff)`` (1.517 l for 0.1) where it is non-zero.

    Parameters
    ----------
    coords : ndarray, (n, 2) or (n, 3)
        Cell coordinates (any unit; ``lengthscale`` in the same unit).
    lengthscale : float
        l, > 0.
    kernel_cutoff : float
        In (0, 1).
    groups : array-like, (n,), optional
        Slice / sample labels; cells of different slices are never neighbours.
    include_self : bool
        True for NNMF (S~_ii = 1). False gives the leave-one-out kernel of
        :func:`smoothing_error`; a cell without neighbours keeps an empty row and is listed
        in ``lonely`` (:func:`smooth_loo` predicts it by its slice's mean).

    Returns
    -------
    SpatialKernel

    Raises
    ------
    ValueError
        ``lengthscale <= 0`` or a cutoff outside (0, 1).
    """
    if not np.isfinite(lengthscale) or lengthscale <= 0:
        raise ValueError(f"lengthscale must be a positive distance; got {lengthscale!r}.")
    if not 0 < kernel_cutoff < 1:
        raise ValueError(f"kernel_cutoff must be in (0, 1); got {kernel_cutoff!r}.")
    n = len(coords)
    radius = lengthscale * np.sqrt(-np.log(kernel_cutoff))
    i, j, d2 = neighbor_pairs(coords, radius, groups)
    w = np.exp(-(d2 / lengthscale) / lengthscale)  # never squares a huge lengthscale
    keep = w >= kernel_cutoff
    i, j, w = i[keep], j[keep], w[keep]
    rows = [i, j]
    cols = [j, i]
    vals = [w, w]
    if include_self:
        rows.append(np.arange(n))
        cols.append(np.arange(n))
        vals.append(np.ones(n))
    S = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    S.sum_duplicates()
    rs = np.asarray(S.sum(axis=1)).ravel()
    n_nb = np.diff(S.indptr) - (1 if include_self else 0)
    lonely = np.flatnonzero(rs == 0)
    S = sp.csr_matrix(sp.diags(1.0 / np.where(rs > 0, rs, 1.0)) @ S)
    return SpatialKernel(S, float(lengthscale), float(kernel_cutoff), float(n_nb.mean()), lonely,
                         None if groups is None else np.asarray(groups))


def smooth_loo(kernel: SpatialKernel, P) -> np.ndarray:
    """S P for a leave-one-out kernel, dense (n, G); a lonely cell gets its slice's mean of P."""
    SP = kernel.S @ P
    SP = np.asarray(SP.toarray() if sp.issparse(SP) else SP)
    if kernel.lonely.size:
        for idx in _groups_index(P.shape[0], kernel.groups):
            lone = np.intersect1d(idx, kernel.lonely, assume_unique=True)
            if lone.size:
                SP[lone] = np.asarray(P[idx].mean(axis=0)).ravel()
    return SP


# --------------------------------------------------------------------------- numba kernels

def _padded_width(K: int) -> int:
    """K rounded up to a multiple of 8: the compile-time width of the pass kernels."""
    return -(-K // 8) * 8


@functools.cache
def _numerator_kernel(KP: int):
    """The KL-numerator pass compiled for factor rows of the fixed width ``KP`` (a multiple
    of 8, zero-padded). A compile-time width lets LLVM unroll and vectorize the K-long loops
    without remainders; with the unsigned column index it drops the negative-index checks.
    Together 1.4-1.8x faster per pass than the same loops over a run-time K, and 1.6x per
    iteration at 10^6 simulated cells, K = 20 (docs/benchmarks.md). numba caches one
    compiled kernel per width on disk.
    """

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def numerator(indptr, indices, data, W, Hp, for_h, n_chunks):
        n, K = W.shape
        G = Hp.shape[0]
        buf = np.zeros((n_chunks if for_h else 0, G, KP))
        for c in numba.prange(n_chunks):
            w = np.zeros(KP)
            acc = np.empty(KP)
            for i in range(c * n // n_chunks, (c + 1) * n // n_chunks):
                for k in range(K):
                    w[k] = W[i, k]
                for k in range(KP):
                    acc[k] = 0.0
                b = indptr[i + 1]
                p = indptr[i]
                while p < b:
                    if p + 4 <= b:
                        j0 = np.uint32(indices[p])
                        j1 = np.uint32(indices[p + 1])
                        j2 = np.uint32(indices[p + 2])
                        j3 = np.uint32(indices[p + 3])
                        m0 = m1 = m2 = m3 = 0.0
                        for k in range(KP):
                            m0 += w[k] * Hp[j0, k]
                            m1 += w[k] * Hp[j1, k]
                            m2 += w[k] * Hp[j2, k]
                            m3 += w[k] * Hp[j3, k]
                        r0 = data[p] / m0
                        r1 = data[p + 1] / m1
                        r2 = data[p + 2] / m2
                        r3 = data[p + 3] / m3
                        if for_h:
                            for k in range(KP):
                                wk = w[k]
                                buf[c, j0, k] += r0 * wk
                                buf[c, j1, k] += r1 * wk
                                buf[c, j2, k] += r2 * wk
                                buf[c, j3, k] += r3 * wk
                        else:
                            for k in range(KP):
                                acc[k] += (r0 * Hp[j0, k] + r1 * Hp[j1, k]) + (r2 * Hp[j2, k] + r3 * Hp[j3, k])
                        p += 4
                    else:
                        j = np.uint32(indices[p])
                        m = 0.0
                        for k in range(KP):
                            m += w[k] * Hp[j, k]
                        r = data[p] / m
                        if for_h:
                            for k in range(KP):
                                buf[c, j, k] += r * w[k]
                        else:
                            for k in range(KP):
                                acc[k] += r * Hp[j, k]
                        p += 1
                if not for_h:
                    for k in range(K):
                        W[i, k] = w[k] * acc[k]
        out = np.zeros((G if for_h else 0, K))
        for c in range(buf.shape[0]):
            for g in range(G):
                for k in range(K):
                    out[g, k] += buf[c, g, k]
        return out

    return numerator


def _numerator(indptr, indices, data, W, Ht, for_h, n_chunks):
    """KL numerators at the non-zeros of X, mu_ij = W_i . H_:j, r_ij = x_ij / mu_ij.

    ``for_h=False``: W_i <- W_i * sum_j r_ij H_:j in place (returns an empty array);
    ``for_h=True``: returns sum_i r_ij W_i, (G, K), one accumulator per chunk of cells.
    Four non-zeros are handled at a time: four independent K-long dot products hide the
    add latency a single reduction is bound by (1.3-1.5x on the 2-core Xeon). H is passed
    zero-padded to the kernel's width; padded columns add exact zeros.
    """
    K = W.shape[1]
    KP = _padded_width(K)
    Hp = np.zeros((Ht.shape[0], KP))
    Hp[:, :K] = Ht
    return _numerator_kernel(KP)(indptr, indices, data, W, Hp, for_h, n_chunks)


def _w_step(indptr, indices, data, W, Ht):
    """In place: W_i <- W_i * sum_j (x_ij / mu_ij) H_:j (the KL numerator; no denominator, as the R code)."""
    _numerator(indptr, indices, data, W, Ht, False, _N_CHUNKS)


def _h_numerator(indptr, indices, data, W, Ht, n_chunks):
    """(G, K): sum_i (x_ij / mu_ij) W_ik."""
    return _numerator(indptr, indices, data, W, Ht, True, n_chunks)


@numba.njit(parallel=True, fastmath=True, cache=True)
def _gkl_nonzero(indptr, indices, data, W, Ht, delta):
    """Sum over non-zeros of (x+d) log((x+d)/(mu+d)) - x."""
    n, K = W.shape
    tot = np.zeros(n)
    for i in numba.prange(n):
        s = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            j = indices[p]
            mu = 0.0
            for k in range(K):
                mu += W[i, k] * Ht[j, k]
            x = data[p]
            s += (x + delta) * np.log((x + delta) / (mu + delta)) - x
        tot[i] = s
    return tot.sum()


@numba.njit(parallel=True, fastmath=True, cache=True)
def _smooth(indptr, indices, data, W, n_chunks):
    """W <- (S @ (W / r)) * r, r the row sums of W (proportions smoothed, totals kept)."""
    n, K = W.shape
    P = np.empty_like(W)
    r = np.empty(n)
    for i in numba.prange(n):
        s = 0.0
        for k in range(K):
            s += W[i, k]
        r[i] = s
        for k in range(K):
            P[i, k] = W[i, k] / s
    for c in numba.prange(n_chunks):
        acc = np.empty(K)
        for i in range(c * n // n_chunks, (c + 1) * n // n_chunks):
            acc[:] = 0.0
            for p in range(indptr[i], indptr[i + 1]):
                j = indices[p]
                v = data[p]
                for k in range(K):
                    acc[k] += v * P[j, k]
            for k in range(K):
                W[i, k] = acc[k] * r[i]


def smooth_reference(S: sp.csr_matrix, W: np.ndarray) -> np.ndarray:
    """The smoothing step in plain scipy: ``(S @ (W / r)) * r``, r the row sums of W.

    The reference the numba kernel :func:`_smooth` is tested against. The kernel is kept
    because it is 2.1-2.6x faster at 10^5-10^6 cells (``benchmarks/nnmf_smoothing.py``,
    docs/benchmarks.md); both give the same result to 1e-15.
    """
    r = W.sum(axis=1, keepdims=True)
    return np.asarray(S @ (W / r)) * r


def warn_if_not_counts(X: sp.csr_matrix) -> None:
    """Warn when X does not look like counts (non-integer values, e.g. log1p or normalised
    data), which a Poisson / KL model misreads.
    """
    data = X.data[: min(X.data.size, 1_000_000)]
    frac = float(np.mean(data != np.round(data))) if data.size else 0.0
    if frac > 0.01:
        warnings.warn(f"{frac:.0%} of the non-zero values are not integers: the data look normalised or "
                      "log-transformed, not counts. NNMF is a Poisson (KL) model of counts; pass raw counts "
                      "(layer=... if they are in a layer) for results you can trust.", UserWarning, stacklevel=4)


def _n_chunks() -> int:
    return max(1, numba.get_num_threads())


def gkl(X: sp.csr_matrix, W: np.ndarray, Ht: np.ndarray, delta: float = GKL_DELTA) -> float:
    """Generalized KL divergence D(X || W H) of the R code's ``error()`` over the non-zeros
    of X, plus sum(W H) (W: (n, K), Ht = H^T: (G, K)).
    """
    nz = _gkl_nonzero(X.indptr, X.indices, X.data, W, Ht, delta)
    return float(nz + W.sum(axis=0) @ Ht.sum(axis=0))


def _clamp(A: np.ndarray) -> np.ndarray:
    np.maximum(A, CLAMP, out=A)
    return A


def _h_step(X, W, Ht) -> np.ndarray:
    """H <- H * W^T (X / W H), returned transposed (G, K)."""
    return Ht * _h_numerator(X.indptr, X.indices, X.data, W, Ht, _n_chunks())


def _random_start(n: int, G: int, K: int, rng: np.random.Generator):
    """U(0, 1) W (n, K) and H^T (G, K), as the R code's ``runif``."""
    W = rng.uniform(size=(n, K))
    Ht = rng.uniform(size=(K, G)).T.copy()
    return W, Ht


# --------------------------------------------------------------------------- fit

@dataclass
class NNMFResult:
    """A fitted NNMF.

    Attributes
    ----------
    weights : ndarray (n_cells, K) float64
        Cell weights ("exposures"); each row sums to the cell's normalised total.
    signatures : ndarray (K, n_genes) float64
        Gene signatures, rows sum to 1.
    gkl : float
        Final generalized KL divergence (on the normalised data).
    trace : ndarray (m, 2)
        (iteration, GKL) at every convergence check.
    n_iter : int
    converged : bool
        True when the stopping rule was met (``stop_reason`` "tol" or "gkl_rose").
    stop_reason : str
        ``"tol"`` (the relative GKL change fell below ``tol``), ``"gkl_rose"`` (the GKL
        rose between two checks: the smoothing makes it non-monotone; the R rule stops
        there too) or ``"max_iter"`` (also a ``ConvergenceWarning``).
    initial_gkl : list of float
        GKL of each warm start (the lowest was kept).
    """

    weights: np.ndarray
    signatures: np.ndarray
    gkl: float
    trace: np.ndarray
    n_iter: int
    converged: bool
    stop_reason: str = "max_iter"
    initial_gkl: list = field(default_factory=list)


def iter_fit_nnmf(
    X: sp.csr_matrix,
    n_components: int,
    S: sp.csr_matrix | None = None,
    *,
    max_iter: int = 1000,
    tol: float = 1e-10,
    initial: int = 3,
    small_iter: int = 50,
    error_freq: int = 10,
    desmooth: bool = False,
    random_state: int | None = 0,
    init: tuple[np.ndarray, np.ndarray] | None = None,
    reorder: bool = True,
) -> Generator[Progress, None, NNMFResult]:
    """Fit NNMF (or plain KL-NMF when ``S`` is None), yielding progress every iteration.

    The update order of ``nmfspatial`` (``methods-digest.md`` §1.5; ``*``, ``/``
    element-wise, E = W H, clamp = max(., 1e-10)):

    1. ``W = clamp(W * (X/E) H^T)``
    2. ``H = rownorm(clamp(H * W^T (X/E)))``
    3. ``W = W * (X/E) H^T``; ``W = (S (W/r)) * r`` with r the row sums;
       ``W = colnorm(clamp(W))``
    4. ``H = clamp(H * W^T (X/E))``

    and at the end the scale moves from H to W (signature rows sum to 1). Without ``S``,
    step 3 skips the smoothing (plain KL-NMF in the same order).

    Parameters
    ----------
    X : scipy.sparse.csr_matrix (n_cells, n_genes) float64
        Counts (already normalised if wanted), checked by :func:`check_counts`.
    n_components : int
        K >= 1.
    S : csr_matrix (n_cells, n_cells), optional
        Row-stochastic kernel from :func:`spatial_kernel`.
    max_iter, tol, initial, small_iter, error_freq
        The R package's ``maxiter`` (1000), ``tolerance`` (1e-10), ``initial`` (3),
        ``smallIter`` (50), ``error_freq`` (10).
    desmooth : bool
        The R option ``not_sc``: one more unsmoothed W step after convergence.
    random_state : int or None
        Seed of the U(0, 1) starts.
    init : (W (n, K), H (K, G)), optional
        Start from these (copied) instead of the warm starts.
    reorder : bool
        Fit with the cells in reverse Cuthill-McKee order of the kernel graph
        (``scipy.sparse.csgraph.reverse_cuthill_mckee``), so a cell's neighbours sit close in
        memory (smoothing 6x faster at 10^6 cells: 2.1 -> 0.34 s). The random starts are drawn in the
        input order and the weights are returned in it: only the summation order changes
        (results equal to ~1e-12).

    Yields
    ------
    Progress
        One per warm-start iteration and per main iteration.

    Returns
    -------
    NNMFResult
    """
    n, G = X.shape
    K = int(n_components)
    if not 1 <= K <= min(n, G):
        raise ValueError(f"n_components={K} is out of range: it must be between 1 and min(n_cells, n_genes) = "
                         f"{min(n, G)}.")
    if S is not None and S.shape != (n, n):
        raise ValueError(f"The kernel is {S.shape} but there are {n} cells.")
    rng = np.random.default_rng(random_state)
    order = None
    if S is not None and reorder and n > 1:
        from scipy.sparse.csgraph import reverse_cuthill_mckee

        order = reverse_cuthill_mckee(sp.csr_matrix(S), symmetric_mode=False)
        X = X[order]
        S = sp.csr_matrix(S[order][:, order])

    def start():
        W, Ht = _random_start(n, G, K, rng)
        return (W if order is None else W[order]), Ht

    if init is not None:
        initial = 0
    total = initial * small_iter + max_iter
    step = 0
    if not _kernels_ready(K):
        yield Progress(step, total, "preparing the NNMF kernels (compiled on first use, then cached; ~10 s)")
        _warm_up(K)
    best = None
    initial_gkl = []
    for s in range(initial):
        W, Ht = start()
        for _ in range(small_iter):
            W, Ht = _warm_iter(X, W, Ht)
            step += 1
            yield Progress(step, total, f"start {s + 1}/{initial}")
        d = gkl(X, W, Ht)
        initial_gkl.append(d)
        if best is None or d < best[0]:
            best = (d, W, Ht)
    if init is not None:
        W = np.array(init[0], dtype=np.float64, order="C")
        Ht = np.array(np.asarray(init[1], dtype=np.float64).T, order="C")
        if W.shape != (n, K) or Ht.shape != (G, K):
            raise ValueError(f"init must be W ({n}, {K}) and H ({K}, {G}); got {W.shape} and {Ht.T.shape}.")
        if order is not None:
            W = W[order]
    elif best is None:
        W, Ht = start()
    else:
        _, W, Ht = best
    trace = []
    old = np.inf
    stop_reason = "max_iter"
    t = 0
    for t in range(max_iter):
        _w_step(X.indptr, X.indices, X.data, W, Ht)  # (1)
        _clamp(W)
        Ht = _clamp(_h_step(X, W, Ht))  # (2)
        Ht /= Ht.sum(axis=0, keepdims=True)
        _w_step(X.indptr, X.indices, X.data, W, Ht)  # (3)
        if S is not None:
            _smooth(S.indptr, S.indices, S.data, W, _N_CHUNKS)
        _clamp(W)
        W /= W.sum(axis=0, keepdims=True)
        Ht = _clamp(_h_step(X, W, Ht))  # (4)
        step += 1
        msg = f"iteration {t + 1}"
        if t % error_freq == 0:
            new = gkl(X, W, Ht)
            trace.append((t, new))
            msg += f", GKL {new:.6g}"
            if t > error_freq and 2 * (old - new) / (0.1 + abs(2 * new)) < tol:
                stop_reason = "gkl_rose" if new > old else "tol"
                old = new
                yield Progress(step, total, msg + (" (GKL rose: stopped)" if stop_reason == "gkl_rose"
                                                   else " (converged)"))
                break
            old = new
        yield Progress(step, total, msg)
    if stop_reason == "max_iter" and tol > 0:  # tol <= 0 asks for exactly max_iter iterations
        warnings.warn(f"NNMF stopped at max_iter={max_iter} before the relative GKL change fell below "
                      f"tol={tol:g}; increase max_iter to improve convergence.", ConvergenceWarning, stacklevel=2)
    if desmooth:
        _w_step(X.indptr, X.indices, X.data, W, Ht)
    rk = Ht.sum(axis=0)
    W = W * rk[None, :]
    H = (Ht / rk[None, :]).T.copy()
    final = gkl(X, W, np.ascontiguousarray(H.T))
    if order is not None:
        back = np.empty_like(W)
        back[order] = W
        W = back
    return NNMFResult(W, H, final, np.asarray(trace, dtype=np.float64).reshape(-1, 2), t + 1,
                      stop_reason != "max_iter", stop_reason, initial_gkl)


def _kernels_ready(K: int) -> bool:
    """True when this process already has the compiled kernels for K."""
    return bool(_numerator_kernel(_padded_width(K)).signatures and _smooth.signatures and _gkl_nonzero.signatures)


def _warm_up(K: int) -> None:
    """Compile (or load from numba's cache) the kernels on a tiny problem."""
    X = sp.csr_matrix(np.ones((2, 2)))
    W, Ht = np.ones((2, K)), np.ones((2, K))
    _w_step(X.indptr, X.indices, X.data, W, Ht)
    _h_numerator(X.indptr, X.indices, X.data, W, Ht, 1)
    _smooth(X.indptr, X.indices, X.data, W, 1)
    _gkl_nonzero(X.indptr, X.indices, X.data, W, Ht, GKL_DELTA)


def _warm_iter(X, W, Ht):
    """One ``nmf1`` warm-start iteration: H normalised then clamped, then W."""
    Ht = _h_step(X, W, Ht)
    Ht /= Ht.sum(axis=0, keepdims=True)
    _clamp(Ht)
    _w_step(X.indptr, X.indices, X.data, W, Ht)
    _clamp(W)
    return W, Ht


# --------------------------------------------------------------------------- read-outs

def smoothing_error(P: sp.csr_matrix, coords: np.ndarray, lengthscale: float, groups=None,
                    kernel_cutoff: float = 0.1, *, per_gene: bool = False):
    """Leave-one-out kernel-smoothing error of the proportions P at one lengthscale.

    ``mean((P - S P)^2)`` with S the kernel without its diagonal (``estimate_lengthscale``
    in ``R/utils.R``); ``per_gene=True`` returns the (G,) column means instead. Memory:
    the kernel's non-zeros plus one dense (n, G) array.
    """
    k = spatial_kernel(coords, lengthscale, kernel_cutoff, groups, include_self=False)
    D = smooth_loo(k, P) - (P.toarray() if sp.issparse(P) else np.asarray(P))
    sq = D**2
    return (sq.mean(axis=0), k.mean_neighbors) if per_gene else (float(sq.mean()), k.mean_neighbors)


def proportions(X: sp.csr_matrix) -> sp.csr_matrix:
    """Each cell's counts divided by its total (P in the R code)."""
    rs = np.asarray(X.sum(axis=1)).ravel()
    P = X.copy()
    P.data /= np.repeat(rs, np.diff(X.indptr))
    return P


def lengthscale_grid(coords: np.ndarray, groups=None, *, max_avg_nn: int = 20, n_grid: int = 10) -> np.ndarray:
    """The R package's candidate grid: ``seq(min(d), max_val, length.out=10)`` with
    ``max_val`` the mean distance to the ``max_avg_nn``-th neighbour and min(d) the
    smallest distance between two cells.
    """
    C = np.asarray(coords, dtype=np.float64)
    dmin, dmax = np.inf, []
    for idx in _groups_index(len(C), groups):
        kq = min(max_avg_nn + 1, len(idx))
        d, _ = cKDTree(C[idx]).query(C[idx], k=kq)
        dmin = min(dmin, float(d[:, 1].min()))
        dmax.append(d[:, kq - 1])
    hi = float(np.concatenate(dmax).mean())
    lo = max(dmin, hi * 1e-3)
    return np.linspace(lo, hi, n_grid)


def svg_score(P: sp.csr_matrix, coords, lengthscale: float, groups=None, kernel_cutoff: float = 0.1) -> np.ndarray:
    """Per-gene spatial-variability score (G,): leave-one-out smoothing error / mean proportion.

    ``colMeans((P - S P)^2) / colMeans(P)`` from the package's removed ``spatial_data()``
    (commit 71c612d); LOWER means the gene is better predicted by its neighbours, i.e.
    more spatially variable. (That function kept the floor(G/2) lowest-scoring genes.)
    """
    err, _ = smoothing_error(P, coords, lengthscale, groups, kernel_cutoff, per_gene=True)
    mean = np.asarray(P.mean(axis=0)).ravel()
    return err / np.maximum(mean, 1e-300)


def top_features(signatures: np.ndarray, n_top: int | None = None) -> np.ndarray:
    """Gene scores per signature (K, G) of the package's ``topfeatures``, corrected.

    ``score_gk = h_gk log(1 + h_gk / (mm_gk + 1e-10))`` with ``mm_gk`` the gene's largest
    loading over the other signatures for k != argmax, and its true second-largest loading
    for k = argmax. (``R/utils.R`` takes ``which.max(rr[-m1])`` as an index into the full
    vector, the wrong element whenever the second maximum sits after the maximum.)
    """
    Hs = np.asarray(signatures, dtype=np.float64)
    K = Hs.shape[0]
    if K < 2:
        return Hs.copy()
    srt = np.sort(Hs, axis=0)
    first, second = srt[-1], srt[-2]
    am = Hs.argmax(axis=0)
    mm = np.broadcast_to(first, Hs.shape).copy()
    mm[am, np.arange(Hs.shape[1])] = second
    return Hs * np.log1p(Hs / (mm + 1e-10))
