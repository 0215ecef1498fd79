"""Which atlas structures (and contiguous combinations) a pattern or gene matches."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from ..core import atlas_stats as _A
from ..core import grid as _grid
from ..core.ontology import Ontology
from ..core.regions import region_correlation as _region_correlation
from ._atlas import _region_combinations, annotation_on_grid, volume_result
from ._common import dense_matrix, store_result


def region_correlation(
    adata: ad.AnnData,
    annotation: np.ndarray,
    ontology: Ontology,
    *,
    key: str = "nmf",
    genes: list[str] | None = None,
    layer: str | None = None,
    min_voxels: int = 1,
    key_added: str | None = None,
) -> pd.DataFrame:
    """Correlate principal patterns (or genes) of a volume AnnData with atlas structures.

    Each structure is the union of itself and its descendants in the ontology; Pearson r
    over the in-mask voxels (:func:`napari_spatial_nmf.core.region_correlation`).

    Parameters
    ----------
    adata : anndata.AnnData
        A volume AnnData (``uns["grid"]``) on the annotation's grid.
    annotation : numpy.ndarray of int, shape grid_shape
        Structure ids per voxel.
    ontology : Ontology
        The structure tree.
    key : str
        Which NMF result to use (``obsm[f"X_{key}"]``); ignored when ``genes`` is given.
    genes : list of str, optional
        Correlate these genes' volumes instead of patterns (missing voxels excluded).
    layer : str, optional
        With ``genes``: take values from this layer instead of ``X``.
    min_voxels : int
        Leave out structures with fewer valid voxels.
    key_added : str, optional
        Where the table is stored: ``uns[key_added]["table"]``; default
        ``f"{key}_region_correlation"`` (patterns) or ``"gene_region_correlation"`` (genes).

    Returns
    -------
    pandas.DataFrame
        As :func:`napari_spatial_nmf.core.region_correlation`.

    Raises
    ------
    KeyError
        Unknown genes, no NMF result ``key``.
    ValueError
        An annotation on another grid.
    """
    if genes is not None:
        missing = [g for g in genes if g not in adata.var_names]
        if missing:
            raise KeyError(f"Genes not in the AnnData: {missing}.")
        values = dense_matrix(adata, layer)[:, adata.var_names.get_indexer(genes)]
        names = list(genes)
    else:
        values, _, names = volume_result(adata, key)
    ann = annotation_on_grid(adata, annotation)
    df = _region_correlation(_grid.to_volume(adata, values), ann, ontology, names=list(names), min_voxels=min_voxels)
    key_added = key_added or (f"{key}_region_correlation" if genes is None else "gene_region_correlation")
    store_result(adata, key_added, "region_correlation",
                 {"key": None if genes is not None else key, "genes": genes, "layer": layer, "min_voxels": min_voxels},
                 record={"table": df})
    return df


def region_combinations(adata: ad.AnnData, annotation: np.ndarray, ontology: Ontology, *, key: str = "nmf",
                        level=None, max_size: int = 3, score: str = "pearson", n_top: int = 20) -> pd.DataFrame:
    """Best single structure, contiguous pair and triple per principal pattern (osNMF).

    Exhaustive and exact from per-structure sums
    (:func:`napari_spatial_nmf.core.atlas_stats.region_combinations`); structures touch
    if a 6-connected binary dilation of one meets the other.

    Parameters
    ----------
    adata : anndata.AnnData
        With a volume NMF result ``key``.
    annotation : numpy.ndarray of int
        On the patterns' grid.
    ontology : Ontology
        The structure tree.
    key : str
        The NMF result.
    level : None, "coarse", "medium", int or sequence
        None (the annotation's own structures), "coarse" (the 12 major divisions),
        "medium" (their children, the osNMF medium level), an ontology depth, or a list of
        structures.
    max_size : {1, 2, 3}
        Largest combination.
    score : {"pearson", "dice"}
        Pearson r with the union's indicator, or Dice with the pattern's hard map.
    n_top : int
        Rows kept per pattern and size.

    Returns
    -------
    pandas.DataFrame
        The ranked table (``pattern, size, rank, structures, ids, score, n_voxels``), also
        in ``uns[f"{key}_region_combinations"]`` with the counts and the best per pattern.

    Raises
    ------
    ValueError
        Annotation and patterns on different grids; an ontology without the level; an
        empty mask. KeyError: no NMF result ``key``.
    """
    W, _, names = volume_result(adata, key)
    labels = _A.structure_labels(annotation_on_grid(adata, annotation), ontology, level)
    table, counts, params = _region_combinations(adata, W, names, labels, ontology, level=level, max_size=max_size,
                                                 score=score, n_top=n_top)
    store_result(adata, f"{key}_region_combinations", "region_combinations", {"key": key, **params},
                 record={**counts, "table": table, "best": _A.best_combinations(table)})
    return table
