"""Label transfer dock: carry labels (domains, layers, cell types) from one cell layer to another."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from magicgui.widgets import ComboBox, Container, SpinBox
from qtpy.QtWidgets import QLabel

from .. import tl
from .._canvas import install
from .._layers import cells_layer, color_kwargs, obs_features
from ..results import REGISTRY, RESULT_ID
from ..tl._scores import TRANSFER_SMOOTH
from ._base import Dock, Legend
from ._runner import JobRunner
from .color_by import cell_layer_choices
from .integration import WARN_STYLE
from .nnmf import few_valued_columns, slice_key_choices

if TYPE_CHECKING:
    import napari

HEADER = ("Carry labels (NNMF domains, expert layers, cell types) from a reference layer of cells to another "
          "layer (another section, a smaller gene panel, another technology) through the genes both measured and "
          "the cells' surroundings. The result is a new layer; both inputs stay as they were.")
MAX_LABELS = 200  # a column with more values than this is an id or a measurement, not labels


def label_column_choices(obs: pd.DataFrame) -> list[str]:
    """Obs columns that can be carried: categories or text with 2 to :data:`MAX_LABELS`
    values, fewer values than cells (not an id); domain columns of our results first.
    """
    out = few_valued_columns(obs, "OUb", min(MAX_LABELS, len(obs) - 1))
    return sorted(out, key=lambda c: not c.endswith("_domain"))


class LabelTransferWidget(Dock):
    """Pick the reference layer and its labels, then the query layer; *Transfer labels* runs
    :func:`napari_spatial_nmf.tl.transfer_labels` in a worker thread (Cancel stops it between
    its stages) and adds the query's cells, coloured by their labels in the reference's
    colours, with each cell's confidence (its highest averaged class probability) to hover
    and to colour by. The mean confidence and any warning (few shared genes, an unconfident
    transfer) are shown under the button.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(napari_viewer, HEADER)
        self.result = None
        self.layer = None
        self.reference = ComboBox(label="reference cells", choices=lambda _w: cell_layer_choices(self.viewer),
                                  tooltip="the layer whose cells have the labels (e.g. an NNMF domains layer, or "
                                          "cells with an expert annotation)")
        self.labels = ComboBox(label="labels", choices=self._label_choices,
                               tooltip="the reference's obs column to carry")
        self.query = ComboBox(label="query cells", choices=self._query_choices,
                              tooltip="the layer whose cells get the labels (any panel sharing genes)")
        self.section_key = ComboBox(label="section key", choices=self._section_choices, nullable=True,
                                    tooltip="obs column naming each cell's section when a layer holds several: "
                                            "genes are standardised and neighbours taken within each section")
        self.smooth = SpinBox(label="average over (cells)", min=1, max=1000, value=TRANSFER_SMOOTH,
                              tooltip="each query cell's label probabilities are averaged over this many nearest "
                                      "cells (1: none)")
        self.seed = SpinBox(label="random state", min=0, max=2**31 - 1, value=0)
        self.form = Container(widgets=[self.reference, self.labels, self.query, self.section_key, self.smooth,
                                       self.seed])
        self.reference.changed.connect(self._on_reference)
        self.query.changed.connect(self._on_query)
        self.runner = JobRunner("Transfer labels")
        self.runner.run_button.clicked.connect(self.run)
        self.diagnostics = QLabel("")
        self.diagnostics.setStyleSheet(WARN_STYLE)
        self.color_by = ComboBox(label="colour cells by", choices=[])
        self.color_by.changed.connect(self._recolor)
        self.legend = Legend(columns=2)
        for w in (self.form, self.runner, self.diagnostics, Container(widgets=[self.color_by]), self.legend):
            self.add(w)
        self.layout_.addStretch()
        self.reset_choices()
        self._on_reference()

    def _label_choices(self, _w=None) -> list[str]:
        layer = self.reference.value if hasattr(self, "reference") else None
        return [] if layer is None else label_column_choices(layer.metadata["adata"].obs)

    def _query_choices(self, _w=None) -> list[tuple[str, object]]:
        """Cell layers other than the reference, inputs before results."""
        ref = self.reference.value if hasattr(self, "reference") else None
        layers = [(n, lyr) for n, lyr in cell_layer_choices(self.viewer) if lyr is not ref]
        return sorted(layers, key=lambda c: RESULT_ID in c[1].metadata)

    def _section_choices(self, _w=None) -> list[str]:
        """Section columns of either layer (categories shared by many cells, as the NNMF dock's slice key)."""
        layers = [getattr(self, n).value for n in ("reference", "query") if hasattr(self, n)]
        keys = [k for lyr in layers if lyr is not None for k in slice_key_choices(lyr.metadata["adata"].obs)]
        return list(dict.fromkeys(keys))

    def _on_query(self, _value=None) -> None:
        """A section key only when a layer has a column named like one (never guessed from labels)."""
        self.section_key.reset_choices()
        if self.section_key.value is None:
            names = [k for k in self.section_key.choices if k in ("section", "slice", "sample", "batch")]
            self.section_key.value = names[0] if names else None

    def _on_reference(self, _value=None) -> None:
        """A new reference: its labels, a domain column first (what NNMF results hold), and the
        query choices without it.
        """
        self.labels.reset_choices()
        first = self._label_choices()
        if first:
            self.labels.value = first[0]
        self.query.reset_choices()
        self._on_query()

    def _job(self):
        ref, query = self.reference.value, self.query.value
        if ref is None or query is None:
            raise ValueError("Choose two layers of cells: the reference, whose cells have the labels, and the query "
                             "(open .h5ad files, or run NNMF for domains to carry).")
        if self.labels.value is None:
            raise ValueError(f"{ref.name!r} has no column of labels (categories or text with 2 to {MAX_LABELS} "
                             "values): choose another reference layer.")
        reference = ref.metadata["adata"]
        adata = query.metadata["adata"].copy()  # results go to a new AnnData
        sk = query.metadata.get("spatial_key", "spatial")
        if ref.metadata.get("spatial_key", "spatial") != sk:
            raise ValueError(f"The layers keep their coordinates under different keys "
                             f"({ref.metadata.get('spatial_key')!r}, {sk!r}).")
        section_key = self.section_key.value
        if section_key is not None and section_key == self.labels.value:
            raise ValueError(f"{section_key!r} is both the labels and the section key: choose another section key "
                             "(or none).")
        job = tl.iter_transfer_labels(reference, adata, self.labels.value, spatial_key=sk,
                                      section_key=section_key,
                                      smooth=int(self.smooth.value), random_state=int(self.seed.value))
        return job, adata, ref, query

    def run(self) -> None:
        """Start the transfer in a worker thread; bad input is refused at once."""
        if self.runner.running:
            return
        try:
            job, adata, ref, query = self._job()
        except (ValueError, TypeError, KeyError) as exc:
            self.runner.fail(exc)
            return
        labels_key = self.labels.value
        self.runner.start(job, lambda _res: self._show(adata, ref, query, labels_key), description="label transfer")

    def _show(self, adata, ref, query, labels_key: str) -> None:
        from ..pipeline import transfer_colors

        key = f"{labels_key}_transferred"
        # the reference layer's own colours, as the user sees them
        colors = transfer_colors(ref.metadata["adata"], labels_key, adata, key,
                                 palette=ref.metadata.get("legend", {}).get("colors"))
        cats = [str(c) for c in adata.obs[key].cat.categories]
        self.result = REGISTRY.add(adata, "transfer", key, f"{ref.name} → {query.name}")
        rec = adata.uns[key]
        feats = obs_features(adata)
        feats["confidence"] = np.asarray(adata.obsm[f"{key}_probability"]).max(axis=1)
        data, kw, _ = cells_layer(adata, f"{query.name}: {labels_key} from {ref.name}",
                                  spatial_key=query.metadata.get("spatial_key", "spatial"), features=feats,
                                  color_by=key)
        kw["metadata"].update({RESULT_ID: self.result.id, "key": key})
        self.layer = self.viewer.add_points(data, **kw)
        self.colors = {c: colors[c] for c in cats}
        self.color_by.choices = [key, "confidence", *[c for c in (labels_key,) if c in feats]]
        self.color_by.value = key
        query.visible = False
        counts = adata.obs[key].value_counts()
        kept = rec.get("depth_kept")
        depth = (f" The reference's counts were thinned to the query's depth (a gene keeps {kept['median']:.0%} "
                 "of its counts, the median)." if kept and kept["median"] < 0.95 else "")
        self.runner.status.setText(
            f"{adata.n_obs:,} cells labelled over {rec['n_genes']:,} shared genes: {int((counts > 0).sum())} of "
            f"{len(cats)} labels used; mean confidence {rec['mean_confidence']:.2f}.{depth}")
        self.diagnostics.setText("\n".join(str(w) for w in rec["warnings"]))

    def _recolor(self, value) -> None:
        if self.layer is None or value is None or self.layer not in self.viewer.layers:
            return
        values = self.layer.features[value]
        if value == self.color_by.choices[0]:
            self.layer.face_color = [self.colors.get(str(v), "#404040") for v in values]
            self.layer.metadata["legend"] = {"title": value, "colors": dict(self.colors)}
            self.legend.set_colors(self.colors, f"{value} (the reference's colours)")
        else:
            kw = color_kwargs(self.result.adata, values, value)
            legend = kw.pop("_categories", None)
            self.layer.face_color = kw["face_color"]
            if legend is not None:
                self.layer.metadata["legend"] = {"title": value, "colors": legend}
                self.legend.set_colors(legend, value)
            else:
                self.layer.metadata.pop("legend", None)
                self.layer.face_colormap = kw["face_colormap"]
                self.layer.face_contrast_limits = (0.0, 1.0) if value == "confidence" else kw["face_contrast_limits"]
                self.legend.set_colors({}, f"{value} (colour bar on the canvas)")
        install(self.viewer).refresh()
