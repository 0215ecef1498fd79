"""How fast Cancel is answered: the longest time between two progress records of every job a
dock runs, on the data the dock is made for.

A dock's Cancel asks the job's generator to stop at its next ``yield`` (napari's
``GeneratorWorker.quit``), so the longest gap between two yields is how long Cancel can take.
The target (issue 26) is 2 s for every job. Jobs and data: NMF, staNMF, NNMF, the lengthscale
scan and the osNMF read-outs on the shipped samples (Allen, BDGP, osmFISH); integration with
joint NNMF and with INSPIRE on the Ståhl sample, and INSPIRE on the four DLPFC sections
(shared data; 14,364 spots, the size the GAT variant is made for).

    python benchmarks/cancel_latency.py [--quick]
"""

from __future__ import annotations

import time

import benchmarks_common as common

from napari_spatial_nmf import datasets, tl


def longest_gap(gen, limit_s: float) -> tuple[float, int]:
    """Run a tool generator for at most ``limit_s`` seconds; the longest gap between yields (s)."""
    t0 = last = time.perf_counter()
    gaps, n = [], 0
    for _ in gen:
        now = time.perf_counter()
        gaps.append(now - last)
        last, n = now, n + 1
        if now - t0 > limit_s:
            gen.close()
            break
    return (max(gaps) if gaps else 0.0), n


def jobs(quick: bool):
    stack, atlas = datasets.allen_200um()
    allen = stack.to_anndata(mask=atlas.mask)
    tl.impute_knn(allen)
    bdgp = datasets.bdgp().to_anndata()
    osm = datasets.osmfish()
    stahl = datasets.stahl_breast_cancer()
    yield "NMF, BDGP K = 21", lambda: tl.iter_nmf(bdgp, 21, copy=True)
    yield "NMF, Allen K = 2", lambda: tl.iter_nmf(allen, 2, layer="imputed", copy=True)
    yield "staNMF, osmFISH K 2-12, N 20", lambda: tl.iter_stability(osm, range(2, 13), 20, copy=True)
    yield "NNMF, osmFISH K = 11", lambda: tl.iter_nnmf(osm, 11, filter_cells=True, copy=True)
    yield "lengthscale scan, osmFISH", lambda: tl.iter_estimate_lengthscale(osm, filter_cells=True)
    res = tl.nmf(allen, 2, layer="imputed", copy=True)
    yield "osNMF read-outs, Allen", lambda: tl.iter_osnmf_suite(res, atlas.annotation, atlas.ontology, layer="imputed")
    yield "joint NNMF, Ståhl", lambda: tl.iter_integrate(stahl, 8, method="joint_nnmf")
    yield "INSPIRE, Ståhl", lambda: tl.iter_integrate(stahl, 8, method="inspire", n_steps=50 if quick else 200)
    if not quick:
        import anndata as ad

        folder = common.shared("dlpfc_visium_151673_151676")
        dlpfc = [ad.read_h5ad(folder / f"dlpfc_{s}_5000hvg.h5ad") for s in ("151673", "151674", "151675", "151676")]
        yield "INSPIRE, DLPFC 4 sections (GAT)", lambda: tl.iter_integrate(dlpfc, 7, method="inspire", n_steps=30)


def main(argv=None) -> int:
    args = common.parser(__doc__).parse_args(argv)
    limit = 5.0 if args.quick else 120.0
    rows = []
    for name, make in jobs(args.quick):
        if args.quick and not name.startswith(("NMF, BDGP", "joint NNMF")):
            continue
        t = time.perf_counter()
        gen = make()  # input checks run here, at the call (as in the dock, on its own thread)
        checks = time.perf_counter() - t
        gap, n = longest_gap(gen, limit)
        rows.append({"job": name, "longest_gap_s": round(gap, 3), "records": n, "checks_at_call_s": round(checks, 3)})
        print(rows[-1], flush=True)
    worst = max(r["longest_gap_s"] for r in rows)
    print("\n| job | longest gap between progress records (s) |\n|---|---:|")
    for r in rows:
        print(f"| {r['job']} | {r['longest_gap_s']:.2f} |")
    common.write(args, "cancel_latency", {"rows": rows, "worst_s": worst, "target_s": 2.0,
                                          "run_limit_s_per_job": limit})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
