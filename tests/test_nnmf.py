"""Neighbourhood NMF: the R package's algorithm on real cells, sparse and at scale."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.spatial.distance import cdist
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from napari_spatial_nmf import datasets, tl
from napari_spatial_nmf.core import nnmf as N
from napari_spatial_nmf.core._progress import drain


@pytest.fixture(scope="module")
def cortex():
    """osmFISH cells inside the annotated regions, without empty or repeated cells (as the issue asks)."""
    a = datasets.osmfish()
    a = a[(a.obs["region"] != "Excluded").to_numpy() & (np.asarray(a.X.sum(1)).ravel() > 0)].copy()
    return a[~N.duplicated_cells(np.asarray(a.obsm["spatial"]))].copy()


def _dense_reference(X, S, W, H, n_iter):
    """The R package's nmfspatial main loop (methods-digest §1.5), dense numpy, written from the digest."""
    def clamp(A):
        return np.maximum(A, 1e-10)

    for _ in range(n_iter):
        W = clamp(W * ((X / (W @ H)) @ H.T))
        H = clamp(H * (W.T @ (X / (W @ H))))
        H = H / H.sum(1, keepdims=True)
        W = W * ((X / (W @ H)) @ H.T)
        r = W.sum(1, keepdims=True)
        W = (S @ (W / r)) * r
        W = clamp(W)
        W = W / W.sum(0, keepdims=True)
        H = clamp(H * (W.T @ (X / (W @ H))))
    return W, H


def _dense_kernel(C, ls, cutoff=0.1):
    K = np.exp(-cdist(C, C, "sqeuclidean") / ls**2)
    K[cutoff > K] = 0
    return K / K.sum(1, keepdims=True)


def test_kernel_and_default_lengthscale_equal_the_dense_r_code(cortex):
    C = np.asarray(cortex.obsm["spatial"], dtype=np.float64)[:1500]
    d = np.sort(np.sqrt(cdist(C, C, "sqeuclidean")), axis=1)
    ls = N.default_lengthscale(C)
    assert ls == pytest.approx(d[:, 14].mean(), rel=1e-12)  # R: mean(sort(dist)[15])
    k = N.spatial_kernel(C, ls)
    np.testing.assert_allclose(k.S.toarray(), _dense_kernel(C, ls), atol=1e-12)
    dense = _dense_kernel(C, ls)
    assert k.mean_neighbors == pytest.approx(((dense > 0).sum(1) - 1).mean())


