"""Spatial domains of integrated sections against expert labels, over seeds: DLPFC and BARISTAseq.

Real data (``../shared/data``): the four DLPFC Visium sections 151673-151676 (spots, raw UMI
counts, layers L1-L6 and WM; Maynard et al. 2021) and the three BARISTAseq VISp slices (single
cells, log-normalised only, six layers; Sun et al. 2021, as curated by iSTBench). One joint
model per data set and seed, labels unused; domains by ``tl.cluster_domains`` (a Gaussian
mixture on each cell's surroundings, with the number of expert layers as components). For each
seed: ARI per section and of the pooled cells, time, and the process's peak memory. Each
domain setting is also scored with the neighbour-majority refinement, and without the
per-section standardisation, to measure both.

Published figures beside ours (independent re-runs; ../shared/references/integration-anchors.md):
DLPFC best single-section mean 0.609 (GraphST, Hu 2024), INSPIRE's own 0.576/0.643/0.614/0.614;
BARISTAseq pooled MENDER 0.701, GraphST+PASTE 0.608, BANKSY 0.606.

    python benchmarks/integration_domains.py                       # joint NNMF, both data sets, 5 seeds
    python benchmarks/integration_domains.py --methods inspire --data dlpfc --steps 1000
    python benchmarks/integration_domains.py --quick
"""

from __future__ import annotations

import resource
import time
import warnings
from inspect import signature

import anndata as ad
import benchmarks_common as common
import numpy as np

from napari_spatial_nmf import tl
from napari_spatial_nmf.core.metrics import clustering_scores

DLPFC = ["151673", "151674", "151675", "151676"]
PUBLISHED = {"dlpfc": {"INSPIRE (own notebook)": [0.576, 0.643, 0.614, 0.614], "GraphST (Hu 2024, mean of 20)":
                       [0.638, 0.610, 0.630, 0.559]},
             "barista": {"MENDER (iSTBench, pooled)": 0.701, "GraphST+PASTE (pooled)": 0.608,
                         "BANKSY (pooled)": 0.606}}
PREVIOUS_DEFAULT = (18, 54)  # cluster_domains' neighbours before (12, 36, 108); --default-domains scores both
SETTINGS = {"dlpfc": {"neighbours": [(), (18,), (18, 54)]}, "barista": {"neighbours": [(), (18,), (30, 90)]}}


def load(name: str, quick: bool):
    if name == "dlpfc":
        folder = common.shared("dlpfc_visium_151673_151676")
        secs = [ad.read_h5ad(folder / f"dlpfc_{s}_5000hvg.h5ad") for s in DLPFC]
        labels, kwargs = "layer", {"section_names": DLPFC, "n_hvgs": 3000}
    else:
        folder = common.shared("baristaseq_visp_3slices")
        secs = [ad.read_h5ad(folder / f"baristaseq_visp_slice{i}.h5ad") for i in (1, 2, 3)]
        labels, kwargs = "original_domain", {"section_names": ["slice1", "slice2", "slice3"], "n_hvgs": None,
                                             "counts": "recover"}
    if quick:
        secs = [s[:400].copy() for s in secs[:2]]
        kwargs["section_names"] = kwargs["section_names"][:2]
        kwargs["max_iter"] = 30
    return secs, labels, kwargs


def score(res, labels: str, domains: str) -> dict:
    out = {}
    for s in res.obs["section"].cat.categories:
        m = (res.obs["section"] == s).to_numpy()
        out[str(s)] = round(clustering_scores(res.obs[labels].to_numpy()[m], res.obs[domains].to_numpy()[m])["ari"], 4)
    out["pooled"] = round(clustering_scores(res.obs[labels].to_numpy(), res.obs[domains].to_numpy())["ari"], 4)
    return out


def summarise(rows: list[dict]) -> dict:
    keys = [k for k in rows[0]["ari"]]
    return {k: common.mean_sd([r["ari"][k] for r in rows]) for k in keys}


def main(argv=None) -> int:
    ap = common.parser(__doc__)
    ap.add_argument("--data", nargs="+", default=["dlpfc", "barista"], choices=["dlpfc", "barista"])
    ap.add_argument("--methods", nargs="+", default=["joint_nnmf"], choices=["joint_nnmf", "inspire"])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("-k", type=int, nargs="+", default=[12])
    ap.add_argument("--restarts", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--steps", type=int, default=1000, help="INSPIRE training steps")
    ap.add_argument("--default-domains", action="store_true",
                    help="score only cluster_domains' defaults (and the previous default neighbours, 18 54), "
                         "with and without the majority refinement (not every neighbourhood and scaling)")
    a = ap.parse_args(argv)
    if a.quick:  # the same code on tiny sizes (CI)
        a.seeds, a.k, a.restarts, a.steps = 2, [4], [2], 3
    warnings.simplefilter("ignore")
    default = signature(tl.cluster_domains).parameters["neighbours"].default  # --default-domains
    result = {"published": PUBLISHED, "settings": {k: str(v) for k, v in vars(a).items()}, "runs": []}
    for data in a.data:
        secs, labels, kwargs = load(data, a.quick)
        n_dom = len({v for s in secs for v in s.obs[labels].dropna().astype(str)})
        for method in a.methods:
            for K in a.k:
                for R in (a.restarts if method == "joint_nnmf" else [1]):
                    per_setting: dict = {}
                    for seed in range(a.seeds):
                        t = time.perf_counter()
                        extra = {"n_steps": a.steps} if method == "inspire" else {}
                        res = tl.integrate(secs, K, method=method, random_state=seed * 100, n_restarts=R, **kwargs,
                                           **extra)
                        fit_s = time.perf_counter() - t
                        settings = ([()] if a.quick else [default, PREVIOUS_DEFAULT] if a.default_domains
                                    else SETTINGS[data]["neighbours"])
                        for nb in settings:
                            for scale in (("section",) if a.default_domains else ("section", "none")):
                                for refine in (0, 6):
                                    t = time.perf_counter()
                                    tl.cluster_domains(res, n_dom, neighbours=nb, scale=scale, refine=refine,
                                                       key_added="d")
                                    name = f"neighbours={list(nb)} scale={scale} refine={refine}"
                                    per_setting.setdefault(name, []).append(
                                        {"seed": seed, "ari": score(res, labels, "d"), "fit_s": round(fit_s, 1),
                                         "domains_s": round(time.perf_counter() - t, 2)})
                        diag = res.uns["integration"]["diagnostics"]
                        print(data, method, K, R, seed, f"{fit_s:.0f} s", "mixing", round(diag["mixing"], 3),
                              flush=True)
                    for name, rows in per_setting.items():
                        summary = summarise(rows)
                        result["runs"].append({"data": data, "method": method, "K": K, "n_restarts": R,
                                               "domains": name, "rows": rows, "ari_mean_sd": summary,
                                               "fit_s_mean": float(np.mean([r["fit_s"] for r in rows]))})
                        print(f"  {name}: " + ", ".join(f"{k} {m:.3f} ± {s:.3f}" for k, (m, s) in summary.items()),
                              flush=True)
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    common.write(a, "integration_domains", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
