"""Integration on data nobody tuned it on (issue 22): single-cell sections, normalised values,
defaults from each section's own distances, warnings when a result is probably wrong, domains.
"""

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from napari_spatial_nmf import datasets, tl
from napari_spatial_nmf.core import diagnostics as dg
from napari_spatial_nmf.core import neighbourhoods as nb
from napari_spatial_nmf.core.sections import prepare_sections, to_counts


@pytest.fixture(scope="module")
def barista(shared_data):
    folder = shared_data / "baristaseq_visp_3slices"
    return [ad.read_h5ad(folder / f"baristaseq_visp_slice{i}.h5ad") for i in (1, 2, 3)]


@pytest.mark.shared_data
def test_single_cell_sections_get_neighbourhoods_from_their_own_distances(barista):
    """INSPIRE's rule (1.5 x the smallest distance in slice 1) leaves most BARISTAseq cells alone; the
    default, each section's 6th-neighbour distance, gives every slice a real neighbourhood."""
    for a in barista:
        C = np.asarray(a.obsm["spatial"])
        inspire_rule = 1.5 * np.min(np.linalg.norm(C[:, None] - C[None], axis=2)[np.triu_indices(len(C), 1)])
        deg, alone = nb.degree_stats(C, inspire_rule)
        assert alone > 0.9  # the 93-100 %
        deg, alone = nb.degree_stats(C, nb.data_radius(C))
        assert deg >= 5 and alone < 0.02
    from napari_spatial_nmf.tl._integrate import _graph

    sec = prepare_sections(barista, ["s1", "s2", "s3"], n_hvgs=None, counts="recover", features=False)
    with pytest.warns(UserWarning, match="neighbours on average"):
        _graph(sec, "inspire", None, 1.5, None)  # INSPIRE's own rule, asked for
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the defaults: no warning
        stats = _graph(sec, "inspire", None, None, None) + _graph(sec, "joint_nnmf", None, None, None)
    assert min(s.mean_degree for s in stats) >= 3


@pytest.mark.shared_data
def test_normalised_sections_have_a_documented_path(barista):
    with pytest.raises(ValueError, match=r"'slice1'.*'slice2'.*'slice3'.*counts='recover'.*counts='pseudo'"):
        tl.iter_integrate(barista, 6, section_names=["slice1", "slice2", "slice3"], n_hvgs=None)
    c, rep = to_counts(barista[0].X, "recover")
    assert rep["integer_share"] > 0.99 and np.allclose(c.data, np.round(c.data))
    totals = np.asarray(c.sum(axis=1)).ravel()
    assert np.median(totals) > 10  # counts, not proportions
    with pytest.raises(ValueError, match="counts='pseudo'"):
        to_counts(sp.csr_matrix(np.random.default_rng(0).random((20, 5))), "recover")
    sec = prepare_sections(barista, ["s1", "s2", "s3"], n_hvgs=None, counts="pseudo", features=False)
    assert sec.report["counts"]["s1"]["mode"] == "pseudo" and len(sec.genes) == 79


@pytest.mark.shared_data
def test_barista_slices_meet_in_shared_domains(barista):
    """Joint NNMF on the three slices as shipped (counts recovered), domains from each cell's
    surroundings with the sections standardised: the layers are found in all three slices."""
    res = tl.integrate(barista, 12, counts="recover", n_hvgs=None, section_names=["s1", "s2", "s3"], max_iter=200)
    rec = res.uns["integration"]
    assert (rec["graph"]["mean_degree"] >= 3).all()
    tl.cluster_domains(res, 6, neighbours=(30, 90))
    lab = res.obs["original_domain"].astype(str).to_numpy()
    from sklearn.metrics import adjusted_rand_score

    pooled = adjusted_rand_score(lab, res.obs["integration_domain"].astype(str))
    assert pooled > 0.6, pooled  # MENDER's published 0.701; ours in docs/benchmarks.md
    none = tl.cluster_domains(res, 6, neighbours=(30, 90), scale="none", key_added="raw")
    assert adjusted_rand_score(lab, none.astype(str)) < pooled  # the standardisation is what aligns slice 3
    diag = tl.diagnose(res, domain_key="integration_domain", warn=False)
    assert diag["shared_domains"][0] >= 4  # layer I holds 3-4 % of each slice


