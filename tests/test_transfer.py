"""Label transfer between sections (tl.transfer_labels) on real data: the shipped osmFISH cells
(counts, single cells) as two halves with a thinned gene panel, and, from ../shared, BARISTAseq
slices (log-normalised single cells) and DLPFC Visium spots cut to a 100-gene panel."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from napari_spatial_nmf import tl
from napari_spatial_nmf.core.metrics import clustering_scores


def thinned_panel(a: ad.AnnData, n_genes: int, seed: int = 0, genes=None) -> ad.AnnData:
    """``a`` cut to ``genes`` (default ``n_genes`` random ones), each gene's counts thinned by
    its own capture efficiency (0.3 x log-normal(0, 0.5)): a second technology simulated from
    real counts, as ``benchmarks/integration_panels.py`` simulates it."""
    rng = np.random.default_rng(seed)
    if genes is None:
        genes = list(a.var_names[np.sort(rng.permutation(a.n_vars)[:n_genes])])
    out = a[:, list(genes)].copy()
    X = sp.csr_matrix(out.X, dtype=np.float64)
    eff = np.clip(0.3 * rng.lognormal(0.0, 0.5, len(genes)), 0, 1)
    X.data = rng.binomial(np.round(X.data).astype(np.int64), eff[X.indices]).astype(np.float64)
    out.X = X
    return out


def ari(truth, pred) -> float:
    """ARI over the cells with an expert label."""
    ok = pd.notna(truth).to_numpy() if hasattr(truth, "to_numpy") else pd.notna(truth)
    return clustering_scores(np.asarray(truth)[ok], np.asarray(pred)[ok])["ari"]


def test_osmfish_layers_reach_a_thinned_panel_through_the_surroundings(halves):
    ref, qry = halves
    panel = thinned_panel(qry, 16)
    before_ref, before_query = ref.copy(), panel.copy()
    with pytest.warns(UserWarning, match="Only 16 shared genes"):
        out = tl.transfer_labels(ref, panel, "region")
    score = ari(panel.obs["region"], out)
    # measured 0.62 (0.53 without thinning the reference to the panel's depth); each cell by its own 16 genes 0.19
    assert score > 0.52
    unmatched = tl.transfer_labels(ref, panel.copy(), "region", match_depth=False)
    assert score > ari(panel.obs["region"], unmatched) + 0.04
    kept = panel.uns["region_transferred"]["depth_kept"]
    assert 0.1 < kept["median"] < 0.5  # the panel's capture, 0.3 x log-normal(0, 0.5) per gene, found from the data
    with pytest.warns(UserWarning, match="Only 16"):
        alone = tl.transfer_labels(ref, panel, "region", neighbours=(), smooth=1, key_added="alone")
    assert score > ari(panel.obs["region"], alone) + 0.2
    # new keys only; the reference is untouched and the query's data are unchanged
    assert set(panel.obs.columns) == set(before_query.obs.columns) | {"region_transferred", "alone"}
    assert panel.obsm["region_transferred_probability"].shape == (panel.n_obs, ref.obs["region"].nunique())
    np.testing.assert_allclose(panel.obsm["region_transferred_probability"].sum(axis=1), 1.0, rtol=1e-5)
    assert (panel.X != before_query.X).nnz == 0
    assert list(ref.obs.columns) == list(before_ref.obs.columns) and list(ref.uns) == list(before_ref.uns)
    assert set(out.cat.categories) <= set(ref.obs["region"].cat.categories)
    rec = panel.uns["region_transferred"]
    assert rec["n_genes"] == 16 and rec["counts"] == {"reference": True, "query": True}
    assert rec["params"]["neighbours"] == [6, 18, 54] and "versions" in rec


def test_a_query_that_does_not_look_like_the_reference_is_flagged(halves):
    ref, qry = halves
    shuffled = qry.copy()
    shuffled.X = shuffled.X[np.random.default_rng(0).permutation(shuffled.n_obs)]  # genes no longer fit the places
    with pytest.warns(UserWarning, match="not confidently"):
        tl.transfer_labels(ref, shuffled, "region")
    assert shuffled.uns["region_transferred"]["mean_confidence"] < 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tl.transfer_labels(ref, qry.copy(), "region")  # the real right half: confident, no warning


def test_transfer_refuses_bad_input_before_any_work(halves):
    ref, qry = halves
    with pytest.raises(KeyError, match="no obs\\['layer'\\]"):
        tl.transfer_labels(ref, qry, "layer")
    with pytest.raises(ValueError, match="share 1 gene"):
        tl.transfer_labels(ref, qry[:, :1].copy(), "region")
    one = ref.copy()
    one.obs["one"] = "L1"
    with pytest.raises(ValueError, match="1 label"):
        tl.transfer_labels(one, qry, "one")
    with pytest.raises(ValueError, match="lacks 1 of the genes"):
        tl.transfer_labels(ref, qry, "region", genes=[*qry.var_names[:3], "NotAGene"])
    negative = qry.copy()
    negative.X = negative.X.toarray() - 1.0 if sp.issparse(negative.X) else negative.X - 1.0
    with pytest.raises(ValueError, match="negative"):
        tl.transfer_labels(ref, negative, "region")
    with pytest.raises(TypeError):
        tl.transfer_labels(ref, qry, "region", smooth=2.5)
    with pytest.raises(TypeError, match="AnnData"):
        tl.transfer_labels(ref.to_df(), qry, "region")
    assert "region_transferred" not in qry.obs


def test_transfer_too_large_for_memory_is_refused_before_any_work(halves, monkeypatch):
    from napari_spatial_nmf.core._memory import MemoryLimitError

    ref, qry = halves
    qry = qry.copy()
    before = set(qry.uns)
    monkeypatch.setenv("NAPARI_SPATIAL_NMF_MEMORY_LIMIT", "1M")
    with pytest.raises(MemoryLimitError, match="descriptions of"):
        tl.transfer_labels(ref, qry, "region")
    assert "region_transferred" not in qry.obs and set(qry.uns) == before


def test_three_dimensional_coordinates_are_used_as_they_are(halves):
    """A flat 3-D point cloud (z = 0) gives the 2-D answer: the neighbourhoods live in the data's own space."""
    ref, qry = (h.copy() for h in halves)
    flat = [h.copy() for h in (ref, qry)]
    for h in flat:
        h.obsm["spatial"] = np.column_stack([np.asarray(h.obsm["spatial"])[:, :2], np.zeros(h.n_obs)])
    two = tl.transfer_labels(ref, qry, "region")
    three = tl.transfer_labels(flat[0], flat[1], "region")
    assert (two.to_numpy() == three.to_numpy()).all()


