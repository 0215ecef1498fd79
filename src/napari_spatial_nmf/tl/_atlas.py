"""Atlas read-outs of a volume NMF result (osNMF suite; Cahill et al. 2024 PNAS).

One rule for where read-outs land: ``uns[f"{key}_{tool}"]`` holds the record (method,
params, versions, time) and the tool's table as a DataFrame under ``"table"``;
per-gene values also go to ``var``. Every tool here also returns its table.
:func:`iter_osnmf_suite` computes all read-outs without writing anything; :func:`store_osnmf_suite`
stores them (the GUI does that on the main thread, so a cancelled run leaves no key).
"""

from __future__ import annotations

from collections.abc import Generator

import anndata as ad
import numpy as np
import pandas as pd

from ..core import atlas_stats as _A
from ..core import grid as _grid
from ..core._progress import Progress
from ..core.ontology import Ontology
from ._common import blocking, check_adata, dense_matrix, pattern_names, store_result, tool

SCORES = ("pearson", "dice")
NETWORK_RULES = ("paper", "reference")


def volume_result(adata: ad.AnnData, key: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(W (n_obs, K), H (K, n_genes), pattern names) of the NMF result ``key``.

    Raises
    ------
    KeyError
        No NMF result under ``key``.
    """
    if f"X_{key}" not in check_adata(adata).obsm or f"{key}_coefficients" not in adata.varm:
        raise KeyError(f"No NMF result {key!r} in the AnnData: run tl.nmf(adata, K, key_added={key!r}) first.")
    W = np.asarray(adata.obsm[f"X_{key}"], dtype=np.float64)
    H = np.asarray(adata.varm[f"{key}_coefficients"], dtype=np.float64).T
    names = list(adata.uns[key]["pattern_names"]) if key in adata.uns else pattern_names(W.shape[1])
    return W, H, names


def annotation_on_grid(adata: ad.AnnData, annotation) -> np.ndarray:
    """The annotation as an array, checked to be on the AnnData's grid (ValueError if not)."""
    ann = np.asarray(annotation)
    grid = _grid.grid_of(adata)
    if ann.shape != tuple(grid.shape):
        raise ValueError(f"The annotation has shape {ann.shape} but the patterns are on a {tuple(grid.shape)} grid: "
                         "use the annotation of the same grid (resample one of them).")
    return ann


def _region_combinations(adata, W, names, labels, ontology, *, level, max_size, score, n_top, all_singles=False):
    """The exhaustive search and its record (nothing stored)."""
    table, counts = _A.region_combinations(_grid.to_volume(adata, W.astype(np.float32)), labels, ontology,
                                           names=names, max_size=max_size, score=score, n_top=n_top,
                                           all_singles=all_singles)
    params = {"level": str(level), "max_size": max_size, "score": score, "n_top": n_top}
    return table, counts, params


def pca_baseline(adata: ad.AnnData, n_components: int, *, layer: str | None = None) -> tuple:
    """PCA at the same K as an NMF result, the osNMF comparison (genes as samples; NaN as 0).

    Returns ``(patterns (n_obs, K), loadings (K, n_genes), mean (n_obs,))``
    (:func:`napari_spatial_nmf.core.atlas_stats.pca_patterns`); pass it as ``pca=`` to
    :func:`morans_i` and :func:`reconstruction_accuracy` to fit it once.
    """
    return _A.pca_patterns(np.nan_to_num(dense_matrix(adata, layer).astype(np.float64)), n_components)


def _morans_i(adata, W, names, threshold, pca) -> pd.DataFrame:
    grid = _grid.grid_of(adata)
    mask = np.zeros(int(np.prod(grid.shape)), bool)
    mask[grid.voxel] = True
    wts = _A.rook_weights(mask.reshape(grid.shape))
    perm = np.argsort(grid.voxel)  # rook_weights numbers the mask voxels in C order
    out = pd.DataFrame({"pattern": names,
                        "morans_i": _A.morans_i(_A.hard_map_indicators(W[perm], threshold).astype(float), wts)})
    if pca is not None:
        out["pca_morans_i"] = _A.morans_i(_A.hard_map_indicators(pca[0][perm], 0.0).astype(float), wts)
    return out


def morans_i(adata: ad.AnnData, *, key: str = "nmf", layer: str | None = None, compare_pca: bool = True,
             threshold: float = 0.0, pca: tuple | None = None) -> pd.DataFrame:
    """Moran's I of each principal pattern's hard map, rook adjacency in the mask (osNMF).

    Each voxel goes to its largest pattern if that exceeds ``threshold``; Moran's I of each
    pattern's 0/1 map with sparse rook (face-neighbour) weights among the mask voxels
    (:func:`napari_spatial_nmf.core.atlas_stats.morans_i`; no dense voxels^2 matrix, no
    downsampling). With K = 2 the two hard maps are complements of each other, so their
    Moran's I are equal. With ``compare_pca``, the same for PCA patterns at the same K
    (hard map of components > 0, as osNMF's ``runManyMoranI``) from the same data.

    Parameters
    ----------
    adata : anndata.AnnData
        With a volume NMF result ``key``.
    key : str
        The NMF result.
    layer : str, optional
        Data for the PCA baseline.
    compare_pca : bool
        Add ``pca_morans_i``.
    threshold : float
        A voxel joins its largest pattern only above it.
    pca : tuple, optional
        :func:`pca_baseline`'s output, to fit PCA once.

    Returns
    -------
    pandas.DataFrame
        ``pattern, morans_i`` (and ``pca_morans_i``), also in ``uns[f"{key}_morans_i"]``;
        the mean is the paper's summary (osNMF tutorial, K=11: 0.577 at half resolution).
    """
    W, _, names = volume_result(adata, key)
    if compare_pca and pca is None:
        pca = pca_baseline(adata, W.shape[1], layer=layer)
    out = _morans_i(adata, W, names, threshold, pca if compare_pca else None)
    store_result(adata, f"{key}_morans_i", "morans_i", {"key": key, "threshold": threshold,
                                                        "compare_pca": compare_pca}, record={"table": out})
    return out


def _reconstruction_accuracy(adata, X, W, H, key, pca) -> pd.DataFrame:
    out = pd.DataFrame({f"{key}_reconstruction_r": _A.reconstruction_accuracy(X, W @ H)}, index=adata.var_names)
    if pca is not None:
        pcs, loadings, mean = pca
        # genes are the PCA samples: gene j over the voxels ~ mean + pcs @ loadings[:, j]
        out["pca_reconstruction_r"] = _A.reconstruction_accuracy(X, mean[:, None] + pcs @ loadings)
    return out


def reconstruction_accuracy(adata: ad.AnnData, *, key: str = "nmf", layer: str | None = None,
                            compare_pca: bool = True, pca: tuple | None = None) -> pd.DataFrame:
    """Pearson r per gene between the data and its reconstruction W H (osNMF
    ``geneReconstructionAcccuracy``), and PCA at the same K for comparison.

    Parameters
    ----------
    adata : anndata.AnnData
        With a volume NMF result ``key``.
    key : str
        The NMF result.
    layer : str, optional
        The data the NMF was fitted on (e.g. ``"imputed"``).
    compare_pca : bool
        Add ``pca_reconstruction_r``.
    pca : tuple, optional
        :func:`pca_baseline`'s output.

    Returns
    -------
    pandas.DataFrame
        Indexed by gene; also written to ``var`` (``f"{key}_reconstruction_r"``,
        ``"pca_reconstruction_r"``) and ``uns[f"{key}_reconstruction_accuracy"]``.
    """
    W, H, _ = volume_result(adata, key)
    X = np.nan_to_num(dense_matrix(adata, layer).astype(np.float64))
    if compare_pca and pca is None:
        pca = pca_baseline(adata, W.shape[1], layer=layer)
    out = _reconstruction_accuracy(adata, X, W, H, key, pca if compare_pca else None)
    store_result(adata, f"{key}_reconstruction_accuracy", "reconstruction_accuracy",
                 {"key": key, "layer": layer, "compare_pca": compare_pca}, record={"table": out},
                 var={c: out[c].to_numpy() for c in out.columns})
    return out


def marker_genes(adata: ad.AnnData, *, key: str = "nmf", n_top: int = 10) -> pd.DataFrame:
    """OsNMF marker genes per pattern: genes whose largest coefficient is the pattern, ranked
    by the importance a_kj / sum_k a_kj.

    Parameters
    ----------
    adata : anndata.AnnData
        With an NMF result ``key``.
    key : str
        The NMF result.
    n_top : int
        Genes per pattern at most.

    Returns
    -------
    pandas.DataFrame
        Columns ``pattern, rank, gene, importance, coefficient``, also in
        ``uns[f"{key}_marker_genes"]``.
    """
    _, H, names = volume_result(adata, key)
    df = _A.marker_genes(H, list(adata.var_names), names, n_top=n_top)
    store_result(adata, f"{key}_marker_genes", "marker_genes", {"key": key, "n_top": n_top}, record={"table": df})
    return df


def _networks(adata, W, H, names, n_genes, rule) -> dict:
    return {name: _A.coexpression_network(W, H, list(adata.var_names), k, n_genes=n_genes, rule=rule)
            for k, name in enumerate(names)}


def network_edges(networks: dict) -> pd.DataFrame:
    """All networks' edges as one table: ``pattern, gene_a, gene_b, r``."""
    rows = [(name, a, b, d["weight"]) for name, G in networks.items() for a, b, d in G.edges(data=True)]
    return pd.DataFrame(rows, columns=["pattern", "gene_a", "gene_b", "r"])


def coexpression_networks(adata: ad.AnnData, *, key: str = "nmf", n_genes: int = 20, rule: str = "paper") -> dict:
    """Spatial gene co-expression network per pattern (networkx.Graph), keyed by pattern name.

    Nodes: the pattern's ``n_genes`` most important genes; edges: the top 5% of pairwise
    Pearson correlations of their reconstructed volumes (``rule="paper"``) or all r > 0
    (``rule="reference"``, the osNMF tutorial code). See
    :func:`napari_spatial_nmf.core.atlas_stats.coexpression_network`.

    Parameters
    ----------
    adata : anndata.AnnData
        With an NMF result ``key``.
    key : str
        The NMF result.
    n_genes : int
        Genes per network (at most the number of genes; at least 3).
    rule : {"paper", "reference"}
        Edge rule.

    Returns
    -------
    dict
        {pattern name: networkx.Graph}; the edges also go to
        ``uns[f"{key}_coexpression"]["table"]``.

    Raises
    ------
    ValueError
        Fewer than 3 genes, an unknown rule.
    """
    W, H, names = volume_result(adata, key)
    if rule not in NETWORK_RULES:
        raise ValueError(f"rule must be one of {NETWORK_RULES}; got {rule!r}.")
    n_genes = min(n_genes, adata.n_vars)
    if n_genes < 3:
        raise ValueError(f"A co-expression network needs at least 3 genes; the data have {adata.n_vars}.")
    nets = _networks(adata, W, H, names, n_genes, rule)
    store_result(adata, f"{key}_coexpression", "coexpression_networks", {"key": key, "n_genes": n_genes, "rule": rule},
                 record={"table": network_edges(nets)})
    return nets


def imputation_holdout(adata: ad.AnnData, *, fraction: float = 0.05, n_neighbors: int = 6, random_state: int = 0,
                       layer: str | None = None) -> pd.DataFrame:
    """Hold-out check of :func:`impute_knn` per gene (the osNMF paper's check).

    Hides ``fraction`` of each gene's measured voxels, imputes them (k-NN, k = 6), and
    reports the mean absolute error and Pearson r.

    Parameters
    ----------
    adata : anndata.AnnData
        Observations x genes with ``obsm["spatial"]``.
    fraction : float
        Share of measured voxels hidden, in (0, 1).
    n_neighbors : int
        k.
    random_state : int
        Seed of the hidden sample.
    layer : str, optional
        Data instead of ``X``.

    Returns
    -------
    pandas.DataFrame
        Columns ``gene, n_held_out, mae, r, mean_value``; also in
        ``uns["imputation_holdout"]``.

    Raises
    ------
    ValueError
        No coordinates, ``fraction`` outside (0, 1), a gene with too few measured values.
    """
    if "spatial" not in check_adata(adata).obsm:
        raise ValueError("imputation_holdout needs coordinates in adata.obsm['spatial'].")
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1); got {fraction!r}.")
    res = _A.imputation_holdout(dense_matrix(adata, layer), np.asarray(adata.obsm["spatial"]), fraction=fraction,
                                n_neighbors=n_neighbors, random_state=random_state, names=list(adata.var_names))
    res.insert(0, "gene", np.asarray(adata.var_names)[res.pop("gene_index").to_numpy()])
    store_result(adata, "imputation_holdout", "imputation_holdout",
                 {"fraction": fraction, "n_neighbors": n_neighbors, "random_state": random_state, "layer": layer},
                 record={"table": res})
    return res


