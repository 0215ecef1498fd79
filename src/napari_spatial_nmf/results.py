"""The results model of the docks: a registry of result AnnDatas that layers refer to.

No Qt and no napari here (as napari-animation keeps its model apart from ``_qt/``). A
result is an AnnData the plugin made (never a user's object) with its kind and key; layers
made from it carry only its id in ``metadata[RESULT_ID]``. Workers compute and return
values; the main thread stores them with :meth:`ResultsRegistry.add` or
:meth:`ResultsRegistry.update`, so a cancelled job leaves no partial keys anywhere.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import anndata as ad

RESULT_ID = "napari_spatial_nmf_result"  # layer.metadata key holding a result id


@dataclass
class Result:
    """One analysis result.

    Attributes
    ----------
    id : str
        Unique within the process, e.g. ``"nmf-3"``.
    kind : str
        ``"nmf"``, ``"nnmf"``, ``"integration"`` ...
    adata : anndata.AnnData
        The result (owned by the registry).
    key : str
        The tool's ``key_added`` in ``adata``.
    source : str
        What it was computed from (the input layer names), for labels in the docks.
    readouts : dict
        Read-outs computed later from this result (e.g. the osNMF suite), by name.
    """

    id: str
    kind: str
    adata: ad.AnnData
    key: str
    source: str = ""
    readouts: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """A short description for combo boxes, e.g. ``"Allen ISH energy: nmf, K = 2"``."""
        k = self.adata.obsm[f"X_{self.key}"].shape[1] if f"X_{self.key}" in self.adata.obsm else "?"
        return f"{self.source or self.id}: {self.kind}, K = {k}"


class ResultsRegistry:
    """Results by id, with callbacks when the set changes (for combo boxes)."""

    def __init__(self):
        self._results: dict[str, Result] = {}
        self._count = itertools.count(1)
        self._listeners: list = []

    def add(self, adata: ad.AnnData, kind: str, key: str, source: str = "") -> Result:
        """Register a finished result (call on the main thread)."""
        res = Result(f"{kind}-{next(self._count)}", kind, adata, key, source)
        if source and isinstance(adata.uns.get(key), dict):
            adata.uns[key]["source_name"] = source  # our result's own record: a saved file reopens under this name
        self._results[res.id] = res
        self._changed()
        return res

    def get(self, rid: str) -> Result:
        """The result with id ``rid``.

        Raises
        ------
        KeyError
            No such result (its layers were closed, or it came from another session).
        """
        try:
            return self._results[rid]
        except KeyError:
            raise KeyError(f"No result {rid!r}: its layers were removed, or it was made in another session "
                           "(open its result.h5ad).") from None

    def update(self, rid: str, name: str, value) -> None:
        """Store a read-out of a result (call on the main thread, with a finished value)."""
        self.get(rid).readouts[name] = value
        self._changed()

    def for_layers(self, layers: Iterable, kind: str | None = None) -> list[Result]:
        """The results the given layers refer to, in layer order, each once."""
        out, seen = [], set()
        for lyr in layers:
            rid = getattr(lyr, "metadata", {}).get(RESULT_ID)
            if rid in self._results and rid not in seen and (kind is None or self._results[rid].kind == kind):
                seen.add(rid)
                out.append(self._results[rid])
        return out

    def retain(self, layers: Iterable) -> None:
        """Forget results no layer refers to any more (frees their memory)."""
        live = {getattr(lyr, "metadata", {}).get(RESULT_ID) for lyr in layers}
        gone = [rid for rid in self._results if rid not in live]
        for rid in gone:
            del self._results[rid]
        if gone:
            self._changed()

    def connect(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever results are added, updated or forgotten. Bound methods
        are held weakly, so a closed dock never stays alive through the registry.
        """
        ref = weakref.WeakMethod(callback) if hasattr(callback, "__self__") else (lambda: callback)
        self._listeners.append(ref)

    def disconnect(self, callback: Callable[[], None]) -> None:
        """Stop calling ``callback``."""
        self._listeners = [r for r in self._listeners if r() not in (None, callback)]

    def _changed(self) -> None:
        alive = []
        for ref in self._listeners:
            cb = ref()
            if cb is not None:
                alive.append(ref)
                cb()
        self._listeners = alive

    def __len__(self) -> int:
        return len(self._results)

    def __iter__(self):
        return iter(self._results.values())


REGISTRY = ResultsRegistry()
"""The process's registry (the reader and every dock share it)."""
