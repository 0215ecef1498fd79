"""What every tool shares: its generator/blocking twins, input lookup and result storage.

Conventions of :mod:`napari_spatial_nmf.tl` (``docs/data-model.md``):

* A long tool is written once, as a generator ``iter_<tool>(adata, ...)`` that checks
  its input, yields a first :class:`~napari_spatial_nmf.core.Progress` (step 0 of the
  total) and then one per unit of work, and returns the AnnData holding the results.
  :func:`tool` runs it to that first yield *at the call*, so bad input raises before a
  worker thread starts; :func:`blocking` makes the scverse-style twin ``<tool>(adata,
  ...)`` with the same signature (one source of truth for every parameter) that returns
  the copy when ``copy=True`` and None otherwise.
* Results go to new keys only, through :func:`store`, after all work is done:
  ``obsm/varm/obs/var[...]`` for per-observation and per-gene values, and ``uns[key]``
  for the record (``method``, ``params``, ``versions``, ``created_utc``) with tables as
  DataFrames. Storing an existing key warns and replaces it.
* The seed is ``random_state`` everywhere.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Generator
from typing import ParamSpec, TypeVar

import anndata as ad
import numpy as np

from ..core._progress import Progress, drain
from ..core.provenance import provenance

P = ParamSpec("P")
R = TypeVar("R")


def tool(gen_fn: Callable[P, Generator[Progress, None, R]]) -> Callable[P, Generator[Progress, None, R]]:
    """Make a tool generator check its input at the call.

    The decorated generator runs up to its first ``yield`` when it is called (tools
    validate everything before that yield), and the generator returned resumes from
    there. A GUI therefore gets input errors synchronously, on its own thread.
    """

    @functools.wraps(gen_fn)
    def call(*args, **kwargs):
        gen = gen_fn(*args, **kwargs)
        try:
            first = next(gen)
        except StopIteration as stop:
            return _finished(stop.value)
        return _resume(first, gen)

    return call


def _finished(value):
    return value
    yield  # pragma: no cover - makes this a generator


def _resume(first, gen):
    yield first
    return (yield from gen)


def blocking(iter_fn: Callable[P, Generator[Progress, None, R]], name: str,
             after: Callable[[dict, R], None] | None = None) -> Callable[P, R | None]:
    """The blocking twin of a tool generator: same signature, same docstring.

    It drains ``iter_fn`` and returns its result when the tool has no ``copy`` parameter
    or ``copy=True``, else None (keys were added to the AnnData passed in), as scanpy does.
    ``after(arguments, result)``, if given, runs on the result first (e.g. to store it).
    """
    sig = inspect.signature(iter_fn)
    has_copy = "copy" in sig.parameters

    @functools.wraps(iter_fn)
    def run(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        out = drain(iter_fn(*args, **kwargs))
        if after is not None:
            after(bound.arguments, out)
        if has_copy:
            return out if bound.arguments["copy"] else None
        return out

    run.__name__ = run.__qualname__ = name
    run.__signature__ = sig.replace(return_annotation=inspect.Signature.empty)
    del run.__wrapped__  # help() and magicgui read __signature__, not the generator's
    return run


def check_adata(adata) -> ad.AnnData:
    """Raise TypeError unless ``adata`` is an AnnData."""
    if not isinstance(adata, ad.AnnData):
        raise TypeError(f"Expected an AnnData; got {type(adata).__name__}.")
    return adata


def stored_matrix(adata: ad.AnnData, layer: str | None):
    """``adata.X`` or ``adata.layers[layer]`` as stored (dense or sparse), checked to exist."""
    check_adata(adata)
    if layer is None:
        X = adata.X
    elif layer in adata.layers:
        X = adata.layers[layer]
    else:
        raise KeyError(f"No layer {layer!r} in the AnnData; it has {list(adata.layers)}.")
    if X is None:
        raise ValueError("The AnnData has no X matrix.")
    return X


def dense_matrix(adata: ad.AnnData, layer: str | None) -> np.ndarray:
    """:func:`stored_matrix` as a dense numpy array."""
    from ..core._validation import check_dense_memory

    X = stored_matrix(adata, layer)
    if hasattr(X, "toarray"):
        check_dense_memory(X.shape, X.dtype, "X" if layer is None else f"layers[{layer!r}]")
        return np.asarray(X.toarray())
    return np.asarray(X)


def pattern_names(k: int) -> list[str]:
    """Names of the K patterns of a result: ``PP1`` ... ``PPK`` (1-based, as in the papers)."""
    return [f"PP{i + 1}" for i in range(k)]


def signature_names(k: int) -> list[str]:
    """Names of the K signatures of an NNMF result: ``S1`` ... ``SK``."""
    return [f"S{i + 1}" for i in range(k)]


def target(adata: ad.AnnData, copy: bool) -> ad.AnnData:
    """The AnnData that receives the results: a copy when asked."""
    return adata.copy() if copy else adata


def store_result(adata: ad.AnnData, key: str, method: str, params: dict, *, record: dict | None = None,
          obsm: dict | None = None, varm: dict | None = None, obs: dict | None = None,
          var: dict | None = None, layers: dict | None = None, uns: dict | None = None) -> ad.AnnData:
    """Put a finished tool's results into ``adata`` under new keys, in one step.

    ``uns[key]`` gets :func:`~napari_spatial_nmf.core.provenance.provenance` (method,
    parameters without the None ones, versions, time) plus ``record``; the other mappings
    go to the AnnData's fields of the same name (``uns``: further finished records, e.g.
    the final model of a stability sweep). Nothing here computes, so nothing can
    fail after the work is done (the values' shapes are the tools' responsibility). A key
    that already exists is replaced with a warning naming it.
    """
    targets = {"obsm": (adata.obsm, obsm), "varm": (adata.varm, varm), "obs": (adata.obs, obs),
               "var": (adata.var, var), "layers": (adata.layers, layers), "uns": (adata.uns, uns)}
    taken = [f"uns[{key!r}]"] if key in adata.uns else []
    for field, (where, values) in targets.items():
        taken += [f"{field}[{k!r}]" for k in (values or {}) if k in where]
    if taken:
        warnings.warn(f"Replacing the earlier result in {', '.join(taken)}; pass another key_added to keep both.",
                      UserWarning, stacklevel=3)
    for where, values in targets.values():
        for k, v in (values or {}).items():
            where[k] = v
    adata.uns[key] = {**provenance(method, params), **(record or {})}
    return adata
