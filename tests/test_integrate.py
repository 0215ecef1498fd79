"""Integration of sections (INSPIRE and joint NNMF), its scores, and 3D reconstruction."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from napari_spatial_nmf import datasets, tl
from napari_spatial_nmf.core import inspire as I
from napari_spatial_nmf.core import metrics as M
from napari_spatial_nmf.core import registration as R
from napari_spatial_nmf.core.sections import prepare_sections

torch = pytest.importorskip("torch", reason="the integration extra (PyTorch) is not installed")


@pytest.fixture(scope="module")
def halves():
    """The shipped osmFISH cells as two 'sections' (left and right half of the tissue)."""
    a = datasets.osmfish()
    a = a[np.asarray(a.X.sum(1)).ravel() > 0].copy()
    x = np.asarray(a.obsm["spatial"])[:, 0]
    left = (x < np.median(x))
    return [a[left].copy(), a[~left].copy()]


@pytest.fixture(scope="module")
def small(halves):
    """1,000 neighbouring cells of each half (the quick tests)."""
    out = []
    for h in halves:
        C = np.asarray(h.obsm["spatial"])
        near = np.argsort(((C - np.median(C, axis=0)) ** 2).sum(1))[:1000]
        out.append(h[np.sort(near)].copy())
    return out


def _dense_gat_reference(layer, x, adj):
    """INSPIRE's GATSingleHead.forward (networks.py @12b7516), dense, for comparison."""
    h = layer.linear(x)
    logits = adj * ((h @ layer.v0) + (h @ layer.v1).T)
    att = torch.sparse.softmax((torch.sigmoid(logits) - 0.5).to_sparse(), dim=1).to_dense()
    return att @ h


def test_sparse_attention_and_geometry_loss_equal_the_dense_reference(halves):
    sec = prepare_sections(halves, ["left", "right"], n_hvgs=None)
    C, X = sec.coords[0][:400], torch.from_numpy(sec.lognorm[0][:400])
    rows, cols = I.radius_graph(C, 1.5 * I.min_distance(C))
    adj = torch.zeros(400, 400)
    adj[rows, cols] = 1
    torch.manual_seed(0)
    net, _ = I._networks(torch, X.shape[1], X.shape[1], 5, 2, "gat")
    graph = tuple(torch.from_numpy(a) for a in I.neighbour_table(rows, cols, 400))
    with torch.no_grad():
        torch.testing.assert_close(net.enc1(X, graph), _dense_gat_reference(net.enc1, X, adj), rtol=1e-5, atol=1e-5)
        z = torch.randn(400, 36)  # the decoder's narrow input: averaged first, then transformed
        torch.testing.assert_close(net.dec1(z, graph), _dense_gat_reference(net.dec1, z, adj), rtol=1e-5, atol=1e-5)
        zn = torch.nn.functional.normalize(torch.randn(400, 32), dim=1)
        xn = torch.nn.functional.normalize(X, dim=1)
        dense = ((zn @ zn.T - xn @ xn.T) ** 2).sum(1).mean()
        trace = ((zn.T @ zn).pow(2).sum() - 2 * (zn.T @ xn).pow(2).sum() + (xn.T @ xn).pow(2).sum()) / 400
        assert float(trace) == pytest.approx(float(dense), rel=1e-4)


def test_inspire_runs_reproducibly_on_the_cpu(small):
    kw = {"method": "inspire", "n_steps": 15, "n_hvgs": None, "section_names": ["left", "right"],
          "random_state": 7}
    a = tl.integrate(small, 4, **kw)
    b = tl.integrate(small, 4, **kw)
    np.testing.assert_array_equal(a.obsm["X_integration"], b.obsm["X_integration"])
    np.testing.assert_array_equal(a.uns["integration"]["losses"]["total"], b.uns["integration"]["losses"]["total"])
    assert a.n_obs == sum(h.n_obs for h in small) and list(a.obs["section"].cat.categories) == ["left", "right"]
    np.testing.assert_allclose(a.obsm["X_integration"].sum(1), 1, rtol=1e-5)
    np.testing.assert_allclose(a.varm["integration_programs"].sum(0), 1, rtol=1e-5)
    assert a.obsm["X_integration_latent"].shape == (a.n_obs, 32)
    assert a.uns["integration"]["gamma"].shape == (2, a.n_vars)
    assert a.uns["integration"]["params"]["random_state"] == 7 and "torch" in a.uns["integration"]["versions"]
    assert "X_integration" not in small[0].obsm  # the inputs are untouched