@tool
def iter_osnmf_suite(adata: ad.AnnData, annotation: np.ndarray | None = None, ontology: Ontology | None = None, *,
                     key: str = "nmf", layer: str | None = None, level=None, score: str = "pearson",
                     n_top: int = 20, n_marker_genes: int = 20, n_network_genes: int = 20,
                     network_rule: str = "paper", compare_pca: bool = True) -> Generator[Progress, None, dict]:
    """All osNMF read-outs of a volume NMF result, one step per yield (Cancel between steps).

    Steps: marker genes (:func:`marker_genes`); reconstruction accuracy and Moran's I,
    each beside PCA at the same K fitted once (:func:`pca_baseline`); a co-expression
    network per pattern (:func:`coexpression_networks`, with at least 3 genes); with an
    atlas, the region combinations (:func:`region_combinations`), keeping every single
    structure of the level (the pattern × structure bubble chart). Inputs are checked
    before the first step. Nothing is written to ``adata``: pass the result to
    :func:`store_osnmf_suite` (or call :func:`osnmf_suite`, which does both).

    Parameters
    ----------
    adata : anndata.AnnData
        With a volume NMF result ``key``.
    annotation : numpy.ndarray of int, optional
        Structure ids on the patterns' grid; without it there are no region combinations.
    ontology : Ontology, optional
        Needed with ``annotation``.
    key, layer, level, score, n_top
        As :func:`region_combinations` and :func:`reconstruction_accuracy`.
    n_marker_genes, n_network_genes : int
        Genes per pattern in the marker list and in each network.
    network_rule : {"paper", "reference"}
        As :func:`coexpression_networks`.
    compare_pca : bool
        Moran's I and reconstruction accuracy beside PCA.

    Returns
    -------
    dict
        ``marker_genes, reconstruction_accuracy, morans_i, region_combinations``
        (DataFrames; the last None without an atlas), ``labels`` (the annotation
        relabelled at ``level``, or None), ``structure_order`` (the ontology's ids in its
        own order), ``networks`` ({pattern: networkx.Graph}, empty with fewer than 3 genes),
        ``counts`` (structures, pairs, triples), ``key`` and ``params`` (the call's
        parameters, versions, time).

    Raises
    ------
    KeyError
        No NMF result ``key``.
    ValueError
        An annotation on another grid, an annotation without ontology, an unknown level,
        score or rule.
    """
    from ..core.provenance import provenance

    W, H, names = volume_result(adata, key)
    labels = None
    if annotation is not None:
        if ontology is None:
            raise ValueError("Region combinations need the atlas ontology with the annotation.")
        labels = _A.structure_labels(annotation_on_grid(adata, annotation), ontology, level)
    if network_rule not in NETWORK_RULES:
        raise ValueError(f"network_rule must be one of {NETWORK_RULES}; got {network_rule!r}.")
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}; got {score!r}.")
    rec = provenance("osnmf_suite", {"key": key, "layer": layer, "level": str(level), "score": score,
                                     "n_top": n_top, "n_marker_genes": n_marker_genes,
                                     "n_network_genes": n_network_genes, "network_rule": network_rule,
                                     "compare_pca": compare_pca})
    out = {"key": key, "params": rec, "region_combinations": None, "counts": {}, "networks": {}, "labels": labels,
           "structure_order": None if ontology is None else [int(i) for i in ontology.table.index]}
    total = 5 if labels is not None else 4
    yield Progress(0, total, "marker genes")
    out["marker_genes"] = _A.marker_genes(H, list(adata.var_names), names, n_top=n_marker_genes)
    yield Progress(1, total, "PCA at the same K and reconstruction accuracy")
    pca = pca_baseline(adata, W.shape[1], layer=layer) if compare_pca else None
    X = np.nan_to_num(dense_matrix(adata, layer).astype(np.float64))
    out["reconstruction_accuracy"] = _reconstruction_accuracy(adata, X, W, H, key, pca)
    yield Progress(2, total, "Moran's I")
    out["morans_i"] = _morans_i(adata, W, names, 0.0, pca)
    yield Progress(3, total, "co-expression networks")
    if adata.n_vars >= 3:
        out["networks"] = _networks(adata, W, H, names, min(n_network_genes, adata.n_vars), network_rule)
    if labels is not None:
        yield Progress(4, total, "region combinations (singles, contiguous pairs and triples)")
        table, counts, _ = _region_combinations(adata, W, names, labels, ontology, level=level, max_size=3,
                                                score=score, n_top=n_top, all_singles=True)
        out.update(region_combinations=table, counts=counts)
    yield Progress(total, total, "analysis finished")
    return out