def test_sections_come_in_category_order_and_qc_drops_are_reported(halves):
    both = ad.concat(halves, label="half", keys=["left", "right"], index_unique="-")
    both.obs["half"] = pd.Categorical(both.obs["half"], categories=["right", "left"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = tl.integrate(both, 4, section_key="half", n_hvgs=None, max_iter=5)
    assert list(res.obs["section"].cat.categories) == ["right", "left"]
    assert res.obs["section"].iloc[0] == "right"
    with pytest.warns(UserWarning, match="left out by QC"):
        tl.iter_integrate(halves, 4, n_hvgs=None, min_genes=12, max_iter=5)


def test_joint_nnmf_exposes_tol_and_warns_at_max_iter(halves):
    from sklearn.exceptions import ConvergenceWarning

    with pytest.warns(ConvergenceWarning, match="max_iter=30"):
        res = tl.integrate(halves, 4, n_hvgs=None, max_iter=30, tol=0.0)
    assert res.uns["integration"]["stop_reason"] == "max_iter" and res.uns["integration"]["params"]["tol"] == 0.0
    res = tl.integrate(halves, 4, n_hvgs=None, max_iter=2000, tol=1e-3)
    assert res.uns["integration"]["stop_reason"] == "tol"


def test_restarts_are_matched_and_averaged(halves):
    res = tl.integrate(halves, 4, n_hvgs=None, max_iter=60, n_restarts=3, tol=0.0)
    rec = res.uns["integration"]["restarts"]
    assert rec["n"] == 3 and rec["seeds"] == [0, 1, 2]
    assert rec["program_similarity"].shape == (3, 4) and 0 <= rec["instability"] < 0.5
    P = np.asarray(res.varm["integration_programs"])
    np.testing.assert_allclose(P.sum(axis=0), 1, rtol=1e-5)


def test_domains_argmax_refine_and_bad_settings(halves):
    res = tl.integrate(halves, 5, n_hvgs=None, max_iter=30, tol=0.0)
    used = len(np.unique(res.obsm["X_integration"].argmax(1)))
    dom = tl.cluster_domains(res, basis="argmax")
    assert dom.nunique() == used
    with pytest.raises(ValueError, match="one domain per factor"):
        tl.cluster_domains(res, used + 1, basis="argmax")
    with pytest.raises(ValueError, match="Give n_domains"):
        tl.cluster_domains(res)
    a = tl.cluster_domains(res, 5, refine=0, key_added="a").to_numpy()
    b = tl.cluster_domains(res, 5, refine=6, key_added="b").to_numpy()
    assert (a != b).mean() < 0.2 and res.uns["b_params"]["refine"] == 6
    with pytest.raises(ValueError, match="scale must be"):
        tl.cluster_domains(res, 5, scale="batch")


def test_a_failed_cross_technology_run_ends_with_a_warning(shared_data, halves):
    """osmFISH (33 genes) and a BARISTAseq slice (79 genes) share 9: integrated on those alone,
    the technologies keep apart, and the result says so instead of passing silently."""
    bar = ad.read_h5ad(shared_data / "baristaseq_visp_3slices" / "baristaseq_visp_slice1.h5ad")
    osm = ad.concat(halves)
    with pytest.warns(UserWarning) as caught:
        res = tl.integrate([osm, bar], 6, counts="pseudo", n_hvgs=None, section_names=["osmFISH", "BARISTAseq"],
                           max_iter=150)
        tl.cluster_domains(res, 6)
        tl.diagnose(res, domain_key="integration_domain")
    text = " ".join(str(w.message) for w in caught)
    assert "one section only" in text or "barely mix" in text or "domains hold" in text, text
    assert res.uns["integration"]["qc"]["n_shared_genes"] == 9


def test_poor_mixing_of_very_unequal_panels_points_to_the_shared_genes():
    """The rule behind the warning (measured on the DLPFC panel simulation, docs/integration.md):
    poor mixing with one panel at least 10x smaller than another names both and the way out."""
    from napari_spatial_nmf.core.diagnostics import integration_warnings

    unequal = " ".join(integration_warnings({"mixing": 0.04, "panel_sizes": {"151673": 5000, "151674": 100}}))
    assert "barely mix" in unequal and "'151674' measured 100 genes" in unequal and "genes='shared'" in unequal
    assert "unequal" not in " ".join(integration_warnings({"mixing": 0.04}))  # one panel for all
    assert "unequal" not in " ".join(integration_warnings({"mixing": 0.04, "panel_sizes": {"a": 79, "b": 33}}))
    assert not integration_warnings({"mixing": 0.5, "panel_sizes": {"151673": 5000, "151674": 100}})


def test_weak_registrations_are_flagged():
    parts = datasets.stahl_breast_cancer()[:2]
    res = tl.integrate(parts, 6, max_iter=50, n_hvgs=None, tol=0.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = tl.reconstruct_3d(res, spacing=20.0, um_per_unit=200.0)
    assert not [w for w in caught if "is weak" in str(w.message)]  # two adjacent layers of one tumour
    assert {"inlier_fraction", "consistency_um"} <= set(table.columns)
    assert 0 < table["inlier_fraction"].iloc[1] <= 1 and np.isfinite(table["consistency_um"].iloc[1])
    # a real pair of adjacent sections: well above what pairs matched at random give
    assert table["inlier_fraction"].iloc[1] > 2 * table["chance_inlier_fraction"].iloc[1]
    scrambled = [p.copy() for p in parts]
    rng = np.random.default_rng(0)
    scrambled[1].obsm["spatial"] = rng.permutation(np.asarray(scrambled[1].obsm["spatial"]))  # no shared geometry
    res = tl.integrate(scrambled, 6, max_iter=50, n_hvgs=None, tol=0.0)
    with pytest.warns(UserWarning, match="registration .* is weak"):
        tl.reconstruct_3d(res, spacing=20.0, um_per_unit=200.0)


def test_lisi_is_one_for_apart_and_s_for_mixed():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 5))
    mixed = np.repeat(["a", "b", "c"], 200)
    assert dg.mixing_score(X, rng.permutation(mixed)) > 0.8
    apart = X + np.repeat(np.eye(5)[:3] * 50, 200, axis=0)
    assert dg.mixing_score(apart, mixed) < 0.05


@pytest.mark.shared_data
def test_single_cell_slices_moved_at_random_are_registered_layer_to_layer(barista):
    """iSTBench's protocol on two BARISTAseq slices: slice 2 turned by 137° and shifted; the
    registration must bring cells beside cells of their own layer (moved: about 0.2; the original
    frame: 0.979; RANSAC alone gives 0.81-0.87 over its seeds here, refined on the feature fields
    0.89-0.90, on the cell density 0.967; see docs/benchmarks.md#registration-istbench) and undo
    the turn to within 2° (RANSAC alone missed it by up to 4°)."""
    from scipy.spatial import cKDTree

    a, b = (s[s.obs["original_domain"].notna().to_numpy()].copy() for s in barista[:2])
    xy = np.asarray(b.obsm["spatial"], float)
    th = np.radians(137.0)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    b.obsm["spatial"] = (xy - xy.mean(0)) @ rot.T + xy.mean(0) + np.array([900.0, -400.0])
    res = tl.integrate([a, b], 8, section_names=["slice1", "slice2"], counts="recover", n_hvgs=None, max_iter=100)
    table = tl.reconstruct_3d(res, spacing=10.0, um_per_unit=1.0)
    g = res.obs["section"].astype(str).to_numpy()
    xy, lab = np.asarray(res.obsm["spatial_aligned"]), res.obs["original_domain"].astype(str).to_numpy()
    A, B = g == "slice1", g == "slice2"
    match = (np.mean(lab[A] == lab[B][cKDTree(xy[B]).query(xy[A])[1]])
             + np.mean(lab[B] == lab[A][cKDTree(xy[A]).query(xy[B])[1]])) / 2
    assert table["refine"].iloc[1] == "density"  # single cells
    assert match > 0.94, match
    assert abs(abs(table["angle_deg"].iloc[1]) - 137.0) < 2  # the turn undone (to within the sections' own)
    assert table["refine_shift_um"].iloc[1] > 0
    assert table["inlier_fraction"].iloc[1] > 2 * table["chance_inlier_fraction"].iloc[1]


def test_field_refinement_undoes_a_small_misfit_on_real_cells():
    """osmFISH cortex (shipped): its cells dealt alternately into two "sections" that sample the
    same tissue, so the right transform is the identity. Started 4° and 40 µm off (the size of
    RANSAC's misfits on single cells), the refinement on the fields of each cell's surroundings
    must come back to within 0.5° and half a cell spacing; started right, it must stay."""
    from scipy.spatial import cKDTree

    from napari_spatial_nmf.core import registration as reg

    cells = datasets.osmfish()
    xy = np.asarray(cells.obsm["spatial"], float)
    X = cells.X.toarray() if sp.issparse(cells.X) else np.asarray(cells.X, float)
    L = np.log1p(X / np.maximum(X.sum(1, keepdims=True), 1) * 1e3)
    a, b = np.arange(len(xy))[::2], np.arange(len(xy))[1::2]
    feats = []
    for part in (a, b):  # each section's own surroundings (15 nearest cells of that section)
        idx = cKDTree(xy[part]).query(xy[part], k=15)[1]
        feats.append(L[part][idx].mean(axis=1))
    spacing = reg.typical_spacing(xy[a])
    th = np.radians(4.0)
    R0 = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    t0 = xy[b].mean(0) - xy[b].mean(0) @ R0.T + np.array([40.0, -25.0])  # turned about the centre, then shifted
    out = reg.refine_by_fields(xy[b], feats[1], xy[a], feats[0], R0, t0)
    assert out["similarity_after"] > out["similarity_before"]
    moved = reg.apply(xy[b], out["rotation"], out["translation"])
    assert abs(np.degrees(np.arctan2(out["rotation"][1, 0], out["rotation"][0, 0]))) < 0.5
    assert np.sqrt(np.mean(np.sum((moved - xy[b]) ** 2, axis=1))) < 0.5 * spacing
    stay = reg.refine_by_fields(xy[b], feats[1], xy[a], feats[0], np.eye(2), np.zeros(2))
    assert stay["shift"] < 0.5 * spacing
    # the cells' density alone (no features) must bring them back too, a little less closely: the
    # density optimum of these two samples of one tissue lies 0.8 cell spacings from the identity
    # (the fields' within 0.5; both starts end there)
    dens = reg.refine_by_density(xy[b], xy[a], R0, t0)
    assert dens["similarity_after"] > dens["similarity_before"]
    moved = reg.apply(xy[b], dens["rotation"], dens["translation"])
    assert abs(reg.angle_deg(dens["rotation"])) < 0.5
    assert np.sqrt(np.mean(np.sum((moved - xy[b]) ** 2, axis=1))) < 1.0 * spacing
    assert reg.refine_by_density(xy[b], xy[a], np.eye(2), np.zeros(2))["shift"] < 1.0 * spacing
    stahl = datasets.stahl_breast_cancer()[:2]
    # single cells against spots on an array: the refinement "auto" chooses by this
    assert not reg.on_array(xy) and all(reg.on_array(np.asarray(s.obsm["spatial"], float)) for s in stahl)
    res = tl.integrate(stahl, 4, max_iter=20, n_hvgs=None, tol=0.0)
    with pytest.raises(ValueError, match="refine must be one of"):
        tl.reconstruct_3d(res, spacing=20.0, um_per_unit=200.0, refine="no")
    with pytest.raises(TypeError, match="refine must be one of"):
        tl.reconstruct_3d(res, spacing=20.0, um_per_unit=200.0, refine=1)
    assert "spatial_3d" not in res.obsm
    with pytest.raises(ValueError, match="2-D"):
        reg.refine_by_fields(np.c_[xy[b], xy[b][:, :1]], feats[1], xy[a], feats[0], np.eye(2), np.zeros(2))
    with pytest.raises(ValueError, match="2-D"):
        reg.refine_by_density(np.c_[xy[b], xy[b][:, :1]], xy[a], np.eye(2), np.zeros(2))


def test_neighbourhood_features_by_chunks_equal_the_neighbour_averages(halves, monkeypatch):
    """The multi-range description (one k-d tree query at the largest k, in chunks) equals the
    row-stochastic k-nearest-cell averages, range by range, on the osmFISH halves' real positions;
    a range above a section's size averages the whole section."""
    from napari_spatial_nmf.core import domains as D

    cells = ad.concat(halves, label="half")
    rng = np.random.default_rng(0)
    # the file repeats some cells at one position, so neighbours tie in distance and either of a tied
    # pair is a k-th nearest; a jitter of a thousandth of a µm makes the k nearest one set
    C = np.asarray(cells.obsm["spatial"], dtype=float) + rng.uniform(-1e-3, 1e-3, (cells.n_obs, 2))
    sec, E = cells.obs["half"].to_numpy(), rng.random((cells.n_obs, 3))
    monkeypatch.setattr(D, "CHUNK_VALUES", 1 << 20)  # chunks of ~110 cells here, the last one short
    big = int(max(np.bincount(pd.factorize(sec)[0]))) + 5
    got = D.neighbourhood_features(E, C, sec, (1, 12, 108, big))
    want = np.hstack([D.neighbour_matrix(C, sec, k) @ E for k in (1, 12, 108, big)])
    np.testing.assert_allclose(got, want, atol=1e-10)
    np.testing.assert_allclose(got[:, :3], E)  # one cell: itself


def test_neighbourhoods_on_a_lattice_take_whole_rings_whatever_the_cell_order():
    """On the Ståhl ST array positions (the spots' coordinates rounded to the array's square grid:
    4 spots at one distance, 4 at the next...) the k nearest spots tie; every spot as near as the
    k-th counts, so the description does not depend on the order of the cells (which one of a tied
    ring a k-d tree returns does)."""
    from napari_spatial_nmf.core import domains as D

    sec = datasets.stahl_breast_cancer()[0]
    C = np.round(np.asarray(sec.obsm["spatial"], dtype=float))
    assert len(np.unique(C, axis=0)) == sec.n_obs
    E = np.random.default_rng(0).random((sec.n_obs, 4))
    order = np.random.default_rng(1).permutation(sec.n_obs)
    a = D.neighbourhood_features(E, C, np.zeros(sec.n_obs), (4, 12))
    b = D.neighbourhood_features(E[order], C[order], np.zeros(sec.n_obs), (4, 12))
    np.testing.assert_allclose(b[np.argsort(order)], a, atol=1e-12)
    A = D.neighbour_matrix(C, np.zeros(sec.n_obs), 4)  # the majority vote's neighbourhoods, too
    B = D.neighbour_matrix(C[order], np.zeros(sec.n_obs), 4)[np.argsort(order)][:, np.argsort(order)]
    np.testing.assert_allclose(B.toarray(), A.toarray(), atol=1e-12)
    # an interior spot of the grid at k = 4: itself and its whole ring of 4 nearest (5 spots, not 4)
    d = np.sort(np.linalg.norm(C[:, None] - C[None], axis=2), axis=1)
    inner = np.flatnonzero((d[:, 1] == d[:, 4]) & (d[:, 4] < d[:, 5]))[0]
    ring = np.argsort(np.linalg.norm(C - C[inner], axis=1), kind="stable")[:5]
    np.testing.assert_allclose(a[inner, :4], E[ring].mean(axis=0))


def test_auto_refinement_uses_the_density_only_between_single_cells(halves):
    """refine="auto": two single-cell sections (the osmFISH halves) are refined on the cell density;
    when one of them is spots on an array (here the same cells' section put on a square grid, as
    a Visium or ST section would be) the pair is refined on the feature fields, whose density is
    the array's own; an explicit choice wins."""
    rng = np.random.default_rng(0)
    parts = [h[np.sort(rng.choice(h.n_obs, 1200, replace=False))].copy() for h in halves]
    res = tl.integrate(parts, 4, max_iter=20, tol=0.0, n_hvgs=None)
    table = tl.reconstruct_3d(res.copy(), spacing=10.0, um_per_unit=1.0)
    assert table["refine"].tolist() == ["", "density"]
    arrayed = res.copy()
    second = (arrayed.obs["section"] == arrayed.obs["section"].cat.categories[1]).to_numpy()
    n = int(second.sum())
    side = int(np.ceil(np.sqrt(n)))
    grid = np.stack(np.meshgrid(np.arange(side), np.arange(side)), axis=-1).reshape(-1, 2)[:n] * 20.0
    xy = np.asarray(arrayed.obsm["spatial"], float).copy()
    xy[second] = grid
    arrayed.obsm["spatial"] = xy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a scrambled section registers weakly, as it should
        assert tl.reconstruct_3d(arrayed, spacing=10.0, um_per_unit=1.0)["refine"].tolist() == ["", "fields"]
        forced = tl.reconstruct_3d(res.copy(), spacing=10.0, um_per_unit=1.0, refine="fields")
    assert forced["refine"].iloc[1] == "fields"
