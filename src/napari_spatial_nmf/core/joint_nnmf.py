"""Joint neighbourhood NMF of several sections with per-section gene scaling (no deep learning).

The generative core of INSPIRE is a Poisson NMF, x_ig ~ Poisson(l_i (β_i B)_g e^{γ_sg})
(methods-digest §3.8). This fits that model without the neural networks, with the
neighbourhood smoothing of NNMF (Laursen et al. 2026) as the spatial prior:

    X_s ~ W_s H diag(c_s)    for every section s,

with signatures H (K x G) shared by all sections, cell weights W_s, and a per-section gene
scaling c_s = e^{γ_s} (c_0 = 1 for identifiability) that absorbs gene-wise platform or
batch effects. Each iteration, in NNMF's order (:mod:`.nnmf`):

1. W step: W_ik <- W_ik [sum_g H_kg c_sg x_ig / mu_ig] / [sum_g H_kg c_sg];
2. H step: H_kg <- H_kg [sum_s c_sg sum_i W_ik x_ig / mu_ig] / [sum_s c_sg sum_i W_ik], then the
   signatures are scaled to sum 1 and the scale moves into W;
3. W step, then each cell's proportions are smoothed over its neighbours within its own
   section (the block-diagonal NNMF kernel: cells of different sections are never neighbours);
4. γ step, closed form: c_sg = sum_{i in s} x_ig / sum_{i in s} (W_s H)_ig for s >= 1.

Steps 1, 2 and 4 are the exact KL majorisation steps (Lee & Seung 2001; the denominators are
kept because with c_s != 1 they are no longer 1, unlike single-section NNMF), so only the
smoothing can raise the divergence. Stopping: NNMF's relative-change rule on its absolute
value, |2 (D_old - D_new) / (0.1 + |2 D_new|)| < tol. NNMF also stops at the first rise; here
the divergence may rise for many iterations while the smoothed fit moves towards its fixed
point (smoothing and the majorisation steps pull in different directions), so a rise does
not stop it. The pass kernels are NNMF's compiled kernels, called per section with H
scaled by c_s.
"""

from __future__ import annotations

import warnings
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from . import nnmf as _nn
from ._progress import Progress


@dataclass
class JointResult:
    """A fitted joint NNMF.

    Attributes
    ----------
    weights : numpy.ndarray, (n_cells, K)
        Cell weights; each row sums to about the cell's normalised total.
    signatures : numpy.ndarray, (K, G)
        Gene programs shared by all sections, rows sum to 1.
    gamma : numpy.ndarray, (n_sections, G)
        log of the per-section gene scaling (0 in each gene's reference section, the first
        that measured it; NaN where a section did not measure the gene).
    gkl : float
        Final generalized KL divergence.
    trace : numpy.ndarray, (m, 2)
        (iteration, GKL) at every check.
    n_iter : int
        Iterations run.
    stop_reason : str
        "tol" or "max_iter".
    """

    weights: np.ndarray
    signatures: np.ndarray
    gamma: np.ndarray
    gkl: float
    trace: np.ndarray
    n_iter: int
    stop_reason: str


def _w_update(Xs, Ws, Ht, c):
    """In place: the KL W step of each section with its scaled signatures."""
    for X, W, cs in zip(Xs, Ws, c):
        Hc = np.ascontiguousarray(Ht * cs[:, None])
        _nn._w_step(X.indptr, X.indices, X.data, W, Hc)
        W /= Hc.sum(axis=0)[None, :]
        _nn._clamp(W)


def _h_update(Xs, Ws, Ht, c):
    num = np.zeros_like(Ht)
    den = np.zeros_like(Ht)
    for X, W, cs in zip(Xs, Ws, c):
        Hc = np.ascontiguousarray(Ht * cs[:, None])
        num += cs[:, None] * _nn._h_numerator(X.indptr, X.indices, X.data, W, Hc, _nn._n_chunks())
        den += cs[:, None] * W.sum(axis=0)[None, :]
    return _nn._clamp(Ht * num / np.maximum(den, _nn.CLAMP))


