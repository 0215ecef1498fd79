"""Region correlation dock: which atlas structures does a pattern or gene match?"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from magicgui.widgets import ComboBox, Container, SpinBox
from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QPushButton

from ..core.regions import region_correlation
from ._base import Dock, is_deleted
from ._runner import JobRunner
from ._tables import DataFrameTable

if TYPE_CHECKING:
    import napari

# the numbers first and the long structure name last (it stretches), so r is seen at any width
COLUMNS = [("rank", "rank"), ("acronym", "acronym"), ("r", "Pearson r"), ("n_voxels", "voxels"),
           ("depth", "level"), ("name", "name")]
HIGHLIGHT_KEY = "highlight"
HEADER = ("Rank atlas structures by their Pearson correlation with a pattern or gene (each structure with its "
          "sub-structures). Select a row to outline the structure and move the view to it.")


class RegionCorrelationWidget(Dock):
    """Rank atlas structures by their Pearson correlation with a pattern or gene volume.

    Each structure is the union of itself and its descendants in the ontology, restricted
    to the brain (annotation > 0); missing voxels (NaN, or the layer's
    ``metadata["missing_value"]``) are excluded. Selecting a row outlines the structure in
    a separate Labels layer over the atlas and moves the view to it; the table exports to
    CSV. The source and atlas layers are never modified.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(napari_viewer, HEADER)
        self.result: pd.DataFrame | None = None
        self._atlas = None
        self.source = ComboBox(label="pattern / gene", choices=self._image_choices)
        self.plane = ComboBox(label="gene (stack)", choices=self._plane_choices)
        self.atlas = ComboBox(label="atlas", choices=self._atlas_choices)
        self.min_voxels = SpinBox(label="min voxels", min=1, max=10_000_000, value=50)
        self.form = Container(widgets=[self.source, self.plane, self.atlas, self.min_voxels])
        self.source.changed.connect(self._on_source)
        self.runner = JobRunner("Correlate")
        self.runner.cancel_button.hide()
        self.runner.progress.hide()
        self.runner.run_button.clicked.connect(self.run)
        self.table = DataFrameTable(COLUMNS, stretch="name", min_height=240)
        self.table.on_select(self._on_row)
        self.export_button = QPushButton("Export CSV…")
        self.export_button.setEnabled(False)
        self.export_button.clicked.connect(self._export_dialog)
        self.summary = QLabel("")
        row = QHBoxLayout()
        row.addWidget(self.summary)
        row.addStretch()
        row.addWidget(self.export_button)
        for w in (self.form, self.runner, self.table):
            self.add(w)
        self.layout_.addLayout(row)

    def _on_source(self, _value=None) -> None:
        self.plane.reset_choices()

    def reset_choices(self, _event=None) -> None:
        """Refresh the choices; forget a table whose atlas layer is gone."""
        super().reset_choices()
        if not is_deleted(self) and self._atlas is not None and self._atlas not in self.viewer.layers:
            self._atlas, self.result = None, None
            self.table.set_frame(pd.DataFrame(columns=[c for c, _ in COLUMNS]))
            self.summary.setText("")
            self.runner.status.setText("")
            self.export_button.setEnabled(False)

    # ---------------------------------------------------------------- choices
    def _image_choices(self, _w=None):
        from napari.layers import Image

        return [(lyr.name, lyr) for lyr in self.viewer.layers if isinstance(lyr, Image)]

    def _atlas_choices(self, _w=None):
        from napari.layers import Labels

        return [(lyr.name, lyr) for lyr in self.viewer.layers
                if isinstance(lyr, Labels) and lyr.metadata.get("ontology") is not None]

    def _plane_choices(self, _w=None):
        layer = self.source.value if hasattr(self, "source") else None
        genes = layer.metadata.get("genes") if layer is not None else None
        if layer is None or genes is None or len(genes) < 2 or len(genes) != layer.data.shape[0]:
            return [("(whole layer)", None)]
        return [(str(g), i) for i, g in enumerate(genes)]

    # ---------------------------------------------------------------- compute
    def _volume(self):
        layer = self.source.value
        if layer is None:
            raise ValueError("Choose a pattern or gene image layer.")
        data = np.asarray(layer.data, dtype=np.float32)
        name = layer.name
        if self.plane.value is not None:
            data = data[self.plane.value]
            name = f"{layer.name} [{layer.metadata['genes'][self.plane.value]}]"
        return data, name, layer.metadata.get("missing_value")

    def run(self) -> None:
        """Compute the table (fast: per-label sums, no volume per structure)."""
        try:
            atlas = self.atlas.value
            if atlas is None:
                raise ValueError("Choose an atlas Labels layer with an ontology (e.g. the Allen sample's).")
            vol, name, missing = self._volume()
            annotation = np.asarray(atlas.data)
            if vol.shape != annotation.shape:
                raise ValueError(f"The volume has shape {vol.shape} but the atlas has shape "
                                 f"{annotation.shape}: choose a volume on the atlas grid.")
            df = region_correlation(vol, annotation, atlas.metadata["ontology"], names=[name],
                                    missing_value=missing, min_voxels=int(self.min_voxels.value))
        except (ValueError, KeyError, TypeError) as exc:
            self.runner.fail(exc)
            return
        self._atlas, self.result = atlas, df
        self.table.set_frame(df, sort_by="rank")
        best = df.iloc[0]
        self.runner.status.setText(f"{name}: best {best['acronym']} ({best['name']}), r = {best['r']:.3f}")
        self.summary.setText(f"{len(df)} structures with ≥ {int(self.min_voxels.value)} voxels")
        self.export_button.setEnabled(True)

    # ---------------------------------------------------------------- selection
    def _on_row(self, row) -> None:
        self.select_structure(int(row["id"]))

    def select_structure(self, structure_id: int) -> None:
        """Outline a structure (and its descendants) over the atlas and centre the view on it."""
        atlas = self._atlas
        if atlas is None:
            return
        onto = atlas.metadata["ontology"]
        mask = np.isin(np.asarray(atlas.data), onto.descendants(structure_id))
        highlight_mask(self.viewer, atlas, mask, onto[structure_id]["acronym"], structure_id=int(structure_id))

    # ---------------------------------------------------------------- export
    def export_csv(self, path) -> Path:
        """Write the current table (all columns) to ``path``."""
        if self.result is None:
            raise ValueError("Nothing to export yet: run the correlation first.")
        path = Path(path)
        self.result.to_csv(path, index=False)
        return path

    def _export_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export region correlation", "region_correlation.csv",
                                              "CSV (*.csv)")
        if path:
            self.export_csv(path)


