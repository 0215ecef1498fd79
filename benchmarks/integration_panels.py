"""Gene panels that differ, and K chosen by stability, for integration (issue 23).

Eight experiments on real data (``../shared/data``), joint NNMF, mean ± s.d. over seeds:

``heldout``
    Held-out genes. Two sections of one technology (DLPFC Visium 151673 + 151674, raw UMI
    counts, spots; BARISTAseq VISp slices 1 + 2, single cells, counts recovered from
    log-normalised values). 15 % of the shared genes are hidden from the second section; the
    integration runs over the union of the panels (``genes="union"``) and imputes them there.
    Per hidden gene: Pearson r and Spearman ρ between the imputation and the truth (log1p of
    the counts normalised over the genes the section measured), beside two k-nearest-neighbour
    baselines that predict a cell as the mean of its 15 nearest cells of the other section:
    in the integration's own factor space (standardised per section), and in a PCA of the
    shared genes (the Seurat/SpaGE-style transfer).
``panel``
    A simulation from real parts of a second technology: DLPFC 151673 with all its genes, and
    the adjacent 151674 cut to a 100-gene panel (its 100 most variable genes, as a targeted
    panel is designed), each gene's counts thinned by its own capture efficiency
    (0.3 × log-normal(0, 0.5), clipped to 1: technical scaling and down-sampling). Layers must
    align (ARI of both sections within 0.05 of the integration with every gene), the hidden
    genes of 151674 are imputed (median r against the k-NN baselines), and the K chosen by
    stability must be the number of layers (7) within ±2.
``panel_loss``
    Where the panel section's ARI goes (seed 0): how much of 151674's layers a logistic
    regression from the labels reads in its thinned panel (each spot beside its 6, 18 and 54
    nearest spots; random and spatially blocked folds) against a PCA of all its genes; programs
    fitted on 151673 alone with the panel section's weights fitted on their panel part
    (reference mapping, LIGER-style); and, for both fits, the sections' mixing and the domains
    clustered over both sections or one section at a time.
``panel_ceiling``
    How high the hidden genes' median r can go on the panel simulation (seed 0; no
    integration): oracles that see 151674's own hidden counts, which no imputation sees. Each
    spot predicted by the mean of the truth over its 6, 18 or 54 nearest other spots, or by
    its expert layer's mean; and the counts' own repeatability (each count split in two halves
    by a binomial draw; median r between the halves).
``panel_transfer``
    Label transfer instead of shared programs, on the panel simulation (``tl.transfer_labels``):
    151673's domains (an NNMF of 151673 alone) carried to the panel section by a logistic
    regression over the panel genes and their surroundings, standardised within each section,
    with and without averaging each spot's probabilities over its 18 nearest; beside the same
    transfer of 151673's expert layers (an oracle).
``k_domains``
    Choosing K by how well the domains reproduce across restarts (labels unused): per K, the
    mean ARI between the restarts' domains, beside each section's ARI against the layers, on
    DLPFC 151673-151676 and the three BARISTAseq slices.
``crosstech``
    Two technologies, two cortical areas, one laminar plan: BARISTAseq VISp (3 slices, 79
    genes) and osmFISH SSp (33 genes; Codeluppi et al. 2018), which share 9 genes. The
    integration runs over the union (103 genes). Reported: the contingency of each data set's
    layers with the integrated domains (does each layer sit on domains both data sets use?),
    each data set's layer ARI after integration and alone (the same pipeline on its own
    cells and genes), and the imputation of each shared gene when it is hidden from osmFISH.
``crosstech_transfer``
    The same two data sets by label transfer over their 9 shared genes (no integration): each
    data set's expert layers carried to the other (an oracle for what the 9 genes carry), and
    osmFISH's own domains (an NNMF of osmFISH alone) carried to BARISTAseq; per layer, where its
    cells land, and whether a layer's most common domain is the same in both data sets.
``dlpfc_k``
    DLPFC 151673-151676: the K chosen by stability (restarts per K) against the best fixed K,
    per-section ARI.
``dlpfc_k_fixed`` (only when named)
    The same sections at fixed K (``--k-list``, default 6 8 9 10), each the consensus of
    ``--restarts`` restarts: the footing of the stability-chosen result.

Targets (issue 23): panel simulation ARI within 0.05 of all genes and median r ≥ k-NN + 0.05;
cross-technology: every layer present in both maps mostly (> 50 %) to shared domains, each
data set's ARI after integration ≥ alone; DLPFC: stability-chosen K within 0.02 ARI of the
best fixed K.

    python benchmarks/integration_panels.py                    # all six, 3 seeds
    python benchmarks/integration_panels.py --parts heldout panel --seeds 5
    python benchmarks/integration_panels.py --parts dlpfc_k_fixed --out k_fixed.json  # fixed K, 3 restarts
    python benchmarks/integration_panels.py --quick
"""

from __future__ import annotations

import time
import warnings

import anndata as ad
import benchmarks_common as common
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.spatial import cKDTree
from scipy.stats import pearsonr, spearmanr

from napari_spatial_nmf import tl
from napari_spatial_nmf.core.domains import standardise
from napari_spatial_nmf.core.metrics import clustering_scores

DLPFC = ["151673", "151674", "151675", "151676"]
N_NEIGHBOURS = 15  # the k-NN baselines' neighbours
LAYER = {"VISp_I": "L1", "VISp_II/III": "L2/3", "VISp_IV": "L4", "VISp_V": "L5", "VISp_VI": "L6", "VISp_wm": "WM",
         "Pia Layer 1": "L1", "Layer 2-3 medial": "L2/3", "Layer 2-3 lateral": "L2/3", "Layer 3-4": "L4",
         "Layer 4": "L4", "Layer 5": "L5", "Layer 6": "L6", "White matter": "WM"}


