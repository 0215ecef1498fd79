"""NNMF validation on osmFISH somatosensory cortex (Codeluppi et al. 2018) with expert region labels.

Cells labelled "Excluded", cells without counts and repeated records (same coordinates) are
left out; K = 11 (the 11 annotated regions). In the same run: NNMF (default lengthscale),
plain KL-NMF (same solver, no smoothing) and k-means (k = 11, n_init = 10) on
log1p(counts / total * 1e4). ARI and NMI of the argmax domains against the regions, for
several seeds.

    python benchmarks/nnmf_osmfish.py [--seeds 0 1 2]
"""

from __future__ import annotations

import json
import time

import benchmarks_common as common
import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score as ari
from sklearn.metrics import normalized_mutual_info_score as nmi

from napari_spatial_nmf import datasets, tl
from napari_spatial_nmf.core.nnmf import duplicated_cells


def main(argv=None) -> int:
    ap = common.parser(__doc__)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    a = ap.parse_args(argv)
    cells = datasets.osmfish()
    keep = (cells.obs["region"] != "Excluded").to_numpy() & (np.asarray(cells.X.sum(1)).ravel() > 0)
    cells = cells[keep].copy()
    cells = cells[~duplicated_cells(np.asarray(cells.obsm["spatial"]))].copy()
    max_iter = 1000
    if a.quick:  # the same code on tiny sizes (CI)
        a.seeds, max_iter = [0], 5
    lab = cells.obs["region"].astype(str).to_numpy()
    X = np.asarray(cells.X, dtype=np.float64)
    logn = np.log1p(X / X.sum(1, keepdims=True) * 1e4)
    rows = []
    for seed in a.seeds:
        t0 = time.perf_counter()
        sp_ = tl.nnmf(cells, 11, random_state=seed, max_iter=max_iter, copy=True)
        t1 = time.perf_counter()
        kl = tl.nnmf(cells, 11, spatial_key=None, random_state=seed, max_iter=max_iter, copy=True)
        km = KMeans(11, n_init=10, random_state=seed).fit_predict(logn)
        row = {"seed": seed, "n_cells": cells.n_obs, "lengthscale_um": sp_.uns["nnmf"]["lengthscale"],
               "nnmf_seconds": t1 - t0,
               "ari_nnmf": ari(lab, sp_.obs["nnmf_domain"]), "nmi_nnmf": nmi(lab, sp_.obs["nnmf_domain"]),
               "ari_kl_nmf": ari(lab, kl.obs["nnmf_domain"]), "nmi_kl_nmf": nmi(lab, kl.obs["nnmf_domain"]),
               "ari_kmeans": ari(lab, km), "nmi_kmeans": nmi(lab, km)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| seed | NNMF ARI | KL-NMF ARI | k-means ARI | NNMF NMI | KL-NMF NMI | k-means NMI |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['seed']} | {r['ari_nnmf']:.3f} | {r['ari_kl_nmf']:.3f} | {r['ari_kmeans']:.3f} | "
              f"{r['nmi_nnmf']:.3f} | {r['nmi_kl_nmf']:.3f} | {r['nmi_kmeans']:.3f} |")
    summary = {m: common.mean_sd([r[f"ari_{m}"] for r in rows]) for m in ("nnmf", "kl_nmf", "kmeans")}
    print("ARI mean ± s.d. over seeds:", {m: f"{v[0]:.3f} ± {v[1]:.3f}" for m, v in summary.items()})
    common.write(a, "nnmf_osmfish", {"rows": rows, "ari_mean_sd": summary})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
