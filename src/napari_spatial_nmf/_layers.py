"""Adapters between the core's data and napari layers (LayerDataTuples; no Qt widgets).

Conventions: a gene volume is an Image layer named after its gene (a large stack, e.g. the
1,640 BDGP images, is one layer whose first axis is genes and whose ``metadata["genes"]``
names them); an atlas is a Labels layer with a direct colormap from the ontology colours,
``features`` (``index`` = structure id, acronym, name, depth) so the status bar names the
structure under the mouse, and ``metadata["ontology"]``; a cell point cloud is a Points
layer whose ``metadata["adata"]`` is the AnnData (rows = obs order), with obs columns as
features. Layers made from a result carry its id (:data:`napari_spatial_nmf.results.RESULT_ID`).
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from .core.grid import grid_of, to_volume
from .core.ontology import Ontology
from .io import Atlas, Stack
from .pl import category_colors
from .results import RESULT_ID, Result

SPLIT_STACK_MAX_GENES = 12  # stacks up to this many genes open as one layer per gene (named by gene)
# Pattern colours: single-hue ramps from black, hues chosen to stay apart from each other.
PATTERN_HUES = ("magenta", "green", "cyan", "yellow", "red", "blue", "bop orange", "bop purple", "bop blue")


def _limits(data: np.ndarray) -> tuple[float, float]:
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return (0.0, 1.0)
    lo, hi = float(finite.min()), float(np.percentile(finite, 99.5))
    return (lo, hi if hi > lo else lo + 1.0)


def _units(unit: str | None, n: int):
    return None if unit not in ("µm", "um", "micrometer") else ("micrometer",) * n


def stack_layers(stack: Stack, name: str | None = None) -> list[tuple]:
    """Image LayerDataTuples for a gene stack: one per gene (named by it) for up to
    :data:`SPLIT_STACK_MAX_GENES` genes, else one stack layer (genes on axis 0).
    """
    meta = {"axes": list(stack.axes), "voxel_size_um": list(stack.voxel_size),
            **{k: v for k, v in stack.meta.items() if k != "genes"}}
    common = {"scale": stack.voxel_size, "translate": stack.origin, "colormap": "magma", "blending": "additive",
              "axis_labels": stack.axes, "units": _units(str(stack.meta.get("unit", "µm")), len(stack.axes))}
    if len(stack.genes) <= SPLIT_STACK_MAX_GENES:
        # one gene shown at a time (the first): additive layers of one colormap would be unreadable
        return [(vol, {**common, "name": gene, "contrast_limits": _limits(vol), "visible": i == 0,
                       "metadata": {**meta, "genes": [gene], "gene": gene}}, "image")
                for i, (vol, gene) in enumerate(zip(stack.data, stack.genes))]
    kwargs = {**common, "name": name or f"{len(stack.genes)} genes", "contrast_limits": _limits(stack.data),
              "metadata": {**meta, "genes": list(stack.genes)}, "scale": (1.0, *stack.voxel_size),
              "translate": (0.0, *stack.origin), "axis_labels": ("gene", *stack.axes), "units": None}
    return [(stack.data, kwargs, "image")]


def atlas_features(ontology: Ontology, labels: np.ndarray) -> pd.DataFrame:
    """Labels ``features``: one row per label value present (background first), ``index`` = id."""
    ids = np.unique(labels)
    ids = ids[ids != 0]
    t = ontology.table.loc[ids]
    bg = pd.DataFrame({"index": [0], "acronym": [""], "name": ["outside atlas"], "depth": [-1]})
    fg = pd.DataFrame({"index": ids, "acronym": t["acronym"].to_numpy(), "name": t["name"].to_numpy(),
                       "depth": t["depth"].to_numpy()})
    return pd.concat([bg, fg], ignore_index=True)


def atlas_colormap(ontology: Ontology, labels: np.ndarray):
    """A napari ``DirectLabelColormap`` with the ontology's colours for the labels present."""
    from napari.utils.colormaps import DirectLabelColormap

    colors = ontology.colors()
    color_dict = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
    color_dict.update({int(i): (*colors[int(i)], 1.0) for i in np.unique(labels) if i != 0})
    return DirectLabelColormap(color_dict=color_dict)


def atlas_layer(atlas: Atlas, name: str = "atlas annotation") -> tuple:
    """Labels LayerDataTuple for an atlas, coloured and named from its ontology.

    Drawn dim (opacity 0.3) so expression and patterns show through; the docks switch it
    to outlines once patterns exist. Hovering names the structure (acronym and name).
    """
    kwargs = {"name": name, "scale": atlas.voxel_size, "translate": atlas.origin, "opacity": 0.3,
              "blending": "translucent", "metadata": {"ontology": atlas.ontology, "axes": list(atlas.axes)},
              "units": _units("µm", atlas.annotation.ndim)}
    if atlas.axes:
        kwargs["axis_labels"] = atlas.axes
    if atlas.ontology is not None:
        kwargs["colormap"] = atlas_colormap(atlas.ontology, atlas.annotation)
        kwargs["features"] = atlas_features(atlas.ontology, atlas.annotation)
    return (atlas.annotation, kwargs, "labels")