# ------------------------------------------------------------------ data

def dlpfc(ids, quick):
    folder = common.shared("dlpfc_visium_151673_151676")
    secs = [ad.read_h5ad(folder / f"dlpfc_{s}_5000hvg.h5ad") for s in ids]
    shared = sorted(set.intersection(*[set(s.var_names) for s in secs]))
    secs = [s[:, shared].copy() for s in secs]
    if quick:
        secs = [s[:300, :120].copy() for s in secs]
    return secs, "layer"


def barista(slices, quick):
    folder = common.shared("baristaseq_visp_3slices")
    secs = [ad.read_h5ad(folder / f"baristaseq_visp_slice{i}.h5ad") for i in slices]
    if quick:
        secs = [s[:300].copy() for s in secs]
    return secs, "original_domain"


def osmfish(quick):
    a = ad.read_h5ad(common.shared("osmfish_sscortex") / "osmfish_sscortex_6471cells_33genes.h5ad")
    from napari_spatial_nmf.core.nnmf import duplicated_cells

    a = a[(a.obs["region"] != "Excluded").to_numpy()]
    a = a[~duplicated_cells(np.asarray(a.obsm["spatial"]))].copy()  # repeated records (NNMF alone refuses them)
    return a[:400].copy() if quick else a


def lognorm(X, genes_mask=None) -> np.ndarray:
    """log1p(1e4 × counts / the cell's total over ``genes_mask``) as a dense float64 array."""
    X = sp.csr_matrix(X, dtype=np.float64)
    lib = np.asarray((X[:, genes_mask] if genes_mask is not None else X).sum(axis=1)).ravel()
    return np.log1p(np.asarray((sp.diags(1e4 / np.maximum(lib, 1e-12)) @ X).todense()))


def counts_of(a: ad.AnnData) -> sp.csr_matrix:
    """Counts of a section (BARISTAseq's recovered from its log-normalised values)."""
    from napari_spatial_nmf.core.sections import to_counts

    X = sp.csr_matrix(a.X)
    if X.data.size and np.mean(X.data != np.round(X.data)) > 0.01:
        X, _ = to_counts(X, "recover")
    return X.astype(np.float32)


# ------------------------------------------------------------------ scoring

