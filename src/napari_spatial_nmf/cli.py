"""napari-spatial-nmf: principal spatial patterns of gene expression, from the command line.

Commands:
  demo        open napari on the shipped Allen sample (with a display), or run the main
              jobs on the shipped samples and write the results (without one)
  samples     copy the shipped sample files into a folder, to try the other commands on
  fetch       download Allen ISH energy grids by gene symbol, or the whole set, into a cache
  osnmf       the osNMF pipeline at the paper's scale: fetch, impute, staNMF, patterns, regions
  run         NMF of gene volumes or cells, with atlas region read-outs
  stability   choose K by staNMF (bootstrap instability), then fit the final model
  nnmf        neighbourhood NMF of a cell point cloud (spatial gene programs)
  integrate   integrate several sections into shared spatial factors (INSPIRE or joint
              NNMF); rebuild 3D tissue from serial sections
  transfer    carry labels (domains, layers, cell types) from a reference section to
              another, e.g. a small panel, through their shared genes and surroundings

Every command writes one complete set of files to --out (refusing a non-empty folder
unless --overwrite) and prints a JSON summary that lists them. Exit status: 0 on success,
2 on bad input (a one-line message, nothing written).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from pathlib import Path


def _has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) or sys.platform in ("darwin", "win32")


_INTERRUPTED: list[int] = []  # signals received (a KeyboardInterrupt raised inside a C callback can be lost)


class TqdmProgress:
    """Renders the core's Progress records as tqdm bars on stderr (one bar per stage)."""

    def __init__(self, disable: bool | None = None):
        self.bar = None
        self.disable = disable
        self.total = None

    def __call__(self, p) -> None:
        """Show one Progress record (a new bar when the stage changes); stop if a signal came."""
        from tqdm import tqdm

        if _INTERRUPTED:  # the handler's exception may have been swallowed (numba compiling, a ctypes callback)
            raise KeyboardInterrupt(_INTERRUPTED[-1])
        if self.bar is None or p.total != self.total or p.step < self.bar.n:
            self.close()
            self.total = p.total
            self.bar = tqdm(total=max(p.total, 1), file=sys.stderr, disable=self.disable, leave=False,
                            dynamic_ncols=True, mininterval=0.5)
        self.bar.n = min(p.step, self.bar.total)
        self.bar.set_description_str(p.message[:60], refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        """Remove the current bar."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _progress(args) -> TqdmProgress:
    """Bars on a terminal; none with --quiet or when stderr is not a terminal (logs, CI)."""
    return TqdmProgress(disable=True if getattr(args, "quiet", False) else None)


def _demo_headless(out: Path, overwrite: bool) -> int:
    from . import datasets, pipeline

    progress = TqdmProgress()
    from .pipeline import OutputFolder

    OutputFolder(out, overwrite=overwrite)  # refuse a non-empty folder before the first job
    stack, atlas = datasets.allen_200um()
    print(f"[1/4] Allen ISH energy {stack.genes} on the CCFv3 200 µm grid -> {out / 'allen'}")
    _, s = pipeline.run_volumes(stack, 2, out / "allen", atlas=atlas, overwrite=overwrite, progress=progress)
    for g, b in s["best_structure_per_gene"].items():
        print(f"      {g}: best structure {b['acronym']} ({b['name']}), r = {b['r']:.3f}")
    for p, b in s["best_structure"].items():
        print(f"      {p}: best structure {b['acronym']} ({b['name']}), r = {b['r']:.3f}")
    for p, b in s["region_combinations"]["best"].items():
        print(f"      {p}: best contiguous combination {b['structures']}, r = {b['r']:.3f}")
    print(f"[2/4] BDGP Drosophila embryo images (1,640), K = 21 -> {out / 'bdgp'}")
    _, s = pipeline.run_volumes(datasets.bdgp(), 21, out / "bdgp", overwrite=overwrite, progress=progress)
    print(f"      relative Frobenius error {s['relative_error']:.4f} after {s['n_iter']} iterations")
    print(f"[3/4] osmFISH cells (6,471 x 33), NMF K = 11 -> {out / 'osmfish'}")
    _, s = pipeline.run_cells(datasets.osmfish(), 11, out / "osmfish", overwrite=overwrite, progress=progress)
    print(f"      relative Frobenius error {s['relative_error']:.4f} after {s['n_iter']} iterations")
    cells = datasets.osmfish()
    cells = cells[(cells.obs["region"] != "Excluded").to_numpy()].copy()
    print(f"[4/4] osmFISH neighbourhood NMF, K = 11, annotated cells -> {out / 'osmfish_nnmf'}")
    _, s = pipeline.run_nnmf(cells, 11, out / "osmfish_nnmf", label_key="region", overwrite=overwrite,
                             progress=progress)
    progress.close()
    print(f"      lengthscale {s['lengthscale']:.1f} µm, {s['mean_neighbors']:.1f} neighbours; "
          f"domains vs expert regions: ARI {s['ari']:.3f}, NMI {s['nmi']:.3f}")
    print(f"Results, tables and figures are in {out.resolve()}")
    return 0


def _demo_gui(exit_after: float | None = None) -> int:
    """Napari with the Allen sample and the docks ready (the NMF dock preselects the genes,
    the atlas as mask and K = 2). ``exit_after`` seconds: print what is open and close (tests).
    """
    import napari

    plugin = "napari-spatial-nmf"
    viewer = napari.Viewer(title="napari-spatial-nmf demo")
    viewer.open_sample(plugin, "allen_200um")
    _, nmf = viewer.window.add_plugin_dock_widget(plugin, "Pattern discovery (NMF)")
    viewer.window.add_plugin_dock_widget(plugin, "Region correlation", tabify=True)
    nmf.n_components.value = min(2, nmf.n_components.max)
    if exit_after is not None:
        from qtpy.QtCore import QTimer

        def report_and_close():
            print(json.dumps({"layers": [lyr.name for lyr in viewer.layers], "docks": list(viewer.window.dock_widgets),
                              "nmf_inputs": [lyr.name for lyr in nmf.inputs.value],
                              "nmf_mask": getattr(nmf.mask.value, "name", None), "k": nmf.n_components.value}),
                  flush=True)
            viewer.close()

        QTimer.singleShot(int(exit_after * 1000), report_and_close)
    napari.run()
    return 0


def _samples(args) -> int:
    from .datasets import SAMPLE_FILES, copy_samples

    paths = copy_samples(args.out)
    print(f"Copied {len(paths)} sample files (real public data; sources and citations in README.md) to {args.out}:")
    for p in paths:
        print(f"  {p.name:52s} {SAMPLE_FILES[p.name]}")
    s = args.out
    print("Try:\n"
          f"  napari-spatial-nmf run --volumes {s}/Pdyn_P56_coronal_71717084_200um.zip "
          f"{s}/Nrp1_P56_coronal_74272479_200um.zip --atlas {s}/annotation_200um_ccf2017_ishgrid.nrrd -k 2 "
          "--out allen-nmf\n"
          f"  napari-spatial-nmf nnmf --cells {s}/osmfish_sscortex_6471cells_33genes.h5ad -k 11 --label-key region "
          "--exclude Excluded --out osmfish-nnmf\n"
          f"  napari-spatial-nmf integrate --cells {s}/stahl2016_breast_cancer_4layers_3000genes.h5ad "
          "--section-key section -k 8 --method joint_nnmf --out stahl-integrated")
    return 0


def _fetch_command(args) -> int:
    import shutil

    from ._output import OutputFolder

    if args.brainglobe:
        from .core._progress import drain
        from .io import iter_download_brainglobe_atlas

        bar = _progress(args)
        atlas = drain(iter_download_brainglobe_atlas(args.brainglobe), bar)
        bar.close()
        _print_summary({"brainglobe_atlas": args.brainglobe, "shape": list(atlas.annotation.shape),
                        "voxel_size_um": list(atlas.voxel_size), "structures": len(atlas.ontology.table),
                        "use": f"--atlas brainglobe:{args.brainglobe}"})
        if not (args.genes or args.all_genes):
            return 0
    if bool(args.genes) == bool(args.all_genes):
        raise ValueError("Give either --genes SYMBOL ... or --all-genes (and/or --brainglobe NAME).")
    folder = OutputFolder(args.out, overwrite=args.overwrite) if args.out else None
    stack = _fetch(args)
    summary = {"genes": stack.genes, "section_data_set_ids": stack.meta.get("section_data_set_ids"),
               "missing": stack.meta.get("missing", {}), "cache": stack.meta.get("cache"),
               "grid": list(stack.data.shape[1:]), "voxel_size_um": list(stack.voxel_size)}
    if folder is not None:
        with folder:
            if args.all_genes:
                summary["note"] = "the whole set stays in the cache (1.4 GB); read it with io.fetch_allen_all()"
            else:
                cache = Path(stack.meta["cache"])
                for gene, sid in zip(stack.genes, stack.meta["section_data_set_ids"]):
                    name = f"{gene.split(' (')[0]}_{args.plane}_{sid}_energy.zip"
                    shutil.copyfile(cache / name, folder.path(name))
            summary["files"] = dict(folder.files, summary="summary.json")
            folder.path("summary.json").write_text(json.dumps(summary, indent=2, default=str))
    _print_summary(summary)
    return 0


def _osnmf(args) -> int:
    from . import datasets, pipeline
    from .core._memory import fmt_bytes, memory_limit

    store = args.store or args.out.with_name(args.out.name + ".store")
    _check_out(args, [(store, "keeps its fits in (the results store)")])
    if args.atlas is None:
        _, atlas = datasets.allen_200um()
    data, atlas_given = _load_input(args)
    atlas = atlas_given or atlas
    ks = range(args.k_min, args.k_max + 1)
    n_voxels = int(atlas.mask.sum())
    est = pipeline.estimate_osnmf(n_voxels, len(data.genes), ks, args.n)
    print(f"osNMF on {len(data.genes):,} genes x {n_voxels:,} brain voxels, K {args.k_min}-{args.k_max}, "
          f"N = {args.n}: {est['fits']:,} fits; about {fmt_bytes(est['memory_bytes'])} of memory (limit "
          f"{fmt_bytes(memory_limit())}) and {est['seconds'] / 3600:.1f} h on a 2-core machine (scaled from "
          f"benchmarks/stability_allen_scale.py). Finished fits are kept in {store}: the same command resumes.",
          file=sys.stderr, flush=True)
    _, summary = pipeline.run_osnmf(data, atlas, ks, args.n, args.out, store=store, random_state=args.random_state,
                                    overwrite=args.overwrite, protect=_inputs_of(args), progress=_progress(args))
    _print_summary(summary)
    return 0


def _read_volumes(path):
    from . import io

    p = Path(path)
    if p.is_dir() or p.suffix.lower() in (".zip", ".mhd"):
        return io.read_allen_energy(p)
    if p.name.lower().endswith((".csv", ".csv.gz")):
        return io.read_bdgp(p)
    return io.read_image_stack(p)


def _fetch(args):
    """The Allen grids of --genes or --all-genes (downloaded once into the cache, with progress)."""
    from .core._progress import drain
    from .io import _fetch as F

    bar = _progress(args)
    gen = F.iter_fetch_allen_all(cache=args.cache) if getattr(args, "all_genes", False) else \
        F.iter_fetch_allen(args.genes, plane=args.plane, experiments=args.experiments, cache=args.cache)
    stack = drain(gen, bar)
    bar.close()
    for gene, why in stack.meta.get("missing", {}).items():
        print(f"napari-spatial-nmf: warning: {gene}: {why}", file=sys.stderr)
    return stack


def _load_input(args):
    """(Stack or AnnData, Atlas or None) from --volumes / --cells / --genes / --all-genes (+ --atlas)."""
    from . import io

    given = [n for n in ("volumes", "cells", "genes", "all_genes") if getattr(args, n, None)]
    if len(given) > 1:
        raise ValueError(f"Give one source of data, not {' and '.join('--' + n.replace('_', '-') for n in given)}.")
    atlas = io.read_atlas(args.atlas, args.ontology) if getattr(args, "atlas", None) else None
    if args.cells:
        return io.read_cells(args.cells), atlas
    if getattr(args, "genes", None) or getattr(args, "all_genes", False):
        stack = _fetch(args)
        if atlas is not None and atlas.annotation.shape != stack.data.shape[1:]:
            raise ValueError(f"The Allen grids are {stack.data.shape[1:]} but the atlas is {atlas.annotation.shape}: "
                             "use an atlas on the 200 µm ISH grid (the shipped one by default).")
        return stack, atlas
    if not args.volumes:
        raise ValueError("Give --volumes (Allen zips or a folder of them, .npz, .nrrd, .tif, a BDGP csv), --cells, "
                         "or --genes to fetch Allen grids.")
    stack = _read_volumes(args.volumes[0])
    for p in args.volumes[1:]:
        stack = stack.concat(_read_volumes(p))
    if atlas is not None and atlas.annotation.shape != stack.data.shape[1:]:
        raise ValueError(f"The volumes have grid shape {stack.data.shape[1:]} but the atlas has "
                         f"{atlas.annotation.shape}: they must be on the same grid.")
    return stack, atlas


def _print_summary(summary: dict) -> None:
    print(json.dumps(summary, indent=2, default=str))


def _inputs_of(args) -> list[tuple[str, str]]:
    """The files a command reads, for :class:`~napari_spatial_nmf.pipeline.OutputFolder`'s ``protect``."""
    paths = [*(getattr(args, "volumes", None) or []), *(getattr(args, "sections", None) or [])]
    for name in ("cells", "atlas", "ontology", "reference", "query"):
        value = getattr(args, name, None)
        if value and not str(value).startswith("brainglobe:"):
            paths.append(value)
    return [(p, "reads (an input)") for p in paths]


def _check_out(args, extra=()) -> None:
    """Refuse an unusable --out before reading anything (it is checked again when written)."""
    from ._output import OutputFolder

    OutputFolder(args.out, overwrite=args.overwrite, protect=[*_inputs_of(args), *extra])


def _run(args) -> int:
    from . import pipeline

    _check_out(args)
    data, atlas = _load_input(args)
    if args.cells:
        _, summary = pipeline.run_cells(data, args.k, args.out, random_state=args.random_state,
                                        max_iter=args.max_iter, overwrite=args.overwrite, protect=_inputs_of(args),
                                        progress=_progress(args))
    else:
        _, summary = pipeline.run_volumes(data, args.k, args.out, atlas=atlas, random_state=args.random_state,
                                          missing=args.missing, max_iter=args.max_iter, min_voxels=args.min_voxels,
                                          overwrite=args.overwrite, protect=_inputs_of(args),
                                          progress=_progress(args))
    _print_summary(summary)
    return 0


def _stability(args) -> int:
    import numpy as np

    from . import pipeline, tl

    store = args.store or args.out.with_name(args.out.name + ".store")
    _check_out(args, [(store, "keeps its fits in (the results store)")])
    data, atlas = _load_input(args)
    adata = data if args.cells else data.to_anndata(mask=atlas.mask if atlas is not None else None)
    layer = None
    if args.missing == "impute" and np.isnan(np.asarray(adata.X, dtype=np.float32)).any():
        tl.impute_knn(adata)
        layer = "imputed"
    bar = _progress(args)

    def report(p):
        bar(p)
        if p.data:
            bar.close()
            print(f"  K={p.data['k']}: instability {p.data['instability']:.4f} ± {p.data['sd']:.4f}", flush=True)

    _, summary = pipeline.run_stability(adata, range(args.k_min, args.k_max + 1), args.n, args.out, store=store,
                                        random_state=args.random_state, resample=args.resample,
                                        matching=args.matching, similarity=args.similarity, backend=args.backend,
                                        scheduler=args.scheduler, layer=layer,
                                        missing="zero" if args.missing == "zero" else "raise",
                                        overwrite=args.overwrite, protect=_inputs_of(args), progress=report)
    bar.close()
    _print_summary(summary)
    return 0


def _nnmf(args) -> int:
    from . import io, pipeline

    _check_out(args)
    adata = io.read_cells(args.cells, spatial_key=args.spatial_key)
    _, summary = pipeline.run_nnmf(adata, args.k, args.out, label_key=args.label_key, exclude=args.exclude or (),
                                   random_state=args.random_state,
                                   lengthscale=args.lengthscale, slice_key=args.slice_key, spatial_key=args.spatial_key,
                                   max_iter=args.max_iter, filter_cells=not args.keep_empty_cells,
                                   overwrite=args.overwrite, protect=_inputs_of(args), progress=_progress(args))
    _print_summary(summary)
    return 0


def _integrate(args) -> int:
    from . import io, pipeline

    if bool(args.sections) == bool(args.cells):
        raise ValueError("Give either --sections (one file per section) or --cells with --section-key.")
    sweep = args.k_min is not None or args.k_max is not None
    if sweep and (args.k_min is None or args.k_max is None):
        raise ValueError("Give both --k-min and --k-max to choose K by stability.")
    if sweep == (args.k is not None):
        raise ValueError("Give either -k (the number of factors) or --k-min and --k-max (K chosen by stability).")
    if sweep and args.k_max < args.k_min:
        raise ValueError(f"--k-max {args.k_max} is below --k-min {args.k_min}.")
    if not sweep and any(v is not None for v in (args.store, args.scheduler)):
        raise ValueError("--store and --scheduler belong to a stability sweep (--k-min/--k-max).")
    store = (args.store or args.out.with_name(args.out.name + ".store")) if sweep else None
    _check_out(args, [(store, "keeps its fits in (the results store)")] if sweep else [])
    if args.sections:
        data = [io.read_cells(p) for p in args.sections]
        names = args.section_names or [Path(p).name.split(".")[0] for p in args.sections]
    else:
        if not args.section_key:
            raise ValueError("--cells needs --section-key (the obs column naming each cell's section).")
        data, names = io.read_cells(args.cells), None
    restarts = args.restarts if args.restarts is not None else (5 if sweep else 1)
    bar = _progress(args)

    def report(p):
        bar(p)
        if p.data and "instability" in p.data:
            bar.close()
            print(f"  K={p.data['k']}: instability {p.data['instability']:.4f} ± {p.data['sd']:.4f}, mixing "
                  f"{p.data['mixing']:.2f}, {p.data['n_section_specific']} section-specific factor(s)", flush=True)

    sweep_args = ({"k_range": range(args.k_min, args.k_max + 1), "store": store, "matching": args.matching,
                   "backend": args.backend, "scheduler": args.scheduler} if sweep else {})
    _, summary = pipeline.run_integration(
        data, None if sweep else args.k, args.out, **sweep_args, method=args.method, section_key=args.section_key,
        section_names=names,
        n_steps=args.steps, variant=args.variant, n_hvgs=None if args.n_hvgs == 0 else args.n_hvgs,
        max_iter=args.max_iter, counts=args.counts, genes=args.genes, n_restarts=restarts,
        domains={"neighbours": tuple(args.neighbours), "scale": args.scale, "refine": args.refine},
        random_state=args.random_state, label_key=args.label_key, n_domains=args.n_domains,
        reconstruct=args.reconstruct_3d, spacing=args.spacing if len(args.spacing) > 1 else args.spacing[0],
        um_per_unit=args.um_per_unit, registration_refine=args.registration_refine, overwrite=args.overwrite,
        protect=_inputs_of(args), progress=report)
    bar.close()
    _print_summary(summary)
    return 0


def _transfer(args) -> int:
    from . import io, pipeline

    if args.reference.resolve() == args.query.resolve():
        raise ValueError("--reference and --query are the same file: give the section that has the labels and the "
                         "one that should get them.")
    _check_out(args)
    reference = io.read_cells(args.reference, spatial_key=args.spatial_key)
    query = io.read_cells(args.query, spatial_key=args.spatial_key)
    _, summary = pipeline.run_transfer(reference, query, args.labels_key, args.out, genes=args.genes,
                                       section_key=args.section_key, spatial_key=args.spatial_key,
                                       neighbours=tuple(args.neighbours), smooth=args.smooth,
                                       match_depth=not args.keep_depth,
                                       random_state=args.random_state, overwrite=args.overwrite,
                                       protect=_inputs_of(args), progress=_progress(args))
    _print_summary(summary)
    return 0


def _common(p: argparse.ArgumentParser, *, k: bool = True) -> None:
    if k:
        p.add_argument("-k", "--k", type=int, required=True, help="number of principal patterns / factors K")
    p.add_argument("--random-state", "--seed", dest="random_state", type=int, default=0,
                   help="random seed (the same seed gives identical results; default 0)")
    p.add_argument("--out", type=Path, required=True, help="output folder (must be new or empty; see --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the whole contents of a non-empty --out with this run's files")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _gene_options(p: argparse.ArgumentParser, all_genes: bool = True) -> None:
    p.add_argument("--genes", nargs="+", metavar="SYMBOL",
                   help="fetch these genes' Allen ISH energy grids (200 µm; downloaded once into the cache)")
    if all_genes:
        p.add_argument("--all-genes", action="store_true",
                       help="fetch the whole adult coronal set (4,345 experiments, 1.4 GB; IBL's mirror)")
    p.add_argument("--plane", choices=["coronal", "sagittal"], default="coronal",
                   help="plane of the experiments (default coronal, as osNMF)")
    p.add_argument("--experiments", choices=["all", "one"], default="all",
                   help="a gene with several experiments: all of them, or the one with the most measured voxels")
    p.add_argument("--cache", type=Path, help="download cache (default: NAPARI_SPATIAL_NMF_CACHE or the per-user "
                                              "cache folder)")


def _input_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--volumes", nargs="+", metavar="PATH",
                   help="Allen energy zips or a folder of them, .npz, .nrrd, .tif, or a BDGP table .csv")
    p.add_argument("--cells", metavar="FILE", help="an .h5ad (or SpatialData .zarr) with cell coordinates")
    _gene_options(p)
    p.add_argument("--atlas", metavar="ANNOTATION",
                   help="atlas annotation .nrrd, or brainglobe:NAME for a local BrainGlobe atlas; restricts the "
                        "analysis to the brain (label > 0) and adds the region read-outs")
    p.add_argument("--ontology", metavar="FILE",
                   help="structure tree .csv/.json (default: found next to the annotation)")
    p.add_argument("--missing", choices=["impute", "raise", "zero"], default="impute",
                   help="missing voxels (Allen's -1): impute from the 6 nearest measured voxels (osNMF; default), "
                        "stop with an error, or count as zero")