@pytest.mark.parametrize("K", [6, 8])  # kernels are compiled for K padded to a multiple of 8
def test_updates_follow_the_r_order_exactly(cortex, K):
    a = cortex[:600]
    X = N.normalize_cells(N.check_counts(a.X))
    C = np.asarray(a.obsm["spatial"], dtype=np.float64)
    k = N.spatial_kernel(C, N.default_lengthscale(C))
    rng = np.random.default_rng(1)
    W0, H0 = rng.uniform(size=(X.shape[0], K)), rng.uniform(size=(K, X.shape[1]))
    res = drain(N.iter_fit_nnmf(X, K, k.S, max_iter=40, tol=0, init=(W0, H0)))
    W, H = _dense_reference(X.toarray(), k.S.toarray(), W0, H0, 40)
    rk = H.sum(1)
    np.testing.assert_allclose(res.weights, W * rk, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(res.signatures, H / rk[:, None], rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(res.signatures.sum(1), 1.0)
    # weight rows approach the cell's normalised total (G), as in the R output (smoothing moves them a little)
    np.testing.assert_allclose(res.weights.sum(1), X.shape[1], rtol=0.05)
    assert res.weights.sum() == pytest.approx(X.sum(), rel=1e-3)


def test_locality_reordering_changes_nothing_but_speed(cortex):
    """Cells are fitted in reverse Cuthill-McKee order of the kernel graph; the random starts
    are drawn in the input order and the weights come back in it."""
    a = cortex[:800]
    X = N.normalize_cells(N.check_counts(a.X))
    C = np.asarray(a.obsm["spatial"], dtype=np.float64)
    S = N.spatial_kernel(C, N.default_lengthscale(C)).S
    kw = {"max_iter": 30, "tol": 0, "initial": 2, "small_iter": 5, "random_state": 3}
    on = drain(N.iter_fit_nnmf(X, 5, S, reorder=True, **kw))
    off = drain(N.iter_fit_nnmf(X, 5, S, reorder=False, **kw))
    np.testing.assert_allclose(on.weights, off.weights, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(on.signatures, off.signatures, rtol=1e-9, atol=1e-15)
    assert on.initial_gkl == pytest.approx(off.initial_gkl, rel=1e-12)


def test_gkl_decreases_and_stopping_rule(cortex):
    X = N.normalize_cells(N.check_counts(cortex.X))
    res = drain(N.iter_fit_nnmf(X, 11, None, max_iter=300, tol=1e-4, initial=2, small_iter=10))
    gkl = res.trace[:, 1]
    assert (np.diff(gkl) < 0).all()
    assert res.converged and res.n_iter < 300
    old, new = gkl[-2], gkl[-1]
    assert 2 * (old - new) / (0.1 + abs(2 * new)) < 1e-4
    assert len(res.initial_gkl) == 2
    # the GKL matches the dense formula over the non-zeros (+ sum of the model)
    M = res.weights @ res.signatures
    Xd = X.toarray()
    nz = Xd > 0
    ref = ((Xd[nz] + 1e-6) * np.log((Xd[nz] + 1e-6) / (M[nz] + 1e-6)) - Xd[nz]).sum() + M.sum()
    assert res.gkl == pytest.approx(ref, rel=1e-9)


def test_nnmf_beats_kl_nmf_and_kmeans_on_osmfish_regions(cortex):
    """The issue's validation: ARI of argmax domains vs the 11 expert regions, K=11, same run."""
    labels = cortex.obs["region"].astype(str).to_numpy()
    assert len(set(labels)) == 11
    spatial = tl.nnmf(cortex, 11, copy=True, random_state=0)
    plain = tl.nnmf(cortex, 11, spatial_key=None, copy=True, random_state=0)
    X = np.asarray(cortex.X, dtype=np.float64)
    logn = np.log1p(X / X.sum(1, keepdims=True) * 1e4)
    km = KMeans(11, n_init=10, random_state=0).fit_predict(logn)
    ari = {"nnmf": adjusted_rand_score(labels, spatial.obs["nnmf_domain"]),
           "kl": adjusted_rand_score(labels, plain.obs["nnmf_domain"]),
           "kmeans": adjusted_rand_score(labels, km)}
    nmi = normalized_mutual_info_score(labels, spatial.obs["nnmf_domain"])
    assert ari["nnmf"] >= max(ari["kl"], ari["kmeans"]) + 0.15, ari
    assert nmi > normalized_mutual_info_score(labels, km)
    assert plain.uns["nnmf"]["method"] == "kl-nmf" and np.isnan(plain.uns["nnmf"]["lengthscale"])
    rec = spatial.uns["nnmf"]
    assert rec["method"] == "nnmf" and rec["lengthscale"] > 0 and rec["mean_neighbors"] > 10
    assert rec["gkl_trace"].shape[1] == 2 and rec["params"]["random_state"] == 0 and "numpy" in rec["versions"]


def test_nnmf_outputs_and_user_data_untouched(osmfish):
    a = osmfish[osmfish.obs["region"] != "Excluded"].copy()
    X_before = np.asarray(a.X).copy()
    keys = (set(a.obsm), set(a.obs.columns))
    with pytest.raises(ValueError, match="share their coordinates"):
        tl.nnmf(a, 5)
    assert (set(a.obsm), set(a.obs.columns)) == keys
    out = tl.nnmf(a, 5, filter_cells=True, max_iter=50, copy=True)
    np.testing.assert_array_equal(np.asarray(a.X), X_before)
    assert (set(a.obsm), set(a.obs.columns)) == keys
    W = out.obsm["X_nnmf"]
    n_left = out.uns["nnmf"]["filtered"]["duplicate_coordinate_cells"] + out.uns["nnmf"]["filtered"]["zero_count_cells"]
    assert n_left > 0 and np.isnan(W).all(axis=1).sum() == n_left
    assert out.obs["nnmf_domain"].isna().sum() == n_left
    np.testing.assert_allclose(out.varm["nnmf_signatures"].sum(0), 1.0, rtol=1e-5)
    assert list(out.obs["nnmf_domain"].cat.categories) == ["S1", "S2", "S3", "S4", "S5"]


def test_sparse_input_gives_the_dense_result(cortex):
    a = cortex[:800].copy()
    b = a.copy()
    b.X = sp.csr_matrix(np.asarray(a.X))
    ra = tl.nnmf(a, 4, max_iter=30, copy=True)
    rb = tl.nnmf(b, 4, max_iter=30, copy=True)
    np.testing.assert_allclose(ra.obsm["X_nnmf"], rb.obsm["X_nnmf"], rtol=1e-5)


def test_slices_are_never_neighbours(cortex):
    """Two copies of a section as two slices: same coordinates, no cross-slice kernel entries."""
    import anndata as ad

    a = cortex[:700]
    two = ad.concat([a, a], index_unique="-", keys=["s1", "s2"], label="slice")
    with pytest.raises(ValueError, match="share their coordinates"):
        tl.nnmf(two, 3, max_iter=5)
    C = np.asarray(two.obsm["spatial"], dtype=np.float64)
    k = N.spatial_kernel(C, 50.0, groups=two.obs["slice"].to_numpy())
    n = a.n_obs
    assert k.S[:n, n:].nnz == 0 and k.S[n:, :n].nnz == 0
    single = N.spatial_kernel(C[:n], 50.0)
    np.testing.assert_allclose(k.S[:n, :n].toarray(), single.S.toarray())
    out = tl.nnmf(two, 3, slice_key="slice", max_iter=20, copy=True)
    np.testing.assert_allclose(out.obsm["X_nnmf"][:n], out.obsm["X_nnmf"][n:], rtol=1e-4)  # identical slices


def test_3d_starmap_cells():
    a = datasets.starmap_3d()
    assert a.obsm["spatial"].shape == (33598, 3)
    sub = a[a.obsm["spatial"][:, 0] < 600].copy()  # a 3D block of the cortex
    out = tl.nnmf(sub, 4, filter_cells=True, max_iter=20, initial=1, small_iter=5, copy=True)
    assert out.uns["nnmf"]["mean_neighbors"] > 5
    assert out.uns["nnmf"]["filtered"]["zero_count_cells"] > 0
    assert np.isfinite(out.obsm["X_nnmf"][out.obs["nnmf_domain"].notna().to_numpy()]).all()


def test_lengthscale_estimate_and_svg_score(cortex):
    best, curve = tl.estimate_lengthscale(cortex)
    assert len(curve) == 10 and curve["mean_neighbors"].is_monotonic_increasing
    assert best == curve["lengthscale"][curve["error"].idxmin()]
    assert curve["error"].iloc[0] > curve["error"].min()  # smoothing beats no neighbours
    # the leave-one-out error equals the dense R computation
    C = np.asarray(cortex.obsm["spatial"], dtype=np.float64)
    X = np.asarray(cortex.X, dtype=np.float64)
    P = X / X.sum(1, keepdims=True)
    D = np.exp(-cdist(C, C, "sqeuclidean") / best**2)
    np.fill_diagonal(D, 0)
    D[D < 0.1] = 0
    empty = D.sum(1) == 0
    D[empty] = 1
    D /= D.sum(1, keepdims=True)
    assert curve["error"].min() == pytest.approx(((P - D @ P) ** 2).mean(), rel=1e-9)
    # the SVG score at that lengthscale is the per-gene leave-one-out error over the mean proportion
    out = tl.spatially_variable_genes(cortex, lengthscale=best, copy=True)
    assert out.uns["svg_score"]["params"]["lengthscale"] == best
    np.testing.assert_allclose(out.var["svg_score"], ((P - D @ P) ** 2).mean(0) / P.mean(0), rtol=1e-9)
    assert sorted(out.var["svg_score_rank"]) == list(range(1, out.n_vars + 1))


def test_top_features_uses_the_true_second_maximum():
    H = np.array([[0.5, 0.1, 0.3],   # gene 0: max in S1, second max 0.4 in S3 (after the max)
                  [0.1, 0.6, 0.3],
                  [0.4, 0.3, 0.4]])
    s = N.top_features(H)
    assert s[0, 0] == pytest.approx(0.5 * np.log1p(0.5 / (0.4 + 1e-10)))
    assert s[2, 0] == pytest.approx(0.4 * np.log1p(0.4 / (0.5 + 1e-10)))
    # the R code's which.max(rr[-m1]) = 2 (index into the reduced vector) would pick rr[2] = 0.1
    assert s[0, 0] != pytest.approx(0.5 * np.log1p(0.5 / (0.1 + 1e-10)))


def test_top_genes_table_on_osmfish(cortex):
    out = tl.nnmf(cortex, 11, max_iter=200, copy=True)
    top = tl.nnmf_top_genes(out, n_top=3)
    assert list(top.columns) == ["signature", "rank", "gene", "score", "loading"]
    assert len(top) == 33
    # oligodendrocyte markers lead one signature (white matter)
    firsts = set(top.loc[top["rank"] == 1, "gene"])
    assert firsts & {"Plp1", "Sox10", "Mbp"}


@pytest.mark.parametrize("change, match", [
    (lambda a: a.obsm.__setitem__("spatial", np.asarray(a.obsm["spatial"])[:, :1]), "2 or 3"),
    (lambda a: setattr(a, "X", np.where(np.arange(a.n_vars) == 0, np.nan, np.asarray(a.X, float))), "NaN"),
    (lambda a: setattr(a, "X", -np.asarray(a.X, float)), "negative"),
    (lambda a: setattr(a, "X", np.vstack([np.zeros((1, a.n_vars)), np.asarray(a.X, float)[1:]])), "no counts"),
    (lambda a: setattr(a, "X", np.hstack([np.zeros((a.n_obs, 1)), np.asarray(a.X, float)[:, 1:]])), "gene"),
])
def test_bad_input_is_refused_before_fitting(cortex, change, match):
    a = cortex[:300].copy()
    change(a)
    with pytest.raises(ValueError, match=match):
        tl.iter_nnmf(a, 3)


def test_bad_parameters(cortex):
    a = cortex[:300].copy()
    with pytest.raises(ValueError, match="lengthscale"):
        tl.iter_nnmf(a, 3, lengthscale=0)
    with pytest.raises(ValueError, match="lengthscale"):
        tl.iter_nnmf(a, 3, lengthscale=-5.0)
    with pytest.raises(KeyError, match="slice_key"):
        tl.iter_nnmf(a, 3, slice_key="section")
    with pytest.raises(ValueError, match="out of range"):
        tl.iter_nnmf(a, 40)
    # AnnData itself refuses obsm rows that do not match; the core checks arrays too
    C = np.asarray(a.obsm["spatial"])
    with pytest.raises(ValueError, match="299 coordinate rows but 300 cells"):
        N.check_coordinates(C[:-1], 300)
    assert not pd.DataFrame(C).duplicated().any()
