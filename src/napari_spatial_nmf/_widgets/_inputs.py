"""Layers -> the AnnData a tool takes, and back: shared by the NMF and stability docks."""

from __future__ import annotations

import anndata as ad
import numpy as np

from .. import tl
from .._layers import pattern_layers, weights_layer
from ..core._progress import Progress
from ..core.grid import volumes_to_anndata
from ..io import check_cells
from ..results import REGISTRY, RESULT_ID

MISSING_CHOICES = {"impute (k-NN, k = 6)": "impute", "stop with an error": "raise", "count as zero": "zero"}


def layer_volumes(layer) -> tuple[np.ndarray, list[str]]:
    """A layer's data as (genes, *grid) and gene names: a gene stack if its metadata names
    one gene per plane of axis 0, otherwise one volume named after its gene (or layer).
    """
    data = np.asarray(layer.data)
    genes = layer.metadata.get("genes")
    if genes is not None and len(genes) == data.shape[0] and data.ndim >= 3 and len(genes) > 1:
        return data, [str(g) for g in genes]
    return data[None], [str(layer.metadata.get("gene", layer.name))]


def layers_to_anndata(layers, mask_layer=None) -> ad.AnnData:
    """Stack image layers (each one volume or a gene stack) into the package's AnnData.

    Raises
    ------
    ValueError
        Layers or mask on different grids, or an empty mask.
    """
    vols, genes = [], []
    for layer in layers:
        v, g = layer_volumes(layer)
        if vols and v.shape[1:] != vols[0].shape[1:]:
            raise ValueError(f"Layer {layer.name!r} has grid shape {v.shape[1:]}, but "
                             f"{layers[0].name!r} has {vols[0].shape[1:]}: choose layers on one grid.")
        vols.append(v)
        genes.extend(g)
    stack = np.concatenate(vols).astype(np.float32)
    ndim = stack.ndim - 1
    first = layers[0]
    mask = None
    if mask_layer is not None:
        mask = np.asarray(mask_layer.data) > 0
        if mask.shape != stack.shape[1:]:
            raise ValueError(f"The mask {mask_layer.name!r} has shape {mask.shape} but the images have "
                             f"grid shape {stack.shape[1:]}: they must be on the same grid.")
    axes = first.metadata.get("axes")
    return volumes_to_anndata(stack, genes, voxel_size=tuple(first.scale[-ndim:]),
                              origin=tuple(first.translate[-ndim:]),
                              axes=axes if axes and len(axes) == ndim else None,
                              mask=mask, missing_value=first.metadata.get("missing_value"))


def input_layer_choices(viewer) -> list[tuple[str, object]]:
    """Layers NMF can take: gene images (not our own patterns), and cell points layers."""
    from napari.layers import Image, Points

    return [(lyr.name, lyr) for lyr in viewer.layers
            if (isinstance(lyr, Image) and RESULT_ID not in lyr.metadata)
            or (isinstance(lyr, Points) and "adata" in lyr.metadata and RESULT_ID not in lyr.metadata)]


def mask_layer_choices(viewer) -> list[tuple[str, object]]:
    """Labels layers usable as masks (label > 0 is inside), atlases first."""
    from napari.layers import Labels

    labels = [lyr for lyr in viewer.layers if isinstance(lyr, Labels) and not lyr.metadata.get("highlight")]
    labels.sort(key=lambda lyr: lyr.metadata.get("ontology") is None)
    return [(lyr.name, lyr) for lyr in labels]


def preselect(inputs, mask=None) -> None:
    """Start from what is open: the one cell layer (or else every gene image), and the atlas as mask.

    Only fills empty choices, so it never overrides what the user picked.
    """
    if mask is not None and mask.value is None:
        masks = [c for c in mask.choices if c is not None]
        if masks:
            mask.value = masks[0]
    if not inputs.value and inputs.choices:
        cells = [c for c in inputs.choices if type(c).__name__ == "Points"]
        inputs.value = cells[:1] or list(inputs.choices)


def n_genes_of(layers) -> int:
    """How many genes the chosen input layers hold (for K's range)."""
    from napari.layers import Points

    total = 0
    for lyr in layers:
        if isinstance(lyr, Points):
            total += lyr.metadata["adata"].n_vars
        else:
            total += len(layer_volumes(lyr)[1])
    return total