def parser() -> argparse.ArgumentParser:
    """The command-line parser (every option has help)."""
    ap = argparse.ArgumentParser(prog="napari-spatial-nmf", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="open napari on the shipped sample, or run the main jobs headless")
    demo.add_argument("--headless", action="store_true", help="never open a window")
    demo.add_argument("--out", type=Path, default=Path("nsnmf-demo"), help="output folder (default nsnmf-demo)")
    demo.add_argument("--overwrite", action="store_true", help="replace the results of an earlier demo")
    demo.add_argument("--exit-after", type=float, help=argparse.SUPPRESS)  # tests: report what is open, then close
    smp = sub.add_parser("samples", help="copy the shipped sample files into a folder, to try the commands on")
    smp.add_argument("--out", type=Path, default=Path("samples"), help="folder to copy them to (default samples)")
    fe = sub.add_parser("fetch", help="download Allen ISH energy grids by gene, or the whole set, into the cache")
    _gene_options(fe)
    fe.add_argument("--brainglobe", metavar="NAME", help="download a BrainGlobe atlas (e.g. allen_mouse_100um) with "
                                                         "brainglobe-atlasapi, for --atlas brainglobe:NAME")
    fe.add_argument("--out", type=Path, help="also copy the grids (Allen zips) into this folder")
    fe.add_argument("--overwrite", action="store_true", help="replace the whole contents of a non-empty --out")
    fe.add_argument("--quiet", action="store_true", help="no progress bars")
    os_ = sub.add_parser("osnmf", help="the osNMF pipeline at the paper's scale: fetch, impute, staNMF, read-outs")
    _input_options(os_)
    _common(os_, k=False)
    os_.add_argument("--k-min", type=int, default=8, help="smallest K (default 8; the paper's most stable K is 11)")
    os_.add_argument("--k-max", type=int, default=14, help="largest K (default 14)")
    os_.add_argument("-n", type=int, default=100, help="bootstrap replicates of the genes per K (default 100)")
    os_.add_argument("--store", type=Path, help="results store of the sweep (default OUT.store); re-running resumes")
    run = sub.add_parser("run", help="NMF + atlas region read-outs of your volumes or cells")
    _input_options(run)
    _common(run)
    run.add_argument("--max-iter", type=int, default=200, help="maximum NMF iterations (default 200)")
    run.add_argument("--min-voxels", type=int, default=50,
                     help="leave out structures with fewer voxels from the region tables (default 50)")
    st = sub.add_parser("stability", help="choose K by staNMF (bootstrap instability), then fit the final model")
    _input_options(st)
    _common(st, k=False)
    st.add_argument("--k-min", type=int, required=True, help="smallest K of the sweep")
    st.add_argument("--k-max", type=int, required=True, help="largest K of the sweep")
    st.add_argument("-n", type=int, default=100, help="bootstrap replicates per K (default 100)")
    st.add_argument("--resample", choices=["genes", "obs", "none"], default="genes",
                    help="what a replicate resamples: genes (osNMF; default), observations, or nothing (random "
                         "restarts, Wu et al. 2016)")
    st.add_argument("--matching", choices=["hungarian", "amari"], default="hungarian",
                    help="how two replicates' patterns are matched (default hungarian)")
    st.add_argument("--similarity", choices=["cosine", "pearson"], default="cosine",
                    help="pattern similarity (default cosine)")
    st.add_argument("--store", type=Path,
                    help="results folder that keeps every finished fit (default OUT.store); re-running resumes")
    st.add_argument("--backend", choices=["local", "dask"], default="local", help="where fits run (default local)")
    st.add_argument("--scheduler", help="dask scheduler address (default: a local cluster)")
    nn = sub.add_parser("nnmf", help="neighbourhood NMF of a cell point cloud (spatial gene programs)")
    nn.add_argument("--cells", required=True, metavar="FILE", help="an .h5ad (or SpatialData .zarr) of cell counts")
    _common(nn)
    nn.add_argument("--lengthscale", type=float,
                    help="kernel lengthscale in the coordinates' unit (default: mean distance to the 14th neighbour)")
    nn.add_argument("--slice-key", help="obs column: cells of different slices are never neighbours")
    nn.add_argument("--spatial-key", default="spatial", help="obsm key of the coordinates (default spatial)")
    nn.add_argument("--label-key", help="obs column of expert labels: report ARI / NMI of the domains")
    nn.add_argument("--exclude", nargs="+", metavar="LABEL",
                    help="leave out the cells with these --label-key values (e.g. osmFISH's Excluded) from the fit "
                         "and the scores")
    nn.add_argument("--max-iter", type=int, default=1000, help="maximum iterations (default 1000, as the R package)")
    nn.add_argument("--keep-empty-cells", action="store_true",
                    help="refuse cells with no counts or repeated coordinates instead of leaving them out")
    ig = sub.add_parser("integrate", help="integrate sections into shared spatial factors; rebuild 3D")
    ig.add_argument("--sections", nargs="+", metavar="FILE",
                    help="one .h5ad (raw counts, coordinates) per section, in order (the adversarial chain's and "
                         "the 3D stack's)")
    ig.add_argument("--section-names", nargs="+", metavar="NAME", help="names of the sections (default: file names)")
    ig.add_argument("--cells", metavar="FILE", help="one .h5ad holding all sections (with --section-key)")
    ig.add_argument("--section-key", help="obs column naming each cell's section")
    _common(ig, k=False)
    ig.add_argument("-k", "--k", type=int, help="number of spatial factors K (or --k-min/--k-max: K by stability)")
    ig.add_argument("--k-min", type=int, help="choose K by stability: smallest K of the sweep (with --k-max)")
    ig.add_argument("--k-max", type=int, help="choose K by stability: largest K of the sweep")
    ig.add_argument("--store", type=Path, help="with --k-min/--k-max: results folder that keeps every finished fit "
                                               "(default OUT.store); re-running resumes")
    ig.add_argument("--matching", choices=["hungarian", "amari"], default="hungarian",
                    help="with --k-min/--k-max: how two restarts' programs are matched (default hungarian)")
    ig.add_argument("--backend", choices=["local", "dask"], default="local",
                    help="with --k-min/--k-max: where fits run (default local)")
    ig.add_argument("--scheduler", help="dask scheduler address (default: a local cluster)")
    ig.add_argument("--method", choices=["joint_nnmf", "inspire"], default="joint_nnmf",
                    help="joint neighbourhood NMF with per-section gene scaling (CPU, no deep learning; default) or "
                         "INSPIRE (PyTorch, the integration extra)")
    ig.add_argument("--counts", choices=["raw", "recover", "pseudo"], default="raw",
                    help="the values are counts (default), or normalised: recover counts from log1p(normalize_total) "
                         "data, or use the un-logged values as pseudo-counts")
    ig.add_argument("--genes", choices=["shared", "union"], default="shared",
                    help="fit the genes all sections share (default), or the union of the panels (joint NNMF; each "
                         "section's unmeasured genes are imputed)")
    ig.add_argument("--restarts", type=int,
                    help="fits from successive seeds, programs matched and averaged (a consensus; default 1, "
                         "with --k-min/--k-max 5 per K)")
    ig.add_argument("--neighbours", type=int, nargs="*", default=[12, 36, 108], metavar="K",
                    help="domains: nearest cells whose mean describes each cell, one range per value (default 12 36 "
                         "108; none: each cell by itself)")
    ig.add_argument("--scale", choices=["section", "none"], default="section",
                    help="domains: standardise each section's embedding first (default section)")
    ig.add_argument("--refine", type=int, default=0, metavar="K",
                    help="domains: neighbour majority vote over K nearest cells (default 0: none)")
    ig.add_argument("--steps", type=int, default=2000, help="INSPIRE training steps (default 2000)")
    ig.add_argument("--variant", choices=["auto", "gat", "lgcn"], default="auto",
                    help="INSPIRE encoder: graph attention (whole sections) or LGCN (minibatches); default auto")
    ig.add_argument("--n-hvgs", type=int, default=3000,
                    help="highly variable genes per section; the model uses their intersection (0: all shared genes)")
    ig.add_argument("--max-iter", type=int, default=300, help="joint NNMF iterations at most (default 300)")
    ig.add_argument("--label-key", help="obs column of expert labels: cluster domains and report ARI / NMI / ASW")
    ig.add_argument("--n-domains", type=int, help="domains to cluster (default: the number of labels; without "
                                                   "--label-key, domains are clustered when this is given)")
    ig.add_argument("--reconstruct-3d", action="store_true",
                    help="align adjacent sections rigidly and stack them into one 3D point cloud")
    ig.add_argument("--spacing", type=float, nargs="+", default=[10.0],
                    help="distance between consecutive sections in µm (one value, or one per gap; default 10)")
    ig.add_argument("--um-per-unit", type=float,
                    help="µm per coordinate unit, if the coordinates are not in µm (e.g. 16.2 for DLPFC Visium)")
    ig.add_argument("--registration-refine", choices=["auto", "density", "fields", "none"], default="auto",
                    help="how each registration is refined: auto (the default) on the cell density between "
                         "single-cell sections, on the feature fields when a section is spots on an array")
    tr = sub.add_parser("transfer", help="carry labels (domains, layers, cell types) from a reference section to "
                                         "another through their shared genes and the cells' surroundings")
    tr.add_argument("--reference", type=Path, required=True, metavar="FILE",
                    help="an .h5ad (or SpatialData .zarr) whose cells have the labels")
    tr.add_argument("--query", type=Path, required=True, metavar="FILE",
                    help="an .h5ad (or SpatialData .zarr) whose cells get them (any panel sharing genes)")
    tr.add_argument("--labels-key", required=True,
                    help="the reference's obs column to carry; when the query has a column of that name too, the "
                         "summary scores the transfer against it (ARI / NMI)")
    _common(tr, k=False)
    tr.add_argument("--genes", nargs="+", metavar="SYMBOL", help="only these genes (default: every shared gene)")
    tr.add_argument("--section-key", default="section",
                    help="obs column naming each cell's section when a file holds several (default section)")
    tr.add_argument("--spatial-key", default="spatial", help="obsm key of the coordinates (default spatial)")
    tr.add_argument("--neighbours", type=int, nargs="*", default=[6, 18, 54], metavar="K",
                    help="nearest cells whose mean genes also describe each cell, one range per value (default 6 18 "
                         "54; none: each cell by itself)")
    tr.add_argument("--smooth", type=int, default=18,
                    help="nearest query cells over which the label probabilities are averaged (default 18; 1: none)")
    tr.add_argument("--keep-depth", action="store_true",
                    help="do not thin the reference's counts to the query's depth first (by default, with counts on "
                         "both sides, each shared gene is thinned where the query's mean count is lower)")
    return ap


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """One line per warning, without the package's source paths (they mean nothing to a user)."""
    return f"napari-spatial-nmf: warning: {' '.join(str(message).split())}\n"


