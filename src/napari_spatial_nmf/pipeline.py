"""The main job, end to end and headless: data in, principal patterns and readouts out.

Used by the command line (``napari-spatial-nmf run`` / ``demo``); every step is a public
function of :mod:`napari_spatial_nmf.tl`, so scripts can do the same thing piecewise.
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from . import tl
from .core._progress import drain
from .io import Atlas, Stack
from .plotting import plot_cell_patterns, plot_patterns


def _coefficients_table(adata: ad.AnnData, key: str) -> pd.DataFrame:
    names = list(adata.uns[key]["pattern_names"])
    return pd.DataFrame(np.asarray(adata.varm[f"{key}_coefficients"]), index=adata.var_names, columns=names)


def _write(adata: ad.AnnData, out: Path, key: str) -> dict[str, str]:
    files = {"result": str(out / "result.h5ad"), "coefficients": str(out / "gene_coefficients.csv")}
    _coefficients_table(adata, key).to_csv(files["coefficients"])
    adata.write_h5ad(files["result"], compression="gzip")
    return files


def run_volumes(stack: Stack, n_components: int, out, *, atlas: Atlas | None = None,
                random_state: int = 0, missing: str = "impute", max_iter: int = 200,
                min_voxels: int = 50, key: str = "nmf") -> tuple[ad.AnnData, dict]:
    """NMF of a gene stack (inside the atlas mask), region correlation, files in ``out``.

    Parameters
    ----------
    stack : Stack
        Gene volumes or images (NaN = missing).
    n_components : int
        K.
    out : str or Path
        Output folder (created): ``result.h5ad`` (patterns in ``obsm["X_nmf"]``, gene
        coefficients in ``varm``, parameters in ``uns``), ``gene_coefficients.csv``,
        ``region_correlation.csv`` and ``gene_region_correlation.csv`` (with an atlas),
        ``patterns.png``, ``summary.json``.
    atlas : Atlas, optional
        Restricts the analysis to the brain (annotation > 0) and adds region readouts.
    random_state : int
    missing : {"impute", "raise", "zero"}
        Missing voxels: k-NN imputation (osNMF), an error, or zero.
    max_iter, min_voxels, key : see :func:`napari_spatial_nmf.tl.nmf` and
        :func:`napari_spatial_nmf.tl.region_correlation`.

    Returns
    -------
    (AnnData, dict)
        The result and a summary (file paths, errors, best structures).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if atlas is not None and atlas.annotation.shape != stack.data.shape[1:]:
        raise ValueError(f"The volumes have grid shape {stack.data.shape[1:]} but the atlas has "
                         f"{atlas.annotation.shape}: they must be on the same grid.")
    adata = stack.to_anndata(mask=atlas.mask if atlas is not None else None)
    layer = None
    if missing == "impute":
        tl.check_nmf_input(adata, n_components, missing="zero")
        if np.isnan(adata.X).any():
            tl.imputation_holdout(adata, seed=random_state).to_csv(out / "imputation_holdout.csv", index=False)
            tl.impute_knn(adata)
            layer = "imputed"
        missing = "raise"
    tl.nmf(adata, n_components, layer=layer, missing=missing, random_state=random_state,
           max_iter=max_iter, key_added=key)
    summary = {"n_obs": adata.n_obs, "n_genes": adata.n_vars, "n_components": n_components,
               "relative_error": adata.uns[key]["relative_error"], "n_iter": adata.uns[key]["n_iter"],
               "random_state": random_state}
    regions = None
    if atlas is not None and atlas.ontology is not None:
        regions = tl.region_correlation(adata, atlas.annotation, atlas.ontology, key=key, min_voxels=min_voxels)
        regions.to_csv(out / "region_correlation.csv", index=False)
        genes = tl.region_correlation(adata, atlas.annotation, atlas.ontology, genes=list(adata.var_names),
                                      min_voxels=min_voxels)
        genes.to_csv(out / "gene_region_correlation.csv", index=False)
        summary["best_structure"] = {
            p: {"acronym": g.iloc[0]["acronym"], "name": g.iloc[0]["name"], "r": float(g.iloc[0]["r"])}
            for p, g in regions.groupby("pattern", sort=False)}
        summary["best_structure_per_gene"] = {
            p: {"acronym": g.iloc[0]["acronym"], "name": g.iloc[0]["name"], "r": float(g.iloc[0]["r"])}
            for p, g in genes.groupby("pattern", sort=False)}
    summary.update(_osnmf_suite(adata, out, key=key, layer=layer, atlas=atlas, random_state=random_state))
    plot_patterns(adata, out / "patterns.png", key=key,
                  annotation=atlas.annotation if atlas is not None else None,
                  ontology=atlas.ontology if atlas is not None else None, region_table=regions,
                  title=f"NMF principal patterns (K={n_components})")
    summary["files"] = _write(adata, out, key)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return adata, summary