def n_obs_of(layers) -> int:
    """Observations of the first input layer: its cells, or its grid's voxels (before a mask)."""
    from napari.layers import Points

    if not layers:
        return 0
    lyr = layers[0]
    if isinstance(lyr, Points):
        return lyr.metadata["adata"].n_obs
    return int(np.prod(layer_volumes(lyr)[0].shape[1:]))


def build_input(layers, mask_layer, missing: str, n_components: int):
    """Turn the chosen layers into a new AnnData and check it for NMF at K = n_components.

    Returns ``(adata, source_name, is_points, prepare)``; ``prepare()`` is a generator that
    imputes missing values if asked (k-NN, k = 6) and returns ``(layer, missing)`` for
    :func:`napari_spatial_nmf.tl.iter_nmf`. Raises ValueError / KeyError / TypeError on bad
    input, before anything runs. The layers and their AnnData are never modified.
    """
    from napari.layers import Points

    if not layers:
        raise ValueError("Choose at least one input layer (gene images, a gene stack or a points layer of cells).")
    points = [lyr for lyr in layers if isinstance(lyr, Points)]
    if points and len(layers) > 1:
        raise ValueError("Choose either image layers or one points layer, not both.")
    if points:
        source = points[0]
        check_cells(source.metadata["adata"], spatial_key=source.metadata.get("spatial_key", "spatial"))
        adata = source.metadata["adata"].copy()  # results go to a new AnnData
    else:
        source = layers[0]
        adata = layers_to_anndata(layers, mask_layer)
    has_nan = bool(np.isnan(np.asarray(adata.X, dtype=np.float32)).any())
    tl.check_nmf_input(adata, n_components, missing="zero" if missing == "impute" else missing)
    impute = missing == "impute" and has_nan
    if impute and "spatial" not in adata.obsm:
        raise ValueError("k-NN imputation needs coordinates; choose another missing-value option.")
    # the result's name: its genes when they are few ("Pdyn + Nrp1"), else how many
    name = " + ".join(lyr.name for lyr in layers) if len(layers) <= 3 else f"{len(layers)} genes"

    def prepare():
        if impute:
            yield Progress(0, 1, "imputing missing values (k-NN, k = 6)…")
            yield from tl.iter_impute_knn(adata)
            return "imputed", "raise"
        return None, "raise" if missing == "impute" else missing

    return adata, name, bool(points), prepare


OUTLINE_MIN_VOXELS = 150  # an atlas plane at least this many voxels across gets thin outlines


def show_atlas_under_patterns(viewer, atlas) -> None:
    """Make an atlas Labels layer readable with patterns: outlines drawn over them on fine grids;
    on coarse grids (the 200 µm CCF is 41 x 58 voxels per coronal plane, where a one-voxel outline
    covers most small structures), a dim layer under the patterns instead, whose colours show
    where the patterns are dark. Hovering names the structure either way.
    """
    if min(atlas.data.shape[-2:]) >= OUTLINE_MIN_VOXELS:
        atlas.contour, atlas.opacity = 1, 0.6
        viewer.layers.move(viewer.layers.index(atlas), len(viewer.layers))  # outlines on top
    else:
        atlas.contour, atlas.opacity = 0, 0.2
        viewer.layers.move(viewer.layers.index(atlas), 0)  # under the additive patterns


def add_result_layers(viewer, adata: ad.AnnData, source: str, is_points: bool, inputs=(), key: str = "nmf"):
    """Register an NMF result and add it as new layers (one Image per pattern, or a Points
    layer of cell weights); hide the input layers and show the atlas as outlines or a dim layer
    (:func:`show_atlas_under_patterns`), so the patterns are what one sees. Returns the
    :class:`~napari_spatial_nmf.results.Result`.
    """
    from napari.layers import Labels

    result = REGISTRY.add(adata, "nmf", key, source)
    if is_points:
        data, kwargs, _ = weights_layer(result, name=f"{source} NMF weights")
        viewer.add_points(data, **kwargs)
    else:
        for data, kwargs, _ in pattern_layers(result):
            if inputs:  # the inputs' units (µm for the Allen grid, pixels for BDGP images)
                kwargs["units"] = tuple(inputs[0].units)[-data.ndim:]
            viewer.add_image(data, **kwargs)
        for lyr in list(viewer.layers):
            if isinstance(lyr, Labels) and lyr.metadata.get("ontology") is not None:
                show_atlas_under_patterns(viewer, lyr)
    for lyr in inputs:
        lyr.visible = False
    return result
