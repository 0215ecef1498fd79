"""Missing-value imputation for voxel data (the osNMF k-NN scheme)."""

from __future__ import annotations

from collections.abc import Generator, Sequence

import numpy as np
from sklearn.neighbors import KNeighborsRegressor

from ._progress import Progress, drain


def iter_impute_knn(X: np.ndarray, coords: np.ndarray, n_neighbors: int = 6,
                    names: Sequence[str] | None = None) -> Generator[Progress, None, np.ndarray]:
    """Fill missing values (NaN) of each gene from its k nearest measured voxels.

    Per gene, a distance-weighted k-NN regression on the voxel coordinates predicts the
    missing voxels from the measured ones, as osNMF does (``knn_impute.py``:
    ``KNeighborsRegressor(n_neighbors=6, weights="distance")``; Cahill et al. 2024 PNAS).
    Input is checked at the call; the generator yields once per imputed gene.

    Parameters
    ----------
    X : numpy.ndarray, shape (n_obs, n_genes)
        Data with NaN where missing. Not modified.
    coords : numpy.ndarray, shape (n_obs, ndim)
        Voxel coordinates (µm).
    n_neighbors : int
        k (osNMF: 6).
    names : sequence of str, optional
        Gene names, for the messages (default: column numbers).

    Returns
    -------
    Generator yielding :class:`Progress`, returning a numpy.ndarray of X's shape and dtype
    without NaN.

    Raises
    ------
    ValueError
        A gene with fewer than ``n_neighbors`` measured voxels (named), shapes that do not
        match, ``n_neighbors < 1``.
    """
    X = np.asarray(X)
    coords = np.asarray(coords, dtype=np.float64)
    if coords.shape[0] != X.shape[0]:
        raise ValueError(f"coords has {coords.shape[0]} rows but X has {X.shape[0]}.")
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, (int, np.integer)) or n_neighbors < 1:
        raise ValueError(f"n_neighbors must be an integer >= 1; got {n_neighbors!r}.")
    names = [f"column {j}" for j in range(X.shape[1])] if names is None else [str(n) for n in names]
    missing = np.isnan(X)
    n_known = (~missing).sum(axis=0)
    too_few = np.flatnonzero(missing.any(axis=0) & (n_known < n_neighbors))
    if too_few.size:
        listed = ", ".join(f"{names[j]} ({int(n_known[j])} measured)" for j in too_few[:8])
        raise ValueError(f"{too_few.size} gene(s) have fewer than {n_neighbors} measured voxels: {listed}. "
                         "Drop them before imputing (they carry too little data to fill the rest).")
    return _impute(X, coords, missing, n_neighbors, names)


def _impute(X, coords, missing, n_neighbors, names):
    out = X.copy()
    todo = np.flatnonzero(missing.any(axis=0))
    for i, j in enumerate(todo):
        m = missing[:, j]
        model = KNeighborsRegressor(n_neighbors=n_neighbors, weights="distance")
        model.fit(coords[~m], X[~m, j])
        out[m, j] = model.predict(coords[m])
        yield Progress(i + 1, todo.size, f"imputed {names[j]} ({int(m.sum()):,} missing voxels)")
    return out


def impute_knn(X: np.ndarray, coords: np.ndarray, n_neighbors: int = 6,
               names: Sequence[str] | None = None) -> np.ndarray:
    """Blocking twin of :func:`iter_impute_knn` (same parameters, returns the filled array)."""
    return drain(iter_impute_knn(X, coords, n_neighbors, names))