@pytest.mark.parametrize("make, match", [
    (lambda h: [h[0]], "at least 2 sections"),
    (lambda h: [h[0], h[1][:, :0]], "empty"),
    (lambda h: [h[0], _renamed(h[1])], "share no"),
    (lambda h: [h[0], _with(h[1], obsm_3d=True)], "different dimensions"),
    (lambda h: [h[0], _with(h[1], X=lambda X: np.log1p(X))], "counts"),
    (lambda h: [h[0], _with(h[1], X=lambda X: -X)], "negative"),
    (lambda h: [h[0], _with(h[1], X=lambda X: np.where(np.arange(X.shape[1]) == 0, np.nan, X))], "NaN"),
    (lambda h: [h[0], _with(h[1], drop_spatial=True)], "obsm"),
])
def test_bad_sections_are_refused_before_training(halves, make, match):
    secs = make(halves)
    before = [np.asarray(s.X).copy() for s in halves]
    with pytest.raises((ValueError, KeyError), match=match):
        tl.iter_integrate(secs, 3, method="joint_nnmf", n_hvgs=None)
    for s, x in zip(halves, before):
        np.testing.assert_array_equal(np.asarray(s.X), x)


def test_more_bad_input(halves):
    with pytest.raises(ValueError, match="more than the 33 genes"):
        tl.iter_integrate(halves, 40, method="joint_nnmf", n_hvgs=None)
    with pytest.raises(ValueError, match="unique"):
        tl.iter_integrate(halves, 3, method="joint_nnmf", n_hvgs=None, section_names=["a", "a"])
    one = ad.concat(halves, label="half", keys=["L", "R"])
    one.obs["half"] = one.obs["half"].astype(object)
    one.obs.iloc[0, one.obs.columns.get_loc("half")] = None
    with pytest.raises(ValueError, match="without a section"):
        tl.iter_integrate(one, 3, method="joint_nnmf", section_key="half", n_hvgs=None)
    with pytest.raises(ValueError, match="section_key"):
        tl.iter_integrate(one, 3, method="joint_nnmf", n_hvgs=None)


def _renamed(a):
    b = a.copy()
    b.var_names = [f"x{g}" for g in b.var_names]
    return b


def _with(a, X=None, obsm_3d=False, drop_spatial=False):
    b = a.copy()
    if X is not None:
        b.X = X(np.asarray(b.X, dtype=float))
    if obsm_3d:
        b.obsm["spatial"] = np.column_stack([b.obsm["spatial"], np.zeros(b.n_obs)])
    if drop_spatial:
        del b.obsm["spatial"]
    return b


def test_joint_nnmf_puts_a_platform_effect_into_gamma(halves):
    """The same tissue measured twice, one gene 4x more efficiently in the second run:
    joint NNMF explains it by the per-section gene scaling γ, not by the programs."""
    a = halves[0].copy()
    b = a.copy()
    b.X = np.asarray(b.X, dtype=float)
    g0 = 5
    b.X[:, g0] *= 4
    b.obsm["spatial"] = np.asarray(b.obsm["spatial"]) + 10_000.0  # another section
    out = tl.integrate([a, b], 6, method="joint_nnmf", n_hvgs=None, max_iter=200, random_state=0,
                       section_names=["run 1", "run 2"])
    c = np.exp(out.uns["integration"]["gamma"])
    j = list(out.var_names).index(a.var_names[g0])
    others = np.delete(c[1], j)
    assert (c[0] == 1).all()  # the first section is the reference
    assert c[1, j] / np.median(others) == pytest.approx(4, rel=0.25)  # smoothing biases it a little (docs)
    assert np.percentile(others / np.median(others), [5, 95]) == pytest.approx([1, 1], abs=0.2)


def test_metrics_are_scikit_learns_and_inspires():
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 3, 200)
    dom = np.where(rng.random(200) < 0.8, lab, rng.integers(0, 3, 200))
    from sklearn.metrics import adjusted_rand_score

    s = M.clustering_scores(lab, dom, rng.normal(size=(200, 2)) + 3 * lab[:, None])
    assert s["ari"] == pytest.approx(adjusted_rand_score(lab, dom)) and s["asw"] > 0.2
    P = np.array([[0.5, 0.3, 0.1, 0.1], [0.1, 0.1, 0.3, 0.5]])
    assert M.factor_diversity(P, 2) == 1.0 and M.factor_diversity(P[[0, 0]], 2) == 0.0
    counts = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 1, 1, 1]])
    assert M.factor_coherence(P, counts, 2) > 0.3  # top genes expressed together


def test_rigid_registration_recovers_a_known_transform(halves):
    a = halves[0]
    C = np.asarray(a.obsm["spatial"], dtype=float)
    E = np.asarray(a.X, dtype=float)
    E = np.log1p(E / E.sum(1, keepdims=True) * 1e4)
    th = np.radians(23.0)
    Rm = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    moved = (C - C.mean(0)) @ Rm.T + [300.0, -150.0]
    fit = R.align_pair(moved, E, C, E, k=5)
    back = R.apply(moved, fit["rotation"], fit["translation"])
    assert fit["angle_deg"] == pytest.approx(-23.0, abs=0.5)
    assert np.abs(back - C).max() < 1.0  # µm


# ------------------------------------------------------------------ real serial sections (../shared)