def _point_size(xyz: np.ndarray) -> float:
    from scipy.spatial import cKDTree

    if len(xyz) < 2:
        return 1.0
    sample = xyz[np.random.default_rng(0).choice(len(xyz), min(2000, len(xyz)), replace=False)]
    d, _ = cKDTree(xyz).query(sample, k=2)
    return float(np.median(d[:, 1]))


def obs_features(adata: ad.AnnData) -> pd.DataFrame:
    """The numeric and categorical obs columns, as Points features (row = obs order)."""
    keep = {c: adata.obs[c].to_numpy() for c in adata.obs.columns
            if adata.obs[c].dtype.kind in "biuf" or isinstance(adata.obs[c].dtype, pd.CategoricalDtype)}
    return pd.DataFrame(keep).reset_index(drop=True)


def color_kwargs(adata: ad.AnnData | None, values: pd.Series, column: str) -> dict:
    """Points colour arguments for a feature: a real categorical palette (scanpy's
    ``uns[f"{column}_colors"]`` or tab10/tab20) for categories, magma with 0 … 99th
    percentile limits for numbers.
    """
    if isinstance(values.dtype, pd.CategoricalDtype) or values.dtype.kind in "OSUb":
        cats = list(values.cat.categories) if isinstance(values.dtype, pd.CategoricalDtype) \
            else sorted(pd.unique(values.dropna()).astype(str))
        colors = category_colors(cats, adata, column)
        colors.update({c: "#404040" for c in colors if c in ("none", "nan", "NA")})  # unassigned: dark grey
        return {"face_color": [colors.get(str(v), "#808080") for v in values], "_categories": colors}
    v = values.to_numpy(dtype=float)
    finite = v[np.isfinite(v)]
    hi = float(np.percentile(finite, 99)) if finite.size else 1.0
    lo = float(finite.min()) if finite.size else 0.0
    return {"face_color": column, "face_colormap": "magma",
            "face_contrast_limits": (lo, hi if hi > lo else lo + 1.0)}


def cells_layer(adata: ad.AnnData, name: str = "cells", *, spatial_key: str = "spatial",
                features: pd.DataFrame | None = None, color_by: str | None = None) -> tuple:
    """Points LayerDataTuple for a cell AnnData: napari (z,) y, x order, obs as features.

    Hovering a cell shows its features (e.g. its region) in the status bar; categorical
    colours are kept in ``metadata["legend"]`` ({category: colour}) for the docks' legends.
    """
    xyz = np.asarray(adata.obsm[spatial_key], dtype=np.float64)[:, ::-1]
    feats = obs_features(adata) if features is None else features
    axes = ("z", "y", "x")[-xyz.shape[1]:]
    kwargs = {"name": name, "features": feats, "size": _point_size(xyz), "border_width": 0, "axis_labels": axes,
              "units": _units(adata.uns.get("spatial_unit"), len(axes)),
              "metadata": {"adata": adata, "spatial_key": spatial_key}}
    if color_by is not None:
        ck = color_kwargs(adata, feats[color_by], color_by)
        legend = ck.pop("_categories", None)
        kwargs.update(ck)
        if legend is not None:
            kwargs["metadata"]["legend"] = {"title": color_by, "colors": legend}
    return (xyz, kwargs, "points")


def pattern_layers(result: Result) -> list[tuple]:
    """Image LayerDataTuples, one per principal pattern of a volume result.

    Each pattern is a volume on the input grid (0 outside the mask) with the grid's µm
    scale, additive blending and its own single-hue colormap (black to magenta, green,
    cyan, ...); ``metadata`` holds the result id, the pattern's name, its top genes and the
    run's parameters.
    """
    adata, key = result.adata, result.key
    grid = grid_of(adata)
    vols = to_volume(adata, np.asarray(adata.obsm[f"X_{key}"]), fill=0.0)
    rec = adata.uns[key]
    names = list(rec["pattern_names"])
    coef = np.asarray(adata.varm[f"{key}_coefficients"])
    out = []
    for i, vol in enumerate(vols):
        top = pd.Series(coef[:, i], index=adata.var_names).nlargest(10)
        meta = {RESULT_ID: result.id, "pattern": names[i], "key": key, "source": result.source,
                "top_genes": list(top.index), "params": dict(rec["params"]), "grid_shape": list(grid.shape)}
        out.append((vol, {"name": f"{result.source + ' ' if result.source else ''}{names[i]}".strip(),
                          "scale": grid.voxel_size, "translate": grid.origin, "blending": "additive",
                          "colormap": PATTERN_HUES[i % len(PATTERN_HUES)], "contrast_limits": (0.0, 1.0),
                          "axis_labels": grid.axes, "metadata": meta,
                          "units": _units(adata.uns.get("spatial_unit", "µm"), len(grid.shape))},
                    "image"))
    return out


