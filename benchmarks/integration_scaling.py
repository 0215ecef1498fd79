"""INSPIRE's time per training step and peak memory as sections grow, and what sparse attention buys.

SIMULATION built from real parts. Each simulated section tiles the real DLPFC Visium
section 151673 (``../shared/data/dlpfc_visium_151673_151676``; 3,639 spots; Maynard et al.
2021) side by side on a grid of copies, each copy shifted by the tissue's width plus one
spot spacing, and draws every spot's counts from a Poisson distribution whose mean is the
real spot's counts (so copies are not identical). Genes: the 500 seurat_v3 highly variable
genes of the real section. Two sections per run (the second is a second draw).

Per configuration (a fresh process each, so peak RSS is its own): 2 sections x n cells,
INSPIRE's GAT (whole sections per step) and LGCN (1,024-cell minibatches) variants, the
mean wall time of steps 6-15 (five warm-up steps) and the process's peak resident memory.

Dense reference: INSPIRE's own code (networks.py @12b7516) builds an n x n adjacency and
attention matrix and the n x n cosine matrices of the geometry loss. At one size where it
fits, one forward + backward of the GAT encoder layer and of the geometry loss is timed both
ways, and the dense formulation's memory at 10^5 cells is computed (it cannot be run).

    python benchmarks/integration_scaling.py            # all sizes (about 20 minutes)
    python benchmarks/integration_scaling.py --quick    # 10^3 cells, a few steps (CI)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import benchmarks_common as common
import numpy as np
import scipy.sparse as sp

HERE = Path(__file__).resolve().parent
DATA = common.SHARED / "dlpfc_visium_151673_151676" / "dlpfc_151673_5000hvg.h5ad"


def simulated_section(n_cells: int, seed: int) -> ad.AnnData:
    """``n_cells`` spots tiled from the real section 151673 with Poisson-redrawn counts."""
    import scanpy as sc
    from scipy.spatial import cKDTree

    real = ad.read_h5ad(DATA)
    hv = sc.pp.highly_variable_genes(real, flavor="seurat_v3", n_top_genes=500, inplace=False)
    real = real[:, hv["highly_variable"].to_numpy()]
    X = sp.csr_matrix(real.X).toarray().astype(np.float64)
    C = np.asarray(real.obsm["spatial"], dtype=np.float64)
    C = C - C.min(axis=0)
    step = C.max(axis=0) + cKDTree(C).query(C, k=2)[0][:, 1].min()  # the tissue's width plus one spacing
    copies = int(np.ceil(n_cells / len(C)))
    side = int(np.ceil(np.sqrt(copies)))
    rng = np.random.default_rng(seed)
    idx = np.arange(copies * len(C))[:n_cells]
    tile, spot = np.divmod(idx, len(C))
    coords = C[spot] + np.stack([tile % side, tile // side], axis=1) * step
    counts = sp.csr_matrix(rng.poisson(X[spot]).astype(np.float32))
    out = ad.AnnData(counts, var=real.var[[]].copy())
    out.obsm["spatial"] = coords
    return out


def one(n_cells: int, variant: str, steps: int) -> dict:
    from napari_spatial_nmf.core import inspire
    from napari_spatial_nmf.core.sections import prepare_sections

    secs = [simulated_section(n_cells, seed) for seed in (0, 1)]
    sec = prepare_sections(secs, ["a", "b"], n_hvgs=None)
    times = []
    gen = inspire.iter_train(sec, 7, steps, variant=variant, log_every=1, random_state=0)
    t0 = time.perf_counter()
    try:
        next(gen)
        t0 = time.perf_counter()
        while True:
            next(gen)
            t1 = time.perf_counter()
            times.append(t1 - t0)
            t0 = t1
    except StopIteration:
        pass
    return {"cells_per_section": n_cells, "variant": variant, "genes": len(sec.genes),
            "seconds_per_step": float(np.mean(times[5:])) if len(times) > 5 else float(np.mean(times)),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def dense_vs_sparse(n_cells: int) -> dict:
    """One forward + backward of the GAT encoder layer and of the geometry loss, both ways."""
    import torch

    from napari_spatial_nmf.core import inspire
    from napari_spatial_nmf.core.sections import prepare_sections

    torch.manual_seed(0)
    sec = prepare_sections([simulated_section(n_cells, 0), simulated_section(n_cells, 1)], ["a", "b"], n_hvgs=None)
    C, X = sec.coords[0], torch.from_numpy(sec.lognorm[0])
    n_cells = len(X)  # QC may leave out a spot whose redrawn counts are all zero
    rows, cols = inspire.radius_graph(C, 1.5 * inspire.min_distance(C))
    net, _ = inspire._networks(torch, X.shape[1], X.shape[1], 7, 2, "gat")
    layer = net.enc1
    graph = tuple(torch.from_numpy(a) for a in inspire.neighbour_table(rows, cols, n_cells))
    adj = torch.zeros(n_cells, n_cells)
    adj[rows, cols] = 1

    def dense_layer(x):  # INSPIRE's GATSingleHead.forward
        h = layer.linear(x)
        logits = adj * ((h @ layer.v0) + (h @ layer.v1).T)
        att = torch.sparse.softmax((torch.sigmoid(logits) - 0.5).to_sparse(), dim=1).to_dense()
        return att @ h

    def dense_geom(z, x):  # INSPIRE's geometry loss with the n x n cosine matrices
        zn, xn = torch.nn.functional.normalize(z, dim=1), torch.nn.functional.normalize(x, dim=1)
        return ((zn @ zn.T - xn @ xn.T) ** 2).sum(1).mean()

    def sparse_geom(z, x):
        zn, xn = torch.nn.functional.normalize(z, dim=1), torch.nn.functional.normalize(x, dim=1)
        return ((zn.T @ zn).pow(2).sum() - 2 * (zn.T @ xn).pow(2).sum() + (xn.T @ xn).pow(2).sum()) / len(z)

    def timed(fn, repeats=3):
        best = np.inf
        for _ in range(repeats):
            net.zero_grad()
            t0 = time.perf_counter()
            fn().backward()
            best = min(best, time.perf_counter() - t0)
        return best

    z = torch.randn(n_cells, 32, requires_grad=True)
    out = {"cells": n_cells, "edges": int(rows.size),
           "gat_layer_sparse_s": timed(lambda: layer(X, graph).sum()),
           "gat_layer_dense_s": timed(lambda: dense_layer(X).sum()),
           "geometry_sparse_s": timed(lambda: sparse_geom(z, X)),
           "geometry_dense_s": timed(lambda: dense_geom(z, X))}
    with torch.no_grad():
        out["max_abs_diff_layer"] = float((layer(X, graph) - dense_layer(X)).abs().max())
    # the dense formulation holds adj, logits, attention (and their gradients) and 2 cosine matrices
    out["dense_matrices_gb_at_1e5"] = 7 * (10**5) ** 2 * 4 / 2**30
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def main(argv=None):
    ap = common.parser(__doc__)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--one", nargs=2, metavar=("CELLS", "VARIANT"), help=argparse.SUPPRESS)
    ap.add_argument("--dense", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if not DATA.exists():
        sys.exit(f"The DLPFC section is expected at {DATA} (the shared datasets).")
    if a.one:
        print(json.dumps(one(int(a.one[0]), a.one[1], a.steps)))
        return
    if a.dense:
        print(json.dumps(dense_vs_sparse(a.dense)))
        return
    sizes = [1_000] if a.quick else [3_639, 10_000, 30_000, 100_000]
    if a.quick:  # the same code on tiny sizes (CI)
        a.steps = 7
    rows = []
    for n in sizes:
        for variant in ("gat", "lgcn"):
            if variant == "gat" and n > 30_000:
                continue  # whole-section steps at 10^5 cells x 500 genes: the LGCN variant's regime
            res = subprocess.run([sys.executable, __file__, "--one", str(n), variant, "--steps", str(a.steps)],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    res = subprocess.run([sys.executable, __file__, "--dense", "1000" if a.quick else "10000"], capture_output=True,
                         text=True, check=True)
    dense = json.loads(res.stdout.strip().splitlines()[-1])
    print(dense, flush=True)
    common.write(a, "integration_scaling", {"simulation": "tiles of DLPFC 151673 with Poisson-redrawn counts, 500 HVGs",
                                            "rows": rows, "dense_vs_sparse": dense})


if __name__ == "__main__":
    main()
