"""The Allen ontology: reading csv and json forms, descendants, roll-up, colours."""

import json

import numpy as np
import pandas as pd
import pytest

from napari_spatial_nmf.core import Ontology
from napari_spatial_nmf.datasets import DATA


@pytest.fixture(scope="module")
def onto():
    return Ontology.read(DATA / "structure_tree_safe_2017.csv.gz")


def test_allen_csv(onto):
    assert len(onto) == 1327
    assert onto["STR"]["name"] == "Striatum"
    assert 672 in onto.descendants("STR")  # caudoputamen
    assert onto.ancestors(672)[-1] == 997  # root
    assert onto["root"]["depth"] == 0
    assert onto.colors()[997] == (1.0, 1.0, 1.0)


def test_json_nested_and_flat_give_the_same_tree(onto, tmp_path):
    t = onto.table
    flat = [{"id": int(i), "acronym": a, "name": n, "rgb_triplet": [int(c[k:k + 2], 16) for k in (0, 2, 4)],
             "structure_id_path": [int(x) for x in onto.ancestors(int(i))[::-1]]}
            for i, a, n, c in zip(t["id"], t["acronym"], t["name"], t["color"])]
    (tmp_path / "structures.json").write_text(json.dumps(flat))
    nodes = {int(i): {"id": int(i), "acronym": a, "name": n, "color_hex_triplet": c,
                      "parent_structure_id": None if pd.isna(p) else int(p), "children": []}
             for i, a, n, c, p in zip(t["id"], t["acronym"], t["name"], t["color"], t["parent_id"])}
    for node in nodes.values():
        if node["parent_structure_id"] is not None:
            nodes[node["parent_structure_id"]]["children"].append(node)
    (tmp_path / "graph.json").write_text(json.dumps({"msg": [nodes[997]]}))
    for f in ("structures.json", "graph.json"):
        other = Ontology.read(tmp_path / f)
        assert len(other) == len(onto)
        assert set(other.descendants("STR")) == set(onto.descendants("STR"))
        assert other.colors()[672] == onto.colors()[672]


def test_rollup(onto, allen):
    ann = allen[1].annotation
    rolled = onto.rollup(ann, 4)
    cp = ann == 672
    assert (rolled[cp] == onto.id_of("STR")).all()
    assert (rolled[ann == 0] == 0).all()
    assert onto.table.loc[np.unique(rolled[rolled > 0]), "depth"].max() <= 4


def test_unreadable_and_cyclic(tmp_path, onto):
    bad = tmp_path / "o.csv"
    bad.write_text("id,acronym\n1,a\n")
    with pytest.raises(ValueError, match="lacks the column"):
        Ontology.read(bad)
    t = onto.table.reset_index(drop=True).copy()
    t.loc[t["id"] == 997, "parent_id"] = 8  # root under its own child: a cycle, no root
    with pytest.raises(ValueError, match=r"no root|cycle"):
        Ontology(t)
