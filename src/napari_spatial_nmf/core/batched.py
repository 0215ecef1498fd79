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
2008), computed from the weights (:func:`weighted_svd`, :func:`nndsvda_weighted`); "random"
is scikit-learn's random init (staNMF's random restarts). With the default settings every
replicate follows scikit-learn's own iterations; only the matrix products are shared.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import numba
import numpy as np
from sklearn.utils.extmath import randomized_svd

from ._progress import Progress


@dataclass
class ReplicateSVD:
    """Top singular triplets of R^1/2 X C^1/2 for one replicate."""

    U: np.ndarray  # (n, k)
    S: np.ndarray  # (k,)
    V: np.ndarray  # (m, k)


def weighted_svd(X: np.ndarray, row_w: np.ndarray, col_w: np.ndarray, k: int, random_state) -> ReplicateSVD:
    """scikit-learn's randomized SVD of the resampled matrix, computed from the weights.

    scikit-learn's NNDSVD runs ``randomized_svd(A, k, random_state=random_state)`` on the
    resampled copy A (genes x observations, as osNMF fits). Its random test matrix lives on
    the observation side, and the power iterations only see A^T A = X^T C X, which the
    weighted matrix C^1/2 X^T shares; so the same call on the weighted matrix spans the
    same subspace and gives the same singular triplets, up to rounding (NNDSVD does not
    depend on their signs).
    """
    rs, cs = np.sqrt(row_w.astype(np.float64)), np.sqrt(col_w.astype(np.float64))
    M = (X * rs[:, None] * cs[None, :]).T  # genes x observations, weighted
    U, S, Vt = randomized_svd(M, k, random_state=random_state)
    return ReplicateSVD(Vt.T, S, U)


