"""staNMF on the real BDGP images: the reference loop vs napari-spatial-nmf, in one run.

Reference (the osNMF / Yu-Group way): for every K and bootstrap replicate b, resample the
images with ``np.random.RandomState(b).choice``, fit ``sklearn.decomposition.NMF(K,
random_state=0)`` (images x pixels; osNMF fixes the seed for every replicate), take
``components_`` as the dictionary, then the
instability = mean over replicate pairs of the Hungarian distance on cosine similarity
(``findcorrelation`` + ``linear_sum_assignment``).

Ours: ``napari_spatial_nmf.core.stability.iter_stability`` with the same replicates
(resample="genes": the images), matching="hungarian", similarity="cosine".

    .venv/bin/python benchmarks/stability_bdgp.py --k-min 15 --k-max 30 -n 100

Writes benchmarks/results/stability_bdgp.json and prints a markdown table.
"""

import tempfile
import time
import warnings
from pathlib import Path

import benchmarks_common as common
import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.decomposition import NMF

from napari_spatial_nmf.core import drain
from napari_spatial_nmf.core.stability import iter_stability

warnings.simplefilter("ignore")  # sklearn's ConvergenceWarning at its default max_iter


def reference(X, ks, n):
    out, objective = {}, {}
    for k in ks:
        dicts = []
        objective[k] = []
        for b in range(n):
            idx = np.random.RandomState(b).choice(X.shape[1], X.shape[1], replace=True)
            m = NMF(n_components=k, random_state=0).fit(X.T[idx])
            dicts.append(m.components_.T)
            objective[k].append(m.reconstruction_err_ ** 2)
        d = []
        for a in range(n):
            A = dicts[a] / np.linalg.norm(dicts[a], axis=0)
            for c in range(a + 1, n):
                B = dicts[c] / np.linalg.norm(dicts[c], axis=0)
                C = A.T @ B
                r, cc = linear_sum_assignment(-C)
                d.append(np.mean(1 - C[r, cc]))
        d = np.array(d)
        out[k] = (float(d.mean()), float(np.sqrt(max((d ** 2).mean() - d.mean() ** 2, 0)) * np.sqrt(2 / n)))
        print(f"  reference K={k}: {out[k][0]:.4f}", flush=True)
    return out, objective


def main(argv=None):
    ap = common.parser(__doc__)
    ap.add_argument("--k-min", type=int, default=15)
    ap.add_argument("--k-max", type=int, default=30)
    ap.add_argument("-n", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=50)
    args = ap.parse_args(argv)
    if args.quick:  # the same code on tiny sizes (CI)
        args.k_min, args.k_max, args.n, args.batch_size = 4, 5, 3, 3
    X = common.bdgp_matrix()
    ks = list(range(args.k_min, args.k_max + 1))
    print(f"BDGP {X.shape}, K={ks[0]}..{ks[-1]}, N={args.n}", flush=True)
    with tempfile.TemporaryDirectory() as store:
        t0 = time.perf_counter()
        ours = drain(iter_stability(X, ks, args.n, batch_size=args.batch_size, store=store))
        t_ours = time.perf_counter() - t0
        obj_ours = {k: [float(np.load(Path(store) / f"k{k:03d}" / f"r{b:04d}.npz", allow_pickle=False)["objective"])
                        for b in range(args.n)] for k in ks}
    print(f"ours: {t_ours:.1f} s", flush=True)
    t0 = time.perf_counter()
    ref, obj_ref = reference(X, ks, args.n)
    t_ref = time.perf_counter() - t0
    ratios = np.array([np.array(obj_ours[k]) / np.array(obj_ref[k]) for k in ks])
    table = [{"k": k, "reference": ref[k][0], "reference_sd": ref[k][1],
              "ours": float(ours.table.set_index("k").loc[k, "instability"]),
              "ours_sd": float(ours.table.set_index("k").loc[k, "sd"])} for k in ks]
    ref_best = min(ks, key=lambda k: ref[k][0])
    result = {
        "data": "BDGP Drosophila embryo ISH, 405 pixels x 1,640 images (Wu et al. 2016)",
        "k_range": ks, "n_replicates": args.n, "batch_size": args.batch_size,
        "time_reference_s": t_ref, "time_ours_s": t_ours, "speedup": t_ref / t_ours,
        "argmin_reference": ref_best, "argmin_ours": ours.best_k,
        "max_abs_instability_difference": max(abs(r["reference"] - r["ours"]) for r in table),
        "objective_ratio_ours_over_sklearn": {"max": float(ratios.max()), "mean": float(ratios.mean()),
                                              "share_within_1pct": float((ratios <= 1.01).mean())},
        "table": table,
    }
    common.write(args, "stability_bdgp", result)
    print(f"\nreference {t_ref:.1f} s, ours {t_ours:.1f} s, speed-up {t_ref / t_ours:.1f}x; "
          f"argmin reference {ref_best}, ours {ours.best_k}; max |Δ| {result['max_abs_instability_difference']:.4f}")
    print(f"objective ours/sklearn per replicate: max {ratios.max():.4f}, mean {ratios.mean():.4f}, "
          f"within 1 %: {100 * (ratios <= 1.01).mean():.1f} %")
    print("\n| K | reference | ours |\n|---|---|---|")
    for r in table:
        print(f"| {r['k']} | {r['reference']:.4f} ± {r['reference_sd']:.4f} | {r['ours']:.4f} ± {r['ours_sd']:.4f} |")


if __name__ == "__main__":
    main()