def cell_weights(X: sp.csr_matrix, bounds, Ht: np.ndarray, c: np.ndarray, W0: np.ndarray,
                 n_iter: int = 100) -> np.ndarray:
    """Each cell's own weights on fixed programs: KL W steps without the spatial smoothing,
    each section over the genes it measured (its scaling ``c`` is 0 on the others).

    The fitted weights are smoothed over each cell's neighbours (the model's spatial prior);
    imputing a gene a section did not measure from them gives the neighbourhood's expression.
    These weights describe the cell itself, from its own measured genes, as NMF-based
    integrations project a query onto shared factors (LIGER/UINMF; Welch et al. 2019,
    Kriebel & Welch 2022).

    Parameters
    ----------
    X : scipy.sparse.csr_matrix, (n_cells, G) float64
        The normalised counts the model was fitted to, rows grouped by section.
    bounds : list of (start, stop)
        Each section's rows.
    Ht : numpy.ndarray, (G, K) float64
        The programs (columns sum to 1).
    c : numpy.ndarray, (n_sections, G) float64
        Each section's gene scaling, 0 where it did not measure the gene.
    W0 : numpy.ndarray, (n_cells, K)
        The start (the fitted, smoothed weights).
    n_iter : int
        W steps.

    Returns
    -------
    numpy.ndarray, (n_cells, K) float64
    """
    W = np.array(W0, dtype=np.float64, copy=True)
    _nn._clamp(W)
    Xs = [X[a:b] for a, b in bounds]
    Ws = [W[a:b] for a, b in bounds]
    Ht = np.ascontiguousarray(Ht, dtype=np.float64)
    for _ in range(n_iter):
        _w_update(Xs, Ws, Ht, c)
    return W


def _gkl(Xs, Ws, Ht, c) -> float:
    return sum(_nn.gkl(X, W, np.ascontiguousarray(Ht * cs[:, None])) for X, W, cs in zip(Xs, Ws, c))


