"""Many NMF replicates of one matrix at once: the staNMF workload, built for speed.

A bootstrap replicate resamples genes (columns of X, the osNMF scheme) or observations
(rows) with replacement. Instead of copying X, a replicate is X with integer weights:
the count of each column (row) in the sample. The weighted Frobenius objective

    f_r(W, H) = sum_ij  r_i c_j (x_ij - (W H)_ij)^2

is exactly scikit-learn's objective on the resampled copy. All replicates of a batch share
X, so each half-step is ONE large float32 matrix product, X @ [C_1 H_1^T, ..., C_R H_R^T]
(n x m times m x R*K), instead of R thin ones. Those are memory-bound; the wide one runs at
BLAS speed. The per-component HALS updates (Cichocki & Phan 2009; scikit-learn's CD order:
W then H) run for all replicates together with batched matmul, and Nesterov-type
extrapolation with restart (Ang & Gillis 2019, Neural Computation 31:417) cuts the number
of passes over X.

Initialisation is scikit-learn's NNDSVDa on the resampled matrix (Boutsidis & Gallopoulos
2008), computed from the weights, for all replicates in the same wide products
(:func:`nndsvda_batch`, with :func:`.starts.nndsvd_from_svd`); "random" is
:func:`.starts.random_start` (staNMF's random restarts). With the default settings every
replicate follows scikit-learn's own iterations; only the matrix products are shared.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import numba
import numpy as np

from ._progress import Progress
from .starts import nndsvd_from_svd


def nndsvda_batch(X: np.ndarray, XT: np.ndarray, row_w: np.ndarray, col_w: np.ndarray, k: int,
                  random_state: int, n_oversamples: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """NNDSVDa starts of R bootstrap replicates at once, sharing X (the products batched).

    Each replicate's start is scikit-learn's ``NMF(init=None)`` start on its resampled copy:
    NNDSVDa (Boutsidis & Gallopoulos 2008) from ``randomized_svd(copy, k,
    random_state=random_state)`` (Halko et al. 2009, Algorithm 4.3; scikit-learn's
    ``n_iter="auto"``, 10 oversamples, LU normalisation of the power iterations). The
    resampled copy is never built: its SVD is that of R^1/2 X C^1/2 (R, C the copy counts),
    so every power iteration of all R replicates is ONE product X @ [C_1^1/2 Q_1, ...,
    C_R^1/2 Q_R] and one with X^T, in X's dtype (float32 here: wide products at BLAS speed
    instead of 2 R thin float64 ones). The test matrix is scikit-learn's draw on the same
    side (the smaller dimension), shared by all replicates as osNMF shares the seed; after
    the power iterations the subspace, and so the start, agrees with scikit-learn's to the
    float32 rounding of the products (``tests/test_stability.py``).

    Parameters
    ----------
    X, XT : numpy.ndarray (n, m) and its transpose (m, n), C-contiguous, float32 or float64
    row_w, col_w : numpy.ndarray (R, n) and (R, m)
        Integer copy counts of each replicate.
    k : int
        Number of components.
    random_state : int
        scikit-learn's ``random_state`` of the reference fits.

    Returns
    -------
    W0 : numpy.ndarray float64 (R, n, k)
    H0 : numpy.ndarray float64 (R, k, m)
    """
    n, m = X.shape
    tot = (X @ col_w.T.astype(X.dtype)).astype(np.float64)  # (n, R)
    avg = np.einsum("rn,nr->r", row_w.astype(np.float64), tot) / (row_w.sum(axis=1) * col_w.sum(axis=1))
    if m >= n:  # scikit-learn puts the test matrix on the observation side: the mirror image
        W0, H0 = _nndsvda_batch_cols(XT, X, col_w, row_w, avg, k, random_state, n_oversamples)
        return H0.transpose(0, 2, 1), W0.transpose(0, 2, 1)
    return _nndsvda_batch_cols(X, XT, row_w, col_w, avg, k, random_state, n_oversamples)


def _nndsvda_batch_cols(X, XT, row_w, col_w, avg, k, random_state, n_oversamples):
    """:func:`nndsvda_batch` with scikit-learn's test matrix on the column side (it fits
    the copy's transpose M = A^T (m x n) and transposes it because m < n).
    """
    from scipy import linalg

    n, m = X.shape
    R = row_w.shape[0]
    dt = X.dtype
    # scikit-learn draws k + 10 test columns; when that exceeds the matrix's smaller side (few
    # genes, e.g. 2), its range finder collapses to that side after the first LU step and the
    # SVD is exact: the same here, with the width clamped so the batched shapes stay regular.
    l_draw = k + n_oversamples
    l = min(l_draw, n, m)
    n_iter = 7 if k < 0.1 * min(n, m) else 4
    rs = np.sqrt(row_w).astype(dt)
    cs = np.sqrt(col_w).astype(dt)

    def right(Q):  # (R, m, l) -> A_r Q_r, (R, n, l)
        Y = X @ (cs[:, :, None] * Q).transpose(1, 0, 2).reshape(m, R * l)
        return rs[:, :, None] * Y.reshape(n, R, l).transpose(1, 0, 2)

    def left(Y):  # (R, n, l) -> A_r^T Y_r, (R, m, l)
        Z = XT @ (rs[:, :, None] * Y).transpose(1, 0, 2).reshape(n, R * l)
        return cs[:, :, None] * Z.reshape(m, R, l).transpose(1, 0, 2)

    def lu(A):
        return np.stack([linalg.lu(a, permute_l=True, check_finite=False)[0] for a in A])

    rng = np.random.RandomState(random_state)
    Q = np.broadcast_to(rng.normal(size=(m, l_draw))[:, :l].astype(dt), (R, m, l))
    for _ in range(n_iter):
        Q = lu(left(lu(right(Q))))
    Qb = np.stack([linalg.qr(a, mode="economic", check_finite=False)[0] for a in right(Q)])  # (R, n, l)
    B = left(Qb)  # A^T Qb: (R, m, l), the transpose of Qb^T A
    S = np.empty((R, k))
    V = np.empty((R, m, k))  # right singular vectors of the weighted matrix: C^1/2 v_copy
    for r in range(R):
        _, s, Vt = linalg.svd(B[r].T.astype(np.float64), full_matrices=False)
        S[r] = s[:k]
        V[r] = Vt[:k].T
    # per-copy values of the singular vectors (a copy of row i carries u_i / sqrt(r_i)):
    # u_copy = X C^1/2 v_w / s and v_copy = X^T R u_copy / s
    safe = np.where(S > 0, S, 1)[:, None, :]
    U = X @ (cs[:, :, None] * V.astype(dt)).transpose(1, 0, 2).reshape(m, R * k)
    U = U.reshape(n, R, k).transpose(1, 0, 2) / safe
    V = XT @ (row_w[:, :, None] * U).astype(dt).transpose(1, 0, 2).reshape(n, R * k)
    V = V.reshape(m, R, k).transpose(1, 0, 2) / safe
    W0 = np.empty((R, n, k))
    H0 = np.empty((R, k, m))
    for r in range(R):
        W0[r], H0[r] = nndsvd_from_svd(U[r].astype(np.float64), S[r], V[r].astype(np.float64),
                                       variant="nndsvda", avg=float(avg[r]), row_w=row_w[r], col_w=col_w[r])
    return W0, H0


@dataclass
class BatchResult:
    """Replicates fitted together.

    Attributes
    ----------
    W : numpy.ndarray, float32, (R, n_obs, K)   the dictionaries (principal patterns)
    H : numpy.ndarray, float32, (R, K, n_genes) the coefficients
    objective : numpy.ndarray, float64, (R,)    weighted squared Frobenius error
    n_iter : numpy.ndarray, int, (R,)           passes each replicate ran
    """

    W: np.ndarray
    H: np.ndarray
    objective: np.ndarray
    n_iter: np.ndarray


@numba.njit(parallel=True, fastmath=False, cache=True)
def _hals_rows(M, G, Z, sweeps, active, violation, vweight):  # pragma: no cover - compiled
    """HALS sweeps over the K rows of M (R, K, p) in place: for each active replicate r and
    row t, M[r, t] = max(0, M[r, t] - (G[r, t] @ M[r] - Z[r, t]) / G[r, t, t]), the exact
    minimiser over that row with the others fixed (Cichocki & Phan 2009; scikit-learn's
    ``_update_cdnmf_fast``). The first sweep adds the projected-gradient violation of each
    replicate to ``violation[r]``, entry j counted ``vweight[r, j]`` times (its copies in
    the resampled matrix: scikit-learn's stopping criterion). Replicates run in
    parallel; one replicate's K x p block stays in cache.
    """
    R, K, p = M.shape
    for r in numba.prange(R):
        if not active[r]:
            continue
        g = np.empty(p, dtype=M.dtype)
        for sweep in range(sweeps):
            viol = 0.0
            for t in range(K):
                for j in range(p):
                    g[j] = -Z[r, t, j]
                for k in range(K):  # contiguous inner loops: SIMD over j
                    c = G[r, t, k]
                    for j in range(p):
                        g[j] += c * M[r, k, j]
                d = G[r, t, t]
                for j in range(p):
                    m = M[r, t, j]
                    pg = (g[j] if g[j] < 0 else 0.0) if m == 0 else g[j]
                    viol += abs(pg) * vweight[r, j]
                    if d > 0:
                        v = m - g[j] / d
                        M[r, t, j] = v if v > 0 else 0.0
            if sweep == 0:
                violation[r] += viol


def transposed(X: np.ndarray) -> np.ndarray:
    """X^T for the products: a C-contiguous copy for small X, the view ``X.T`` from 256 MB on.

    BLAS multiplies a transposed operand about as fast as a copied one at these widths, and
    copying a large matrix's transpose (4 s at Allen scale) costs more than it saves.
    """
    return np.ascontiguousarray(X.T) if X.nbytes < 2 ** 28 else X.T


def _weighted_square_sum(X, rw, cw, rows: int = 4096) -> np.ndarray:
    """(R,) float64: sum_ij r_i c_j x_ij^2 per replicate, in float64, a block of rows at a time.

    When every replicate shares its row weights (resampling genes) or its column weights
    (resampling observations), one weighted sum of squares serves all of them.
    """
    rows_shared = bool((rw == rw[0]).all())
    cols_shared = bool((cw == cw[0]).all())
    if rows_shared or cols_shared:
        side = np.zeros(X.shape[1] if rows_shared else X.shape[0])
        for s in range(0, X.shape[0], rows):
            Xb = X[s:s + rows].astype(np.float64)
            Xb *= Xb
            if rows_shared:
                side += rw[0, s:s + rows].astype(np.float64) @ Xb
            else:
                side[s:s + rows] = Xb @ cw[0].astype(np.float64)
        return (cw if rows_shared else rw).astype(np.float64) @ side
    out = np.zeros(rw.shape[0])
    cw64 = cw.astype(np.float64).T
    for s in range(0, X.shape[0], rows):
        Xb = X[s:s + rows].astype(np.float64)
        out += np.einsum("rn,nr->r", rw[:, s:s + rows].astype(np.float64), (Xb * Xb) @ cw64)
    return out


def _objective(x2, A, B, G1, G2) -> np.ndarray:
    """Weighted squared error per replicate from cached products:
    x2 - 2 <A, B> + <G1, G2> (A, B a cross term and its factor; G1, G2 the two Grams).
    """
    return x2 - 2 * np.einsum("rkp,rkp->r", A, B, dtype=np.float64) \
        + np.einsum("rkl,rkl->r", G1, G2, dtype=np.float64)


def iter_fit_batch(
    X: np.ndarray,
    W0: np.ndarray,
    H0: np.ndarray,
    *,
    row_w: np.ndarray | None = None,
    col_w: np.ndarray | None = None,
    max_iter: int = 200,
    tol: float = 1e-4,
    extrapolate: bool = False,
    inner: int = 1,
    XT: np.ndarray | None = None,
) -> Generator[Progress, None, BatchResult]:
    """Fit R weighted NMF replicates of X together; one yield per pass.

    With the defaults this is scikit-learn's ``NMF(solver="cd")`` for every replicate:
    one HALS sweep over W then over H per pass, and a replicate stops when its projected-
    gradient violation falls below ``tol`` times that of its first pass (or after
    ``max_iter`` passes); only the products are batched and run in float32.

    Parameters
    ----------
    X : numpy.ndarray, float32, (n, m)
    W0, H0 : numpy.ndarray, (R, n, K) and (R, K, m)
        Initial factors (copied).
    row_w, col_w : numpy.ndarray, (R, n) and (R, m), optional
        Integer bootstrap counts (default all ones).
    max_iter : int
        Maximum passes (scikit-learn's default 200).
    tol : float
        scikit-learn's tolerance on the violation ratio (1e-4).
    extrapolate : bool
        Nesterov-type extrapolation with restart (Ang & Gillis 2019): fewer passes, but not
        scikit-learn's iterates.
    inner : int
        HALS sweeps per half-step (Gillis & Glineur 2012); 1 is scikit-learn's.
    XT : numpy.ndarray, float32, (m, n), optional
        :func:`transposed` of X, when the caller has it already.
    """
    X = np.ascontiguousarray(X, dtype=np.float32)
    XT = transposed(X) if XT is None else XT
    n, m = X.shape
    R, _, K = W0.shape
    rw = np.ones((R, n), np.float32) if row_w is None else row_w.astype(np.float32)
    cw = np.ones((R, m), np.float32) if col_w is None else col_w.astype(np.float32)
    Wt = np.ascontiguousarray(W0.transpose(0, 2, 1), dtype=np.float32)  # (R, K, n): rows = patterns
    H = np.array(H0, dtype=np.float32)                                   # (R, K, m)
    Wy, Hy = (Wt.copy(), H.copy()) if extrapolate else (Wt, H)  # the extrapolated points
    x2 = _weighted_square_sum(X, rw, cw)
    beta = np.full(R, 0.5, np.float32)
    beta_cap = np.ones(R, np.float32)
    best = np.full(R, np.inf)
    active = np.ones(R, dtype=np.bool_)
    viol_init = np.zeros(R)
    n_iter = np.zeros(R, dtype=np.int64)
    it = 0
    for it in range(1, max_iter + 1):
        # Only the replicates still improving enter the products: a stopped replicate
        # costs nothing (the products shrink as the batch converges).
        a = np.flatnonzero(active)
        ra = a.size
        on = np.ones(ra, dtype=np.bool_)
        va = np.zeros(ra)
        rwa, cwa = rw[a], cw[a]
        Wya = Wy[a]  # copies: the HALS sweeps update them in place
        # scikit-learn fits the genes x observations copy and updates the gene side first.
        # H step: min_H sum_i r_i ||x_i - w_i H||^2 (each gene's NNLS; copies count c_j times)
        WR = Wya * rwa[:, None, :]
        P = (WR.reshape(ra * K, n) @ X).reshape(ra, K, m)     # one wide GEMM for all replicates
        Hn = Hy[a]
        _hals_rows(Hn, np.matmul(WR, Wya.transpose(0, 2, 1)), P, inner, on, va, cwa)
        # W step: min_W sum_j c_j ||x_j - W h_j||^2 (the dictionary; row weights factor out)
        HC = Hn * cwa[:, None, :]
        At = (HC.reshape(ra * K, m) @ XT).reshape(ra, K, n)  # one wide GEMM for all replicates
        Wn = Wya
        _hals_rows(Wn, np.matmul(HC, Hn.transpose(0, 2, 1)), At, inner, on, va, rwa)
        n_iter[a] = it
        violation = np.zeros(R)
        violation[a] = va
        if it == 1:
            viol_init = violation.copy()
        with np.errstate(invalid="ignore", divide="ignore"):
            done = (viol_init == 0) | (violation / np.where(viol_init > 0, viol_init, 1) <= tol)
        if extrapolate:
            WnR = Wn * rwa[:, None, :]
            obj = _objective(x2[a], WnR, At, np.matmul(WnR, Wn.transpose(0, 2, 1)),
                             np.matmul(HC, Hn.transpose(0, 2, 1)))
            ok = obj <= best[a]
            bt = np.where(ok, beta[a], 0).astype(np.float32)[:, None, None]
            Wy[a] = np.maximum(Wn + bt * (Wn - Wt[a]), 0)
            Hy[a] = np.maximum(Hn + bt * (Hn - H[a]), 0)
            beta_cap[a] = np.where(ok, np.minimum(1.0, beta_cap[a] * 1.005), beta[a])
            beta[a] = np.where(ok, np.minimum(beta_cap[a], beta[a] * 1.01), beta[a] / 1.5)
            best[a] = np.where(ok, obj, best[a])
        Wt[a] = Wn  # without extrapolation Wy, Hy are Wt, H
        H[a] = Hn
        active &= ~done
        yield Progress(it, max_iter, f"pass {it}/{max_iter}, {int(active.sum())}/{R} replicates still improving")
        if not active.any():
            break
    W = np.ascontiguousarray(Wt.transpose(0, 2, 1))
    HC = H * cw[:, None, :]
    WR = Wt * rw[:, None, :]
    P = (WR.reshape(R * K, n) @ X).reshape(R, K, m)
    obj = _objective(x2, HC, P, np.matmul(WR, Wt.transpose(0, 2, 1)), np.matmul(HC, H.transpose(0, 2, 1)))
    return BatchResult(W, H, obj, n_iter)