def nndsvda_weighted(X, row_w, col_w, svd: ReplicateSVD, k: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's NNDSVDa on the resampled matrix, computed from the weights.

    A resampled copy repeats row i r_i times and column j c_j times; its singular vectors
    take the same value on every copy, so the per-copy values and the norms of their
    positive / negative parts follow from the weighted SVD.
    """
    S = svd.S[:k]
    safe = np.where(S > 0, S, 1)
    cs, rs = np.sqrt(col_w.astype(np.float64)), np.sqrt(row_w.astype(np.float64))
    U = (X @ (cs[:, None] * svd.V[:, :k])) / safe  # per-copy left values, every row
    V = (X.T @ (rs[:, None] * svd.U[:, :k])) / safe  # per-copy right values, every column
    W = np.zeros((X.shape[0], k))
    H = np.zeros((k, X.shape[1]))
    W[:, 0] = np.sqrt(S[0]) * np.abs(U[:, 0])
    H[0] = np.sqrt(S[0]) * np.abs(V[:, 0])
    for j in range(1, k):
        x, y = U[:, j], V[:, j]
        xp, yp = np.maximum(x, 0), np.maximum(y, 0)
        xn, yn = -np.minimum(x, 0), -np.minimum(y, 0)
        xpn, ypn = np.sqrt(row_w @ (xp * xp)), np.sqrt(col_w @ (yp * yp))
        xnn, ynn = np.sqrt(row_w @ (xn * xn)), np.sqrt(col_w @ (yn * yn))
        mp, mn = xpn * ypn, xnn * ynn
        if mp > mn:
            u, v, sigma = xp / (xpn or 1), yp / (ypn or 1), mp
        else:
            u, v, sigma = xn / (xnn or 1), yn / (ynn or 1), mn
        lbd = np.sqrt(S[j] * sigma)
        W[:, j] = lbd * u
        H[j] = lbd * v
    W[W < 1e-6] = 0
    H[H < 1e-6] = 0
    avg = float(row_w @ X @ col_w) / (row_w.sum() * col_w.sum())
    W[W == 0] = avg
    H[H == 0] = avg
    return W, H


def random_init(X, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's ``init="random"`` with ``random_state=seed`` (staNMF's random restarts)."""
    rng = np.random.RandomState(seed)
    avg = np.sqrt(X.mean() / k)
    H = np.abs(avg * rng.standard_normal(size=(k, X.shape[1])))
    W = np.abs(avg * rng.standard_normal(size=(X.shape[0], k)))
    return W, H


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
    parallel; one replicate's K x p block stays in cache."""
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


def _objective(x2, A, B, G1, G2) -> np.ndarray:
    """Weighted squared error per replicate from cached products:
    x2 - 2 <A, B> + <G1, G2> (A, B a cross term and its factor; G1, G2 the two Grams)."""
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
    """
    X = np.ascontiguousarray(X, dtype=np.float32)
    XT = np.ascontiguousarray(X.T)
    n, m = X.shape
    R, _, K = W0.shape
    rw = np.ones((R, n), np.float32) if row_w is None else row_w.astype(np.float32)
    cw = np.ones((R, m), np.float32) if col_w is None else col_w.astype(np.float32)
    Wt = np.ascontiguousarray(W0.transpose(0, 2, 1), dtype=np.float32)  # (R, K, n): rows = patterns
    H = np.array(H0, dtype=np.float32)                                   # (R, K, m)
    Wy, Hy = Wt, H
    x2 = np.einsum("rn,nm,rm->r", rw.astype(np.float64), X.astype(np.float64) ** 2, cw.astype(np.float64))
    beta = np.full(R, 0.5, np.float32)
    beta_cap = np.ones(R, np.float32)
    best = np.full(R, np.inf)
    active = np.ones(R, dtype=np.bool_)
    viol_init = np.zeros(R)
    n_iter = np.zeros(R, dtype=np.int64)
    it = 0
    for it in range(1, max_iter + 1):
        violation = np.zeros(R)
        # scikit-learn fits the genes x observations copy and updates the gene side first.
        # H step: min_H sum_i r_i ||x_i - w_i H||^2 (each gene's NNLS; copies count c_j times)
        WR = Wy * rw[:, None, :]
        P = (WR.reshape(R * K, n) @ X).reshape(R, K, m)     # one wide GEMM for all replicates
        Hn = Hy.copy() if extrapolate else Hy
        _hals_rows(Hn, np.matmul(WR, Wy.transpose(0, 2, 1)), P, inner, active, violation, cw)
        # W step: min_W sum_j c_j ||x_j - W h_j||^2 (the dictionary; row weights factor out)
        HC = Hn * cw[:, None, :]
        At = (HC.reshape(R * K, m) @ XT).reshape(R, K, n)  # one wide GEMM for all replicates
        Wn = Wy.copy() if extrapolate else Wy
        _hals_rows(Wn, np.matmul(HC, Hn.transpose(0, 2, 1)), At, inner, active, violation, rw)
        n_iter[active] = it
        if it == 1:
            viol_init = violation.copy()
        with np.errstate(invalid="ignore", divide="ignore"):
            done = (viol_init == 0) | (violation / np.where(viol_init > 0, viol_init, 1) <= tol)
        if extrapolate:
            WnR = Wn * rw[:, None, :]
            obj = _objective(x2, WnR, At, np.matmul(WnR, Wn.transpose(0, 2, 1)),
                             np.matmul(HC, Hn.transpose(0, 2, 1)))
            ok = obj <= best
            b = np.where(ok & active, beta, 0).astype(np.float32)[:, None, None]
            Wy = np.maximum(Wn + b * (Wn - Wt), 0)
            Hy = np.maximum(Hn + b * (Hn - H), 0)
            beta_cap = np.where(ok, np.minimum(1.0, beta_cap * 1.005), beta).astype(np.float32)
            beta = np.where(ok, np.minimum(beta_cap, beta * 1.01), beta / 1.5).astype(np.float32)
            best = np.where(ok, obj, best)
        else:
            Wy, Hy = Wn, Hn
        Wt, H = Wn, Hn
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