def per_gene(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene Pearson r and Spearman ρ (NaN for a constant column)."""
    r, rho = [], []
    for j in range(truth.shape[1]):
        t, p = truth[:, j], pred[:, j]
        if np.std(t) == 0 or np.std(p) == 0:
            r.append(np.nan)
            rho.append(np.nan)
            continue
        r.append(pearsonr(p, t)[0])
        rho.append(spearmanr(p, t)[0])
    return np.asarray(r), np.asarray(rho)


def knn_predict(E_ref, Y_ref, E_query, k=N_NEIGHBOURS) -> np.ndarray:
    _, idx = cKDTree(E_ref).query(E_query, k=min(k, len(E_ref)))
    return Y_ref[idx].mean(axis=1)


def shared_pca(a_ref: np.ndarray, a_query: np.ndarray, n: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Both sections in a PCA of the shared genes (each standardised within its section)."""
    from sklearn.decomposition import PCA

    z = [(x - x.mean(0)) / (x.std(0) + 1e-9) for x in (a_ref, a_query)]
    pca = PCA(min(n, a_ref.shape[1] - 1, len(a_ref) - 1), random_state=0).fit(np.vstack(z))
    return pca.transform(z[0]), pca.transform(z[1])


def imputation_scores(res, query: str, hidden: list[str], truth: np.ndarray, ref_Y: np.ndarray,
                      shared_ref: np.ndarray, shared_query: np.ndarray) -> dict:
    """Our imputation of ``hidden`` genes in section ``query`` against the truth and two k-NN baselines."""
    sec = res.obs["section"].astype(str).to_numpy()
    q = sec == query
    measured = res.uns["integration"]["panels"][query].to_numpy()
    imp = np.asarray(res.layers["integration_imputed"], dtype=np.float64)[q]
    ours = np.log1p(1e4 * imp / imp[:, measured].sum(axis=1, keepdims=True))
    cols = [res.var_names.get_loc(g) for g in hidden]
    P = standardise(np.asarray(res.obsm["X_integration"], dtype=np.float64), sec)
    knn_latent = knn_predict(P[~q], ref_Y, P[q])
    A, B = shared_pca(shared_ref, shared_query)
    knn_pca = knn_predict(A, ref_Y, B)
    out = {}
    for name, pred in (("ours", ours[:, cols]), ("knn_latent", knn_latent), ("knn_shared_pca", knn_pca)):
        r, rho = per_gene(pred, truth)
        out[name] = {"median_r": float(np.nanmedian(r)), "median_spearman": float(np.nanmedian(rho))}
    return out


def section_ari(res, labels, domains="d") -> dict:
    out = {}
    for s in res.obs["section"].cat.categories:
        m = (res.obs["section"] == s).to_numpy()
        lab = res.obs[labels].to_numpy()[m]
        out[str(s)] = round(clustering_scores(lab, res.obs[domains].to_numpy()[m])["ari"], 4)
    return out


# ------------------------------------------------------------------ experiments

def two_sections_heldout(secs, labels, names, seed, K, max_iter, fraction=0.15, **kw):
    """Hide ``fraction`` of the shared genes from the second section; impute them."""
    rng = np.random.default_rng(seed)
    genes = list(secs[1].var_names.intersection(secs[0].var_names))
    hidden = sorted(rng.choice(genes, size=max(1, round(fraction * len(genes))), replace=False).tolist())
    keep = [g for g in secs[1].var_names if g not in set(hidden)]
    B = secs[1][:, keep].copy()
    res = tl.integrate([secs[0], B], K, genes="union", n_hvgs=None, section_names=names, random_state=seed,
                       max_iter=max_iter, **kw)
    return res, hidden, scores_for(res, secs, names, hidden, keep)


def scores_for(res, secs, names, hidden, panel):
    """Imputation of ``hidden`` in the second section: truth and the baselines' inputs."""
    kept = [res.obs_names[res.obs["section"] == n] for n in names]
    obs = [pd.Index([f"{i}-{n}" for i in s.obs_names]) for s, n in zip(secs, names)]
    rows = [o.get_indexer(k) for o, k in zip(obs, kept)]
    C0, C1 = counts_of(secs[0])[rows[0]], counts_of(secs[1])[rows[1]]
    var0, var1 = list(secs[0].var_names), list(secs[1].var_names)
    m1 = np.isin(var1, panel)  # the second section's library: the genes it measured
    truth = lognorm(C1, m1)[:, [var1.index(g) for g in hidden]]
    Y0 = lognorm(C0, np.isin(var0, panel))[:, [var0.index(g) for g in hidden]]
    shared = [g for g in panel if g in set(var0)]
    S0 = lognorm(C0, np.isin(var0, panel))[:, [var0.index(g) for g in shared]]
    S1 = lognorm(C1, m1)[:, [var1.index(g) for g in shared]]
    return imputation_scores(res, names[1], hidden, truth, Y0, S0, S1)


def heldout(a, log) -> dict:
    rows = []
    for data in ("dlpfc", "barista"):
        if data == "dlpfc":
            secs, labels = dlpfc(DLPFC[:2], a.quick)
            names, kw = DLPFC[:2], {}
        else:
            secs, labels = barista((1, 2), a.quick)
            names, kw = ["slice1", "slice2"], {"counts": "recover"}
        for seed in range(a.seeds):
            t = time.perf_counter()
            res, hidden, sc = two_sections_heldout(secs, labels, names, seed, a.k, a.max_iter, **kw)
            rows.append({"data": data, "seed": seed, "n_hidden": len(hidden), "n_genes": res.n_vars,
                         "fit_s": round(time.perf_counter() - t, 1), **sc})
            log(f"heldout {data} seed {seed}: " + ", ".join(f"{k} r {v['median_r']:.3f}" for k, v in sc.items()))
    return {"rows": rows}


def thin(X: sp.csr_matrix, efficiency: np.ndarray, rng) -> sp.csr_matrix:
    """Binomial thinning of each gene's counts by its capture efficiency (a new matrix)."""
    X = sp.csr_matrix(X, dtype=np.float64, copy=True)
    X.data = rng.binomial(np.round(X.data).astype(np.int64), efficiency[X.indices]).astype(np.float64)
    X.eliminate_zeros()
    return X


def panel_sections(quick: bool):
    """DLPFC 151673 (all genes), 151674, its panel (its most variable genes) and the layers key."""
    import scanpy as sc

    secs, labels = dlpfc(DLPFC[:2], quick)
    B = secs[1].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pp.highly_variable_genes(B, flavor="seurat_v3", n_top_genes=30 if quick else 100)
    return secs, list(B.var_names[B.var["highly_variable"].to_numpy()]), labels


def panel_section(sec: ad.AnnData, panel: list[str], seed: int) -> ad.AnnData:
    """The section cut to the panel, each gene's counts thinned by its capture efficiency."""
    rng = np.random.default_rng(seed)
    eff = np.clip(0.3 * rng.lognormal(0.0, 0.5, size=len(panel)), 0, 1)
    Bp = sec[:, panel].copy()
    Bp.X = thin(Bp.X, eff, rng).astype(np.float32)
    return Bp


def panel_sim(a, log) -> dict:
    secs, panel, labels = panel_sections(a.quick)
    names = DLPFC[:2]
    n_layers = len({v for s in secs for v in s.obs[labels].dropna().astype(str)})
    hidden = [g for g in secs[1].var_names if g not in set(panel)]
    rows, ks = [], []
    for seed in range(a.seeds):
        Bp = panel_section(secs[1], panel, seed)
        full = tl.integrate(secs, a.k, n_hvgs=None, section_names=names, random_state=seed, max_iter=a.max_iter)
        t = time.perf_counter()
        sim = tl.integrate([secs[0], Bp], a.k, genes="union", n_hvgs=None, section_names=names,
                           random_state=seed, max_iter=a.max_iter)
        fit_s = time.perf_counter() - t
        out = {"seed": seed, "fit_s": round(fit_s, 1)}
        for name, res in (("all_genes", full), ("panel", sim)):
            tl.cluster_domains(res, n_layers, key_added="d")
            out[f"ari_{name}"] = section_ari(res, labels)
        # the truth of the hidden genes: 151674's own counts (its library over the panel it measured, thinned)
        kept = [sim.obs_names[sim.obs["section"] == n] for n in names]
        obs = [pd.Index([f"{i}-{n}" for i in s.obs_names]) for s, n in zip(secs, names)]
        rows_ = [o.get_indexer(k) for o, k in zip(obs, kept)]
        var0 = list(secs[0].var_names)
        C0 = counts_of(secs[0])[rows_[0]]
        C1 = sp.hstack([counts_of(Bp), counts_of(secs[1][:, hidden])]).tocsr()[rows_[1]]
        lib1 = np.asarray(C1[:, : len(panel)].sum(axis=1)).ravel()
        L1 = np.log1p(np.asarray((sp.diags(1e4 / np.maximum(lib1, 1e-12)) @ C1).todense()))
        truth = L1[:, len(panel):]
        m0 = np.isin(var0, panel)
        L0 = lognorm(C0, m0)
        Y0 = L0[:, [var0.index(g) for g in hidden]]
        S0, S1 = L0[:, [var0.index(g) for g in panel]], L1[:, : len(panel)]
        out["imputation"] = imputation_scores(sim, names[1], hidden, truth, Y0, S0, S1)
        rows.append(out)
        log(f"panel seed {seed}: ARI all genes {out['ari_all_genes']}, panel {out['ari_panel']}; "
            + ", ".join(f"{k} r {v['median_r']:.3f}" for k, v in out["imputation"].items()))
        if seed < a.stability_seeds:
            k_range = range(3, 6) if a.quick else range(4, 13)
            st = tl.integrate_stability([secs[0], Bp], k_range, a.restarts, genes="union", n_hvgs=None,
                                        section_names=names, random_state=seed * 100, max_iter=a.max_iter)
            sweep = st.uns["integration_stability"]
            ks.append({"seed": seed, "best_k": int(sweep["best_k"]), "table": sweep["table"].round(4)
                       .to_dict(orient="records")})
            log(f"panel seed {seed}: K by stability {sweep['best_k']} (layers {n_layers})")
    return {"n_panel": len(panel), "n_hidden": len(hidden), "n_layers": n_layers, "rows": rows, "stability": ks}


def panel_ceiling(a, log) -> dict:
    """Oracle predictors of the panel simulation's hidden genes (seed 0; see the module text)."""
    secs, panel, labels = panel_sections(a.quick)
    hidden = [g for g in secs[1].var_names if g not in set(panel)]
    Bp = panel_section(secs[1], panel, 0)
    lib = np.asarray(counts_of(Bp).sum(axis=1)).ravel()
    ok = lib > 0  # the integration drops spots with no counts on the panel
    C = counts_of(secs[1][:, hidden]).astype(np.float64)[ok]
    lib = lib[ok]

    def norm(X, library):
        return np.log1p(np.asarray((sp.diags(1e4 / library) @ X).todense()))

    truth = norm(C, lib)
    xy = np.asarray(secs[1].obsm["spatial"], dtype=np.float64)[ok]
    out = {"n_hidden": len(hidden), "n_spots": int(ok.sum())}
    for k in (6, 18, 54):
        _, j = cKDTree(xy).query(xy, k=k + 1)
        out[f"neighbours_{k}"] = float(np.nanmedian(per_gene(truth[j[:, 1:]].mean(axis=1), truth)[0]))
    layer = secs[1].obs[labels].astype(str).to_numpy()[ok]
    means = np.zeros_like(truth)
    for v in np.unique(layer):
        means[layer == v] = truth[layer == v].mean(axis=0)
    out["layer_mean"] = float(np.nanmedian(per_gene(means, truth)[0]))
    half = C.copy()
    half.data = np.random.default_rng(0).binomial(np.round(C.data).astype(np.int64), 0.5).astype(np.float64)
    out["split_halves"] = float(np.nanmedian(per_gene(norm(half, lib / 2), norm(C - half, lib / 2))[0]))
    log("panel ceiling: " + ", ".join(f"{k} {v:.3f}" for k, v in out.items() if isinstance(v, float)))
    return out


def panel_loss(a, log) -> dict:
    """Where the panel section's ARI goes (seed 0): the layer information its genes carry (a
    logistic regression from the labels, cross-validated), programs fitted on the full section
    alone with the panel section's weights fitted on their panel part (reference mapping), and
    the domains of the union fit clustered over both sections or one section at a time."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_predict

    from napari_spatial_nmf.core import joint_nnmf as jn
    from napari_spatial_nmf.core import nnmf as nn
    from napari_spatial_nmf.core._progress import drain
    from napari_spatial_nmf.core.diagnostics import mixing_score
    from napari_spatial_nmf.core.domains import neighbourhood_features

    secs, panel, labels = panel_sections(a.quick)
    names, seed = DLPFC[:2], 0
    n_layers = len({v for s in secs for v in s.obs[labels].dropna().astype(str)})
    Bp = panel_section(secs[1], panel, seed)
    out: dict = {"seed": seed}

    # 1. what the panel carries: a supervised read-out of 151674's layers (an upper reference, labels used)
    y = secs[1].obs[labels].astype(str).to_numpy()
    ok = secs[1].obs[labels].notna().to_numpy()
    xy = np.asarray(secs[1].obsm["spatial"], dtype=np.float64)[:, :2]
    sections = np.zeros(len(xy))
    blocks = (np.digitize(xy[:, 0], np.quantile(xy[:, 0], [1 / 3, 2 / 3])) * 3
              + np.digitize(xy[:, 1], np.quantile(xy[:, 1], [1 / 3, 2 / 3])))
    n_pcs = min(50, secs[1].n_vars - 1, secs[1].n_obs - 1)
    described = {"all genes (PCA)": PCA(n_pcs, random_state=0).fit_transform(lognorm(counts_of(secs[1]))),
                 "panel, thinned": lognorm(counts_of(Bp))}
    out["supervised"] = {}
    for what, L in described.items():
        F = np.hstack([L, neighbourhood_features(L, xy, sections, (6, 18, 54))])
        F = (F - F.mean(0)) / (F.std(0) + 1e-9)
        folds = {"random 5-fold": {"cv": 5}, "9 spatial blocks": {"cv": GroupKFold(9), "groups": blocks[ok]}}
        for cv_name, kw in folds.items():
            pred = cross_val_predict(LogisticRegression(max_iter=2000, C=0.1), F[ok], y[ok], **kw)
            out["supervised"][f"{what}, {cv_name}"] = round(clustering_scores(y[ok], pred)["ari"], 4)
    log(f"panel_loss: supervised layer ARI {out['supervised']}")

    # 2. reference mapping: programs from 151673 alone, 151674's weights (and gene scaling) on their panel part
    def kernel(sec):
        C = np.asarray(sec.obsm["spatial"], dtype=np.float64)[:, :2]
        return nn.spatial_kernel(C, nn.resolve_lengthscale(C, None), 0.1).S

    X0 = nn.normalize_cells(sp.csr_matrix(counts_of(secs[0]), dtype=np.float64))
    ref = drain(jn.iter_fit_joint(X0, [(0, X0.shape[0])], a.k, kernel(secs[0]), max_iter=a.max_iter,
                                  random_state=seed, warn=False))
    var0 = list(secs[0].var_names)
    Hp = np.ascontiguousarray(ref.signatures.T[[var0.index(g) for g in panel]])
    X1 = nn.normalize_cells(sp.csr_matrix(counts_of(Bp), dtype=np.float64))
    S1, col_sums = kernel(Bp), np.asarray(X1.sum(axis=0)).ravel()
    W1 = np.random.default_rng(seed).uniform(size=(X1.shape[0], a.k)) + 0.1
    c1 = np.ones((1, len(panel)))
    for _ in range(a.max_iter):  # the joint NNMF iteration with the programs held: W step, γ step, smoothing
        jn._w_update([X1], [W1], Hp, c1)
        c1[0] = np.maximum(col_sums / np.maximum(W1.sum(axis=0) @ Hp.T, 1e-12), 1e-12)
        nn._smooth(S1.indptr, S1.indices, S1.data, W1, nn._N_CHUNKS)
        nn._clamp(W1)
    mapped = ad.concat([secs[0], Bp], join="inner", label="section", keys=names, index_unique="-")
    mapped.obs["section"] = pd.Categorical(mapped.obs["section"], categories=names)
    mapped.obsm["X_integration"] = np.vstack([w / w.sum(axis=1, keepdims=True) for w in (ref.weights, W1)])
    union = tl.integrate([secs[0], Bp], a.k, genes="union", n_hvgs=None, section_names=names,
                         random_state=seed, max_iter=a.max_iter)
    for name, res in (("mapping", mapped), ("union", union)):
        sec = res.obs["section"].to_numpy()  # mixing as tl.diagnose scores it: proportions standardised per section
        row = {"mixing": round(mixing_score(standardise(np.asarray(res.obsm["X_integration"]), sec), sec), 4)}
        tl.cluster_domains(res, n_layers, key_added="d")
        row["shared_domains"] = section_ari(res, labels)
        row["one_section_at_a_time"] = {}
        for s in names:
            one = res[(res.obs["section"] == s).to_numpy()].copy()
            one.obs["section"] = pd.Categorical(one.obs["section"].astype(str), categories=[s])
            tl.cluster_domains(one, n_layers, key_added="d")
            row["one_section_at_a_time"].update(section_ari(one, labels))
        out[name] = row
        log(f"panel_loss: {name} {row}")
    return out


def panel_transfer(a, log) -> dict:
    """Label transfer instead of shared programs (``tl.transfer_labels``; no integration; labels
    unused except by the oracle): 151673's domains from an NNMF of 151673 alone (all its genes,
    K = ``-k``) carried to the panel section through the panel genes and their surroundings.
    The oracle carries 151673's expert layers the same way; ``_depth_unmatched``: without
    thinning 151673's counts to the panel's depth first."""
    from napari_spatial_nmf.tl._scores import TRANSFER_SMOOTH

    secs, panel, labels = panel_sections(a.quick)
    n_layers = len({v for s in secs for v in s.obs[labels].dropna().astype(str)})
    opts = {"neighbours": (3, 6), "smooth": 6} if a.quick else {}  # else the defaults
    rows = []
    for seed in range(a.seeds):
        A = secs[0].copy()
        A.X = counts_of(A)
        A.obs["section"] = "151673"
        tl.nnmf(A, a.k, random_state=seed, **({"max_iter": a.max_iter} if a.quick else {}))  # NNMF's default
        tl.cluster_domains(A, n_layers, key="nnmf", key_added="d")
        Bp = panel_section(secs[1], panel, seed)
        okA, okB = A.obs[labels].notna().to_numpy(), Bp.obs[labels].notna().to_numpy()
        yA, yB = A.obs[labels].astype(str).to_numpy(), Bp.obs[labels].astype(str).to_numpy()
        ari_a = clustering_scores(yA[okA], A.obs["d"].to_numpy()[okA])["ari"]
        out = {"seed": seed, "ari_151673_domains": round(ari_a, 4)}
        for name, key in (("transfer", "d"), ("oracle_layers", labels)):
            smoothed = opts.get("smooth", TRANSFER_SMOOTH)
            for how, smooth, depth in (("", 1, True), ("_smoothed", smoothed, True),
                                       ("_smoothed_depth_unmatched", smoothed, False)):
                pred = tl.transfer_labels(A, Bp, key, **{**opts, "smooth": smooth}, match_depth=depth,
                                          key_added="t").to_numpy()
                out[f"ari_151674_{name}{how}"] = round(clustering_scores(yB[okB], pred[okB])["ari"], 4)
                out[f"confidence_{name}{how}"] = round(Bp.uns["t"]["mean_confidence"], 3)
        rows.append(out)
        log(f"panel_transfer seed {seed}: {out}")
    keys = [k for k in rows[0] if k != "seed"]
    return {"rows": rows, "mean_sd": {k: common.mean_sd([r[k] for r in rows]) for k in keys}}

def k_domains(a, log) -> dict:
    """A label-free alternative to the programs' instability for choosing K: how well the
    domains reproduce across restarts. Per K, ``--restarts`` integrations (seeds 0, 1, ...), each
    clustered by ``tl.cluster_domains``' defaults into as many domains as expert layers; the
    agreement is the mean ARI between the restarts' domains (labels unused), beside each
    section's ARI against the layers (mean over the restarts). DLPFC 151673-151676 and the
    three BARISTAseq slices (counts recovered)."""
    import itertools

    out = {}
    for data in ("barista", "dlpfc"):
        if data == "dlpfc":
            (secs, labels), names, kw = dlpfc(DLPFC, a.quick), DLPFC, {}
            ks = [6, 7, 8, 9, 10]
        else:
            (secs, labels), names, kw = barista((1, 2, 3), a.quick), ["1", "2", "3"], {"counts": "recover",
                                                                                        "n_hvgs": None}
            ks = [4, 5, 6, 7, 8, 9, 10, 12]
        if a.quick:
            ks = [3]
        n_layers = len({v for s in secs for v in s.obs[labels].dropna().astype(str)})
        rows = []
        for k in ks:
            doms, aris = [], []
            for r in range(a.restarts):
                res = tl.integrate(secs, k, section_names=names, random_state=r, max_iter=a.max_iter, **kw)
                tl.cluster_domains(res, n_layers, key_added="d")
                doms.append(res.obs["d"].astype(str).to_numpy())
                aris.append(section_ari(res, labels))
            agree = [clustering_scores(x, y)["ari"] for x, y in itertools.combinations(doms, 2)]
            ari = {s: round(float(np.mean([x[s] for x in aris])), 4) for s in aris[0]}
            row = {"k": k, "agreement": round(float(np.mean(agree)), 4), "ari": ari,
                   "mean_ari": round(float(np.mean(list(ari.values()))), 4)}
            rows.append(row)
            log(f"k_domains {data} K={k}: {row}")
        best_agree = max(rows, key=lambda r: r["agreement"])["k"]
        best_ari = max(rows, key=lambda r: r["mean_ari"])["k"]
        out[data] = {"rows": rows, "k_most_agreeing": best_agree, "k_best_mean_ari": best_ari}
    return out


def crosstech(a, log) -> dict:
    secs, labels = barista((1, 2, 3), a.quick)
    osm = osmfish(a.quick)
    bnames = ["slice1", "slice2", "slice3"]
    for s in secs:
        s.obs["layer"] = s.obs[labels].astype(str).map(LAYER)
    osm.obs["layer"] = osm.obs["region"].astype(str).map(LAYER).fillna(osm.obs["region"].astype(str))
    shared = sorted(set(secs[0].var_names) & set(osm.var_names))
    n_dom = len(set(osm.obs["layer"]) | {v for s in secs for v in s.obs["layer"]})
    K = min(a.k, len(shared))  # the alignment rests on the shared genes: K at most their number
    rows = []
    for seed in range(a.seeds):
        t = time.perf_counter()
        res = tl.integrate([*secs, osm], K, genes="union", n_hvgs=None, counts="recover",
                           section_names=[*bnames, "osmFISH"], random_state=seed, max_iter=a.max_iter)
        fit_s = time.perf_counter() - t
        tl.cluster_domains(res, n_dom, key_added="d")
        tech = np.where(res.obs["section"].astype(str) == "osmFISH", "osmFISH", "BARISTAseq")
        lay = res.obs["layer"].astype(str).to_numpy()
        dom = res.obs["d"].astype(str).to_numpy()
        share = pd.crosstab(dom, tech, normalize="columns")  # each data set's cells over the domains
        # a domain is shared when, with both data sets weighed equally, each makes up >= 20 % of it; the
        # earlier rule (>= 5 % of each data set's cells) could never count a small layer's domain (L1 is
        # 3 % of BARISTAseq's cells) as shared, however well it matched
        balanced = share.div(share.sum(axis=1), axis=0)
        shared_by = {"balanced_20pc": set(balanced.index[(balanced >= 0.2).all(axis=1)]),
                     "5pc_of_each": set(share.index[(share >= 0.05).all(axis=1)])}
        table = pd.crosstab([tech, lay], dom)
        mostly = {rule: {} for rule in shared_by}
        for layer in sorted(set(lay[tech == "osmFISH"]) & set(lay[tech == "BARISTAseq"])):
            for t_ in ("BARISTAseq", "osmFISH"):
                m = (tech == t_) & (lay == layer)
                for rule, doms in shared_by.items():
                    mostly[rule][f"{t_} {layer}"] = round(float(np.isin(dom[m], list(doms)).mean()), 3)
        ari_int = {t_: round(clustering_scores(lay[tech == t_], dom[tech == t_])["ari"], 4)
                   for t_ in ("BARISTAseq", "osmFISH")}
        # the same pipeline on each data set alone (its own genes and cells)
        alone_b = tl.integrate(secs, K, n_hvgs=None, counts="recover", section_names=bnames, random_state=seed,
                               max_iter=a.max_iter)
        tl.cluster_domains(alone_b, len({v for s in secs for v in s.obs["layer"]}), key_added="d")
        o = osm.copy()
        o.obs["section"] = pd.Categorical(["osmFISH"] * o.n_obs)
        tl.nnmf(o, K, random_state=seed, max_iter=a.max_iter)
        tl.cluster_domains(o, o.obs["layer"].nunique(), key="nnmf", key_added="d")
        ari_alone = {"BARISTAseq": round(clustering_scores(alone_b.obs["layer"].astype(str),
                                                          alone_b.obs["d"])["ari"], 4),
                     "osmFISH": round(clustering_scores(o.obs["layer"].astype(str), o.obs["d"])["ari"], 4)}
        # imputation: the shared genes hidden from osmFISH in 3 folds (the others still align the data sets)
        per_gene_r = {}
        for fold in ([shared[:3]] if a.quick else np.array_split(np.random.default_rng(seed).permutation(shared), 3)):
            fold = sorted(fold)
            osm_h = osm[:, [g for g in osm.var_names if g not in set(fold)]].copy()
            k_h = min(K, len(shared) - len(fold))  # K at most the genes still shared
            res_h = tl.integrate([*secs, osm_h], k_h, genes="union", n_hvgs=None, counts="recover",
                                 section_names=[*bnames, "osmFISH"], random_state=seed, max_iter=a.max_iter)
            per_gene_r |= imputed_in(res_h, "osmFISH", fold, osm, list(osm_h.var_names))
        r = np.array(list(per_gene_r.values()))
        imp = {"per_gene_r": per_gene_r, "summary": {"median_r": round(float(np.nanmedian(r)), 3)}}
        rows.append({"seed": seed, "fit_s": round(fit_s, 1), "n_genes": res.n_vars, "n_shared": len(shared),
                     "shared_domains": {rule: sorted(d) for rule, d in shared_by.items()},
                     "layer_in_shared_domains": mostly["balanced_20pc"],
                     "layer_in_shared_domains_5pc": mostly["5pc_of_each"],
                     "ari_integrated": ari_int, "ari_alone": ari_alone,
                     "mixing": round(float(res.uns["integration"]["diagnostics"]["mixing"]), 4),
                     "warnings": res.uns["integration"]["diagnostics"]["warnings"],
                     "contingency": {f"{k[0]} {k[1]}": v for k, v in table.T.to_dict().items()},
                     "imputation_osmfish_shared_genes": imp})
        log(f"crosstech seed {seed}: ARI integrated {ari_int}, alone {ari_alone}; layers in shared domains "
            f"{mostly['balanced_20pc']}; imputation {imp['summary']}")
    return {"shared_genes": shared, "n_domains": n_dom, "rows": rows}


def crosstech_transfer(a, log) -> dict:
    """Label transfer between the two technologies (``tl.transfer_labels``, 9 shared genes)."""
    secs, labels = barista((1, 2, 3), a.quick)
    for i, s in enumerate(secs):
        s.obs["layer"] = s.obs[labels].astype(str).map(LAYER)
        s.obs["section"] = f"slice{i + 1}"
    B = ad.concat(secs, index_unique="-")
    B.obs["layer"] = B.obs["layer"].astype("category")
    osm = osmfish(a.quick)
    osm.obs["layer"] = pd.Categorical(osm.obs["region"].astype(str).map(LAYER).fillna(osm.obs["region"].astype(str)))
    opts = {"neighbours": (3, 6), "smooth": 6} if a.quick else {}

    def carried(ref, query, key):
        q = query.copy()
        pred = tl.transfer_labels(ref, q, key, key_added="t", **opts).astype(str)
        lay = q.obs["layer"].astype(str)
        where = pd.crosstab(lay.to_numpy(), pred.to_numpy(), normalize="index").round(3)
        return pred, {"ari": round(clustering_scores(lay.to_numpy(), pred.to_numpy())["ari"], 4),
                         "mean_confidence": round(q.uns["t"]["mean_confidence"], 3), "where": where.T.to_dict()}

    out = {"shared_genes": sorted(set(B.var_names) & set(osm.var_names))}
    for name, ref, query in (("layers_baristaseq_to_osmfish", B, osm), ("layers_osmfish_to_baristaseq", osm, B)):
        _, out[name] = carried(ref, query, "layer")
        log(f"crosstech_transfer {name}: ARI {out[name]['ari']}")
    rows = []
    for seed in range(a.seeds):
        o = osm.copy()
        o.obs["section"] = "osmFISH"
        tl.nnmf(o, a.k if a.quick else 8, random_state=seed, **({"max_iter": a.max_iter} if a.quick else {}))
        tl.cluster_domains(o, o.obs["layer"].nunique(), key="nnmf", key_added="d")
        pred, res = carried(o, B, "d")
        own = pd.crosstab(o.obs["layer"].astype(str).to_numpy(), o.obs["d"].astype(str).to_numpy())
        there = pd.crosstab(B.obs["layer"].astype(str).to_numpy(), pred.to_numpy())
        same = {L: bool(own.loc[L].idxmax() == there.loc[L].idxmax()) for L in there.index if L in own.index}
        rows.append({"seed": seed, "ari_osmfish_domains": round(clustering_scores(
            o.obs["layer"].astype(str).to_numpy(), o.obs["d"].astype(str).to_numpy())["ari"], 4),
            "ari_baristaseq_transferred": res["ari"], "same_top_domain": same})
        log(f"crosstech_transfer seed {seed}: {rows[-1]}")
    out["osmfish_domains_to_baristaseq"] = rows
    return out


def imputed_in(res, query, hidden, original, panel) -> dict:
    """Per-gene Pearson r of the imputation of ``hidden`` genes in section ``query`` against its
    true counts (``original``; log1p normalised over the genes it kept, ``panel``)."""
    q = (res.obs["section"].astype(str) == query).to_numpy()
    idx = pd.Index([f"{i}-{query}" for i in original.obs_names]).get_indexer(res.obs_names[q])
    C = counts_of(original)[idx]
    var = list(original.var_names)
    truth = lognorm(C, np.isin(var, panel))[:, [var.index(g) for g in hidden]]
    measured = res.uns["integration"]["panels"][query].to_numpy()
    imp = np.asarray(res.layers["integration_imputed"], dtype=np.float64)[q]
    ours = np.log1p(1e4 * imp / imp[:, measured].sum(axis=1, keepdims=True))[:, [res.var_names.get_loc(g)
                                                                                  for g in hidden]]
    r, _ = per_gene(ours, truth)
    return {g: round(float(v), 3) for g, v in zip(hidden, r)}


def dlpfc_k(a, log) -> dict:
    secs, labels = dlpfc(DLPFC if not a.quick else DLPFC[:2], a.quick)
    names = DLPFC if not a.quick else DLPFC[:2]
    k_range = range(3, 5) if a.quick else range(5, 15)
    fixed = {}
    for K in k_range:
        res = tl.integrate(secs, K, section_names=names, random_state=0, max_iter=a.max_iter)
        tl.cluster_domains(res, 7, key_added="d")
        fixed[K] = section_ari(res, labels)
        log(f"dlpfc_k fixed K={K}: {fixed[K]}")
    st = tl.integrate_stability(secs, k_range, a.restarts, section_names=names, random_state=0,
                                max_iter=a.max_iter)
    tl.cluster_domains(st, 7, key_added="d")
    sweep = st.uns["integration_stability"]
    chosen = section_ari(st, labels)
    best_fixed = max(fixed, key=lambda k: np.mean(list(fixed[k].values())))
    log(f"dlpfc_k: chosen K={sweep['best_k']} {chosen}; best fixed K={best_fixed} {fixed[best_fixed]}")
    return {"fixed": fixed, "chosen_k": int(sweep["best_k"]), "chosen_ari": chosen, "best_fixed_k": best_fixed,
            "table": sweep["table"].round(4).to_dict(orient="records")}


def dlpfc_k_fixed(a, log) -> dict:
    """Fixed K on the same footing as the stability-chosen K: the consensus of ``--restarts``
    restarts per K (the sweep's chosen result is such a consensus; ``dlpfc_k``'s fixed-K row
    is one seed per K, and its best of ten single seeds is biased upwards)."""
    secs, labels = dlpfc(DLPFC if not a.quick else DLPFC[:2], a.quick)
    names = DLPFC if not a.quick else DLPFC[:2]
    out = {}
    for K in (a.k_list or ([3] if a.quick else [6, 8, 9, 10])):
        res = tl.integrate(secs, K, section_names=names, random_state=0, max_iter=a.max_iter, n_restarts=a.restarts)
        tl.cluster_domains(res, 7, key_added="d")
        out[K] = section_ari(res, labels)
        log(f"dlpfc_k_fixed K={K}, consensus of {a.restarts}: {out[K]} mean {np.mean(list(out[K].values())):.3f}")
    return {"restarts": a.restarts, "consensus": out}


PARTS = {"heldout": heldout, "panel": panel_sim, "panel_loss": panel_loss, "panel_ceiling": panel_ceiling,
         "panel_transfer": panel_transfer, "k_domains": k_domains, "crosstech": crosstech,
         "crosstech_transfer": crosstech_transfer, "dlpfc_k": dlpfc_k,
         "dlpfc_k_fixed": dlpfc_k_fixed}


def main(argv=None) -> int:
    ap = common.parser(__doc__)
    ap.add_argument("--parts", nargs="+", default=[p for p in PARTS if p != "dlpfc_k_fixed"], choices=list(PARTS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--stability-seeds", type=int, default=1, help="panel simulation: seeds with a K sweep")
    ap.add_argument("-k", type=int, default=12)
    ap.add_argument("--restarts", type=int, default=3)
    ap.add_argument("--max-iter", type=int, default=300)
    ap.add_argument("--k-list", type=int, nargs="+", help="dlpfc_k_fixed: the K to fit (default 6 8 9 10)")
    a = ap.parse_args(argv)
    if a.quick:
        a.seeds, a.stability_seeds, a.k, a.restarts, a.max_iter = 1, 1, 4, 2, 20
        a.parts = list(dict.fromkeys([*a.parts, "dlpfc_k_fixed"]))  # CI runs every part, so none rots
    warnings.simplefilter("ignore")
    result = {"settings": {k: str(v) for k, v in vars(a).items()}}
    for part in a.parts:
        t = time.perf_counter()
        result[part] = PARTS[part](a, lambda msg: print(msg, flush=True))
        result[part]["seconds"] = round(time.perf_counter() - t, 1)
    common.write(a, "integration_panels", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