def _osnmf_suite(adata: ad.AnnData, out: Path, *, key: str, layer, atlas, random_state: int) -> dict:
    """The osNMF read-outs of a volume result, written next to it (issue: analysis suite)."""
    with_atlas = atlas is not None and atlas.ontology is not None
    res = drain(tl.iter_osnmf_suite(adata, atlas.annotation if with_atlas else None,
                                    atlas.ontology if with_atlas else None, key=key, layer=layer))
    return write_osnmf_suite(res, out)


def write_osnmf_suite(res: dict, out) -> dict:
    """Write the results of :func:`napari_spatial_nmf.tl.iter_osnmf_suite` to ``out``.

    Files: ``marker_genes.csv``, ``reconstruction_accuracy.csv``, ``morans_i.csv``,
    ``networks/<pattern>.graphml`` and ``networks/edges.csv``; with an atlas,
    ``region_combinations.csv``, ``best_region_combinations.csv``, ``structure_scores.csv``
    (pattern × structure) and ``structure_bubbles.png``; always ``osnmf_parameters.json``
    (parameters, versions, time). Returns a JSON-ready summary.
    """
    import networkx as nx

    from .core.atlas_stats import best_combinations
    from .plotting import plot_structure_bubbles, structure_score_matrix

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {}
    res["marker_genes"].to_csv(out / "marker_genes.csv", index=False)
    rec = res["reconstruction_accuracy"]
    rec.to_csv(out / "reconstruction_accuracy.csv")
    summary["reconstruction_r_median"] = {c: float(rec[c].median()) for c in rec.columns}
    mi = res["morans_i"]
    mi.to_csv(out / "morans_i.csv", index=False)
    summary["morans_i_mean"] = {c: float(mi[c].mean()) for c in mi.columns if c != "pattern"}
    if res["networks"]:
        net_dir = out / "networks"
        net_dir.mkdir(exist_ok=True)
        edges = []
        for name, G in res["networks"].items():
            nx.write_graphml(G, net_dir / f"{name}.graphml")
            edges += [(name, a, b, d["weight"]) for a, b, d in G.edges(data=True)]
        pd.DataFrame(edges, columns=["pattern", "gene_a", "gene_b", "r"]).to_csv(net_dir / "edges.csv", index=False)
    table = res["region_combinations"]
    if table is not None:
        table.to_csv(out / "region_combinations.csv", index=False)
        best = best_combinations(table)
        best.to_csv(out / "best_region_combinations.csv", index=False)
        score = res["params"]["params"]["score"]
        order = res["structure_order"]
        structure_score_matrix(table, max_columns=10**6, order=order).to_csv(out / "structure_scores.csv")
        plot_structure_bubbles(table, out / "structure_bubbles.png", score=score,
                               title="principal pattern × structure", order=order)
        summary["region_combinations"] = {
            "counts": {k: int(res["counts"][k]) for k in ("n_structures", "n_pairs", "n_triples")},
            "best": {r.pattern: {"structures": r.structures, "r": float(r.score)} for r in best.itertuples()}}
    (out / "osnmf_parameters.json").write_text(json.dumps(res["params"], indent=2, default=str))
    return summary


