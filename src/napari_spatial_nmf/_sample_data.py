"""npe2 sample-data contributions (File > Open Sample > Spatial NMF)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import datasets
from ._layers import atlas_layer, cells_layer, stack_layers


def allen_sample():
    """Allen CCFv3 annotation (200 µm, dim; hover names structures) + Pdyn and Nrp1 expression energy."""
    stack, atlas = datasets.allen_200um()
    return [atlas_layer(atlas, name="CCFv3 annotation"), *stack_layers(stack)]


def bdgp_sample():
    """BDGP Drosophila embryo ISH images (1,640 images, 16 x 32; the slider picks the image)."""
    return stack_layers(datasets.bdgp(), name="BDGP images")


def osmfish_sample():
    """OsmFISH somatosensory cortex cells, coloured by expert region (hover names the region)."""
    return [cells_layer(datasets.osmfish(), name="osmFISH cells", color_by="region")]


def starmap_sample():
    """STARmap 3D visual cortex cells (x, y, z), coloured by total signal; view in 3D."""
    adata = datasets.starmap_3d()
    feats = pd.DataFrame({"total": np.asarray(adata.X.sum(axis=1)).ravel().astype(np.float32)})
    return [cells_layer(adata, name="STARmap 3D cells", features=feats, color_by="total")]


def stahl_sample():
    """Four serial sections of a breast cancer biopsy (Ståhl 2016), one points layer each, for
    the Integration dock; coloured by total counts.
    """
    out = []
    for part in datasets.stahl_breast_cancer():
        feats = pd.DataFrame({"total counts": np.asarray(part.X.sum(axis=1)).ravel().astype(np.float32)})
        out.append(cells_layer(part, name=str(part.obs["section"].iloc[0]), features=feats, color_by="total counts"))
    return out
