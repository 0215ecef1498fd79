"""NMF starts: NNDSVD (and its a / ar variants) and scikit-learn's random start.

One module for the single fit (:mod:`.nmf`) and the batched bootstrap replicates
(:mod:`.batched`). NNDSVD is Boutsidis & Gallopoulos (2008), "SVD based initialization:
a head start for nonnegative matrix factorization", Pattern Recognition 41:1350, as
scikit-learn's ``sklearn/decomposition/_nmf.py::_initialize_nmf`` computes it. The
weighted form (:func:`nndsvd_from_svd` with ``row_w`` / ``col_w``) is the start of a
bootstrap replicate computed from the singular vectors of the resampled matrix without
building it: every copy of a row shares its value, so the norms of the positive and
negative parts are weighted sums.
"""

from __future__ import annotations

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils.extmath import randomized_svd

VARIANTS = ("nndsvda", "nndsvd", "nndsvdar")
INITS = (*VARIANTS, "random")
EPS = 1e-6  # scikit-learn zeroes start entries below it


def nndsvd_from_svd(U: np.ndarray, S: np.ndarray, V: np.ndarray, *, variant: str = "nndsvda",
                    avg: float = 0.0, row_w: np.ndarray | None = None, col_w: np.ndarray | None = None,
                    random_state=None) -> tuple[np.ndarray, np.ndarray]:
    """NNDSVD start from a truncated SVD X ~= U diag(S) V^T.

    Parameters
    ----------
    U : numpy.ndarray, (n, k)
        Left singular vectors (per-copy values for a resampled matrix).
    S : numpy.ndarray, (k,)
        Singular values, descending.
    V : numpy.ndarray, (m, k)
        Right singular vectors (per-copy values).
    variant : {"nndsvda", "nndsvd", "nndsvdar"}
        "nndsvda" fills the zeros with ``avg`` (scikit-learn's default start), "nndsvdar"
        with small random values, "nndsvd" leaves them.
    avg : float
        The data mean (of the resampled matrix), for the fills.
    row_w, col_w : numpy.ndarray, (n,) and (m,), optional
        Copy counts of each row / column in a resampled matrix (default 1).
    random_state : int, RandomState or None
        For "nndsvdar".

    Returns
    -------
    (W (n, k), H (k, m)), float64
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}; got {variant!r}.")
    n, k = U.shape
    m = V.shape[0]
    rw = np.ones(n) if row_w is None else np.asarray(row_w, dtype=np.float64)
    cw = np.ones(m) if col_w is None else np.asarray(col_w, dtype=np.float64)
    W = np.zeros((n, k))
    H = np.zeros((k, m))
    W[:, 0] = np.sqrt(S[0]) * np.abs(U[:, 0])
    H[0] = np.sqrt(S[0]) * np.abs(V[:, 0])
    for j in range(1, k):
        x, y = U[:, j], V[:, j]
        xp, yp = np.maximum(x, 0), np.maximum(y, 0)
        xn, yn = -np.minimum(x, 0), -np.minimum(y, 0)
        xpn, ypn = np.sqrt(rw @ (xp * xp)), np.sqrt(cw @ (yp * yp))
        xnn, ynn = np.sqrt(rw @ (xn * xn)), np.sqrt(cw @ (yn * yn))
        mp, mn = xpn * ypn, xnn * ynn
        if mp > mn:
            u, v, sigma = xp / (xpn or 1), yp / (ypn or 1), mp
        else:
            u, v, sigma = xn / (xnn or 1), yn / (ynn or 1), mn
        lbd = np.sqrt(S[j] * sigma)
        W[:, j] = lbd * u
        H[j] = lbd * v
    W[W < EPS] = 0
    H[H < EPS] = 0
    if variant == "nndsvda":
        W[W == 0] = avg
        H[H == 0] = avg
    elif variant == "nndsvdar":
        rng = check_random_state(random_state)
        W[W == 0] = np.abs(avg * rng.standard_normal(size=int((W == 0).sum())) / 100)
        H[H == 0] = np.abs(avg * rng.standard_normal(size=int((H == 0).sum())) / 100)
    return W, H


def random_start(X: np.ndarray, n_components: int, random_state) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's ``init="random"``: |N(0, 1)| * sqrt(mean(X) / K), H drawn before W.

    Returns (W (n, K), H (K, m)) in X's dtype; also staNMF's random restarts (Wu 2016).
    """
    rng = check_random_state(random_state)
    avg = np.sqrt(X.mean() / n_components)
    H = np.abs(avg * rng.standard_normal(size=(n_components, X.shape[1])).astype(X.dtype, copy=False))
    W = np.abs(avg * rng.standard_normal(size=(X.shape[0], n_components)).astype(X.dtype, copy=False))
    return W, H


def initialize(X: np.ndarray, n_components: int, init: str = "nndsvda",
               random_state=None) -> tuple[np.ndarray, np.ndarray]:
    """Initial W (n_obs x K) and H (K x n_genes), as scikit-learn's ``_initialize_nmf``.

    Parameters
    ----------
    X : numpy.ndarray, shape (n_obs, n_genes), non-negative float
    n_components : int
    init : {"nndsvda", "nndsvd", "nndsvdar", "random"}
    random_state : int, numpy.random.RandomState or None
        Seeds the randomized SVD (Halko et al. 2009) and the random fills.

    Returns
    -------
    (W, H) in X's dtype.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}; got {init!r}.")
    if init == "random":
        return random_start(X, n_components, random_state)
    rng = check_random_state(random_state)
    U, S, Vt = randomized_svd(X, n_components, random_state=rng)
    W, H = nndsvd_from_svd(U, S, Vt.T, variant=init, avg=float(X.mean()), random_state=rng)
    return W.astype(X.dtype, copy=False), H.astype(X.dtype, copy=False)