def highlight_mask(viewer, atlas, mask: np.ndarray, name: str, **metadata) -> None:
    """Show ``mask`` (atlas grid) as the one outlined highlight Labels layer over ``atlas``
    (created once, then reused) and move the non-displayed axes to the mask's centre.
    """
    layer = next((lyr for lyr in viewer.layers if lyr.metadata.get(HIGHLIGHT_KEY)), None)
    data = mask.astype(np.uint8)
    if layer is None:
        from napari.utils.colormaps import DirectLabelColormap

        layer = viewer.add_labels(
            data, name=f"highlight: {name}", scale=atlas.scale, translate=atlas.translate, opacity=1.0,
            units=atlas.units, axis_labels=atlas.axis_labels,
            colormap=DirectLabelColormap(color_dict={None: (0, 0, 0, 0), 1: (1.0, 0.85, 0.0, 1.0)}),
            metadata={HIGHLIGHT_KEY: True, **metadata})
        layer.contour = 1  # an outline, so the pattern underneath stays visible
    else:
        layer.data = data
        layer.name = f"highlight: {name}"
        layer.metadata.update(metadata)
    if mask.any():
        centre = np.argwhere(mask).mean(axis=0)
        world = np.asarray(atlas.translate) + centre * np.asarray(atlas.scale)
        offset = viewer.dims.ndim - world.size  # layer axes are the viewer's last ones
        for axis in viewer.dims.not_displayed:
            if axis >= offset:
                viewer.dims.set_point(axis, world[axis - offset])
