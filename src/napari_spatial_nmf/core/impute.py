"""Missing-value imputation for voxel data (the osNMF k-NN scheme)."""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import KNeighborsRegressor


def impute_knn(X: np.ndarray, coords: np.ndarray, n_neighbors: int = 6) -> np.ndarray:
    """Fill missing values (NaN) of each gene from its k nearest measured voxels.

    Per gene, a distance-weighted k-NN regression on the voxel coordinates predicts the
    missing voxels from the measured ones, as osNMF does (``knn_impute.py``:
    ``KNeighborsRegressor(n_neighbors=6, weights="distance")``; Cahill et al. 2024 PNAS).

    Parameters
    ----------
    X : numpy.ndarray, shape (n_obs, n_genes)
        Data with NaN where missing. Not modified.
    coords : numpy.ndarray, shape (n_obs, ndim)
        Voxel coordinates (µm).
    n_neighbors : int
        k (osNMF: 6).

    Returns
    -------
    numpy.ndarray, same shape and dtype as X, without NaN.

    Raises
    ------
    ValueError
        If a gene has fewer than ``n_neighbors`` measured voxels, or shapes do not match.
    """
    X = np.asarray(X)
    coords = np.asarray(coords, dtype=np.float64)
    if coords.shape[0] != X.shape[0]:
        raise ValueError(f"coords has {coords.shape[0]} rows but X has {X.shape[0]}.")
    if n_neighbors < 1:
        raise ValueError(f"n_neighbors must be >= 1; got {n_neighbors}.")
    missing = np.isnan(X)
    n_known = (~missing).sum(axis=0)
    too_few = np.flatnonzero(missing.any(axis=0) & (n_known < n_neighbors))
    if too_few.size:
        raise ValueError(
            f"{too_few.size} gene(s) have fewer than {n_neighbors} measured voxels (columns "
            f"{too_few[:8].tolist()}); drop them before imputing."
        )
    out = X.copy()
    for j in np.flatnonzero(missing.any(axis=0)):
        m = missing[:, j]
        model = KNeighborsRegressor(n_neighbors=n_neighbors, weights="distance")
        model.fit(coords[~m], X[~m, j])
        out[m, j] = model.predict(coords[m])
    return out