def weights_layer(result: Result, *, name: str, spatial_key: str = "spatial", proportions: bool = False) -> tuple:
    """Points LayerDataTuple of a cell result: each cell's weights (NMF patterns or NNMF
    signatures, as shares of the cell when ``proportions``) as features, coloured by the
    first; with a domain column when the result has one.
    """
    adata, key = result.adata, result.key
    W = np.asarray(adata.obsm[f"X_{key}"], dtype=np.float32)
    rec = adata.uns[key]
    names = list(rec.get("pattern_names", rec.get("signature_names", [])))
    if proportions:
        with np.errstate(invalid="ignore", divide="ignore"):
            W = W / W.sum(axis=1, keepdims=True)
    feats = obs_features(adata)
    for i, n in enumerate(names):
        feats[n] = W[:, i]
    if f"{key}_domain" in adata.obs:
        feats["domain"] = adata.obs[f"{key}_domain"].to_numpy()
    data, kwargs, kind = cells_layer(adata, name, spatial_key=spatial_key, features=feats, color_by=names[0])
    kwargs["metadata"].update({RESULT_ID: result.id, "key": key})
    return data, kwargs, kind


def domain_layer(result: Result, *, column: str, name: str, spatial_key: str = "spatial") -> tuple:
    """Points LayerDataTuple: each cell coloured by a categorical result column (domains,
    factors), with a real categorical palette; ``metadata["legend"]`` for the dock's legend.
    """
    adata = result.adata
    col = adata.obs[column]
    cats = list(col.cat.categories) if isinstance(col.dtype, pd.CategoricalDtype) else sorted(col.dropna().unique())
    dom = pd.Categorical(col.astype(object).where(col.notna(), "none"), categories=[*cats, "none"])
    feats = pd.DataFrame({"domain": dom})
    data, kwargs, kind = cells_layer(adata, name, spatial_key=spatial_key, features=feats, color_by="domain")
    kwargs["metadata"].update({RESULT_ID: result.id, "key": result.key})
    return data, kwargs, kind


def colorable_columns(adata: ad.AnnData) -> tuple[list[str], list[str]]:
    """What a cell layer can be coloured by: (obs columns that are numbers or categories, genes)."""
    obs = [c for c in adata.obs.columns
           if adata.obs[c].dtype.kind in "biufO" or isinstance(adata.obs[c].dtype, pd.CategoricalDtype)]
    return obs, [str(g) for g in adata.var_names]


def column_values(adata: ad.AnnData, column: str) -> pd.Series:
    """One obs column, or one gene's expression (``X``, dense), in obs order.

    Raises
    ------
    KeyError
        Neither an obs column nor a gene.
    """
    if column in adata.obs:
        return adata.obs[column].reset_index(drop=True)
    if column in adata.var_names:
        j = int(np.flatnonzero(adata.var_names == column)[0])
        x = adata.X[:, j]
        x = np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float32).ravel()
        return pd.Series(x, name=column)
    raise KeyError(f"{column!r} is neither an obs column nor a gene of this layer's AnnData.")


def recolor_points(layer, column: str, adata: ad.AnnData | None = None) -> dict | None:
    """Colour a cell Points layer by an obs column or a gene, with the results' conventions:
    categories from ``uns[f"{column}_colors"]`` (else tab10/tab20) with a legend in
    ``metadata["legend"]``, numbers through magma with 0 … 99th-percentile limits (a colour
    bar). The layer's AnnData is not changed; the values become a layer feature.

    Returns
    -------
    dict or None
        The legend ({category: colour}) for categories, None for numbers.
    """
    adata = layer.metadata["adata"] if adata is None else adata
    values = column_values(adata, column)
    if len(values) != len(layer.data):
        raise ValueError(f"The layer has {len(layer.data):,} points but the AnnData {len(values):,} cells.")
    kw = color_kwargs(adata, values, column)
    legend = kw.pop("_categories", None)
    feats = layer.features.copy()
    feats[column] = values.to_numpy()
    layer.features = feats
    if legend is not None:
        layer.face_color = kw["face_color"]
        layer.metadata["legend"] = {"title": column, "colors": legend}
    else:
        layer.metadata.pop("legend", None)
        layer.face_color = column
        layer.face_colormap = kw["face_colormap"]
        layer.face_contrast_limits = kw["face_contrast_limits"]
    layer.metadata["color_by"] = column
    return legend
