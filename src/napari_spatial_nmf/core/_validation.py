"""Input checks shared by the core. Every message says what is wrong and how to fix it."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def as_float_matrix(X, *, name: str = "X", allow_missing: bool = False) -> np.ndarray:
    """Return ``X`` as a dense C-contiguous float32/float64 matrix after checking it.

    Parameters
    ----------
    X : array-like or scipy.sparse matrix, shape (n_obs, n_vars)
    name : str
        Name used in error messages.
    allow_missing : bool
        If True, NaN (missing values) pass; otherwise they raise.

    Raises
    ------
    ValueError
        If ``X`` is not 2-D, is empty, holds infinities, negative values, or (unless
        ``allow_missing``) NaN.
    """
    if sp.issparse(X):
        check_dense_memory(X.shape, np.float64 if X.dtype.itemsize > 4 else np.float32, name)
        X = X.toarray()
    X = np.asarray(X)
    if X.dtype.kind not in "fiub":
        raise ValueError(f"{name} must be numeric; got dtype {X.dtype}.")
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    if X.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (observations x genes) matrix; got shape {X.shape}.")
    if X.size == 0:
        raise ValueError(f"{name} is empty (shape {X.shape}); check the mask and the gene selection.")
    n_nan = int(np.isnan(X).sum())
    if n_nan and not allow_missing:
        cols = np.flatnonzero(np.isnan(X).any(axis=0))
        raise ValueError(
            f"{name} has {n_nan} missing values (NaN) in {cols.size} gene(s). NMF needs complete "
            "data: impute them first (napari_spatial_nmf.tl.impute_knn, the osNMF k-NN scheme) "
            "or pass missing='zero' to count them as no expression."
        )
    if np.isinf(X).any():
        raise ValueError(f"{name} holds {int(np.isinf(X).sum())} infinite values; remove or clip them.")
    with np.errstate(invalid="ignore"):
        n_neg = int((X < 0).sum())
    if n_neg:
        raise ValueError(
            f"{name} has {n_neg} negative values (min {np.nanmin(X):g}). NMF needs non-negative data. "
            "If they are a missing-value code (Allen grids use -1), read the data with the package's "
            "readers, which turn the code into NaN, or pass it as missing_value."
        )
    return np.ascontiguousarray(X)


def check_dense_memory(shape, dtype, name: str = "X") -> None:
    """Refuse to make a dense (n_obs, n_vars) copy that would not fit in memory (before allocating).

    Raises
    ------
    napari_spatial_nmf.core._memory.MemoryLimitError
        The dense matrix exceeds the memory limit.
    """
    from ._memory import check_memory

    n = 1
    for v in shape:
        n *= int(v)
    check_memory(n * np.dtype(dtype).itemsize, f"a dense copy of {name} ({' x '.join(f'{int(v):,}' for v in shape)})",
                 "This tool needs the matrix in memory: use fewer observations or genes (e.g. highly variable genes), "
                 "or a method that keeps it sparse (tl.nnmf).")


def check_n_components(n_components, n_obs: int, n_vars: int) -> int:
    """Check that 1 <= K <= min(n_obs, n_vars)."""
    if isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer)):
        raise TypeError(f"n_components must be an integer; got {n_components!r}.")
    k_max = min(n_obs, n_vars)
    if not 1 <= n_components <= k_max:
        limit = (f"the number of genes ({n_vars:,})" if n_vars <= n_obs
                 else f"the number of observations, voxels or cells ({n_obs:,})")
        raise ValueError(
            f"K = {n_components} patterns is out of range: K must be between 1 and {limit}; the data have "
            f"{n_vars:,} genes and {n_obs:,} observations (min(n_obs, n_genes) = {k_max})."
        )
    return int(n_components)


def check_int(value, name: str, *, minimum: int | None = None) -> int:
    """``value`` as an int, refusing floats, strings and bools (2.7 would silently run 2).

    Raises
    ------
    TypeError
        Not an integer.
    ValueError
        Below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer; got {value!r} ({type(value).__name__}).")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}; got {value}.")
    return int(value)


def check_positive(value, name: str) -> float:
    """``value`` as a finite float > 0, refusing strings and bools.

    Raises
    ------
    TypeError
        Not a real number (e.g. the string "10").
    ValueError
        Not finite or not positive.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number; got {value!r} ({type(value).__name__}).")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive, finite number; got {value!r}.")
    return float(value)


def check_int_sequence(values, name: str, *, minimum: int | None = None) -> list[int]:
    """A non-empty sequence of integers (a range, list or array), sorted and unique.

    Raises
    ------
    TypeError
        A string, a scalar, or any element that is not an integer (2.9 would silently be 2).
    ValueError
        Empty, or an element below ``minimum``.
    """
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name} must be a sequence of integers such as range(2, 11); got {values!r}.")
    out = sorted({check_int(v, f"every element of {name}", minimum=minimum) for v in values})
    if not out:
        raise ValueError(f"{name} is empty.")
    return out
