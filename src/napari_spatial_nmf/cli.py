"""Command line: ``napari-spatial-nmf demo`` and ``napari-spatial-nmf run``.

``demo`` opens napari with the Allen sample and the docks when a display is available,
and otherwise runs the main job headless on the shipped samples. ``run`` is the same job
on your own files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) or sys.platform in ("darwin", "win32")


def _demo_headless(out: Path) -> int:
    from . import datasets, pipeline

    stack, atlas = datasets.allen_200um()
    print(f"[1/4] Allen ISH energy {stack.genes} on the CCFv3 200 µm grid -> {out / 'allen'}")
    _, s = pipeline.run_volumes(stack, 2, out / "allen", atlas=atlas)
    for g, b in s["best_structure_per_gene"].items():
        print(f"      {g}: best structure {b['acronym']} ({b['name']}), r = {b['r']:.3f}")
    for p, b in s["best_structure"].items():
        print(f"      {p}: best structure {b['acronym']} ({b['name']}), r = {b['r']:.3f}")
    for p, b in s["region_combinations"]["best"].items():
        print(f"      {p}: best contiguous combination {b['structures']}, r = {b['r']:.3f}")
    print(f"      Moran's I (mean): {s['morans_i_mean']}")
    print(f"[2/4] BDGP Drosophila embryo images (1,640), K = 21 -> {out / 'bdgp'}")
    _, s = pipeline.run_volumes(datasets.bdgp(), 21, out / "bdgp")
    print(f"      relative Frobenius error {s['relative_error']:.4f} after {s['n_iter']} iterations")
    print(f"[3/4] osmFISH cells (6,471 x 33), NMF K = 11 -> {out / 'osmfish'}")
    _, s = pipeline.run_cells(datasets.osmfish(), 11, out / "osmfish")
    print(f"      relative Frobenius error {s['relative_error']:.4f} after {s['n_iter']} iterations")
    cells = datasets.osmfish()
    cells = cells[(cells.obs["region"] != "Excluded").to_numpy()].copy()
    print(f"[4/4] osmFISH neighbourhood NMF, K = 11, annotated cells -> {out / 'osmfish_nnmf'}")
    _, s = pipeline.run_nnmf(cells, 11, out / "osmfish_nnmf", label_key="region")
    print(f"      lengthscale {s['lengthscale']:.1f} µm, {s['mean_neighbors']:.1f} neighbours; "
          f"domains vs expert regions: ARI {s['ari']:.3f}, NMI {s['nmi']:.3f}")
    print(f"Results, tables and figures are in {out.resolve()}")
    return 0


def _demo_gui() -> int:
    import napari

    viewer = napari.Viewer(title="napari-spatial-nmf demo")
    viewer.open_sample("napari-spatial-nmf", "allen_200um")
    _, nmf = viewer.window.add_plugin_dock_widget("napari-spatial-nmf", "Pattern discovery (NMF)")
    _, reg = viewer.window.add_plugin_dock_widget("napari-spatial-nmf", "Region correlation")
    nmf.inputs.value = [viewer.layers["Allen ISH energy"]]
    nmf.mask.value = viewer.layers["CCFv3 annotation"]
    nmf.n_components.value = 2
    napari.run()
    return 0


def _run(args) -> int:
    from . import pipeline

    data, atlas = _load_input(args)
    if args.cells:
        _, summary = pipeline.run_cells(data, args.k, args.out, random_state=args.seed, max_iter=args.max_iter)
    else:
        _, summary = pipeline.run_volumes(data, args.k, args.out, atlas=atlas, random_state=args.seed,
                                          missing=args.missing, max_iter=args.max_iter, min_voxels=args.min_voxels)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _load_input(args):
    """AnnData for ``run``/``stability`` from --cells or --volumes (+ --atlas as the mask)."""
    import numpy as np

    from . import io

    if args.cells:
        return io.read_cells(args.cells), None
    if not args.volumes:
        raise ValueError("Give --volumes (Allen zips / folder, .npz, .nrrd, .tif, BDGP csv) or --cells.")
    stacks = [_read_volumes(p) for p in args.volumes]
    stack = stacks[0]
    for s in stacks[1:]:
        if s.data.shape[1:] != stack.data.shape[1:]:
            raise ValueError(f"{s.meta.get('source')} is on another grid than {stack.meta.get('source')}.")
        stack.data = np.concatenate([stack.data, s.data])
        stack.genes += s.genes
    atlas = io.read_atlas(args.atlas, args.ontology) if getattr(args, "atlas", None) else None
    if atlas is not None and atlas.annotation.shape != stack.data.shape[1:]:
        raise ValueError(f"The volumes have grid shape {stack.data.shape[1:]} but the atlas has "
                         f"{atlas.annotation.shape}: they must be on the same grid.")
    return stack, atlas


def _stability(args) -> int:
    import numpy as np

    from . import pipeline, tl

    data, atlas = _load_input(args)
    adata = data if args.cells else data.to_anndata(mask=atlas.mask if atlas is not None else None)
    layer = None
    if np.isnan(np.asarray(adata.X, dtype=np.float32)).any():
        tl.impute_knn(adata)
        layer = "imputed"
    ks = list(range(args.k_min, args.k_max + 1))

    def report(p):
        if p.data:
            print(f"  K={p.data['k']}: instability {p.data['instability']:.4f} ± {p.data['sd']:.4f}", flush=True)

    _, summary = pipeline.run_stability(adata, ks, args.n, args.out, store=args.store, random_state=args.seed,
                                        resample=args.resample, matching=args.matching, similarity=args.similarity,
                                        backend=args.backend, scheduler=args.scheduler, layer=layer,
                                        progress=report)
    print(f"lowest instability at K = {summary['best_k']}; results in {args.out}")
    return 0


def _read_volumes(path):
    from . import io

    p = Path(path)
    if p.is_dir() or p.suffix.lower() in (".zip", ".mhd"):
        return io.read_allen_energy(p)
    if p.name.lower().endswith((".csv", ".csv.gz")):
        return io.read_bdgp(p)
    return io.read_image_stack(p)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="napari-spatial-nmf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="open napari on the shipped sample, or run the main job headless")
    demo.add_argument("--headless", action="store_true", help="never open a window")
    demo.add_argument("--out", type=Path, default=Path("nsnmf-demo"), help="output folder (headless)")
    run = sub.add_parser("run", help="NMF + region correlation on your data, written to --out")
    run.add_argument("--volumes", nargs="+", help="Allen energy zips or folder, .npz, .nrrd, .tif, BDGP csv")
    run.add_argument("--cells", help="an .h5ad with obsm['spatial']")
    run.add_argument("--atlas", help="annotation .nrrd (restricts to the brain, adds region tables)")
    run.add_argument("--ontology", help="structure csv/json (default: found next to the annotation)")
    run.add_argument("-k", "--k", type=int, required=True, help="number of principal patterns K")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--max-iter", type=int, default=200)
    run.add_argument("--missing", choices=["impute", "raise", "zero"], default="impute")
    run.add_argument("--min-voxels", type=int, default=50)
    run.add_argument("--out", type=Path, required=True)
    st = sub.add_parser("stability", help="choose K by staNMF (bootstrap instability), then fit the final model")
    st.add_argument("--volumes", nargs="+", help="Allen energy zips or folder, .npz, .nrrd, .tif, BDGP csv")
    st.add_argument("--cells", help="an .h5ad with obsm['spatial']")
    st.add_argument("--atlas", help="annotation .nrrd: restrict to the brain")
    st.add_argument("--ontology")
    st.add_argument("--k-min", type=int, required=True)
    st.add_argument("--k-max", type=int, required=True)
    st.add_argument("-n", type=int, default=100, help="bootstrap replicates per K (default 100)")
    st.add_argument("--resample", choices=["genes", "obs", "none"], default="genes")
    st.add_argument("--matching", choices=["hungarian", "amari"], default="hungarian")
    st.add_argument("--similarity", choices=["cosine", "pearson"], default="cosine")
    st.add_argument("--seed", type=int, default=0)
    st.add_argument("--store", type=Path, help="results folder (default OUT/store); re-running resumes")
    st.add_argument("--backend", choices=["local", "dask"], default="local")
    st.add_argument("--scheduler", help="dask scheduler address (default: a LocalCluster)")
    st.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            if not args.headless and _has_display():
                return _demo_gui()
            return _demo_headless(args.out)
        if args.command == "stability":
            return _stability(args)
        return _run(args)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"napari-spatial-nmf: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
