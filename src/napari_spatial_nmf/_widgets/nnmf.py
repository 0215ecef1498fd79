"""Neighbourhood NMF dock: spatial gene programs of a cell point cloud (2D or 3D)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, SpinBox
from qtpy.QtWidgets import QPushButton, QVBoxLayout, QWidget

from .. import tl
from .._layers import _obs_features, cells_layer
from ._runner import JobRunner
from ._tables import fill_table, read_only_table

if TYPE_CHECKING:
    import napari

TOP_GENE_COLUMNS = ["signature", "rank", "gene", "score"]

DOMAIN_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf", "#393b79", "#ad494a", "#8ca252", "#de9ed6", "#e7ba52", "#6b6ecf",
                 "#31a354", "#843c39", "#7b4173", "#3182bd"]


def points_layer_choices(viewer) -> list[tuple[str, object]]:
    """Points layers backed by an AnnData (``metadata["adata"]``)."""
    from napari.layers import Points

    return [(lyr.name, lyr) for lyr in viewer.layers if isinstance(lyr, Points) and "adata" in lyr.metadata]


def weights_layer(adata: ad.AnnData, key: str = "nnmf", *, name: str, spatial_key: str = "spatial") -> tuple:
    """Points LayerDataTuple: each cell's signature weights (row-normalised proportions) as
    features ``S1``..``SK`` plus ``domain``; coloured by S1 with a continuous colormap."""
    W = np.asarray(adata.obsm[f"X_{key}"], dtype=np.float32)
    names = list(adata.uns[key]["signature_names"])
    with np.errstate(invalid="ignore", divide="ignore"):
        P = W / W.sum(axis=1, keepdims=True)
    feats = _obs_features(adata)
    for i, n in enumerate(names):
        feats[n] = P[:, i]
    feats["domain"] = adata.obs[f"{key}_domain"].to_numpy()
    data, kwargs, kind = cells_layer(adata, name, spatial_key=spatial_key, features=feats)
    kwargs.update(face_color=names[0], face_colormap="magma", face_contrast_limits=(0.0, 1.0))
    kwargs["metadata"]["key"] = key
    return data, kwargs, kind


def domain_layer(adata: ad.AnnData, key: str = "nnmf", *, name: str, spatial_key: str = "spatial") -> tuple:
    """Points LayerDataTuple: each cell coloured by its domain (argmax signature), categorical colours."""
    names = list(adata.uns[key]["signature_names"])
    dom = adata.obs[f"{key}_domain"]
    feats = pd.DataFrame({"domain": pd.Categorical(dom.astype(object).where(dom.notna(), "none"),
                                                   categories=[*names, "none"])})
    colors = {n: DOMAIN_COLORS[i % len(DOMAIN_COLORS)] for i, n in enumerate(names)}
    colors["none"] = "#404040"
    data, kwargs, kind = cells_layer(adata, name, spatial_key=spatial_key, features=feats)
    kwargs["face_color"] = [colors[d] for d in feats["domain"]]
    kwargs["metadata"].update({"key": key, "domain_colors": colors})
    return data, kwargs, kind


class NNMFWidget(QWidget):
    """Neighbourhood NMF (Laursen et al. 2026) of a Points layer backed by an AnnData.

    K, lengthscale l (0 = the method's default, the mean distance to the 14th nearest
    neighbour; "Estimate l" scans the leave-one-out smoothing error), slice key (cells of
    different slices are never neighbours). Output: a new Points layer with each cell's
    signature proportions as features (colour by any signature or the domain), a domain
    layer with categorical colours, and a table of top genes per signature. The input
    layer and its AnnData are never modified.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.result: ad.AnnData | None = None
        self.curve: pd.DataFrame | None = None
        self.weights_layer = None
        self.domain_colors: dict[str, str] = {}
        self.top_genes: pd.DataFrame | None = None
        self.cells = ComboBox(label="cells", choices=self._cell_choices)
        self.n_components = SpinBox(label="K (signatures)", min=1, max=200, value=11)
        self.lengthscale = FloatSpinBox(label="lengthscale l (0 = default)", min=0.0, max=1e9, step=1.0, value=0.0)
        self.slice_key = ComboBox(label="slice key", choices=self._slice_choices, nullable=True)
        self.filter_cells = CheckBox(label="leave out empty / duplicated cells", value=True)
        self.max_iter = SpinBox(label="max iterations", min=1, max=100_000, value=1000)
        self.seed = SpinBox(label="seed", min=0, max=2**31 - 1, value=0)
        self.color_by = ComboBox(label="colour by", choices=[])
        self.form = Container(widgets=[self.cells, self.n_components, self.lengthscale, self.slice_key,
                                       self.filter_cells, self.max_iter, self.seed])
        self.estimate_button = QPushButton("Estimate l")
        self.runner = JobRunner("Run NNMF")
        self.runner.run_button.clicked.connect(self.run)
        self.estimate_button.clicked.connect(self.estimate)
        self.color_by.changed.connect(self._recolor)
        self.table = read_only_table(TOP_GENE_COLUMNS, sortable=True)
        layout = QVBoxLayout(self)
        layout.addWidget(self.form.native)
        layout.addWidget(self.estimate_button)
        layout.addWidget(self.runner)
        layout.addWidget(self.color_by.native)
        layout.addWidget(self.table)
        self.cells.changed.connect(lambda _v: self.slice_key.reset_choices())
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            ev.connect(lambda _e=None: self.form.reset_choices())

    # ---------------------------------------------------------------- choices
    def _cell_choices(self, _widget=None):
        return points_layer_choices(self.viewer)

    def _slice_choices(self, _widget=None):
        layer = self.cells.value if hasattr(self, "cells") else None
        if layer is None:
            return []
        obs = layer.metadata["adata"].obs
        return [c for c in obs.columns if obs[c].dtype.kind in "biuO" or isinstance(obs[c].dtype, pd.CategoricalDtype)]

    def _adata(self) -> ad.AnnData:
        layer = self.cells.value
        if layer is None:
            raise ValueError("Choose a points layer backed by an AnnData (open an .h5ad, or a sample).")
        return layer.metadata["adata"]

    def _kwargs(self) -> dict:
        layer = self.cells.value
        ls = float(self.lengthscale.value)
        return {"lengthscale": ls if ls > 0 else None, "slice_key": self.slice_key.value,
                "spatial_key": layer.metadata.get("spatial_key", "spatial"),
                "filter_cells": bool(self.filter_cells.value)}

    # ---------------------------------------------------------------- lengthscale
    def estimate(self) -> None:
        """Scan candidate lengthscales in a worker; the best fills the lengthscale box."""
        if self.runner.running:
            return
        try:
            adata = self._adata()
            kw = self._kwargs()
            kw.pop("lengthscale")
            job = tl.iter_estimate_lengthscale(adata, **kw)
        except (ValueError, TypeError, KeyError) as exc:
            self.runner.fail(exc)
            return
        self.runner.start(job, 10, self._set_lengthscale, description="lengthscale")

    def _set_lengthscale(self, curve: pd.DataFrame) -> None:
        self.curve = curve
        best = curve.iloc[int(curve["error"].to_numpy().argmin())]
        self.lengthscale.value = round(float(best["lengthscale"]), 3)
        self.runner.status.setText(f"lengthscale {best['lengthscale']:.3g} (error {best['error']:.4g}, "
                                   f"{best['mean_neighbors']:.1f} neighbours); curve in widget.curve")

    # ---------------------------------------------------------------- run
    def run(self) -> None:
        """Start NNMF in a worker thread (the Run button)."""
        if self.runner.running:
            return
        try:
            source = self.cells.value
            adata = self._adata().copy()  # results go to a new AnnData
            k = int(self.n_components.value)
            job = tl.iter_nnmf(adata, k, max_iter=int(self.max_iter.value), seed=int(self.seed.value),
                               **self._kwargs())
        except (ValueError, TypeError, KeyError) as exc:
            self.runner.fail(exc)
            return
        total = 3 * 50 + int(self.max_iter.value)
        self.runner.start(job, total, lambda res: self._add_layers(res, source), description="NNMF")

    def _add_layers(self, adata: ad.AnnData, source) -> None:
        self.result = adata
        sk = adata.uns["nnmf"]["params"]["spatial_key"]
        data, kw, _ = domain_layer(adata, name=f"{source.name} NNMF domains", spatial_key=sk)
        self.viewer.add_points(data, **kw)
        self.domain_colors = kw["metadata"]["domain_colors"]
        data, kw, _ = weights_layer(adata, name=f"{source.name} NNMF weights", spatial_key=sk)
        self.weights_layer = self.viewer.add_points(data, **kw)
        names = list(adata.uns["nnmf"]["signature_names"])
        self.color_by.choices = [*names, "domain"]
        self.color_by.value = names[0]
        self._fill_table(tl.nnmf_top_genes(adata))

    def _fill_table(self, top: pd.DataFrame) -> None:
        self.top_genes = top
        fill_table(self.table, top, TOP_GENE_COLUMNS)

    def _recolor(self, value) -> None:
        layer = self.weights_layer
        if layer is None or value is None or layer not in self.viewer.layers:
            return
        if value == "domain":
            layer.face_color = [self.domain_colors.get(str(d), "#404040") for d in layer.features["domain"]]
        else:
            layer.face_color = value
            layer.face_colormap = "magma"
            layer.face_contrast_limits = (0.0, 1.0)