def store_osnmf_suite(adata: ad.AnnData, res: dict) -> ad.AnnData:
    """Store the read-outs of :func:`iter_osnmf_suite` in ``adata`` under the usual keys.

    ``uns[f"{key}_marker_genes"]``, ``f"{key}_reconstruction_accuracy"`` (and the ``var``
    columns), ``f"{key}_morans_i"``, ``f"{key}_coexpression"`` (edge table) and, with an
    atlas, ``f"{key}_region_combinations"``; each with the suite's parameters.

    Returns
    -------
    anndata.AnnData
        ``adata``.
    """
    key, params = res["key"], res["params"]["params"]
    rec = res["reconstruction_accuracy"]
    store_result(adata, f"{key}_marker_genes", "marker_genes", params, record={"table": res["marker_genes"]})
    store_result(adata, f"{key}_reconstruction_accuracy", "reconstruction_accuracy", params, record={"table": rec},
                 var={c: rec[c].to_numpy() for c in rec.columns})
    store_result(adata, f"{key}_morans_i", "morans_i", params, record={"table": res["morans_i"]})
    if res["networks"]:
        store_result(adata, f"{key}_coexpression", "coexpression_networks", params,
                     record={"table": network_edges(res["networks"])})
    if res["region_combinations"] is not None:
        table = res["region_combinations"]
        store_result(adata, f"{key}_region_combinations", "region_combinations", params,
                     record={**res["counts"], "table": table, "best": _A.best_combinations(table)})
    return adata


osnmf_suite = blocking(iter_osnmf_suite, "osnmf_suite", after=lambda args, res: store_osnmf_suite(args["adata"], res))
osnmf_suite.__doc__ = ("Run :func:`iter_osnmf_suite` and store its read-outs (:func:`store_osnmf_suite`); "
                       "same parameters, returns the dict of read-outs.\n\n" + (iter_osnmf_suite.__doc__ or ""))
