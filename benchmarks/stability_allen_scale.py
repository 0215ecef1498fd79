"""staNMF at Allen scale (4,345 genes x 55,954 voxels): the reference loop vs ours.

SIMULATION, built from real parts: the voxels are the first 55,954 grey-matter voxels
(annotation > 0, outside fiber tracts and ventricles; C order) of the real CCFv3 2017
annotation on the Allen 200 µm ISH grid, as shipped with the package. 4,345 simulated genes
(the osNMF data set size) are non-negative mixtures of 11 spatial programs; each program is
a Gaussian-smoothed (sigma 1 voxel) indicator of a random set of real CCF structures at
ontology depth 5-7. Gene g = sum_k a_gk program_k * lognormal noise, with sparse gamma
coefficients. Seeded: the same matrix every run.

Reference: one ``sklearn.decomposition.NMF(K, random_state=0)`` per bootstrap replicate of
the genes (osNMF, which fixes the seed). Ours: ``fit_replicates`` with all replicates in one
batch (NNDSVDa starts and passes). Also reports the machine's float32 matrix-multiply peak
(a 4096^3 sgemm, measured right before ours) and the share of it that our whole solver
sustains: every matrix-product flop it does (randomized SVDs, per-copy singular values,
passes of the replicates still running, final objective) over its wall time.

    .venv/bin/python benchmarks/stability_allen_scale.py -k 11 -n 16
"""

import json
import time
import warnings

import benchmarks_common as common
import numpy as np
from scipy.ndimage import gaussian_filter
from sklearn.decomposition import NMF

from napari_spatial_nmf import datasets
from napari_spatial_nmf.core import drain
from napari_spatial_nmf.core.stability import fit_replicates

warnings.simplefilter("ignore")
N_GENES, N_VOXELS, N_PROGRAMS = 4345, 55954, 11


def simulate(seed: int = 0, n_voxels: int = N_VOXELS, n_genes: int = N_GENES) -> np.ndarray:
    """(n_voxels, n_genes) float32: see the module docstring."""
    rng = np.random.default_rng(seed)
    _, atlas = datasets.allen_200um()
    onto, ann = atlas.ontology, atlas.annotation
    excluded = np.concatenate([onto.descendants("fiber tracts"), onto.descendants("VS")])
    grey = (ann > 0) & ~np.isin(ann, excluded)
    voxels = np.flatnonzero(grey.ravel())[:n_voxels]
    present = np.unique(ann[grey])
    candidates = [s for s in onto.table.index[(onto.table["depth"] >= 5) & (onto.table["depth"] <= 7)]
                  if np.isin(onto.descendants(s), present).any()]
    programs = []
    for _ in range(N_PROGRAMS):
        chosen = rng.choice(candidates, size=rng.integers(2, 6), replace=False)
        ids = np.concatenate([onto.descendants(s) for s in chosen])
        vol = gaussian_filter(np.isin(ann, ids).astype(np.float64), 1.0)
        programs.append(vol.ravel()[voxels])
    P = np.array(programs).T  # voxels x programs
    A = rng.gamma(0.3, 1.0, size=(N_PROGRAMS, n_genes)) * (rng.random((N_PROGRAMS, n_genes)) < 0.4)
    X = (P @ A) * rng.lognormal(0, 0.3, size=(len(voxels), n_genes))
    return X.astype(np.float32)


def gemm_peak(n: int = 4096) -> float:
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    a @ a
    t = time.perf_counter()
    for _ in range(3):
        a @ a
    return 3 * 2 * n ** 3 / (time.perf_counter() - t) / 1e9


def main(argv=None):
    ap = common.parser(__doc__)
    ap.add_argument("-k", type=int, default=11)
    ap.add_argument("-n", type=int, default=16, help="bootstrap replicates")
    args = ap.parse_args(argv)
    t = time.perf_counter()
    if args.quick:  # the same code on tiny sizes (CI): 2,000 voxels x 300 genes
        args.k, args.n = 3, 2
    X = simulate(n_voxels=2000, n_genes=300) if args.quick else simulate()
    print(f"simulated {X.shape} in {time.perf_counter() - t:.1f} s", flush=True)
    peak = gemm_peak(1024 if args.quick else 4096)  # quick: the code path, not the machine's peak
    print(f"float32 GEMM peak: {peak:.1f} GFLOP/s", flush=True)
    n, m = X.shape
    t0 = time.perf_counter()
    res = drain(fit_replicates(X, args.k, list(range(args.n)), resample="genes", random_state=0))
    t_ours = time.perf_counter() - t0
    R, K = args.n, args.k
    nm2 = 2 * n * m
    n_power = 7 if 0.1 * min(n, m) > K else 4  # scikit-learn's n_iter="auto"
    flops_init = nm2 * R * ((2 * n_power + 2) * (K + 10) + 2 * K + 1)
    flops_passes = nm2 * K * 2 * int(res.n_iter.sum()) + nm2 * R * K  # + the final objective
    flops = flops_init + flops_passes
    passes = int(res.n_iter.max())
    print(f"ours: {t_ours:.1f} s for {R} replicates ({passes} passes)", flush=True)
    t0 = time.perf_counter()
    ref_obj, ref_iter = [], []
    X64 = X.astype(np.float64).T  # genes x voxels, as osNMF fits
    for b in range(args.n):
        idx = np.random.RandomState(b).choice(m, m, replace=True)
        mdl = NMF(n_components=args.k, random_state=0).fit(X64[idx])
        ref_obj.append(mdl.reconstruction_err_ ** 2)
        ref_iter.append(int(mdl.n_iter_))
    t_ref = time.perf_counter() - t0
    ratio = res.objective / np.array(ref_obj)
    result = {
        "data": f"SIMULATION from the real CCFv3 annotation: {n} voxels x {m} genes",
        "k": args.k, "n_replicates": args.n,
        "reference_s_per_replicate": t_ref / args.n, "ours_s_per_replicate": t_ours / args.n,
        "speedup_per_replicate": t_ref / t_ours, "passes": res.n_iter.tolist(), "reference_iterations": ref_iter,
        "gemm_peak_gflops": peak, "ours_gemm_gflops_overall": flops / t_ours / 1e9,
        "ours_flops": {"starts": flops_init, "passes": flops_passes},
        "objective_ratio_ours_over_sklearn": ratio.tolist(),
    }
    result["share_of_peak_overall"] = result["ours_gemm_gflops_overall"] / peak
    common.write(args, "stability_allen_scale", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
