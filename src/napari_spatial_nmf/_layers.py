"""Adapters between the core's data and napari layers (LayerDataTuples; no Qt widgets).

Conventions: a gene stack is one Image layer whose first axis is genes and whose
``metadata["genes"]`` names them; an atlas is a Labels layer with a direct colormap from
the ontology colours, ``features`` (``index`` = structure id, acronym, name, depth) so the
status bar names the structure under the mouse, and ``metadata["ontology"]``; a cell point
cloud is a Points layer whose ``metadata["adata"]`` is the AnnData (rows = obs order).
"""

from __future__ import annotations

import colorsys

import anndata as ad
import numpy as np
import pandas as pd

from .core.grid import grid_of, to_volume
from .core.ontology import Ontology
from .io import Atlas, Stack


def pattern_colormaps(k: int) -> list:
    """K distinct black-to-colour colormaps (hues evenly spaced), for additive overlays."""
    from napari.utils.colormaps import Colormap

    out = []
    for i in range(k):
        rgb = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 1.0, 1.0)  # golden-ratio hue steps
        out.append(Colormap(colors=[(0, 0, 0, 1), (*rgb, 1)], name=f"nmf hue {i + 1}/{k}"))
    return out


def _limits(data: np.ndarray) -> tuple[float, float]:
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return (0.0, 1.0)
    lo, hi = float(finite.min()), float(np.percentile(finite, 99.5))
    return (lo, hi if hi > lo else lo + 1.0)


def stack_layer(stack: Stack, name: str | None = None) -> tuple:
    """Image LayerDataTuple for a gene stack (genes on axis 0, µm scale on the grid axes)."""
    meta = {"genes": list(stack.genes), "axes": list(stack.axes), "voxel_size_um": list(stack.voxel_size),
            **{k: v for k, v in stack.meta.items() if k != "genes"}}
    data = stack.data
    kwargs = {
        "name": name or (stack.genes[0] if len(stack.genes) == 1 else f"{len(stack.genes)} genes"),
        "scale": (1.0, *stack.voxel_size),
        "translate": (0.0, *stack.origin),
        "colormap": "magma",
        "contrast_limits": _limits(data),
        "metadata": meta,
        "axis_labels": ("gene", *stack.axes),
    }
    return (data, kwargs, "image")


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
    ids = np.unique(labels)
    color_dict = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
    color_dict.update({int(i): (*colors[int(i)], 1.0) for i in ids if i != 0})
    return DirectLabelColormap(color_dict=color_dict)


def atlas_layer(atlas: Atlas, name: str = "atlas annotation") -> tuple:
    """Labels LayerDataTuple for an atlas, coloured and named from its ontology."""
    kwargs = {"name": name, "scale": atlas.voxel_size, "translate": atlas.origin, "opacity": 0.35,
              "metadata": {"ontology": atlas.ontology, "axes": list(atlas.axes)}}
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


def _obs_features(adata: ad.AnnData) -> pd.DataFrame:
    keep = {c: adata.obs[c].to_numpy() for c in adata.obs.columns
            if adata.obs[c].dtype.kind in "biuf" or isinstance(adata.obs[c].dtype, pd.CategoricalDtype)}
    return pd.DataFrame(keep).reset_index(drop=True)


def cells_layer(adata: ad.AnnData, name: str = "cells", *, spatial_key: str = "spatial",
                features: pd.DataFrame | None = None, color_by: str | None = None) -> tuple:
    """Points LayerDataTuple for a cell AnnData: napari (z,) y, x order, obs as features."""
    xyz = np.asarray(adata.obsm[spatial_key], dtype=np.float64)[:, ::-1]
    feats = _obs_features(adata) if features is None else features
    kwargs = {"name": name, "features": feats, "size": _point_size(xyz), "border_width": 0,
              "metadata": {"adata": adata, "spatial_key": spatial_key}}
    if color_by is not None:
        kwargs["face_color"] = color_by
        values = feats[color_by].to_numpy()
        if values.dtype.kind in "fiu":
            kwargs["face_colormap"] = "viridis"
            hi = float(np.percentile(values, 99))  # one bright cell should not darken the rest
            kwargs["face_contrast_limits"] = (float(values.min()), hi if hi > values.min() else float(values.max()))
    return (xyz, kwargs, "points")


def pattern_layers(adata: ad.AnnData, key: str = "nmf", *, source: str = "") -> list[tuple]:
    """Image LayerDataTuples, one per principal pattern of a volume AnnData.

    Each pattern is a volume on the input grid (NaN outside the mask), with the grid's µm
    scale, additive blending and its own colormap; ``metadata`` holds the pattern's name,
    gene coefficients and the run's parameters.
    """
    grid = grid_of(adata)
    W = np.asarray(adata.obsm[f"X_{key}"])
    vols = to_volume(adata, W, fill=0.0)
    rec = adata.uns[key]
    names = list(rec["pattern_names"])
    coef = np.asarray(adata.varm[f"{key}_coefficients"])
    out = []
    for i, (vol, cmap) in enumerate(zip(vols, pattern_colormaps(len(vols)))):
        top = pd.Series(coef[:, i], index=adata.var_names).nlargest(10)
        meta = {"pattern": names[i], "key": key, "source": source, "top_genes": list(top.index),
                "params": dict(rec["params"]), "grid_shape": list(grid.shape),
                "nmf_result": adata}  # the result AnnData (shared by the K layers), for the atlas-analysis dock
        out.append((vol, {"name": f"{source + ' ' if source else ''}{names[i]}".strip(),
                          "scale": grid.voxel_size, "translate": grid.origin, "blending": "additive",
                          "colormap": cmap, "contrast_limits": (0.0, 1.0), "metadata": meta}, "image"))
    return out


def cell_pattern_layer(adata: ad.AnnData, key: str = "nmf", *, name: str | None = None,
                       spatial_key: str = "spatial") -> tuple:
    """Points LayerDataTuple with each cell's pattern weights as features, coloured by PP1."""
    W = np.asarray(adata.obsm[f"X_{key}"])
    names = list(adata.uns[key]["pattern_names"])
    feats = _obs_features(adata)
    for i, n in enumerate(names):
        feats[n] = W[:, i]
    data, kwargs, kind = cells_layer(adata, name or f"{key} weights", spatial_key=spatial_key,
                                     features=feats, color_by=names[0])
    kwargs["metadata"]["key"] = key
    return (data, kwargs, kind)
