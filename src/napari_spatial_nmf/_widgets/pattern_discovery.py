"""Pattern discovery dock: NMF of image layers, a gene stack or a cell point cloud."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
from magicgui.widgets import ComboBox, Container, Select, SpinBox
from qtpy.QtWidgets import QVBoxLayout, QWidget

from .. import tl
from .._layers import cell_pattern_layer, pattern_layers
from ..core._progress import Progress
from ..core.grid import volumes_to_anndata
from ..io import check_cells
from ._runner import JobRunner

if TYPE_CHECKING:
    import napari

MISSING_CHOICES = {"impute (k-NN, k=6)": "impute", "stop with an error": "raise", "count as zero": "zero"}


def layer_volumes(layer) -> tuple[np.ndarray, list[str]]:
    """A layer's data as (genes, *grid) and gene names: a gene stack if its metadata names
    one gene per plane of axis 0, otherwise one volume named after the layer."""
    data = np.asarray(layer.data)
    genes = layer.metadata.get("genes")
    if genes is not None and len(genes) == data.shape[0] and data.ndim >= 3:
        return data, [str(g) for g in genes]
    return data[None], [layer.name]


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
    """Layers NMF can take: images, and points layers backed by an AnnData."""
    from napari.layers import Image, Points

    return [(lyr.name, lyr) for lyr in viewer.layers
            if isinstance(lyr, Image) or (isinstance(lyr, Points) and "adata" in lyr.metadata)]


def mask_layer_choices(viewer) -> list[tuple[str, object]]:
    """Labels layers usable as masks (label > 0 is inside)."""
    from napari.layers import Labels

    return [(lyr.name, lyr) for lyr in viewer.layers if isinstance(lyr, Labels)]


class PatternDiscoveryWidget(QWidget):
    """Find principal patterns by NMF and add them as new layers.

    Input: image layers (each a volume/image of one gene, or a gene stack whose
    ``metadata["genes"]`` names axis 0), or one Points layer backed by an AnnData. Output:
    one Image layer per pattern (grid scale, additive blending) or a Points layer with each
    cell's pattern weights as features. Input layers are never modified.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.result: ad.AnnData | None = None
        self.inputs = Select(label="input", choices=self._input_choices, allow_multiple=True)
        self.mask = ComboBox(label="mask", choices=self._mask_choices, nullable=True)
        self.n_components = SpinBox(label="K (patterns)", min=1, max=500, value=8)
        self.seed = SpinBox(label="seed", min=0, max=2**31 - 1, value=0)
        self.max_iter = SpinBox(label="max iterations", min=1, max=100_000, value=200)
        self.missing = ComboBox(label="missing values", choices=list(MISSING_CHOICES))
        self.form = Container(widgets=[self.inputs, self.mask, self.n_components, self.seed,
                                       self.max_iter, self.missing])
        self.inputs.native.setMaximumHeight(110)
        self.runner = JobRunner("Find patterns")
        self.runner.run_button.clicked.connect(self.run)
        layout = QVBoxLayout(self)
        layout.addWidget(self.form.native)
        layout.addWidget(self.runner)
        layout.addStretch()
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            ev.connect(self._refresh)

    # ---------------------------------------------------------------- choices
    def _input_choices(self, _widget=None):
        return input_layer_choices(self.viewer)

    def _mask_choices(self, _widget=None):
        return mask_layer_choices(self.viewer)

    def _refresh(self, _event=None):
        self.form.reset_choices()

    # ---------------------------------------------------------------- run
    def _prepare(self):
        """Build the job from the form; raises on bad input before anything runs."""
        k = int(self.n_components.value)
        adata, source, is_points, layer_job = build_input(
            list(self.inputs.value), self.mask.value, MISSING_CHOICES[self.missing.value], k)
        kwargs = {"random_state": int(self.seed.value), "max_iter": int(self.max_iter.value)}

        def job():
            layer, missing = yield from layer_job()
            return (yield from tl.iter_nmf(adata, k, layer=layer, missing=missing, **kwargs))

        return job(), kwargs["max_iter"], source, is_points

    def run(self) -> None:
        """Start NMF in a worker thread (the Run button)."""
        if self.runner.running:
            return
        try:
            job, total, source, is_points = self._prepare()
        except (ValueError, TypeError, KeyError) as exc:
            self.runner.fail(exc)
            return
        self.runner.start(job, total, lambda res: self._add_layers(res, source, is_points),
                          description="NMF")

    def _add_layers(self, adata: ad.AnnData, source, is_points: bool) -> None:
        self.result = adata
        add_result_layers(self.viewer, adata, source, is_points)


def build_input(layers, mask_layer, missing: str, n_components: int):
    """Turn the chosen layers into a new AnnData and check it for NMF at K = n_components.

    Returns ``(adata, source_layer, is_points, prepare)``; ``prepare()`` is a generator that
    imputes missing values if asked (k-NN, k=6) and returns ``(layer, missing)`` for
    :func:`napari_spatial_nmf.tl.iter_nmf`. Raises ValueError / KeyError / TypeError on bad
    input, before anything runs. The layers and their AnnData are never modified.
    """
    from napari.layers import Points

    if not layers:
        raise ValueError("Choose at least one input layer (image layers, a gene stack or a points layer).")
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

    def prepare():
        if impute:
            yield Progress(0, 1, "imputing missing values (k-NN, k=6)…")
            tl.impute_knn(adata)
            return "imputed", "raise"
        return None, "raise" if missing == "impute" else missing

    return adata, source, bool(points), prepare


def add_result_layers(viewer, adata: ad.AnnData, source, is_points: bool, key: str = "nmf") -> None:
    """Add an NMF result as new layers: one Image per pattern, or a Points layer of weights."""
    if is_points:
        data, kwargs, _ = cell_pattern_layer(adata, key, name=f"{source.name} NMF weights")
        viewer.add_points(data, **kwargs)
        return
    for data, kwargs, _ in pattern_layers(adata, key, source=source.name):
        viewer.add_image(data, **kwargs)
