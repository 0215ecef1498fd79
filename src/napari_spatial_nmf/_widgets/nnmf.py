"""Neighbourhood NMF dock: spatial gene programs of a cell point cloud (2D or 3D)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, SpinBox
from qtpy.QtWidgets import QLabel, QPushButton

from .. import tl
from .._canvas import install
from .._layers import domain_layer, weights_layer
from ..results import REGISTRY, RESULT_ID
from ._base import Dock, Legend, stop_text
from ._runner import JobRunner
from ._tables import DataFrameTable

if TYPE_CHECKING:
    import napari

TOP_GENE_COLUMNS = [("signature", "signature"), ("rank", "rank"), ("gene", "gene"), ("score", "score")]
MAX_SLICES = 64  # a slice key with more values than this is not a plausible slice / section label
HEADER = ("Neighbourhood NMF (Laursen et al. 2026): K spatial gene programs (signatures); each cell's share of "
          "them is smoothed over its neighbours within ~1.5 lengthscales.")


def points_layer_choices(viewer) -> list[tuple[str, object]]:
    """Points layers backed by an AnnData (``metadata["adata"]``), not our own results."""
    from napari.layers import Points

    return [(lyr.name, lyr) for lyr in viewer.layers
            if isinstance(lyr, Points) and "adata" in lyr.metadata and RESULT_ID not in lyr.metadata]


def few_valued_columns(obs: pd.DataFrame, kinds: str, max_values: int) -> list[str]:
    """Obs columns of categories (or of the dtype ``kinds``, e.g. ``"OUb"`` for text and
    booleans) holding 2 to ``max_values`` distinct values: labels or sections, not ids.
    """
    return [str(c) for c in obs.columns
            if (isinstance(obs[c].dtype, pd.CategoricalDtype) or obs[c].dtype.kind in kinds)
            and 2 <= obs[c].nunique(dropna=True) <= max_values]


def slice_key_choices(obs: pd.DataFrame) -> list[str]:
    """Obs columns that can label slices / sections: categorical (or text / small integers)
    with 2 to :data:`MAX_SLICES` values, each value shared by many cells (not an id).
    """
    return few_valued_columns(obs, "OUbi", min(MAX_SLICES, max(2, len(obs) // 10)))


class NNMFWidget(Dock):
    """Neighbourhood NMF (Laursen et al. 2026) of a Points layer backed by an AnnData.

    K, lengthscale l in the coordinates' unit (0 = the method's default, the mean distance
    to the 14th nearest neighbour; *Estimate l* scans the leave-one-out smoothing error),
    slice key (cells of different slices are never neighbours). Output: a domain layer
    (argmax signature, categorical colours with a legend here), a weights layer (each
    cell's share of every signature; colour by any), and the top genes per signature. The
    input layer and its AnnData are never modified.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(napari_viewer, HEADER)
        self.result = None
        self.curve: pd.DataFrame | None = None
        self.weights_layer = None
        self.cells = ComboBox(label="cells", choices=lambda _w: points_layer_choices(self.viewer))
        self.n_components = SpinBox(label="K (signatures)", min=1, max=200, value=11)
        self.lengthscale = FloatSpinBox(label="lengthscale (0 = default)", min=0.0, max=1e9, step=1.0, value=0.0)
        self.slice_key = ComboBox(label="slice key", choices=self._slice_choices, nullable=True)
        self.filter_cells = CheckBox(label="leave out empty / duplicated cells", value=True)
        self.max_iter = SpinBox(label="max iterations", min=1, max=100_000, value=1000)
        self.seed = SpinBox(label="random state", min=0, max=2**31 - 1, value=0)
        self.form = Container(widgets=[self.cells, self.n_components, self.lengthscale, self.slice_key,
                                       self.filter_cells, self.max_iter, self.seed])
        self.unit = QLabel("")
        self.estimate_button = QPushButton("Estimate lengthscale")
        self.estimate_button.clicked.connect(self.estimate)
        self.runner = JobRunner("Run NNMF")
        self.runner.run_button.clicked.connect(self.run)
        self.color_by = ComboBox(label="colour cells by", choices=[])
        self.color_by.changed.connect(self._recolor)
        self.legend = Legend()
        self.table = DataFrameTable(TOP_GENE_COLUMNS, stretch="gene")
        self.cells.changed.connect(self._on_cells)
        for w in (self.form, self.unit, self.estimate_button, self.runner, self.color_by, self.legend, self.table):
            self.add(w)
        self.reset_choices()
        self._on_cells()

    def _slice_choices(self, _widget=None):
        layer = self.cells.value if hasattr(self, "cells") else None
        return [] if layer is None else slice_key_choices(layer.metadata["adata"].obs)

    def _on_cells(self, _value=None) -> None:
        self.slice_key.reset_choices()
        layer = self.cells.value
        if layer is not None:
            adata = layer.metadata["adata"]
            self.unit.setText(f"coordinates: {adata.obsm[layer.metadata.get('spatial_key', 'spatial')].shape[1]}-D, "
                              f"lengthscale in {tl.spatial_unit(adata)}")
            self.n_components.max = adata.n_vars

    def _adata(self):
        layer = self.cells.value
        if layer is None:
            raise ValueError("Choose a points layer of cells (open an .h5ad, or File ▸ Open Sample).")
        return layer.metadata["adata"]

    def _kwargs(self) -> dict:
        ls = float(self.lengthscale.value)
        return {"lengthscale": ls if ls > 0 else None, "slice_key": self.slice_key.value,
                "spatial_key": self.cells.value.metadata.get("spatial_key", "spatial"),
                "filter_cells": bool(self.filter_cells.value)}

    # ---------------------------------------------------------------- lengthscale
    def estimate(self) -> None:
        """Scan candidate lengthscales in a worker; the best fills the lengthscale box."""
        if self.runner.running:
            return
        try:
            kw = self._kwargs()
            kw.pop("lengthscale")
            job = tl.iter_estimate_lengthscale(self._adata(), **kw)
        except (ValueError, TypeError, KeyError) as exc:
            self.runner.fail(exc)
            return
        unit = tl.spatial_unit(self._adata())

        def done(res):
            best, self.curve = res
            self.lengthscale.value = round(best, 3)
            row = self.curve.iloc[int(self.curve["error"].to_numpy().argmin())]
            self.runner.status.setText(f"Lengthscale {best:.3g} {unit}: lowest leave-one-out error "
                                       f"({row['error']:.3g}), {row['mean_neighbors']:.1f} neighbours per cell.")

        self.runner.start(job, done, description="lengthscale")

    # ---------------------------------------------------------------- run
    def run(self) -> None:
        """Start NNMF in a worker thread (the Run button); bad input is refused at once."""
        if self.runner.running:
            return
        try:
            source = self.cells.value
            adata = self._adata().copy()  # results go to a new AnnData
            k = int(self.n_components.value)
            job = tl.iter_nnmf(adata, k, max_iter=int(self.max_iter.value), random_state=int(self.seed.value),
                               **self._kwargs())
        except (ValueError, TypeError, KeyError) as exc:
            self.runner.fail(exc)
            return
        self.runner.start(job, lambda res: self._add_layers(res, source), description="NNMF")

    def _add_layers(self, adata, source) -> None:
        result = REGISTRY.add(adata, "nnmf", "nnmf", source.name)
        self.result = result
        sk = adata.uns["nnmf"]["params"].get("spatial_key", "spatial")
        data, kw, _ = domain_layer(result, column="nnmf_domain", name=f"{source.name} NNMF domains", spatial_key=sk)
        self.viewer.add_points(data, **kw)
        legend = kw["metadata"]["legend"]
        data, kw, _ = weights_layer(result, name=f"{source.name} NNMF weights", spatial_key=sk, proportions=True)
        self.weights_layer = self.viewer.add_points(data, **kw)
        self.weights_layer.visible = False
        source.visible = False
        self.legend.set_colors(legend["colors"], "domain (largest signature)")
        self.domain_colors = legend["colors"]
        names = list(adata.uns["nnmf"]["signature_names"])
        self.color_by.choices = [*names, "domain"]
        self.color_by.value = names[0]
        self.top_genes = tl.nnmf_top_genes(adata)
        self.table.set_frame(self.top_genes)
        rec = adata.uns["nnmf"]
        self.runner.status.setText(f"K = {len(names)} signatures over {rec['n_fitted_cells']:,} cells; lengthscale "
                                   f"{rec['lengthscale']:.3g} {tl.spatial_unit(adata)} "
                                   f"({rec['mean_neighbors']:.1f} neighbours per cell); "
                                   f"{stop_text(rec['stop_reason'])}.")

    def _recolor(self, value) -> None:
        from .._layers import color_kwargs

        layer = self.weights_layer
        if layer is None or value is None or layer not in self.viewer.layers:
            return
        layer.visible = True
        kw = color_kwargs(None, layer.features[value], value)
        kw.pop("_categories", None)
        if value == "domain":
            layer.face_color = [self.domain_colors.get(str(d), "#404040") for d in layer.features["domain"]]
            layer.metadata["legend"] = {"title": "domain", "colors": dict(self.domain_colors)}
        else:
            layer.metadata.pop("legend", None)
            layer.face_color = kw["face_color"]
            layer.face_colormap = kw["face_colormap"]
            layer.face_contrast_limits = kw["face_contrast_limits"]
        self.viewer.layers.selection.active = layer
        install(self.viewer).refresh()