def _interrupt(signum, _frame):
    _INTERRUPTED.append(signum)
    raise KeyboardInterrupt(signum)


def _message(exc: BaseException) -> str:
    """One line for any failure: what went wrong and, where we know it, what to do."""
    import errno

    if isinstance(exc, KeyboardInterrupt):
        return ("interrupted: nothing was written to --out (it is as it was); a stability sweep keeps its finished "
                "fits "
                "in its store and resumes when run again.")
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    if isinstance(exc, MemoryError):
        return (f"out of memory ({exc or 'an allocation failed'}): use fewer observations, genes or replicates, or "
                f"a machine with more memory (set NAPARI_SPATIAL_NMF_MEMORY_LIMIT to refuse such runs up front).")
    if isinstance(exc, OverflowError):
        return f"a number is out of range ({exc}): check the options' values and the coordinates' scale."
    if isinstance(exc, OSError) and not isinstance(exc, (FileNotFoundError, PermissionError)):
        where = f" ({exc.filename})" if exc.filename else ""
        if exc.errno == errno.ENOSPC:
            return (f"the disk is full{where}: nothing was written to --out; free some space (a stability sweep "
                    "keeps its finished fits in its store) and run again.")
        if isinstance(exc, (TimeoutError, ConnectionError)):
            return f"a connection failed: {exc}"
        return f"{exc.strerror or type(exc).__name__}{where}: {exc}"
    text = str(exc) or type(exc).__name__
    if not isinstance(exc, (ValueError, TypeError, FileNotFoundError, PermissionError, ImportError)):
        text = f"{type(exc).__name__}: {text} (unexpected; set NAPARI_SPATIAL_NMF_DEBUG=1 for the traceback)"
    return " ".join(text.split())


