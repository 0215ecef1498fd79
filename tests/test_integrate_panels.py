"""Gene panels that differ and K chosen by stability for integration (issue 23), on the shipped
osmFISH cells (two halves of the section as two sections) and, where present, the shared
BARISTAseq slices (another technology, normalised values only).
"""

import json
import warnings

import anndata as ad
import numpy as np
import pytest
from scipy.stats import pearsonr

from napari_spatial_nmf import cli, tl
from napari_spatial_nmf.core.sections import prepare_sections


def _lognorm(C, cols_for_library):
    C = C.toarray() if hasattr(C, "toarray") else np.asarray(C)
    return np.log1p(1e4 * C / np.maximum(C[:, cols_for_library].sum(1, keepdims=True), 1e-12))


def test_union_of_panels_imputes_hidden_genes_through_each_cells_own_weights(halves):
    """Six genes hidden from the right half: every program has a weight for all 33 genes, the
    right half's scaling is undefined (NaN) on exactly the hidden genes, and the imputation
    follows the truth better than predicting each cell from its 15 nearest left-half cells in
    the integrated space (the issue's k-NN baseline)."""
    from scipy.spatial import cKDTree

    from napari_spatial_nmf.core.domains import standardise

    left, right = halves
    hidden = list(left.var_names[::6])
    panel = [g for g in right.var_names if g not in hidden]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = tl.integrate([left, right[:, panel].copy()], 8, genes="union", n_hvgs=None, section_names=["L", "R"],
                           max_iter=200)
    rec = res.uns["integration"]
    assert res.n_vars == 33 and rec["qc"]["n_shared_genes"] == 27
    assert list(np.flatnonzero(np.isnan(rec["gamma"][1]))) == sorted(res.var_names.get_indexer(hidden))
    assert not np.isnan(rec["gamma"][0]).any()
    assert rec["panels"].loc[hidden, "R"].eq(False).all() and rec["panels"]["L"].all()
    assert (np.asarray(res.varm["integration_programs"])[res.var_names.get_indexer(hidden)] > 0).any(axis=1).all()

    q = (res.obs["section"] == "R").to_numpy()
    imp = np.asarray(res.layers["integration_imputed"], dtype=np.float64)
    ours = np.log1p(1e4 * imp[q] / imp[q][:, rec["panels"]["R"].to_numpy()].sum(1, keepdims=True))
    original = right[res.obs_names[q].str.replace("-R$", "", regex=True)]
    truth = _lognorm(original.X, right.var_names.get_indexer(panel))
    lefts = left[res.obs_names[~q].str.replace("-L$", "", regex=True)]
    ref = _lognorm(lefts.X, left.var_names.get_indexer(panel))
    P = standardise(np.asarray(res.obsm["X_integration"], dtype=np.float64), res.obs["section"].to_numpy())
    _, idx = cKDTree(P[~q]).query(P[q], k=15)
    r_ours, r_knn = [], []
    for g in hidden:
        t = truth[:, right.var_names.get_loc(g)]
        r_ours.append(pearsonr(ours[:, res.var_names.get_loc(g)], t)[0])
        r_knn.append(pearsonr(ref[idx, left.var_names.get_loc(g)].mean(1), t)[0])
    assert np.median(r_ours) > np.median(r_knn) + 0.03, (r_ours, r_knn)
    assert np.median(r_ours) > 0.2


def test_shared_genes_warn_when_a_panel_loses_most_of_its_genes(halves):
    left, right = halves
    with pytest.warns(UserWarning, match=r"section 'L' loses 39% of its 33 genes.*genes='union'"):
        prepare_sections([left, right[:, :20].copy()], ["L", "R"], n_hvgs=None, features=False)


def test_a_panel_that_is_a_subset_of_another_is_imputed_not_lost(halves):
    left, right = halves
    sec = prepare_sections([left, right[:, :20].copy()], ["L", "R"], n_hvgs=None, genes="union", features=False)
    assert len(sec.genes) == 33 and sec.panels[1].sum() == 20 and sec.panels[0].all()


