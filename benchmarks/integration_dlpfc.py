"""Integration of the four DLPFC Visium sections (151673-151676) scored against the expert layers.

Real data (``../shared/data/dlpfc_visium_151673_151676``: raw UMI counts, manual layers
L1-L6 and WM; Maynard et al. 2021). One run computes, on the same sections:

* INSPIRE (``tl.integrate(method="inspire")``, GAT, K factors, n steps): domains from a
  Gaussian mixture with 7 components on the latent space (INSPIRE's clustering), and the
  argmax factor;
* joint NNMF (``method="joint_nnmf"``): a Gaussian mixture on the factor proportions, and
  the argmax factor;
* NNMF fitted per section (K = 7, argmax domains) and plain KL-NMF on the pooled sections
  (the shared genes, argmax domains), the baselines of the issue;
* INSPIRE's published per-section values (the tutorial's DLPFC_scores notebook).

Reports per-section ARI and NMI, the time and peak memory of each method.

    python benchmarks/integration_dlpfc.py --steps 2000
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import anndata as ad
import benchmarks_common as common
import numpy as np

from napari_spatial_nmf import tl
from napari_spatial_nmf.core.metrics import clustering_scores

HERE = Path(__file__).resolve().parent
DATA = common.SHARED / "dlpfc_visium_151673_151676"
SECTIONS = ["151673", "151674", "151675", "151676"]
PUBLISHED = {"ari": [0.5761, 0.6431, 0.6138, 0.6140], "nmi": [0.7143, 0.7319, 0.7222, 0.7130]}


def per_section(out, domain_key):
    rows = {}
    for s in out.obs["section"].cat.categories:
        m = (out.obs["section"] == s).to_numpy()
        sc = clustering_scores(out.obs["layer"].to_numpy()[m], out.obs[domain_key].to_numpy()[m])
        rows[s] = {"ari": round(sc["ari"], 4), "nmi": round(sc["nmi"], 4)}
    return rows


def main(argv=None):
    ap = common.parser(__doc__)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--k", type=int, default=7)
    ap.add_argument("--hvgs", type=int, default=3000)
    ap.add_argument("--joint-iter", type=int, default=300)
    ap.add_argument("--nnmf-iter", type=int, default=1000, help="NNMF and KL-NMF iterations (tl.nnmf's default)")
    a = ap.parse_args(argv)
    names = SECTIONS[:2] if a.quick else SECTIONS
    sections = [ad.read_h5ad(DATA / f"dlpfc_{s}_5000hvg.h5ad") for s in names]
    if a.quick:  # the same code on tiny sizes (CI): 2 sections, 500 spots each, a few steps
        sections = [sec[:500].copy() for sec in sections]
        a.steps, a.hvgs = 3, 300
        a.nnmf_iter = 20
        if hasattr(a, "joint_iter"):
            a.joint_iter = 3
        if hasattr(a, "seeds"):
            a.seeds = 2
    result = {"settings": {k: str(v) for k, v in vars(a).items()}, "published_inspire": PUBLISHED}

    t = time.perf_counter()
    ins = tl.integrate(sections, a.k, method="inspire", variant="gat", n_steps=a.steps, n_hvgs=a.hvgs,
                       section_names=names)
    t_ins = time.perf_counter() - t
    tl.cluster_domains(ins, 7, basis="latent", key_added="gmm_latent")
    tl.cluster_domains(ins, 7, basis="argmax", key_added="argmax")
    result["inspire"] = {"seconds": t_ins, "seconds_per_step": t_ins / a.steps, "n_genes": ins.n_vars,
                         "gmm_latent": per_section(ins, "gmm_latent"), "argmax": per_section(ins, "argmax"),
                         "factor_scores": tl.factor_scores(ins)}
    print(json.dumps(result["inspire"]), flush=True)

    t = time.perf_counter()
    jn = tl.integrate(sections, a.k, method="joint_nnmf", max_iter=a.joint_iter, n_hvgs=a.hvgs,
                      section_names=names, random_state=0)
    t_jn = time.perf_counter() - t
    tl.cluster_domains(jn, 7, basis="factors", key_added="gmm_factors")
    tl.cluster_domains(jn, basis="argmax", key_added="argmax")  # one domain per factor in use
    result["joint_nnmf"] = {"seconds": t_jn, "gmm_factors": per_section(jn, "gmm_factors"),
                            "argmax": per_section(jn, "argmax"), "factor_scores": tl.factor_scores(jn)}
    print(json.dumps(result["joint_nnmf"]), flush=True)

    t = time.perf_counter()
    rows = {}
    for s, sec in zip(names, sections):
        sec = sec[:, np.asarray(sec.X.sum(axis=0)).ravel() > 0].copy()  # NNMF refuses genes without counts
        one = tl.nnmf(sec, 7, filter_cells=True, copy=True, random_state=0, max_iter=a.nnmf_iter)
        m = one.obs["nnmf_domain"].notna().to_numpy()
        sc = clustering_scores(one.obs["layer"].to_numpy()[m], one.obs["nnmf_domain"].to_numpy()[m])
        rows[s] = {"ari": round(sc["ari"], 4), "nmi": round(sc["nmi"], 4)}
    result["nnmf_per_section"] = {"seconds": time.perf_counter() - t, "argmax": rows}
    pooled = jn.copy()
    t = time.perf_counter()
    tl.nnmf(pooled, 7, spatial_key=None, random_state=0, max_iter=a.nnmf_iter)
    result["kl_nmf_pooled"] = {"seconds": time.perf_counter() - t, "argmax": per_section(pooled, "nnmf_domain")}
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({k: result[k] for k in ("nnmf_per_section", "kl_nmf_pooled")}), flush=True)
    common.write(a, "integration_dlpfc", result)


if __name__ == "__main__":
    main()
