"""Frobenius NMF by coordinate descent (HALS), one ``yield`` per iteration.

X (n_obs x n_genes) ~= W H with W >= 0 (n_obs x K, the principal patterns: one spatial
pattern per column) and H >= 0 (K x n_genes, the gene coefficients).

The solver follows scikit-learn's ``NMF(solver="cd")`` step for step (Cichocki & Phan 2009
HALS; Hsieh & Dhillon 2011; sklearn ``sklearn/decomposition/_nmf.py``,
``_fit_coordinate_descent`` and ``_update_cdnmf_fast``): each iteration updates every column
of W, then every row of H, in order; it stops when the summed projected-gradient violation
falls below ``tol`` times that of the first iteration, or after ``max_iter`` iterations.
The initialisations (NNDSVD, NNDSVDa, NNDSVDar, random) are those of Boutsidis & Gallopoulos
(2008) as scikit-learn implements them. Unlike a single scikit-learn call, every iteration
yields, so a GUI can show progress and cancel.
"""

from __future__ import annotations

import warnings
from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from ._progress import Progress, drain
from ._validation import as_float_matrix, check_n_components
from .starts import INITS, initialize


@dataclass
class NMFResult:
    """A fitted NMF.

    Attributes
    ----------
    patterns : numpy.ndarray, shape (n_obs, K)
        Principal patterns W, each column scaled to a maximum of 1.
    coefficients : numpy.ndarray, shape (K, n_genes)
        Gene coefficients H, carrying the scale (``patterns @ coefficients`` is the fit).
    n_iter : int
        Iterations run.
    converged : bool
        True if the stopping rule was met before ``max_iter``.
    stop_reason : str
        Why the fit stopped: ``"tol"`` (the violation fell below ``tol`` times the first
        one) or ``"max_iter"`` (which also warns with scikit-learn's ``ConvergenceWarning``).
    reconstruction_err : float
        Frobenius norm ||X - W H||_F, as scikit-learn's ``reconstruction_err_``.
    relative_error : float
        ``reconstruction_err / ||X||_F``.
    params : dict
        The arguments of the fit (K, init, tol, max_iter, random_state).
    """

    patterns: np.ndarray
    coefficients: np.ndarray
    n_iter: int
    converged: bool
    stop_reason: str
    reconstruction_err: float
    relative_error: float
    params: dict = field(default_factory=dict)


def _cd_sweep(W: np.ndarray, HHt: np.ndarray, XHt: np.ndarray) -> float:
    """Update the columns of W in place, one coordinate block at a time; return the violation."""
    violation = 0.0
    for t in range(W.shape[1]):
        grad = W @ HHt[t] - XHt[:, t]
        pg = np.where(W[:, t] == 0, np.minimum(grad, 0), grad)
        violation += float(np.abs(pg).sum())
        hess = HHt[t, t]
        if hess != 0:
            W[:, t] = np.maximum(W[:, t] - grad / hess, 0)
    return violation


def iter_fit_nmf(
    X,
    n_components: int,
    *,
    init: str = "nndsvda",
    max_iter: int = 200,
    tol: float = 1e-4,
    random_state=0,
) -> Generator[Progress, None, NMFResult]:
    """Fit Frobenius NMF, yielding one :class:`Progress` per iteration.

    Input is checked when this function is *called* (before any iteration), so a GUI
    reports bad input at once; the returned generator does the work.

    Parameters
    ----------
    X : array-like, shape (n_obs, n_genes)
        Non-negative, finite data (float32 stays float32).
    n_components : int
        K, the number of principal patterns, 1 <= K <= min(n_obs, n_genes).
    init : {"nndsvda", "nndsvd", "nndsvdar", "random"}
        Initialisation (see :func:`initialize`); "nndsvda" is scikit-learn's default.
    max_iter : int
        Maximum number of iterations (scikit-learn's default 200).
    tol : float
        Relative tolerance on the projected-gradient violation (scikit-learn's 1e-4).
    random_state : int, numpy.random.RandomState or None
        Seed; a fixed seed gives identical results.

    Returns
    -------
    Generator yielding :class:`Progress`, returning :class:`NMFResult`.

    Raises
    ------
    ValueError
        Negative, NaN or infinite values; an empty matrix; K out of range; bad options.
    """
    X = as_float_matrix(X)
    k = check_n_components(n_components, *X.shape)
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}; got {init!r}.")
    if int(max_iter) < 1:
        raise ValueError(f"max_iter must be >= 1; got {max_iter}.")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0; got {tol}.")
    if not np.any(X):
        raise ValueError("X is all zeros: there is no expression to factorize.")
    params = {"n_components": k, "init": init, "max_iter": int(max_iter), "tol": float(tol),
              "random_state": random_state if isinstance(random_state, (int, type(None))) else "RandomState",
              "solver": "cd (HALS), scikit-learn order", "beta_loss": "frobenius"}
    return _fit(X, k, init, int(max_iter), float(tol), random_state, params)


def _fit(X, k, init, max_iter, tol, random_state, params) -> Generator[Progress, None, NMFResult]:
    # Fit X / s with s a power of two near max(X): exact in floating point, so data of any
    # scale (1e-30 or 1e6 times the usual) follow the iterates of unit-scale data instead of
    # underflowing or meeting scikit-learn's absolute 1e-6 threshold in the start.
    s = float(2.0 ** np.round(np.log2(float(X.max()))))
    Xs = X / X.dtype.type(s) if s != 1.0 else X
    W, H = initialize(Xs, k, init, random_state)
    Ht = np.ascontiguousarray(H.T)
    XT = np.ascontiguousarray(Xs.T)
    violation_init = None
    stop_reason = "max_iter"
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        violation = _cd_sweep(W, Ht.T @ Ht, Xs @ Ht)
        violation += _cd_sweep(Ht, W.T @ W, XT @ W)
        if violation_init is None:
            violation_init = violation
        ratio = violation / violation_init if violation_init else 0.0
        yield Progress(n_iter, max_iter, f"iteration {n_iter}/{max_iter}: the fit still changes by "
                                         f"{ratio:.1e} of its first step (stops below {tol:g})")
        if violation_init == 0 or ratio <= tol:
            stop_reason = "tol"
            break
    if stop_reason == "max_iter" and tol > 0:  # tol <= 0 asks for exactly max_iter iterations
        warnings.warn(f"NMF stopped at max_iter={max_iter} before the tolerance {tol:g} was met; increase "
                      "max_iter to improve convergence.", ConvergenceWarning, stacklevel=2)
    H = Ht.T * H.dtype.type(s)  # the data scale goes back into the coefficients
    err = float(np.linalg.norm((Xs - W @ Ht.T).astype(np.float64))) * s
    scale = W.max(axis=0)
    scale[scale == 0] = 1
    patterns = (W / scale).astype(X.dtype, copy=False)
    coefficients = (H * scale[:, None]).astype(X.dtype, copy=False)
    return NMFResult(
        patterns=patterns,
        coefficients=coefficients,
        n_iter=n_iter,
        converged=stop_reason == "tol",
        stop_reason=stop_reason,
        reconstruction_err=err,
        relative_error=err / (float(np.linalg.norm(Xs.astype(np.float64))) * s),
        params=params,
    )


def fit_nmf(X, n_components: int, **kwargs) -> NMFResult:
    """Blocking twin of :func:`iter_fit_nmf` (same parameters and errors)."""
    return drain(iter_fit_nmf(X, n_components, **kwargs))