@pytest.mark.shared_data
def test_baristaseq_layers_transfer_between_slices_as_normalised_values(shared_data):
    folder = shared_data / "baristaseq_visp_3slices"
    s1, s2 = (ad.read_h5ad(folder / f"baristaseq_visp_slice{i}.h5ad") for i in (1, 2))
    out = tl.transfer_labels(s1, s2, "original_domain")
    assert s2.uns["original_domain_transferred"]["counts"] == {"reference": False, "query": False}
    assert ari(s2.obs["original_domain"], out) > 0.65  # measured 0.70


@pytest.mark.shared_data
def test_dlpfc_layers_reach_a_100_gene_panel_of_the_adjacent_section(shared_data):
    folder = shared_data / "dlpfc_visium_151673_151676"
    A, B = (ad.read_h5ad(folder / f"dlpfc_{s}_5000hvg.h5ad") for s in ("151673", "151674"))
    shared = B[:, [g for g in B.var_names if g in set(A.var_names)]].copy()
    X = sp.csr_matrix(shared.X, dtype=np.float64)
    L = sp.diags(1e4 / np.asarray(X.sum(axis=1)).ravel()) @ X
    L.data = np.log1p(L.data)
    variance = np.asarray(L.power(2).mean(axis=0)).ravel() - np.asarray(L.mean(axis=0)).ravel() ** 2
    # a targeted panel holds informative genes: the 100 most variable (log-normalised)
    panel = thinned_panel(shared, 100, genes=shared.var_names[np.sort(np.argsort(variance)[-100:])])
    out = tl.transfer_labels(A, panel, "layer")
    assert panel.uns["layer_transferred"]["n_genes"] == 100
    # measured 0.65 (0.60 without thinning 151673 to the panel's depth; random 100 genes, mostly a few UMIs: 0.36)
    assert ari(panel.obs["layer"], out) > 0.6


def test_domains_of_an_nnmf_that_left_cells_out_then_carried_to_a_panel(halves):
    """The guide's workflow (docs/integration.md): NNMF of the richer half (its repeated records
    left out by filter_cells), its domains, carried to the other half on 16 genes."""
    ref, qry = halves[0].copy(), halves[1][:, :16].copy()
    tl.nnmf(ref, 8, filter_cells=True, max_iter=200)
    left_out = ~np.isfinite(ref.obsm["X_nnmf"]).all(axis=1)
    assert left_out.sum() > 0  # the shipped sample has repeated records
    domains = tl.cluster_domains(ref, 8, key="nnmf", key_added="domain")
    assert domains[left_out].isna().all() and domains[~left_out].notna().all()
    assert domains.nunique() == 8
    with pytest.warns(UserWarning, match="Only 16"):
        out = tl.transfer_labels(ref, qry, "domain")
    assert out.notna().all() and set(out.cat.categories) <= set(domains.cat.categories)
    assert ari(qry.obs["region"], out) > 0.4  # measured 0.50 (the domains score 0.64 on the reference's own layers)


def test_the_generator_checks_at_the_call_and_reports_each_stage(halves):
    """iter_transfer_labels (what the dock runs): bad input raises at the call, before any work;
    a run yields its stages (where Cancel stops it) and returns what transfer_labels returns."""
    from napari_spatial_nmf.core import Progress, drain

    ref, qry = halves
    with pytest.raises(KeyError, match="no obs\\['layer'\\]"):
        tl.iter_transfer_labels(ref, qry.copy(), "layer")
    query = qry.copy()
    seen = []
    out = drain(tl.iter_transfer_labels(ref, query, "region"), seen.append)
    assert all(isinstance(p, Progress) for p in seen) and len(seen) >= 4
    assert [p.step for p in seen] == sorted(p.step for p in seen) and seen[-1].step == seen[-1].total
    assert "mean confidence" in seen[-1].message
    again = qry.copy()
    pd.testing.assert_series_equal(out, tl.transfer_labels(ref, again, "region"))