def run_cells(adata: ad.AnnData, n_components: int, out, *, random_state: int = 0,
              max_iter: int = 200, key: str = "nmf") -> tuple[ad.AnnData, dict]:
    """NMF of a cell point cloud; writes ``result.h5ad``, ``gene_coefficients.csv``,
    ``cell_weights.csv``, ``patterns.png`` and ``summary.json`` to ``out``. The input
    AnnData is not changed (the result is a copy)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    res = tl.nmf(adata, n_components, random_state=random_state, max_iter=max_iter, key_added=key, copy=True)
    names = list(res.uns[key]["pattern_names"])
    pd.DataFrame(np.asarray(res.obsm[f"X_{key}"]), index=res.obs_names, columns=names).to_csv(out / "cell_weights.csv")
    plot_cell_patterns(res, out / "patterns.png", key=key, title=f"NMF cell weights (K={n_components})")
    summary = {"n_obs": res.n_obs, "n_genes": res.n_vars, "n_components": n_components,
               "relative_error": res.uns[key]["relative_error"], "n_iter": res.uns[key]["n_iter"],
               "random_state": random_state}
    summary["files"] = _write(res, out, key)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return res, summary


def run_stability(adata: ad.AnnData, k_range, n_replicates: int, out, *, store=None, random_state: int = 0,
                  resample: str = "genes", matching: str = "hungarian", similarity: str = "cosine",
                  backend: str = "local", scheduler=None, batch_size: int = 25, layer: str | None = None,
                  progress=None) -> tuple[ad.AnnData, dict]:
    """staNMF sweep + final model at the chosen K; writes ``stability.csv``,
    ``instability.png``, ``result.h5ad``, ``gene_coefficients.csv`` and ``summary.json``.

    ``store`` (default ``out/store``) keeps every finished fit: running the same command
    again resumes where it stopped, with identical numbers.
    """
    from .plotting import plot_instability

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "store" if store is None else store
    gen = tl.iter_stability(adata, k_range, n_replicates, layer=layer, resample=resample, matching=matching,
                            similarity=similarity, random_state=random_state, batch_size=batch_size,
                            store=store, backend=backend, scheduler=scheduler, copy=True)
    res = drain(gen, progress)
    rec = res.uns["stability"]
    table = rec["table"]
    table.to_csv(out / "stability.csv", index=False)
    plot_instability(table, out / "instability.png", title=f"staNMF, N = {n_replicates} ({resample} resampled)")
    summary = {"best_k": int(rec["best_k"]), "n_replicates": n_replicates, "k_range": list(map(int, table["k"])),
               "instability": {int(k): float(v) for k, v in zip(table["k"], table["instability"])},
               "relative_error_final": res.uns["nmf"]["relative_error"], "random_state": random_state,
               "store": str(store)}
    summary["files"] = _write(res, out, "nmf")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return res, summary


def run_nnmf(adata: ad.AnnData, n_components: int, out, *, label_key: str | None = None, seed: int = 0,
             **kwargs) -> tuple[ad.AnnData, dict]:
    """Neighbourhood NMF of a cell AnnData (:func:`napari_spatial_nmf.tl.nnmf`, ``filter_cells=True``),
    files in ``out``: ``result.h5ad``, ``top_genes.csv``, ``domains.csv`` and ``summary.json``
    (with ARI / NMI against ``obs[label_key]`` when given)."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kwargs.setdefault("filter_cells", True)
    res = tl.nnmf(adata, n_components, seed=seed, copy=True, **kwargs)
    rec = res.uns["nnmf"]
    summary = {"n_cells": res.n_obs, "n_fitted_cells": rec["n_fitted_cells"], "n_components": n_components,
               "lengthscale": rec["lengthscale"], "mean_neighbors": rec["mean_neighbors"], "gkl": rec["gkl"],
               "n_iter": rec["n_iter"], "filtered": rec["filtered"], "seed": seed}
    dom = res.obs["nnmf_domain"]
    if label_key is not None:
        ok = dom.notna().to_numpy()
        lab = res.obs[label_key].astype(str).to_numpy()[ok]
        summary["ari"] = float(adjusted_rand_score(lab, dom[ok]))
        summary["nmi"] = float(normalized_mutual_info_score(lab, dom[ok]))
    tl.nnmf_top_genes(res).to_csv(out / "top_genes.csv", index=False)
    pd.DataFrame({"cell": res.obs_names, "domain": dom.astype(object)}).to_csv(out / "domains.csv", index=False)
    res.write_h5ad(out / "result.h5ad")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return res, summary
