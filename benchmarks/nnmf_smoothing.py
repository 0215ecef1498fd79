"""NNMF smoothing step: scipy.sparse (the reference formulation) vs the numba kernel.

The step is W <- (S @ (W / r)) * r with r the row sums of W (methods-digest §1.5, step 3).
Both run in one process on the same kernel (cells in reverse Cuthill-McKee order, as the
fit uses them), K = 20, on the simulated tissue of ``nnmf_scaling.py`` (a SIMULATION:
uniform cells at 10 µm spacing, lengthscale = the R default). Reports the median of 7
repeats per size and the largest difference between the two results.

    python benchmarks/nnmf_smoothing.py --cells 100000 1000000
"""

from __future__ import annotations

import json
import time

import benchmarks_common as common
import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import reverse_cuthill_mckee

from napari_spatial_nmf.core import nnmf as nn


def scipy_smooth(S: sp.csr_matrix, W: np.ndarray) -> np.ndarray:
    r = W.sum(axis=1, keepdims=True)
    return (S @ (W / r)) * r


def main(argv=None) -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--cells", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    if args.quick:  # the same code on tiny sizes (CI)
        args.cells, args.repeats = [5_000], 2
    rows = []
    for n in args.cells:
        rng = np.random.default_rng(0)
        xy = rng.uniform(0, np.sqrt(n * 100.0), size=(n, 2))
        ls = nn.default_lengthscale(xy)
        S = nn.spatial_kernel(xy, ls).S
        order = reverse_cuthill_mckee(S, symmetric_mode=False)
        S = sp.csr_matrix(S[order][:, order])
        W0 = rng.uniform(size=(n, args.k))
        ref = scipy_smooth(S, W0)
        W = W0.copy()
        nn._smooth(S.indptr, S.indices, S.data, W, nn._N_CHUNKS)  # compile
        times = {"scipy": [], "numba": []}
        for _ in range(args.repeats):
            t = time.perf_counter()
            scipy_smooth(S, W0)
            times["scipy"].append(time.perf_counter() - t)
            W = W0.copy()
            t = time.perf_counter()
            nn._smooth(S.indptr, S.indices, S.data, W, nn._N_CHUNKS)
            times["numba"].append(time.perf_counter() - t)
        med = {k: float(np.median(v)) for k, v in times.items()}
        row = {"cells": n, "K": args.k, "nnz": int(S.nnz), "scipy_s": med["scipy"], "numba_s": med["numba"],
               "numba_speedup": med["scipy"] / med["numba"], "max_abs_diff": float(np.abs(W - ref).max())}
        print(json.dumps(row), flush=True)
        rows.append(row)
    common.write(args, "nnmf_smoothing", {"rows": rows})


if __name__ == "__main__":
    main()