@pytest.mark.shared_data
def test_normalised_and_count_sections_mix_with_counts_recover(shared_data, halves):
    """BARISTAseq holds log-normalised values, osmFISH counts: counts='recover' recovers the one
    and keeps the other's counts as they are."""
    bar = ad.read_h5ad(shared_data / "baristaseq_visp_3slices" / "baristaseq_visp_slice1.h5ad")
    bar.uns["spatial_unit"] = "µm"  # not stated by its source; said here so the units agree
    sec = prepare_sections([bar, halves[0]], ["BARISTAseq", "osmFISH"], n_hvgs=None, counts="recover",
                           genes="union", features=False)
    assert sec.report["counts"]["osmFISH"]["mode"] == "raw"
    assert sec.report["counts"]["BARISTAseq"]["mode"] == "recover"
    assert len(sec.genes) == 79 + 33 - 9 and len(sec.shared) == 9
    j = sec.genes.index("Gad2")
    np.testing.assert_array_equal(np.sort(sec.counts[1][:, j].toarray().ravel()),
                                  np.sort(halves[0][sec.obs[1].index.str.replace("-osmFISH$", "", regex=True),
                                                    "Gad2"].X.toarray().ravel()))


def test_k_by_stability_scores_every_k_and_resumes_from_its_store(halves, tmp_path):
    store = tmp_path / "store"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = tl.integrate_stability(halves, range(3, 6), 3, n_hvgs=None, max_iter=40, store=store)
    sweep = res.uns["integration_stability"]
    table = sweep["table"]
    assert list(table["k"]) == [3, 4, 5] and table["chosen"].sum() == 1
    assert ((table["instability"] >= 0) & (table["instability"] <= 1)).all() and (table["sd"] >= 0).all()
    ok = table[table["n_section_specific"] == 0]
    expected = (ok if len(ok) else table).sort_values("instability")["k"].iloc[0]
    assert sweep["best_k"] == expected == len(res.uns["integration"]["factor_names"])
    assert res.uns["integration"]["restarts"]["n"] == 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = tl.integrate_stability(halves, range(3, 6), 3, n_hvgs=None, max_iter=40, store=store)
    np.testing.assert_allclose(again.uns["integration_stability"]["table"]["instability"], table["instability"],
                               rtol=1e-6)
    np.testing.assert_allclose(again.obsm["X_integration"], res.obsm["X_integration"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("call, message", [
    (lambda h: tl.integrate_stability(h, range(3, 6), 1), "at least 2 .*restarts"),
    (lambda h: tl.integrate_stability(h, range(6, 3), 2), "range.* is empty"),
    (lambda h: tl.integrate_stability([h[0][:, :5].copy(), h[1][:, 3:10].copy()], range(2, 5), 2, n_hvgs=None,
                                      genes="union"), r"K = 4 is more than the 2 genes the sections share"),
    (lambda h: tl.integrate_stability(h, range(3, 6), 2, matching="greedy"), "matching must be"),
])
def test_bad_stability_input_is_refused_before_fitting(halves, call, message):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=message):
            call(halves)


def test_cli_integrate_chooses_k_by_stability(halves, tmp_path, capsys):
    path = tmp_path / "cells.h5ad"
    both = ad.concat(halves, label="section", keys=["left", "right"], index_unique="-")
    both.write_h5ad(path)
    out = tmp_path / "out"
    args = ["integrate", "--cells", str(path), "--section-key", "section", "--k-min", "3", "--k-max", "4",
            "--restarts", "2", "--max-iter", "30", "--n-hvgs", "0", "--quiet", "--out", str(out)]
    assert cli.main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stability"]["best_k"] in (3, 4) and summary["n_factors"] == summary["stability"]["best_k"]
    assert (out / "stability.csv").exists() and (out / "instability.png").exists()
    assert (tmp_path / "out.store" / "manifest.json").exists()
    assert "K=3: instability" in capsys.readouterr().out
    for extra, message in ((["-k", "3"], "either -k"), (["--k-max", "2"], "below --k-min")):
        bad = [a for a in args if a not in ("--k-max", "4")] + (["--k-max", "4"] if "--k-max" not in extra else [])
        assert cli.main([*bad, *extra, "--overwrite"]) == 2
        assert message in capsys.readouterr().err
