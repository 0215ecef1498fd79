"""NNMF scaling on simulated cell point clouds (10^4, 10^5, 10^6 cells x 500 genes).

SIMULATION, documented here and in docs/benchmarks.md:

* cells: uniform in a square at 1 cell per 100 µm² (a 10 µm spacing, like a tissue section);
  10^6 cells cover 10 x 10 mm;
* K_true = 20 spatial programs: a cell's proportions are a softmax of 20 smooth random
  fields (sums of 8 random Gaussian bumps of 300-1,500 µm width each, temperature 0.3);
* signatures: Dirichlet(0.1) over 500 genes per program;
* counts: Poisson(total_i * (proportions_i @ signatures)), totals log-normal with median
  120 molecules (a MERFISH-like 500-gene panel), drawn in chunks and stored as CSR.

Per size it reports the set-up (kernel from the k-d tree), the time per iteration, the
time of the full run (max_iter iterations, as the target asks, tol=-inf so it never stops
early) and the peak resident memory of a fresh process (ru_maxrss).

    python benchmarks/nnmf_scaling.py --cells 10000 100000 1000000 --iterations 1000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import benchmarks_common as common
import numpy as np
import scipy.sparse as sp

HERE = Path(__file__).resolve().parent


def simulate(n_cells: int, n_genes: int = 500, k_true: int = 20, seed: int = 0):
    """Counts (CSR float64), coordinates (n, 2) µm, true proportions (n, k_true) float32."""
    rng = np.random.default_rng(seed)
    side = np.sqrt(n_cells * 100.0)
    xy = rng.uniform(0, side, size=(n_cells, 2))
    centres = rng.uniform(0, side, size=(k_true, 8, 2))
    widths = rng.uniform(300, 1500, size=(k_true, 8))
    sig = rng.dirichlet(np.full(n_genes, 0.1), size=k_true)
    totals = np.exp(rng.normal(np.log(120), 0.5, size=n_cells))
    blocks, props = [], np.empty((n_cells, k_true), np.float32)
    for s in range(0, n_cells, 50_000):
        p = xy[s:s + 50_000]
        f = np.zeros((len(p), k_true))
        for k in range(k_true):
            d2 = ((p[:, None, :] - centres[k][None]) ** 2).sum(-1)
            f[:, k] = np.exp(-d2 / (2 * widths[k] ** 2)).sum(1)
        f = np.exp((f - f.max(1, keepdims=True)) / 0.3)
        f /= f.sum(1, keepdims=True)
        props[s:s + len(p)] = f
        lam = totals[s:s + len(p), None] * (f @ sig)
        blocks.append(sp.csr_matrix(rng.poisson(lam).astype(np.float64)))
    X = sp.vstack(blocks).tocsr()
    return X, xy, props


def run_one(n_cells: int, iterations: int, k: int) -> dict:
    from napari_spatial_nmf.core import nnmf as N

    t0 = time.perf_counter()
    X, xy, _ = simulate(n_cells)
    keep = np.diff(X.indptr) > 0
    X, xy = X[keep], xy[keep]
    t_sim = time.perf_counter() - t0
    Xn = N.normalize_cells(N.check_counts(X))
    t0 = time.perf_counter()
    ls = N.default_lengthscale(xy)
    kern = N.spatial_kernel(xy, ls)
    t_kernel = time.perf_counter() - t0
    # compile the numba kernels on a tiny problem so the timing is the steady state
    sub = X[:500]
    small = N.normalize_cells(N.check_counts(sub[:, np.flatnonzero(np.diff(sub.tocsc().indptr))]))
    for _ in N.iter_fit_nnmf(small, k, N.spatial_kernel(xy[:500], ls).S, max_iter=3, initial=1, small_iter=2):
        pass
    t0 = time.perf_counter()
    stamps = []
    gen = N.iter_fit_nnmf(Xn, k, kern.S, max_iter=iterations, tol=-np.inf, initial=1, small_iter=0,
                          random_state=0)
    while True:
        try:
            next(gen)
            stamps.append(time.perf_counter())
        except StopIteration as stop:
            res = stop.value
            break
    t_fit = time.perf_counter() - t0
    per_iter = np.diff(stamps)
    return {
        "n_cells": int(X.shape[0]), "n_genes": int(X.shape[1]), "nnz": int(X.nnz), "K": k,
        "iterations": int(res.n_iter), "lengthscale_um": ls, "mean_neighbors": kern.mean_neighbors,
        "simulate_s": t_sim, "kernel_s": t_kernel, "fit_s": t_fit,
        "s_per_iteration_median": float(np.median(per_iter)) if per_iter.size else float("nan"),
        "final_gkl": res.gkl,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
    }


def main(argv=None) -> int:
    ap = common.parser(__doc__)
    ap.add_argument("--cells", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("-k", type=int, default=20)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child process: one size
    a = ap.parse_args(argv)
    if a.quick:  # the same code on tiny sizes (CI)
        a.cells, a.iterations, a.k = [3_000], 5, 4
    if a.one:
        print(json.dumps(run_one(a.one, a.iterations, a.k)))
        return 0
    rows = []
    for n in a.cells:  # a fresh process per size, so the peak memory is that size's own
        out = subprocess.run([sys.executable, __file__, "--one", str(n), "--iterations", str(a.iterations),
                              "-k", str(a.k)], capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n| cells | nnz | neighbours | kernel (s) | s / iteration | {a.iterations} iterations (s) "
          "| peak RSS (GB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['n_cells']:,} | {r['nnz']:,} | {r['mean_neighbors']:.1f} | {r['kernel_s']:.1f} | "
              f"{r['s_per_iteration_median']:.4f} | {r['fit_s']:.0f} | {r['peak_rss_gb']:.2f} |")
    common.write(a, "nnmf_scaling", {"iterations": a.iterations, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