def main(argv=None) -> int:
    """Entry point of ``napari-spatial-nmf``; returns the exit status.

    Every failure ends with one line on stderr and exit status 2, an interruption
    (Ctrl-C, SIGTERM, SIGHUP) included: the output folder is then as it was, and temporary
    files are removed.
    """
    import signal

    args = parser().parse_args(argv)
    warnings.simplefilter("default", UserWarning)
    previous_format = warnings.formatwarning
    warnings.formatwarning = _format_warning
    _INTERRUPTED.clear()
    default_hook = sys.unraisablehook

    def quiet_interrupts(info):
        # our KeyboardInterrupt inside a C callback (the flag stops the run instead); and once a signal
        # came, the finalizers of objects it left half-built, which fail in turn (llvmlite's, when the
        # signal lands while numba compiles): one line on stderr, not their tracebacks
        if not isinstance(info.exc_value, KeyboardInterrupt) and not _INTERRUPTED:
            default_hook(info)

    sys.unraisablehook = quiet_interrupts
    previous = {}
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            with contextlib.suppress(ValueError):  # not the main thread (e.g. a test runner's worker)
                previous[sig] = signal.signal(sig, _interrupt)
    try:
        if args.command == "demo":
            if not args.headless and _has_display():
                return _demo_gui(args.exit_after)
            return _demo_headless(args.out, args.overwrite)
        return {"run": _run, "stability": _stability, "nnmf": _nnmf, "integrate": _integrate, "transfer": _transfer,
                "samples": _samples, "fetch": _fetch_command, "osnmf": _osnmf}[args.command](args)
    except (Exception, KeyboardInterrupt) as exc:
        if os.environ.get("NAPARI_SPATIAL_NMF_DEBUG") == "1":
            raise
        print(f"napari-spatial-nmf: error: {_message(exc)}", file=sys.stderr)
        return 2
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if not (_INTERRUPTED and argv is None):  # an interrupted command-line process keeps it until it exits
            sys.unraisablehook = default_hook
        warnings.formatwarning = previous_format


if __name__ == "__main__":
    raise SystemExit(main())
