"""The osNMF analysis suite on the real Allen grids and BDGP images."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
from scipy import ndimage

from napari_spatial_nmf import tl
from napari_spatial_nmf.core import atlas_stats as A


@pytest.fixture(scope="module")
def allen_nmf(allen):
    stack, atlas = allen
    a = stack.to_anndata(mask=atlas.mask)
    tl.impute_knn(a)
    tl.nmf(a, 2, layer="imputed")
    return a, atlas


@pytest.fixture(scope="module")
def bdgp_nmf(bdgp):
    stack, _ = bdgp
    a = stack.to_anndata()
    tl.nmf(a, 21, max_iter=100)
    return a


def test_adjacency_is_the_6_connected_dilation(allen):
    _, atlas = allen
    lab = A.structure_labels(atlas.annotation, atlas.ontology)
    ids, edges = A.structure_adjacency(lab)
    cross = ndimage.generate_binary_structure(3, 1)
    for acr in ("CP", "CA3", "ACB"):
        s = atlas.ontology.id_of(acr)
        touched = set(np.unique(lab[ndimage.binary_dilation(lab == s, cross)])) - {0, s}
        i = int(np.searchsorted(ids, s))
        mine = {int(ids[b if a == i else a]) for a, b in edges if i in (a, b)}
        assert mine == touched


def test_pdyn_best_contiguous_combination_is_striatal(allen):
    stack, atlas = allen
    onto = atlas.ontology
    lab = A.structure_labels(atlas.annotation, onto)
    table, counts = A.region_combinations(stack.data[:1], lab, onto, names=["Pdyn"])
    best = A.best_combinations(table).iloc[0]
    striatum = set(onto.descendants("STR").tolist())
    members = [int(x) for x in best["ids"].split(",")]
    assert best["size"] == 3 and sum(m in striatum for m in members) >= 2, best["structures"]
    # exact: the union's indicator correlates with Pdyn as the per-structure sums say
    v = stack.data[0]
    m = (lab > 0) & np.isfinite(v)
    union = np.isin(lab, members)
    assert np.corrcoef(v[m], union[m].astype(float))[0, 1] == pytest.approx(best["score"], rel=1e-9)
    # counts on the 200 µm CCF (reported beside the paper's 22,711 pairs and 1,834,540 triples)
    assert counts["n_structures"] > 600 and counts["n_pairs"] > counts["n_structures"]
    assert counts["n_triples"] > counts["n_pairs"]


def test_triples_are_connected_and_complete():
    # a path 0-1-2-3 plus a triangle 1-2-4: connected triples by brute force
    edges = np.array([[0, 1], [1, 2], [2, 3], [1, 4], [2, 4]])
    got = {tuple(t) for t in A.connected_triples(5, edges)}
    import itertools

    adj = {tuple(e) for e in edges.tolist()}
    expect = set()
    for t in itertools.combinations(range(5), 3):
        links = sum((a, b) in adj for a, b in itertools.combinations(t, 2))
        if links >= 2:
            expect.add(t)
    assert got == expect


def test_levels_dice_and_bad_input(allen_nmf):
    a, atlas = allen_nmf
    table = tl.region_combinations(a, atlas.annotation, atlas.ontology, level="coarse")
    assert a.uns["nmf_region_combinations"]["n_structures"] == 12
    assert table.query("size == 1 and rank == 1 and pattern == 'PP1'")["structures"].item() == "STR"
    # the osNMF medium level: the children of the 12 (62 in the 2017 tree; the paper counted 66)
    onto = atlas.ontology
    medium = A.medium_structures(onto)
    assert len(medium) == 62 and onto.id_of("STRd") in medium and onto.id_of("CBX") in medium
    assert all(onto.table.at[onto.table.at[i, "parent_id"], "acronym"] in A.COARSE_12 for i in medium)
    lab = A.structure_labels(atlas.annotation, onto, "medium")
    cp = atlas.annotation == onto.id_of("CP")
    assert (lab[cp] == onto.id_of("STRd")).all()  # CP voxels belong to the dorsal striatum
    med = tl.region_combinations(a, atlas.annotation, onto, level="medium")
    assert a.uns["nmf_region_combinations"]["n_structures"] == len(np.unique(lab[lab > 0]))
    assert med.query("size == 1 and rank == 1 and pattern == 'PP1'")["structures"].item() == "STRd"
    dice = tl.region_combinations(a, atlas.annotation, atlas.ontology, score="dice", max_size=2)
    assert dice["score"].between(0, 1).all()
    with pytest.raises(ValueError, match="depths"):
        tl.region_combinations(a, atlas.annotation, atlas.ontology, level=40)
    with pytest.raises(ValueError, match="no structure"):
        tl.region_combinations(a, atlas.annotation, atlas.ontology, level=["STR", "NOT-A-REGION"])
    with pytest.raises(ValueError, match="same grid"):
        tl.region_combinations(a, atlas.annotation[:-1], atlas.ontology)
    with pytest.raises(ValueError, match="mask is empty"):
        A.region_combinations(np.ones((1, *atlas.annotation.shape)), np.zeros_like(atlas.annotation), atlas.ontology)


def test_morans_i_sparse_equals_dense_and_orders_patterns(bdgp_nmf):
    a = bdgp_nmf
    mask = np.zeros(16 * 32, bool)
    mask[np.asarray(a.obs["voxel"])] = True
    mask = mask.reshape(16, 32)
    Wsp = A.rook_weights(mask)
    D = Wsp.toarray()
    assert (D == D.T).all() and D.sum(1).max() == 4
    v = np.random.default_rng(0).random((int(mask.sum()), 3))
    z = v - v.mean(0)
    dense = len(v) / D.sum() * np.einsum("ik,ij,jk->k", z, D, z) / (z**2).sum(0)
    np.testing.assert_allclose(A.morans_i(v, Wsp), dense)
    res = tl.morans_i(a)
    assert len(res) == 21 and res["morans_i"].mean() > 0.3  # NMF patterns are spatially coherent
    assert res["morans_i"].mean() > res["pca_morans_i"].mean()
    assert abs(A.morans_i(v, Wsp)).max() < 0.2  # noise is not


def test_reconstruction_accuracy_and_pca(bdgp_nmf):
    a = bdgp_nmf
    out = tl.reconstruction_accuracy(a)
    W = a.obsm["X_nmf"].astype(float)
    H = a.varm["nmf_coefficients"].T.astype(float)
    j = 17
    x = np.asarray(a.X)[:, j]
    assert out["nmf_reconstruction_r"].iloc[j] == pytest.approx(np.corrcoef(x, W @ H[:, j])[0, 1], rel=1e-6)
    assert out["nmf_reconstruction_r"].median() > 0.8
    assert out["pca_reconstruction_r"].median() >= out["nmf_reconstruction_r"].median() - 0.05
    assert "nmf_reconstruction_r" in a.var


def test_marker_genes_and_networks(bdgp_nmf, tmp_path):
    a = bdgp_nmf
    mk = tl.marker_genes(a, n_top=5)
    H = a.varm["nmf_coefficients"]
    genes = list(a.var_names)
    for row in mk.itertuples():
        j = genes.index(row.gene)
        assert f"PP{int(np.argmax(H[j])) + 1}" == row.pattern
        assert row.importance == pytest.approx(H[j].max() / H[j].sum(), rel=1e-5)
    assert (mk.groupby("pattern")["importance"].apply(lambda s: s.is_monotonic_decreasing)).all()
    nets = tl.coexpression_networks(a, n_genes=20)
    G = nets["PP1"]
    assert G.number_of_nodes() == 20
    assert G.number_of_edges() == pytest.approx(0.05 * 190, abs=1)  # top 5% of 190 pairs
    nx.write_graphml(G, tmp_path / "PP1.graphml")
    back = nx.read_graphml(tmp_path / "PP1.graphml")
    assert back.number_of_edges() == G.number_of_edges()
    ref = tl.coexpression_networks(a, n_genes=20, rule="reference")["PP1"]
    assert ref.number_of_edges() >= G.number_of_edges()


def test_imputation_holdout_on_real_allen_grids(allen):
    stack, atlas = allen
    a = stack.to_anndata(mask=atlas.mask)
    assert np.isnan(np.asarray(a.X)).any()  # the real grids have missing (-1) voxels
    res = tl.imputation_holdout(a, fraction=0.05, random_state=0)
    assert list(res["gene"]) == ["Pdyn", "Nrp1"]
    assert (res["r"] > 0.9).all()
    assert (res["mae"] < res["mean_value"]).all()
