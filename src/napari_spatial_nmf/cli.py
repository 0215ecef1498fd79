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
    print(f"[1/3] Allen ISH energy {stack.genes} on the CCFv3 200 µm grid -> {out / 'allen'}")
    _, s = pipeline.run_volumes(stack, 2, out / "allen", atlas=atlas)
    for g, b in s["best_structure_per_gene"].items():
        print(f"      {g}: best structure {b['acronym']} ({b['name']}), r = {b['r']:.3f}")
    for p, b in s["best_structure"].items():
        print(f"      {p}: best structure {b['acronym']} ({b['name']}), r = {b['r']:.3f}")
    print(f"[2/3] BDGP Drosophila embryo images (1,640), K = 21 -> {out / 'bdgp'}")
    _, s = pipeline.run_volumes(datasets.bdgp(), 21, out / "bdgp")
    print(f"      relative Frobenius error {s['relative_error']:.4f} after {s['n_iter']} iterations")
    print(f"[3/3] osmFISH cells (6,471 x 33), K = 11 -> {out / 'osmfish'}")
    _, s = pipeline.run_cells(datasets.osmfish(), 11, out / "osmfish")
    print(f"      relative Frobenius error {s['relative_error']:.4f} after {s['n_iter']} iterations")
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
    from . import io, pipeline

    if args.cells:
        adata = io.read_cells(args.cells)
        _, summary = pipeline.run_cells(adata, args.k, args.out, random_state=args.seed, max_iter=args.max_iter)
    else:
        if not args.volumes:
            raise SystemExit("Give --volumes (Allen zips / folder, .npz, .nrrd, .tif), --bdgp or --cells.")
        stacks = [_read_volumes(p) for p in args.volumes]
        stack = stacks[0]
        for s in stacks[1:]:
            if s.data.shape[1:] != stack.data.shape[1:]:
                raise SystemExit(f"{s.meta.get('source')} is on another grid than {stack.meta.get('source')}.")
            import numpy as np

            stack.data = np.concatenate([stack.data, s.data])
            stack.genes += s.genes
        atlas = io.read_atlas(args.atlas, args.ontology) if args.atlas else None
        _, summary = pipeline.run_volumes(stack, args.k, args.out, atlas=atlas, random_state=args.seed,
                                          missing=args.missing, max_iter=args.max_iter,
                                          min_voxels=args.min_voxels)
    print(json.dumps(summary, indent=2, default=str))
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
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            if not args.headless and _has_display():
                return _demo_gui()
            return _demo_headless(args.out)
        return _run(args)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"napari-spatial-nmf: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
