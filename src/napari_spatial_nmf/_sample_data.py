"""npe2 sample-data contributions (File > Open Sample > Spatial NMF)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import datasets
from ._canvas import install_on_current_viewer, when_added
from ._layers import atlas_layer, cells_layer, stack_layers


def allen_sample():
    """Allen CCFv3 annotation (200 µm, dim; hover names structures) + Pdyn and Nrp1 expression energy."""
    install_on_current_viewer()
    stack, atlas = datasets.allen_200um()
    return [atlas_layer(atlas, name="CCFv3 annotation"), *stack_layers(stack)]


def bdgp_sample():
    """BDGP Drosophila embryo ISH images (1,640 images, 16 x 32; the slider picks the image)."""
    install_on_current_viewer()
    return stack_layers(datasets.bdgp(), name="BDGP images")


def osmfish_sample():
    """OsmFISH somatosensory cortex cells, coloured by expert region (hover names the region)."""
    install_on_current_viewer()
    return [cells_layer(datasets.osmfish(), name="osmFISH cells", color_by="region")]


def starmap_sample():
    """STARmap 3D visual cortex cells (x, y, z), coloured by total signal; opens in a tilted 3D view."""
    install_on_current_viewer()
    adata = datasets.starmap_3d()
    feats = pd.DataFrame({"total": np.asarray(adata.X.sum(axis=1)).ravel().astype(np.float32)})
    name = "STARmap 3D cells"
    when_added(name, show_in_3d)
    return [cells_layer(adata, name=name, features=feats, color_by="total")]


def show_in_3d(viewer, _layer=None) -> None:
    """A tilted 3D view with axes: a thick tissue block reads as one (a 2D slice of it is nearly empty)."""
    viewer.dims.ndisplay = 3
    viewer.reset_view()
    scene = getattr(viewer, "scene", None)
    (scene.camera if scene is not None else viewer.camera).angles = (-30.0, 30.0, 120.0)
    (scene.overlays.axes if scene is not None else viewer.axes).visible = True


def stahl_sample():
    """Four serial sections of a breast cancer biopsy (Ståhl 2016), one points layer each, side by
    side (each section has its own frame: drawn in place they would lie on top of each other),
    for the Integration dock; coloured by total counts.
    """
    from .tl._integrate import LAYOUT_GAP

    install_on_current_viewer()
    out, x0 = [], 0.0
    parts = datasets.stahl_breast_cancer()
    width = max(np.ptp(np.asarray(p.obsm["spatial"])[:, 0]) for p in parts)
    for part in parts:
        feats = pd.DataFrame({"total counts": np.asarray(part.X.sum(axis=1)).ravel().astype(np.float32)})
        data, kwargs, kind = cells_layer(part, name=str(part.obs["section"].iloc[0]), features=feats,
                                         color_by="total counts")
        xy = np.asarray(part.obsm["spatial"], dtype=np.float64)
        kwargs["translate"] = (0.0, x0 - xy[:, 0].min())  # napari order (y, x); the data keep their own frame
        x0 += np.ptp(xy[:, 0]) + LAYOUT_GAP * width
        out.append((data, kwargs, kind))
    return out
