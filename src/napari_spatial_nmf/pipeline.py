"""The main jobs, end to end and headless: data in, principal patterns and read-outs out.

Used by the command line (``napari-spatial-nmf run|stability|nnmf|demo``); every step is a
public function of :mod:`napari_spatial_nmf.tl`, so scripts can do the same piecewise.

Every job writes one complete set of files or none: the files go to a temporary folder
beside ``out`` that replaces ``out`` only when everything is written
(:class:`OutputFolder`). A non-empty ``out`` is refused unless ``overwrite=True``, which
then replaces the whole set; a refused or failed run leaves nothing behind. File names
that come from data (pattern names) are sanitised (:func:`safe_filename`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from . import pl, tl
from ._output import AtomicPaths, OutputFolder
from .core._progress import Progress, drain
from .io import Atlas, Stack

ProgressCallback = Callable[[Progress], None] | None


def safe_filename(name: str) -> str:
    """A file name made from data: letters, digits, ``._-`` only, never a path.

    ``"../../evil"`` becomes ``"evil"``; an empty result becomes ``"unnamed"``.
    """
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._")
    return s or "unnamed"


def _summary(folder: OutputFolder, summary: dict) -> dict:
    summary["files"] = dict(folder.files, summary="summary.json")
    summary["output_folder"] = str(folder.out)
    folder.path("summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _write_result(folder: OutputFolder, adata: ad.AnnData, key: str, table_key: str) -> None:
    names = list(adata.uns[key].get("pattern_names", adata.uns[key].get("signature_names", [])))
    pd.DataFrame(np.asarray(adata.varm[table_key]), index=adata.var_names, columns=names).to_csv(
        folder.path("gene_coefficients.csv" if table_key.endswith("coefficients") else "gene_signatures.csv"))
    adata.write_h5ad(folder.path("result.h5ad"), compression="gzip")


def _best(table: pd.DataFrame) -> dict:
    return {p: {"acronym": g.iloc[0]["acronym"], "name": g.iloc[0]["name"], "r": float(g.iloc[0]["r"])}
            for p, g in table.groupby("pattern", sort=False)}


def run_volumes(stack: Stack, n_components: int, out, *, atlas: Atlas | None = None, random_state: int = 0,
                missing: str = "impute", max_iter: int = 200, min_voxels: int = 50, key: str = "nmf",
                overwrite: bool = False, protect=(), progress: ProgressCallback = None) -> tuple[ad.AnnData, dict]:
    """NMF of a gene stack (inside the atlas mask), region correlation, osNMF read-outs.

    Parameters
    ----------
    stack : Stack
        Gene volumes or images (NaN = missing).
    n_components : int
        K.
    out : str or Path
        Output folder (see :class:`OutputFolder`): ``result.h5ad``,
        ``gene_coefficients.csv``, ``patterns.png``, the osNMF files of
        :func:`write_osnmf_suite`, with an atlas ``region_correlation.csv`` and
        ``gene_region_correlation.csv``, with missing voxels ``imputation_holdout.csv``,
        and ``summary.json`` (which lists every file).
    atlas : Atlas, optional
        Restricts the analysis to the brain (annotation > 0) and adds region read-outs.
    random_state : int
        Seed.
    missing : {"impute", "raise", "zero"}
        Missing voxels: k-NN imputation (osNMF), an error, or zero.
    max_iter, min_voxels, key
        See :func:`napari_spatial_nmf.tl.nmf` and :func:`napari_spatial_nmf.tl.region_correlation`.
    overwrite : bool
        Replace a non-empty ``out`` as a whole.
    protect : iterable of (path, role)
        Files the run needs (its inputs): ``out`` may not hold them (:class:`OutputFolder`).
    progress : callable, optional
        Called with every :class:`~napari_spatial_nmf.core.Progress`.

    Returns
    -------
    (AnnData, dict)
        The result and the summary (file names, errors, best structures).

    Raises
    ------
    ValueError
        Bad input (checked before anything is computed or written), an unusable ``out``.
    """
    if missing not in ("impute", "raise", "zero"):
        raise ValueError(f"missing must be 'impute', 'raise' or 'zero'; got {missing!r}.")
    if atlas is not None and atlas.annotation.shape != stack.data.shape[1:]:
        raise ValueError(f"The volumes have grid shape {stack.data.shape[1:]} but the atlas has "
                         f"{atlas.annotation.shape}: they must be on the same grid.")
    folder = OutputFolder(out, overwrite=overwrite, protect=protect)
    adata = stack.to_anndata(mask=atlas.mask if atlas is not None else None)
    tl.check_nmf_input(adata, n_components, missing="zero" if missing in ("impute", "zero") else "raise")
    with folder:
        layer, nmf_missing = None, missing
        if missing == "impute":
            nmf_missing = "raise"
            if np.isnan(adata.X).any():
                tl.imputation_holdout(adata, random_state=random_state).to_csv(
                    folder.path("imputation_holdout.csv"), index=False)
                drain(tl.iter_impute_knn(adata), progress)
                layer = "imputed"
        drain(tl.iter_nmf(adata, n_components, layer=layer, missing=nmf_missing, random_state=random_state,
                          max_iter=max_iter, key_added=key), progress)
        rec = adata.uns[key]
        summary = {"n_obs": adata.n_obs, "n_genes": adata.n_vars, "n_components": n_components,
                   "relative_error": rec["relative_error"], "n_iter": rec["n_iter"], "stop_reason": rec["stop_reason"],
                   "random_state": random_state}
        _volume_readouts(adata, atlas, folder, summary, key=key, layer=layer, min_voxels=min_voxels,
                         title=f"NMF principal patterns (K = {n_components})", progress=progress)
        summary = _summary(folder, summary)
    return adata, summary


def _volume_readouts(adata, atlas, folder, summary, *, key, layer, min_voxels, title, progress,
                     gene_regions: bool = True) -> None:
    """Region correlation (patterns and genes), the osNMF read-outs, the pattern figure and the result."""
    regions = None
    with_atlas = atlas is not None and atlas.ontology is not None
    if with_atlas:
        regions = tl.region_correlation(adata, atlas.annotation, atlas.ontology, key=key, min_voxels=min_voxels)
        regions.to_csv(folder.path("region_correlation.csv"), index=False)
        summary["best_structure"] = _best(regions)
        if gene_regions:
            genes = tl.region_correlation(adata, atlas.annotation, atlas.ontology, genes=list(adata.var_names),
                                          min_voxels=min_voxels)
            genes.to_csv(folder.path("gene_region_correlation.csv"), index=False)
            summary["best_structure_per_gene"] = _best(genes)
    res = drain(tl.iter_osnmf_suite(adata, atlas.annotation if with_atlas else None,
                                    atlas.ontology if with_atlas else None, key=key, layer=layer), progress)
    tl.store_osnmf_suite(adata, res)
    summary.update(write_osnmf_suite(res, folder))
    pl.patterns(adata, key, annotation=atlas.annotation if atlas is not None else None,
                ontology=atlas.ontology if atlas is not None else None, region_table=regions, title=title,
                save=folder.path("patterns.png"))
    _write_result(folder, adata, key, f"{key}_coefficients")


def write_osnmf_suite(res: dict, out) -> dict:
    """Write the read-outs of :func:`napari_spatial_nmf.tl.iter_osnmf_suite`.

    Files: ``marker_genes.csv``, ``reconstruction_accuracy.csv``, ``morans_i.csv``,
    ``networks/<pattern>.graphml`` (pattern names sanitised) and ``networks/edges.csv``;
    with an atlas, ``region_combinations.csv``, ``best_region_combinations.csv``,
    ``structure_scores.csv`` (pattern × structure) and ``structure_bubbles.png``; always
    ``osnmf_parameters.json`` (parameters, versions, time).

    Parameters
    ----------
    res : dict
        The suite's result.
    out : OutputFolder or str or Path
        Where to write: an :class:`OutputFolder` of a run, or a folder (the dock's *Save
        all*; created if needed, each file written under a temporary name and renamed).

    Returns
    -------
    dict
        A JSON-ready summary.
    """
    if isinstance(out, OutputFolder):
        return _write_suite(res, out.path)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = AtomicPaths(folder)
    try:
        summary = _write_suite(res, path)
    except BaseException:
        path.discard()
        raise
    path.commit()
    return summary


def _write_suite(res: dict, path) -> dict:
    import networkx as nx

    from .core.atlas_stats import best_combinations

    summary: dict = {}
    res["marker_genes"].to_csv(path("marker_genes.csv"), index=False)
    rec = res["reconstruction_accuracy"]
    rec.to_csv(path("reconstruction_accuracy.csv"))
    summary["reconstruction_r_median"] = {c: float(rec[c].median()) for c in rec.columns}
    mi = res["morans_i"]
    mi.to_csv(path("morans_i.csv"), index=False)
    summary["morans_i_mean"] = {c: float(mi[c].mean()) for c in mi.columns if c != "pattern"}
    if res["networks"]:
        for name, G in res["networks"].items():
            nx.write_graphml(G, path(f"networks/{safe_filename(name)}.graphml", f"networks/{name}"))
        tl.network_edges(res["networks"]).to_csv(path("networks/edges.csv"), index=False)
    table = res["region_combinations"]
    if table is not None:
        table.to_csv(path("region_combinations.csv"), index=False)
        best = best_combinations(table)
        best.to_csv(path("best_region_combinations.csv"), index=False)
        order = res["structure_order"]
        pl.structure_score_matrix(table, max_columns=10**6, order=order).to_csv(path("structure_scores.csv"))
        pl.structure_bubbles(pl.structure_score_matrix(table, order=order), score=res["params"]["params"]["score"],
                             title="principal pattern × structure", save=path("structure_bubbles.png"))
        summary["region_combinations"] = {
            "counts": {k: int(res["counts"][k]) for k in ("n_structures", "n_pairs", "n_triples")},
            "best": {r.pattern: {"structures": r.structures, "r": float(r.score)} for r in best.itertuples()}}
    path("osnmf_parameters.json").write_text(json.dumps(res["params"], indent=2, default=str))
    return summary


def run_cells(adata: ad.AnnData, n_components: int, out, *, random_state: int = 0, max_iter: int = 200,
              key: str = "nmf", overwrite: bool = False, protect=(),
              progress: ProgressCallback = None) -> tuple[ad.AnnData, dict]:
    """NMF of a cell point cloud; writes ``result.h5ad``, ``gene_coefficients.csv``,
    ``cell_weights.csv``, ``patterns.png`` and ``summary.json`` to ``out`` (one complete
    set, see :class:`OutputFolder`). The input AnnData is not changed.

    Returns
    -------
    (AnnData, dict)
        The result (a copy) and the summary.
    """
    folder = OutputFolder(out, overwrite=overwrite, protect=protect)
    tl.check_nmf_input(adata, n_components)
    with folder:
        res = drain(tl.iter_nmf(adata, n_components, random_state=random_state, max_iter=max_iter, key_added=key,
                                copy=True), progress)
        names = list(res.uns[key]["pattern_names"])
        pd.DataFrame(np.asarray(res.obsm[f"X_{key}"]), index=res.obs_names, columns=names).to_csv(
            folder.path("cell_weights.csv"))
        pl.cell_patterns(res, key, title=f"NMF cell weights (K = {n_components})", save=folder.path("patterns.png"))
        rec = res.uns[key]
        summary = {"n_obs": res.n_obs, "n_genes": res.n_vars, "n_components": n_components,
                   "relative_error": rec["relative_error"], "n_iter": rec["n_iter"], "stop_reason": rec["stop_reason"],
                   "random_state": random_state}
        _write_result(folder, res, key, f"{key}_coefficients")
        summary = _summary(folder, summary)
    return res, summary


def run_stability(adata: ad.AnnData, k_range, n_replicates: int, out, *, store=None, random_state: int = 0,
                  resample: str = "genes", matching: str = "hungarian", similarity: str = "cosine",
                  backend: str = "local", scheduler=None, batch_size: int = 25, layer: str | None = None,
                  missing: str = "raise", overwrite: bool = False, protect=(),
                  progress: ProgressCallback = None) -> tuple[ad.AnnData, dict]:
    """StaNMF sweep + final model at the chosen K; writes ``stability.csv``,
    ``instability.png``, ``patterns.png`` (the patterns at the chosen K), ``result.h5ad``,
    ``gene_coefficients.csv`` and ``summary.json``.

    ``store`` keeps every finished fit (give a folder outside ``out``, e.g. ``OUT.store``,
    the command line's default): running the same command again resumes with identical
    numbers, and a wider K range reuses the finished K.

    Returns
    -------
    (AnnData, dict)
        The result (a copy) and the summary.
    """
    folder = OutputFolder(out, overwrite=overwrite,
                          protect=[*protect, (store, "keeps its fits in (the results store)")])
    gen = tl.iter_stability(adata, k_range, n_replicates, layer=layer, missing=missing, resample=resample,
                            matching=matching, similarity=similarity, random_state=random_state,
                            batch_size=batch_size, store=store, backend=backend, scheduler=scheduler, copy=True)
    with folder:
        res = drain(gen, progress)
        rec = res.uns["stability"]
        table = rec["table"]
        table.to_csv(folder.path("stability.csv"), index=False)
        pl.instability(table, title=f"staNMF, N = {n_replicates} ({resample} resampled)",
                       save=folder.path("instability.png"))
        title = f"NMF principal patterns at the chosen K = {int(rec['best_k'])}"
        if "grid" in res.uns:
            pl.patterns(res, "nmf", title=title, save=folder.path("patterns.png"))
        else:
            pl.cell_patterns(res, "nmf", title=title, save=folder.path("patterns.png"))
        summary = {"best_k": int(rec["best_k"]), "n_replicates": n_replicates, "k_range": list(map(int, table["k"])),
                   "instability": {int(k): float(v) for k, v in zip(table["k"], table["instability"])},
                   "edge_warning": rec.get("edge_warning"), "relative_error_final": res.uns["nmf"]["relative_error"],
                   "random_state": random_state, "store": None if store is None else str(store)}
        _write_result(folder, res, "nmf", "nmf_coefficients")
        summary = _summary(folder, summary)
    return res, summary


def run_nnmf(adata: ad.AnnData, n_components: int, out, *, label_key: str | None = None, exclude=(),
             random_state: int = 0, overwrite: bool = False, protect=(), progress: ProgressCallback = None,
             **kwargs) -> tuple[ad.AnnData, dict]:
    """Neighbourhood NMF of a cell AnnData (:func:`napari_spatial_nmf.tl.nnmf`, ``filter_cells=True``
    by default); writes ``result.h5ad``, ``gene_signatures.csv``, ``top_genes.csv``,
    ``domains.csv``, ``domains.png`` (with the expert labels beside them when
    ``label_key`` is given; the domains take the colours of the labels they overlap most),
    ``signatures.png`` and ``summary.json`` (with ARI / NMI against ``obs[label_key]``).
    ``exclude``: label values whose cells are left out of the fit and the scores (e.g.
    osmFISH's "Excluded"; the summary counts them).

    Returns
    -------
    (AnnData, dict)
        The result (a copy) and the summary.
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    if label_key is not None and label_key not in adata.obs:
        raise KeyError(f"label_key {label_key!r} is not a column of obs ({list(adata.obs.columns)}).")
    exclude = [str(v) for v in ([exclude] if isinstance(exclude, str) else exclude)]
    excluded = {}
    if exclude:
        if label_key is None:
            raise ValueError("exclude names label values: give label_key (--label-key) too.")
        labels = adata.obs[label_key].astype(str)
        unknown = sorted(set(exclude) - set(labels))
        if unknown:
            raise ValueError(f"exclude {unknown}: no cell has that {label_key!r} (values: {sorted(set(labels))[:20]}).")
        excluded = {v: int((labels == v).sum()) for v in exclude}
        adata = adata[~labels.isin(exclude).to_numpy()]
    kwargs.setdefault("filter_cells", True)
    folder = OutputFolder(out, overwrite=overwrite, protect=protect)
    gen = tl.iter_nnmf(adata, n_components, random_state=random_state, copy=True, **kwargs)
    with folder:
        res = drain(gen, progress)
        rec = res.uns["nnmf"]
        summary = {"n_cells": res.n_obs, "n_fitted_cells": rec["n_fitted_cells"], "n_components": n_components,
                   "lengthscale": rec["lengthscale"], "spatial_unit": tl.spatial_unit(res),
                   "mean_neighbors": rec["mean_neighbors"], "gkl": rec["gkl"], "n_iter": rec["n_iter"],
                   "stop_reason": rec["stop_reason"], "filtered": rec["filtered"], "random_state": random_state}
        if excluded:
            summary["excluded"] = {"label_key": label_key, "cells": excluded}
        dom = res.obs["nnmf_domain"]
        if label_key is not None:
            ok = dom.notna().to_numpy()
            lab = res.obs[label_key].astype(str).to_numpy()[ok]
            summary["ari"] = float(adjusted_rand_score(lab, dom[ok]))
            summary["nmi"] = float(normalized_mutual_info_score(lab, dom[ok]))
        tl.nnmf_top_genes(res).to_csv(folder.path("top_genes.csv"), index=False)
        pd.DataFrame({"cell": res.obs_names, "domain": dom.astype(object)}).to_csv(folder.path("domains.csv"),
                                                                                   index=False)
        fig = pl._figure((7.2 if label_key else 3.8, 3.6), False)
        axes = fig.subplots(1, 2 if label_key else 1, squeeze=False).ravel()
        if label_key:
            pl.match_colors(res, "nnmf_domain", label_key)
        pl.domains(res, "nnmf_domain", ax=axes[0], title="NNMF domains (argmax)")
        if label_key:
            pl.domains(res, label_key, ax=axes[1], title=f"expert labels ({label_key})")
        fig.savefig(folder.path("domains.png"), dpi=pl.DPI, bbox_inches="tight")
        pl.cell_patterns(res, "nnmf", title=f"NNMF signatures (K = {n_components}), share of each cell",
                         save=folder.path("signatures.png"))
        _write_result(folder, res, "nnmf", "nnmf_signatures")
        summary = _summary(folder, summary)
    return res, summary


def transfer_colors(reference: ad.AnnData, labels_key: str, query: ad.AnnData, key: str,
                    palette: dict | None = None) -> dict:
    """One colour per label name on both sides of a transfer: the transferred labels
    ``query.obs[key]`` take the reference's colours (``palette`` {label: colour} when it
    names every label, e.g. the reference layer's legend; else scanpy's
    ``uns[f"{labels_key}_colors"]``, else the palette in the reference's category order), and the query's own
    ``obs[labels_key]``, if it has one, the same colour for the same name (names only it has
    get colours no reference label uses). Writes ``query.uns[f"{key}_colors"]`` (and
    ``query.uns[f"{labels_key}_colors"]``) and returns ``{label: colour}`` of them all.
    """
    import matplotlib

    def categories(col):
        return [str(c) for c in (col.cat.categories if isinstance(col.dtype, pd.CategoricalDtype)
                                 else sorted(col.dropna().astype(str).unique()))]

    cats = categories(reference.obs[labels_key])
    own = categories(query.obs[labels_key]) if labels_key in query.obs else []
    extra = [c for c in own if c not in cats]
    colors = ({c: str(palette[c]) for c in cats} if palette and all(c in palette for c in cats)
              else pl.category_colors(cats, reference, labels_key))
    spare = [matplotlib.colors.to_hex(c) for c in matplotlib.colormaps["tab20"].colors]
    spare = [c for c in spare if c not in set(colors.values())] or spare
    colors.update({c: spare[i % len(spare)] for i, c in enumerate(c for c in extra if c not in colors)})
    query.uns[f"{key}_colors"] = [colors[str(c)] for c in query.obs[key].cat.categories]
    if own:
        col = query.obs[labels_key]
        query.obs[labels_key] = pd.Categorical(col.astype(str).where(col.notna(), None), categories=own)
        query.uns[f"{labels_key}_colors"] = [colors[c] for c in own]
    return colors


def run_transfer(reference: ad.AnnData, query: ad.AnnData, labels_key: str, out, *, overwrite: bool = False,
                 protect=(), progress: ProgressCallback = None, **kwargs) -> tuple[ad.AnnData, dict]:
    """Carry ``reference.obs[labels_key]`` to the query (:func:`napari_spatial_nmf.tl.transfer_labels`,
    ``kwargs`` passed on) and write ``result.h5ad`` (a copy of the query with the new keys),
    ``labels.csv`` (cell, label, confidence), ``labels.png`` (beside the query's own
    ``obs[labels_key]`` when it has one, its colours matched) and ``summary.json`` (genes,
    labels and their counts, mean confidence, the depth thinning, warnings; ARI / NMI against the query's own
    ``obs[labels_key]`` when it has one).

    Returns
    -------
    (AnnData, dict)
        The result (a copy of the query) and the summary.
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    folder = OutputFolder(out, overwrite=overwrite, protect=protect)
    res = query.copy()
    gen = tl.iter_transfer_labels(reference, res, labels_key, **kwargs)  # checks the input at the call
    with folder:
        drain(gen, progress)
        key = kwargs.get("key_added") or f"{labels_key}_transferred"
        rec, lab = res.uns[key], res.obs[key]
        confidence = np.asarray(res.obsm[f"{key}_probability"]).max(axis=1)
        summary = {"n_reference_cells": reference.n_obs, "n_cells": res.n_obs, "labels_key": labels_key,
                   "key_added": key, "n_genes": rec["n_genes"],
                   "genes": list(rec["genes"]) if rec["n_genes"] <= 50 else "in result.h5ad, uns[key_added]",
                   "labels": {str(c): int(n) for c, n in lab.value_counts(sort=False).items()},
                   "mean_confidence": rec["mean_confidence"], "depth_kept": rec["depth_kept"],
                   "warnings": list(rec["warnings"]),
                   "random_state": rec["params"]["random_state"]}
        truth = labels_key in res.obs
        if truth:
            ok = res.obs[labels_key].notna().to_numpy()
            own = res.obs[labels_key].astype(str).to_numpy()[ok]
            summary["ari"] = float(adjusted_rand_score(own, lab.astype(str).to_numpy()[ok]))
            summary["nmi"] = float(normalized_mutual_info_score(own, lab.astype(str).to_numpy()[ok]))
        pd.DataFrame({"cell": res.obs_names, "label": lab.astype(object), "confidence": confidence}).to_csv(
            folder.path("labels.csv"), index=False)
        transfer_colors(reference, labels_key, res, key)
        fig = pl._figure((7.2 if truth else 3.8, 3.6), False)
        axes = fig.subplots(1, 2 if truth else 1, squeeze=False).ravel()
        pl.domains(res, key, ax=axes[0], title=f"{labels_key}, transferred")
        if truth:
            pl.domains(res, labels_key, ax=axes[1], title=f"the query's own {labels_key}")
        fig.savefig(folder.path("labels.png"), dpi=pl.DPI, bbox_inches="tight")
        res.write_h5ad(folder.path("result.h5ad"), compression="gzip")
        summary = _summary(folder, summary)
    return res, summary


def program_table(adata: ad.AnnData, key: str = "integration", n_top: int = 20) -> pd.DataFrame:
    """Top genes of each gene program with INSPIRE's loading and NNMF's specificity score.

    Columns ``factor, rank, gene, loading`` (the program's share of the gene) and ``score``
    (:func:`napari_spatial_nmf.core.nnmf.top_features`: high when the gene loads on this
    program and not the others); genes ranked by the score.
    """
    from .core.nnmf import top_features
    from .tl._scores import programs_of

    P = programs_of(adata, key)
    S = top_features(P)
    names = adata.uns[key].get("factor_names", [f"F{i + 1}" for i in range(P.shape[0])])
    rows = []
    for k, name in enumerate(names):
        for r, g in enumerate(np.argsort(-S[k], kind="stable")[:n_top]):
            rows.append((name, r + 1, str(adata.var_names[g]), float(P[k, g]), float(S[k, g])))
    return pd.DataFrame(rows, columns=["factor", "rank", "gene", "loading", "score"])


def run_integration(sections, n_factors: int | None, out, *, label_key: str | None = None,
                    n_domains: int | None = None, domains: dict | None = None, reconstruct: bool = False,
                    spacing=10.0, um_per_unit: float | None = None, registration_refine: str = "auto",
                    k_range=None, store=None,
                    matching: str = "hungarian", backend: str = "local", scheduler=None,
                    overwrite: bool = False, protect=(), progress: ProgressCallback = None,
                    **kwargs) -> tuple[ad.AnnData, dict]:
    """Integrate sections (:func:`napari_spatial_nmf.tl.integrate`) and write the results.

    Files: ``result.h5ad`` (all sections, factors, programs, γ), ``programs.csv`` (top
    genes per factor), ``cells.csv`` (section, factor, domain per cell), ``factors.png``
    (each factor over the sections side by side), ``losses.csv`` (INSPIRE), with labels
    ``scores.csv`` (per-section ARI / NMI / ASW) and ``domains.png``, with
    ``reconstruct=True`` ``registration.csv`` and ``cells_3d.csv``, and ``summary.json``.
    ``registration_refine`` is :func:`napari_spatial_nmf.tl.reconstruct_3d`'s ``refine``.

    ``domains`` are keyword arguments of :func:`napari_spatial_nmf.tl.cluster_domains`
    (neighbours, scale, refine). The summary carries the label-free diagnostics (factor usage,
    section-specific factors, mixing, shared domains) and their warnings, each section's
    neighbourhood graph, and with ``reconstruct`` each registration's quality.

    With ``k_range`` instead of ``n_factors``, K is chosen by stability
    (:func:`napari_spatial_nmf.tl.iter_integrate_stability`: ``n_restarts`` fits per K, at least
    2; ``store``, ``matching``, ``backend``, ``scheduler`` as there), and ``stability.csv`` and
    ``instability.png`` are written too.

    Every option is checked before training starts: the label column in every section,
    ``n_domains``, and with ``reconstruct`` the coordinates' unit, the spacing and the refinement.

    Returns
    -------
    (AnnData, dict)
        The integrated AnnData and the summary.
    """
    from .core._validation import check_int
    from .tl._integrate import section_inputs
    from .tl._reconstruct import _refine_choice, check_stacking

    if (n_factors is None) == (k_range is None):
        raise ValueError("Give either n_factors (K) or k_range (K chosen by stability), not both.")
    if store is not None:
        protect = [*protect, (store, "keeps its fits in (the results store)")]
    folder = OutputFolder(out, overwrite=overwrite, protect=protect)
    adatas, names = section_inputs(sections, kwargs.get("section_key"), kwargs.get("section_names"))
    if label_key is not None:
        for a, n in zip(adatas, names):
            if label_key not in a.obs:
                raise KeyError(f"label_key {label_key!r} is not a column of section {n!r}'s obs (it has "
                               f"{list(a.obs.columns)}).")
    if n_domains is not None:
        check_int(n_domains, "n_domains", minimum=2)
    if reconstruct:
        key = kwargs.get("spatial_key", "spatial")
        C = adatas[0].obsm[key] if key in adatas[0].obsm else np.zeros((0, 2))
        check_stacking(len(adatas), np.shape(C)[1], adatas[0].uns.get("spatial_unit"), spacing, um_per_unit)
        _refine_choice(registration_refine)
    if k_range is None:
        gen = tl.iter_integrate(sections, n_factors, **kwargs)
    else:
        kwargs.setdefault("n_restarts", 5)
        gen = tl.iter_integrate_stability(sections, k_range, kwargs.pop("n_restarts"), store=store,
                                          matching=matching, backend=backend, scheduler=scheduler, **kwargs)
    with folder:
        res = drain(gen, progress)
        rec = res.uns["integration"]
        n_factors = int(rec["params"]["n_factors"])
        summary = {"method": rec["method"], "n_cells": res.n_obs, "n_genes": res.n_vars,
                   "n_shared_genes": rec["qc"]["n_shared_genes"], "sections": list(rec["sections"]),
                   "n_factors": n_factors, "qc": rec["qc"], "random_state": rec["params"]["random_state"],
                   "graph": rec["graph"].round(4).to_dict(orient="records")}
        if "restarts" in rec:
            summary["restarts"] = {"n": rec["restarts"]["n"], "instability": round(rec["restarts"]["instability"], 4)}
        if "integration_stability" in res.uns:
            sweep = res.uns["integration_stability"]
            sweep["table"].to_csv(folder.path("stability.csv"), index=False)
            pl.instability(sweep["table"], save=folder.path("instability.png"),
                           title=f"{rec['method']}: instability of {sweep['n_restarts']} restarts per K "
                                 f"({sweep['matching']})")
            summary["stability"] = {"best_k": int(sweep["best_k"]), "note": sweep["note"],
                                    "store": None if store is None else str(store),
                                    "table": sweep["table"].round(4).to_dict(orient="records")}
        basis = "latent" if "X_integration_latent" in res.obsm else "factors"
        if label_key is not None or n_domains is not None:
            n = n_domains or res.obs[label_key].nunique()
            tl.cluster_domains(res, n, **(domains or {}))
            tl.diagnose(res, domain_key="integration_domain", warn=False)
        if label_key is not None:
            scores = tl.integration_scores(res, label_key, domain_key="integration_domain", basis=basis)
            scores.to_csv(folder.path("scores.csv"), index=False)
            summary["scores"] = scores.set_index("section")[["ari", "nmi"]].round(4).to_dict(orient="index")
            fig = pl._figure((3.2 * len(rec["sections"]), 6.6), False)
            axes = fig.subplots(2, len(rec["sections"]), squeeze=False)
            pl.match_colors(res, "integration_domain", label_key)
            for j, s in enumerate(rec["sections"]):
                sub = res[(res.obs["section"] == s).to_numpy()]
                pl.domains(sub, "integration_domain", ax=axes[0, j], title=f"{s}: domains ({basis})")
                pl.domains(sub, label_key, ax=axes[1, j], title=f"{s}: {label_key}")
            fig.savefig(folder.path("domains.png"), dpi=pl.DPI, bbox_inches="tight")
        diag = rec["diagnostics"]
        summary["diagnostics"] = {"mixing": round(float(diag["mixing"]), 4),
                                  "section_specific": diag["section_specific"],
                                  "shared_domains": diag.get("shared_domains"), "warnings": diag["warnings"]}
        diag["factor_usage"].to_csv(folder.path("factor_usage.csv"))
        if "panels" in rec:
            rec["panels"].to_csv(folder.path("panels.csv"))
        summary["factor_scores"] = tl.factor_scores(res)
        program_table(res).to_csv(folder.path("programs.csv"), index=False)
        cells = pd.DataFrame({"section": res.obs["section"].astype(str), "factor": res.obs["integration_factor"]},
                             index=res.obs_names)
        if "integration_domain" in res.obs:
            cells["domain"] = res.obs["integration_domain"].astype(str)
        cells.to_csv(folder.path("cells.csv"))
        if "losses" in rec:
            rec["losses"].to_csv(folder.path("losses.csv"), index=False)
        pl.cell_patterns(res, "integration", basis="spatial_layout", names=list(rec["factor_names"]), ncols=2,
                         title=f"{rec['method']}: spatial factors (share of each cell), sections side by side",
                         save=folder.path("factors.png"))
        if reconstruct:
            table = tl.reconstruct_3d(res, spacing=spacing, um_per_unit=um_per_unit, refine=registration_refine)
            table.to_csv(folder.path("registration.csv"), index=False)
            summary.setdefault("diagnostics", {})["registration_warnings"] = \
                res.uns["integration_registration"].get("warnings", [])
            pd.DataFrame(res.obsm["spatial_3d"], index=res.obs_names, columns=["x_um", "y_um", "z_um"]).assign(
                section=res.obs["section"].astype(str).to_numpy()).to_csv(folder.path("cells_3d.csv"))
            summary["registration"] = table.round(3).to_dict(orient="records")
        res.write_h5ad(folder.path("result.h5ad"), compression="gzip")
        summary = _summary(folder, summary)
    return res, summary


def estimate_osnmf(n_voxels: int, n_genes: int, k_range, n_replicates: int) -> dict:
    """Memory (bytes) and time (s) of the osNMF pipeline on this many voxels and genes, before it starts.

    Memory: the in-mask matrix and its imputed copy (float32) plus the sweep's replicate batch
    (:func:`napari_spatial_nmf.core.stability.sweep_memory`). Time: the staNMF sweep dominates;
    it is scaled from ``benchmarks/stability_allen_scale.py`` (SECONDS_PER_FIT_UNIT seconds per
    voxel x gene x K and replicate, measured at Allen scale), so treat it as the order of magnitude.
    """
    from .core.stability import sweep_memory

    ks = list(k_range)
    matrix = 2 * n_voxels * n_genes * 4
    sweep = sweep_memory((n_voxels, n_genes), ks, n_replicates, 25)
    seconds = SECONDS_PER_FIT_UNIT * n_voxels * n_genes * sum(ks) * n_replicates
    return {"memory_bytes": int(matrix + sweep), "seconds": float(seconds), "fits": len(ks) * n_replicates}


# 2.66 s per replicate at K = 11 on 55,954 voxels x 4,345 genes (stability_allen_scale.py, docs/benchmarks.md)
SECONDS_PER_FIT_UNIT = 2.66 / (55_954 * 4_345 * 11)


def run_osnmf(stack: Stack, atlas: Atlas, k_range, n_replicates: int, out, *, store=None, random_state: int = 0,
              min_voxels: int = 50, overwrite: bool = False, protect=(),
              progress: ProgressCallback = None) -> tuple[ad.AnnData, dict]:
    """The osNMF pipeline at the paper's scale (Cahill et al. 2024 PNAS): mask, impute, staNMF over
    ``k_range``, patterns at the most stable K, region correlation and combinations.

    In the brain (atlas label > 0): Allen's missing voxels imputed from the 6 nearest measured
    ones (osNMF's k-NN), the staNMF sweep with bootstrap replicates of the genes (osNMF's
    scheme: Hungarian matching, cosine), resumable from ``store``; then the final NMF at the
    lowest instability and every read-out of :func:`run_volumes` (gene-by-region correlations
    are left out above 500 genes). Writes ``stability.csv``, ``instability.png`` and the
    files of :func:`run_volumes`.

    Parameters
    ----------
    stack : Stack
        Allen energy grids (e.g. :func:`napari_spatial_nmf.io.fetch_allen_all`).
    atlas : Atlas
        On the same grid, with an ontology.
    k_range : sequence of int
        The K of the sweep.
    n_replicates : int
        Bootstrap replicates per K (the paper: 100).
    out, store, random_state, min_voxels, overwrite, protect, progress
        As :func:`run_stability` and :func:`run_volumes`.

    Returns
    -------
    (AnnData, dict)
        The result and the summary (with the memory and time estimated before the start).

    Raises
    ------
    ValueError
        Grids and atlas on different grids, an atlas without ontology, and the checks of the tools.
    """
    if atlas is None or atlas.ontology is None:
        raise ValueError("The osNMF pipeline needs an atlas with its ontology (e.g. the shipped CCFv3 200 µm grid).")
    if atlas.annotation.shape != stack.data.shape[1:]:
        raise ValueError(f"The grids are {stack.data.shape[1:]} but the atlas is {atlas.annotation.shape}: use an "
                         "atlas on the same grid.")
    folder = OutputFolder(out, overwrite=overwrite,
                          protect=[*protect, (store, "keeps its fits in (the results store)")])
    adata = stack.to_anndata(mask=atlas.mask)
    estimate = estimate_osnmf(adata.n_obs, adata.n_vars, k_range, n_replicates)
    with folder:
        layer = None
        if np.isnan(adata.X).any():
            drain(tl.iter_impute_knn(adata), progress)
            layer = "imputed"
        res = drain(tl.iter_stability(adata, k_range, n_replicates, layer=layer, random_state=random_state,
                                      store=store, copy=True), progress)
        rec = res.uns["stability"]
        table = rec["table"]
        table.to_csv(folder.path("stability.csv"), index=False)
        pl.instability(table, title=f"staNMF, N = {n_replicates} (genes resampled)",
                       save=folder.path("instability.png"))
        best = int(rec["best_k"])
        summary = {"n_voxels": res.n_obs, "n_genes": res.n_vars, "best_k": best, "n_replicates": n_replicates,
                   "instability": {int(k): float(v) for k, v in zip(table["k"], table["instability"])},
                   "edge_warning": rec.get("edge_warning"), "estimate": estimate, "random_state": random_state,
                   "store": None if store is None else str(store)}
        _volume_readouts(res, atlas, folder, summary, key="nmf", layer=layer, min_voxels=min_voxels,
                         title=f"osNMF principal patterns at the most stable K = {best}", progress=progress,
                         gene_regions=res.n_vars <= 500)
        summary = _summary(folder, summary)
    return res, summary
