"""An atlas structure ontology (Allen Mouse Brain Atlas style): a tree of structures.

Each structure has an integer id, an acronym, a name, a parent id (none for the root) and a
colour. A structure *contains* itself and all its descendants; annotation volumes label
each voxel with the id of the finest structure it belongs to.
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

_REQUIRED = ("id", "acronym", "name", "parent_id")


class Ontology:
    """A structure tree with id / acronym look-up and descendant queries.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per structure with columns ``id`` (int), ``acronym``, ``name``,
        ``parent_id`` (int, or missing for the root) and optionally ``color``
        (hex ``"RRGGBB"``).

    Attributes
    ----------
    table : pandas.DataFrame
        Indexed by id, with the columns above plus ``depth`` (root = 0).

    Raises
    ------
    ValueError
        Duplicate ids, parents that do not resolve to a structure, no root, or a cycle.
    """

    def __init__(self, table: pd.DataFrame):
        missing = [c for c in _REQUIRED if c not in table.columns]
        if missing:
            raise ValueError(f"The ontology table lacks the column(s) {missing}; it needs {list(_REQUIRED)}.")
        t = table.copy()
        t["id"] = pd.to_numeric(t["id"], errors="raise").astype(np.int64)
        if t["id"].duplicated().any():
            dup = t.loc[t["id"].duplicated(), "id"].tolist()[:10]
            raise ValueError(f"The ontology has duplicate structure ids, e.g. {dup}.")
        t["parent_id"] = pd.to_numeric(t["parent_id"], errors="coerce").astype("Int64")
        t = t.set_index("id", drop=False)
        known = set(t.index)
        bad = t[t["parent_id"].notna() & ~t["parent_id"].isin(known)]
        if len(bad):
            pairs = ", ".join(f"{i}->{p}" for i, p in zip(bad["id"][:10], bad["parent_id"][:10]))
            raise ValueError(
                f"{len(bad)} structure(s) have a parent id that is not in the ontology "
                f"(child->parent: {pairs}). Use the complete structure tree of the atlas."
            )
        roots = t.index[t["parent_id"].isna()].tolist()
        if not roots:
            raise ValueError("The ontology has no root (a structure without a parent); it has a cycle.")
        if "color" not in t.columns:
            t["color"] = "AAAAAA"
        t["color"] = t["color"].fillna("AAAAAA").astype(str).str.lstrip("#").str.upper()
        children: dict[int, list[int]] = {int(i): [] for i in t.index}
        for i, p in zip(t["id"], t["parent_id"]):
            if not pd.isna(p):
                children[int(p)].append(int(i))
        depth = {}
        queue = deque((r, 0) for r in roots)
        while queue:
            node, d = queue.popleft()
            depth[node] = d
            queue.extend((c, d + 1) for c in children[node])
        if len(depth) != len(t):
            raise ValueError("The ontology's parent links form a cycle: some structures never reach a root.")
        t["depth"] = t["id"].map(depth).astype(np.int64)
        self.table = t[["id", "acronym", "name", "parent_id", "depth", "color"]]
        self._children = children
        self._by_acronym = {str(a): int(i) for a, i in zip(t["acronym"], t["id"])}

    # ------------------------------------------------------------------ readers
    @classmethod
    def read(cls, path) -> Ontology:
        """Read an Allen structure csv (``.csv``/``.csv.gz``) or a json ontology.

        The csv needs ``id, acronym, name, parent_structure_id`` (``color_hex_triplet``
        optional), as Allen's ``structure_tree_safe_2017.csv``. The json may be Allen's
        structure graph (nested ``children``, ``msg`` wrapper allowed) or a flat list of
        structures as brainglobe's ``structures.json`` (``structure_id_path``,
        ``rgb_triplet``).

        Raises
        ------
        FileNotFoundError, ValueError
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"Ontology file not found: {path}")
        name = path.name.lower()
        if name.endswith(".json"):
            try:
                obj = json.loads(path.read_text())
            except (ValueError, UnicodeDecodeError) as exc:
                raise ValueError(f"The ontology {path} is not valid JSON ({exc}); use Allen's structure graph, a "
                                 "BrainGlobe structures.json, or a structure csv.") from None
            try:
                return cls.from_json(obj)
            except ValueError as exc:
                raise ValueError(f"The ontology {path}: {exc}") from None
        if name.endswith((".csv", ".csv.gz", ".tsv")):
            try:
                df = pd.read_csv(path, sep="\t" if name.endswith(".tsv") else ",")
            except Exception as exc:  # pandas raises many types for malformed text
                raise ValueError(f"Could not read {path} as a csv ontology: {exc}") from exc
            try:
                return cls.from_allen_table(df)
            except ValueError as exc:
                raise ValueError(f"The ontology {path}: {exc}") from None
        raise ValueError(f"Unknown ontology format for {path.name}: use an Allen .csv or a .json file.")

    @classmethod
    def from_allen_table(cls, df: pd.DataFrame) -> Ontology:
        """Build from an Allen-style table (``parent_structure_id``, ``color_hex_triplet``)."""
        df = df.rename(columns={"parent_structure_id": "parent_id", "color_hex_triplet": "color"})
        if "parent_id" not in df.columns and "structure_id_path" in df.columns:
            df = df.assign(parent_id=[_parent_from_path(p) for p in df["structure_id_path"]])
        return cls(df)

    @classmethod
    def from_json(cls, obj) -> Ontology:
        """Build from Allen's nested structure graph or a flat brainglobe-style list."""
        if isinstance(obj, dict) and "msg" in obj:
            obj = obj["msg"]
        if isinstance(obj, dict):
            obj = [obj]
        if not isinstance(obj, list) or not all(isinstance(o, dict) for o in obj):
            raise ValueError("A json ontology must be a list of structures or Allen's structure graph.")
        rows = []
        stack = list(reversed(obj))  # depth-first in the file's order (the ontology's own order)
        while stack:
            s = stack.pop()
            parent = s.get("parent_structure_id", s.get("parent_id"))
            if parent is None and "structure_id_path" in s:
                parent = _parent_from_path(s["structure_id_path"])
            color = s.get("color_hex_triplet")
            if color is None and "rgb_triplet" in s:
                color = "".join(f"{int(c):02X}" for c in s["rgb_triplet"])
            try:
                rows.append({"id": s["id"], "acronym": s["acronym"], "name": s["name"],
                             "parent_id": parent, "color": color})
            except KeyError as exc:
                raise ValueError(f"A structure in the json ontology lacks the field {exc}.") from exc
            stack.extend(reversed(s.get("children", []) or []))
        return cls(pd.DataFrame(rows))

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self.table)

    def __contains__(self, key) -> bool:
        try:
            self.id_of(key)
        except KeyError:
            return False
        return True

    def id_of(self, key) -> int:
        """Structure id from an id or an acronym (``"STR"``)."""
        if isinstance(key, str):
            if key in self._by_acronym:
                return self._by_acronym[key]
            raise KeyError(f"No structure with acronym {key!r} in the ontology.")
        key = int(key)
        if key not in self._children:
            raise KeyError(f"No structure with id {key} in the ontology.")
        return key

    def __getitem__(self, key) -> pd.Series:
        return self.table.loc[self.id_of(key)]

    def descendants(self, key, include_self: bool = True) -> np.ndarray:
        """Ids of every structure below ``key`` (id or acronym) in the tree."""
        root = self.id_of(key)
        out, stack = [], [root]
        while stack:
            n = stack.pop()
            out.append(n)
            stack.extend(self._children[n])
        if not include_self:
            out.remove(root)
        return np.asarray(out, dtype=np.int64)

    def ancestors(self, key, include_self: bool = True) -> list[int]:
        """Ids from ``key`` up to the root."""
        node = self.id_of(key)
        out = [node] if include_self else []
        parent = self.table.at[node, "parent_id"]
        while not pd.isna(parent):
            out.append(int(parent))
            parent = self.table.at[int(parent), "parent_id"]
        return out

    def rollup(self, annotation: np.ndarray, depth: int) -> np.ndarray:
        """Relabel an annotation with each label's ancestor at ``depth`` (shallower labels stay).

        Parameters
        ----------
        annotation : numpy.ndarray of int
            Structure ids (0 = outside).
        depth : int
            Tree depth to roll up to (root = 0; in the Allen ontology, 4 gives e.g. STR, HPF).

        Returns
        -------
        numpy.ndarray, same shape and dtype
        """
        labels, inverse = np.unique(annotation, return_inverse=True)
        mapped = np.array([0 if lab == 0 else next(a for a in self.ancestors(int(lab))
                                                   if self.table.at[a, "depth"] <= depth)
                           for lab in labels], dtype=annotation.dtype)
        return mapped[inverse].reshape(annotation.shape)

    def check_labels(self, labels) -> None:
        """Raise ValueError if any non-zero label is not a structure id of this ontology."""
        labels = np.unique(np.asarray(labels))
        labels = labels[labels != 0]
        unknown = [int(x) for x in labels if int(x) not in self._children]
        if unknown:
            raise ValueError(
                f"The annotation has {len(unknown)} label(s) that are not structures of the "
                f"ontology, e.g. {unknown[:8]}. Use the ontology that belongs to this annotation."
            )

    def membership(self, labels) -> sp.csr_matrix:
        """Sparse (n_structures x n_labels) 0/1 matrix: label j lies inside structure i.

        Rows follow ``self.table`` order; a structure contains a label if the label is the
        structure itself or one of its descendants.
        """
        labels = np.asarray(labels, dtype=np.int64)
        self.check_labels(labels)
        row_of = {int(i): r for r, i in enumerate(self.table.index)}
        rows, cols = [], []
        for j, lab in enumerate(labels):
            if lab == 0:
                continue
            for a in self.ancestors(int(lab)):
                rows.append(row_of[a])
                cols.append(j)
        data = np.ones(len(rows), dtype=np.float64)
        return sp.csr_matrix((data, (rows, cols)), shape=(len(self.table), labels.size))

    def colors(self) -> dict[int, tuple[float, float, float]]:
        """Structure id -> RGB in [0, 1] (from the ontology's hex colours)."""
        out = {}
        for i, c in zip(self.table["id"], self.table["color"]):
            try:
                out[int(i)] = tuple(int(c[k : k + 2], 16) / 255 for k in (0, 2, 4))
            except ValueError:
                out[int(i)] = (0.67, 0.67, 0.67)
        return out


def _parent_from_path(path) -> int | None:
    """Parent id from a root-to-self path: Allen's ``"/997/8/567/"`` or brainglobe's list."""
    parts = list(path) if isinstance(path, (list, tuple)) else [p for p in str(path).strip("/").split("/") if p]
    return int(parts[-2]) if len(parts) >= 2 else None