@pytest.fixture(scope="module")
def dlpfc(shared_data):
    d = shared_data / "dlpfc_visium_151673_151676"
    return [ad.read_h5ad(d / f"dlpfc_{s}_5000hvg.h5ad") for s in ("151673", "151674", "151675", "151676")]


@pytest.mark.shared_data
def test_joint_nnmf_on_four_dlpfc_sections_finds_the_layers(dlpfc):
    # each file holds its own section's 5,000 most variable genes, so the panels differ (a warning);
    # joint NNMF ranks the 1,125 genes they share over the four sections together
    with pytest.warns(UserWarning, match="loses 78% of its 5000 genes"):
        out = tl.integrate(dlpfc, 7, method="joint_nnmf", section_names=["151673", "151674", "151675", "151676"],
                           max_iter=150, random_state=0)
    assert out.n_vars == 1125 and out.n_obs == sum(a.n_obs for a in dlpfc)
    assert out.uns["integration"]["qc"]["hvgs"] == {s: 1125 for s in ("151673", "151674", "151675", "151676")}
    tl.cluster_domains(out, 7, basis="factors")
    scores = tl.integration_scores(out, "layer", domain_key="integration_domain", basis="factors")
    assert (scores["ari"] > 0.4).all(), scores  # expert layers L1-L6, WM (k-means on PCA: 0.17-0.22)
    assert (scores["nmi"] > 0.5).all()


@pytest.mark.shared_data
def test_inspire_on_two_adjacent_dlpfc_sections_then_3d(dlpfc):
    out = tl.integrate(dlpfc[:2], 7, method="inspire", variant="lgcn", n_steps=120, batch_size=512,
                       section_names=["151673", "151674"], random_state=1234)
    losses = out.uns["integration"]["losses"]
    assert losses["recon"].iloc[-1] < losses["recon"].iloc[0]  # the Poisson reconstruction improves
    tl.cluster_domains(out, 7, basis="latent")
    scores = tl.integration_scores(out, "layer", domain_key="integration_domain")
    assert (scores["ari"] > 0.15).all(), scores
    table = tl.reconstruct_3d(out, spacing=10.0, um_per_unit=16.2)
    assert list(table["z_um"]) == [0.0, 10.0] and out.obsm["spatial_3d"].shape == (out.n_obs, 3)
    # the two adjacent sections are nearly aligned already: a small rotation, layers agree after it
    aligned = out.obsm["spatial_aligned"]
    s = out.obs["section"].astype(str).to_numpy()
    acc = R.label_transfer_accuracy(aligned[s == "151673"], out.obs["layer"][s == "151673"].to_numpy(),
                                    aligned[s == "151674"], out.obs["layer"][s == "151674"].to_numpy())
    assert acc > 0.7, acc


def test_cluster_domains_and_scores_need_the_basis(small):
    out = tl.integrate(small, 3, method="joint_nnmf", n_hvgs=None, max_iter=20)
    with pytest.raises(KeyError, match="no latent space"):
        tl.cluster_domains(out, 3, basis="latent")
    with pytest.raises(ValueError, match="n_init"):
        tl.cluster_domains(out, 3, basis="factors", n_init=0)
    dom = tl.cluster_domains(out, 3, basis="factors")
    assert isinstance(dom.dtype, pd.CategoricalDtype) and dom.nunique() <= 3
    fs = tl.factor_scores(out)
    assert 0 <= fs["factor_diversity"] <= 1
    assert sp.issparse(out.X)


_SAME_SEED_SCRIPT = """
import hashlib, sys
import anndata as ad, numpy as np, torch
torch.set_num_threads(2)
from napari_spatial_nmf import tl
secs = [ad.read_h5ad(p)[:1500].copy() for p in sys.argv[1:3]]  # 1,500 spots each: threads still race
out = tl.integrate(secs, 7, method="inspire", variant="gat", n_steps=10, n_hvgs=3000, section_names=["a", "b"])
assert not torch.are_deterministic_algorithms_enabled()  # the caller's torch setting is restored
print(hashlib.sha1(np.ascontiguousarray(out.obsm["X_integration_latent"]).tobytes()).hexdigest())
"""


@pytest.mark.shared_data
def test_inspire_gives_the_same_model_in_every_process(shared_data):
    """Two processes, same seed, two threads: the same latent space to the bit. (Without torch's
    deterministic kernels the threaded backward of the neighbour gathers sums in a different order in
    each process, and two DLPFC runs of the same script scored ARI 0.04 apart.)"""
    import subprocess
    import sys

    d = shared_data / "dlpfc_visium_151673_151676"
    args = [sys.executable, "-c", _SAME_SEED_SCRIPT, str(d / "dlpfc_151673_5000hvg.h5ad"),
            str(d / "dlpfc_151674_5000hvg.h5ad")]
    digests = [subprocess.run(args, capture_output=True, text=True, check=True).stdout.split()[-1] for _ in range(2)]
    assert digests[0] == digests[1]