def iter_fit_joint(X: sp.csr_matrix, bounds: list[tuple[int, int]], n_components: int, S: sp.csr_matrix | None = None,
                   *, max_iter: int = 1000, tol: float = 1e-7, initial: int = 3, small_iter: int = 50,
                   error_freq: int = 10, fit_gamma: bool = True, random_state: int | None = 0,
                   measured: np.ndarray | None = None, warn: bool = True,
                   init: tuple[np.ndarray, np.ndarray] | None = None) -> Generator[Progress, None, JointResult]:
    """Fit joint NNMF; one :class:`Progress` per iteration.

    Parameters
    ----------
    X : scipy.sparse.csr_matrix, (n_cells, G) float64
        All sections' counts (already normalised if wanted), rows grouped by section.
    bounds : list of (start, stop)
        Each section's rows.
    n_components : int
        K.
    S : scipy.sparse.csr_matrix, (n_cells, n_cells), optional
        Block-diagonal row-stochastic kernel (:func:`.nnmf.spatial_kernel` with the
        sections as groups); None fits without smoothing.
    max_iter, tol, initial, small_iter, error_freq
        As :func:`.nnmf.iter_fit_nnmf`, but ``tol`` bounds the absolute relative change
        (default 1e-7).
    fit_gamma : bool
        Fit the per-section gene scaling (False: c = 1, plain joint NNMF).
    random_state : int or None
        Seed of the U(0, 1) starts.
    measured : numpy.ndarray of bool, (n_sections, G), optional
        Which section measured which gene (panels that differ): a section's likelihood runs
        over its own genes only (its scaling c is 0 on the others), every program has a weight
        for every gene, and each gene's scaling is fixed at 1 in the first section that
        measured it. None: every section measured every gene.
    warn : bool
        Warn (``ConvergenceWarning``) when ``max_iter`` ends the fit before ``tol``; callers
        that fit many times warn once for all of them instead.
    init : (W, H^T), optional
        A start instead of the random ones: W (n_cells, K) and H^T (G, K); ``small_iter``
        H steps with W fixed come first, so that genes the start knows nothing about get
        their weights before W moves (the second stage of a union-of-panels fit).

    Returns
    -------
    Generator yielding :class:`Progress`, returning :class:`JointResult`.
    """
    n, G = X.shape
    K = int(n_components)
    rng = np.random.default_rng(random_state)
    Xs = [X[a:b] for a, b in bounds]
    col_sums = [np.asarray(x.sum(axis=0)).ravel() for x in Xs]
    M = np.ones((len(bounds), G), dtype=bool) if measured is None else np.asarray(measured, dtype=bool)
    ref = M.argmax(axis=0)  # each gene's reference section (its scaling fixed at 1)
    c = M.astype(np.float64)
    if init is not None:
        initial = 0
    total = initial * small_iter + max_iter
    step = 0
    if not _nn._kernels_ready(K):
        yield Progress(step, total, "preparing the NNMF kernels (compiled on first use, then cached; ~10 s)")
        _nn._warm_up(K)
    best = None
    if init is not None:
        W, Ht = (np.array(a, dtype=np.float64) for a in init)
        Ws = [W[a:b] for a, b in bounds]
        for _ in range(small_iter):
            Ht = _h_update(Xs, Ws, Ht, c)
        best = (0.0, W, Ht)
    for s in range(max(initial, 1) if init is None else 0):
        W, Ht = _nn._random_start(n, G, K, rng)
        Ws = [W[a:b] for a, b in bounds]
        for _ in range(small_iter if initial else 0):
            _w_update(Xs, Ws, Ht, c)
            Ht = _h_update(Xs, Ws, Ht, c)
            step += 1
            yield Progress(step, total, f"start {s + 1}/{initial}")
        d = _gkl(Xs, Ws, Ht, c)
        if best is None or d < best[0]:
            best = (d, W, Ht)
    _, W, Ht = best
    Ws = [W[a:b] for a, b in bounds]
    trace, old, stop_reason, t = [], np.inf, "max_iter", 0
    for t in range(max_iter):
        _w_update(Xs, Ws, Ht, c)  # (1)
        Ht = _h_update(Xs, Ws, Ht, c)  # (2)
        r = Ht.sum(axis=0)
        Ht /= r[None, :]
        W *= r[None, :]
        _w_update(Xs, Ws, Ht, c)  # (3)
        if fit_gamma:  # (4): closed form on the unsmoothed fit, each gene's reference section fixed at 1
            for s in range(len(bounds)):
                free = M[s] & (ref != s)
                if free.any():
                    fit = col_sums[s] / np.maximum(Ws[s].sum(axis=0) @ Ht.T, _nn.CLAMP)
                    c[s, free] = np.maximum(fit[free], _nn.CLAMP)
        if S is not None:
            _nn._smooth(S.indptr, S.indices, S.data, W, _nn._N_CHUNKS)
            _nn._clamp(W)
        step += 1
        msg = f"iteration {t + 1}"
        if t % error_freq == 0:
            new = _gkl(Xs, Ws, Ht, c)
            trace.append((t, new))
            msg += f", GKL {new:.6g}"
            if t > error_freq and abs(2 * (old - new) / (0.1 + abs(2 * new))) < tol:
                stop_reason = "tol"
                yield Progress(step, total, msg + " (converged)")
                break
            old = new
        yield Progress(step, total, msg)
    H = Ht.T.copy()
    if warn and stop_reason == "max_iter" and max_iter > error_freq:
        from sklearn.exceptions import ConvergenceWarning

        warnings.warn(f"Joint NNMF stopped at max_iter={max_iter} before the tolerance {tol:g} was met; raise "
                      "max_iter (or tol) if the factors still change.", ConvergenceWarning, stacklevel=3)
    with np.errstate(divide="ignore"):
        gamma = np.where(M, np.log(np.maximum(c, _nn.CLAMP)), np.nan)  # NaN: a gene the section did not measure
    return JointResult(W, H, gamma, _gkl(Xs, Ws, Ht, c), np.asarray(trace, float).reshape(-1, 2), t + 1,
                       stop_reason)
