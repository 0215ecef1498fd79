"""Integration dock: several sections -> shared spatial factors and gene programs; 3D stack."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from magicgui.widgets import ComboBox, Container, FloatSpinBox, Select, SpinBox
from qtpy.QtWidgets import QPushButton

from .. import tl
from .._canvas import install
from .._layers import cells_layer, color_kwargs
from ..results import REGISTRY, RESULT_ID
from ._base import Dock, Legend, is_deleted
from ._runner import JobRunner
from ._tables import DataFrameTable
from .nnmf import points_layer_choices, slice_key_choices

if TYPE_CHECKING:
    import napari

HEADER = ("Integrate sections (serial sections, replicates, other platforms) into K spatial factors with gene "
          "programs shared by all sections: INSPIRE (PyTorch) or joint neighbourhood NMF (CPU). Sections are shown "
          "side by side, one colour per factor; Reconstruct 3D stacks serial sections.")
# the gene right after its factor; numbers shown to 3 significant digits so the gene column has room
PROGRAM_COLUMNS = [("factor", "factor"), ("gene", "gene"), ("rank", "rank"), ("loading", "loading"),
                   ("score", "score")]


class IntegrationWidget(Dock):
    """Integrate several Points layers of cells (one per section, in list order) or one layer
    with a section column; the result is a new layer of all sections side by side, coloured
    by factor, and a table of each factor's top genes. *Reconstruct 3D* aligns adjacent
    sections in the integrated space and adds them stacked as one 3D Points layer. Inputs are
    never modified; a cancelled run adds nothing.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(napari_viewer, HEADER)
        self.result = None
        self.layer = None
        self.sections = Select(label="sections", choices=lambda _w: points_layer_choices(self.viewer),
                               allow_multiple=True)
        self.sections.native.setMaximumHeight(100)
        self.section_key = ComboBox(label="or section key", choices=self._key_choices, nullable=True)
        # joint NNMF first: seconds on a laptop, no PyTorch; INSPIRE trains for minutes on a CPU
        self.method = ComboBox(label="method", choices=[("joint NNMF (CPU, seconds)", "joint_nnmf"),
                                                        ("INSPIRE (PyTorch, minutes)", "inspire")])
        self.n_factors = SpinBox(label="K (factors)", min=2, max=200, value=10)
        self.n_steps = SpinBox(label="iterations", min=10, max=100_000, value=1000, step=100)
        self.method.changed.connect(self._on_method)
        self.n_hvgs = SpinBox(label="HVGs per section", min=0, max=50_000, value=3000, step=500)
        self.seed = SpinBox(label="random state", min=0, max=2**31 - 1, value=1234)
        self.form = Container(widgets=[self.sections, self.section_key, self.method, self.n_factors, self.n_steps,
                                       self.n_hvgs, self.seed])
        self.sections.changed.connect(self._on_sections)
        self.runner = JobRunner("Integrate")
        self.runner.run_button.clicked.connect(self.run)
        self.color_by = ComboBox(label="colour cells by", choices=[])
        self.color_by.changed.connect(self._recolor)
        self.legend = Legend(columns=4)
        self.table = DataFrameTable(PROGRAM_COLUMNS, stretch="gene", min_height=200)
        self.spacing = FloatSpinBox(label="section spacing (µm)", min=0.0, max=1e6, value=10.0)
        self.um_per_unit = FloatSpinBox(label="µm per coordinate unit", min=1e-6, max=1e6, value=1.0, step=0.1)
        self.reconstruct_button = QPushButton("Reconstruct 3D")
        self.reconstruct_button.setEnabled(False)
        self.reconstruct_button.clicked.connect(self.reconstruct)
        for w in (self.form, self.runner, self.color_by, self.legend, self.table, self.spacing, self.um_per_unit,
                  self.reconstruct_button):
            self.add(w)
        self.reset_choices()
        self._preselect()

    def reset_choices(self, _event=None) -> None:
        """Refresh the layer choices (napari calls this when layers change)."""
        super().reset_choices()
        if hasattr(self, "sections") and not is_deleted(self):
            self._preselect()

    def _preselect(self) -> None:
        """Start from what is open: every cell layer when there are several (one per section, as
        the Ståhl sample opens), and joint NNMF when PyTorch is not installed.
        """
        import importlib.util

        if not self.sections.value and len(self.sections.choices) >= 2:
            self.sections.value = list(self.sections.choices)
        if importlib.util.find_spec("torch") is None:
            self.method.value = "joint_nnmf"

    def _on_method(self, method=None) -> None:
        """The iteration budget follows the method: joint NNMF's iterations (at most; it stops on
        convergence) or INSPIRE's training steps (a fixed number, as the reference).
        """
        inspire = self.method.value == "inspire"
        self.n_steps.label = "training steps" if inspire else "iterations (at most)"
        self.n_steps.value = 2000 if inspire else 1000

    def _key_choices(self, _w=None):
        layers = list(self.sections.value) if hasattr(self, "sections") else []
        return slice_key_choices(layers[0].metadata["adata"].obs) if len(layers) == 1 else []

    def _on_sections(self, _value=None) -> None:
        self.section_key.reset_choices()
        layers = list(self.sections.value)
        if layers:
            unit = tl.spatial_unit(layers[0].metadata["adata"])
            self.um_per_unit.value = 1.0 if unit in ("µm", "um") else self.um_per_unit.value
            self.um_per_unit.label = f"µm per coordinate unit ({unit})"

    def _job(self):
        layers = list(self.sections.value)
        if not layers:
            raise ValueError("Choose the sections: two or more points layers of cells, or one with a section key.")
        kw = {"method": self.method.value, "n_hvgs": int(self.n_hvgs.value) or None,
              "random_state": int(self.seed.value)}
        kw["n_steps" if self.method.value == "inspire" else "max_iter"] = int(self.n_steps.value)
        if len(layers) == 1:
            if self.section_key.value is None:
                raise ValueError("One layer was chosen: pick its section key, or choose one layer per section.")
            data = layers[0].metadata["adata"]
            kw["section_key"] = self.section_key.value
        else:
            data = [lyr.metadata["adata"] for lyr in layers]
            kw["section_names"] = [lyr.name for lyr in layers]
        return tl.iter_integrate(data, int(self.n_factors.value), **kw), layers

    def run(self) -> None:
        """Start the integration in a worker thread; bad input is refused at once."""
        if self.runner.running:
            return
        try:
            job, layers = self._job()
        except (ValueError, TypeError, KeyError, ImportError) as exc:
            self.runner.fail(exc)
            return
        self.runner.start(job, lambda res: self._show(res, layers), description="integration")

    def _show(self, adata, layers) -> None:
        self.result = REGISTRY.add(adata, "integration", "integration", " + ".join(lyr.name for lyr in layers))
        rec = adata.uns["integration"]
        names = list(rec["factor_names"])
        feats = pd.DataFrame({"section": adata.obs["section"].to_numpy(),
                              "factor": adata.obs["integration_factor"].to_numpy()})
        W = np.asarray(adata.obsm["X_integration"])
        for i, n in enumerate(names):
            feats[n] = W[:, i]
        data, kw, _ = cells_layer(adata, "integrated factors (sections side by side)", spatial_key="spatial_layout",
                                  features=feats, color_by="factor")
        kw["metadata"].update({RESULT_ID: self.result.id, "key": "integration"})
        self.layer = self.viewer.add_points(data, **kw)
        self.factor_colors = kw["metadata"]["legend"]["colors"]
        self.legend.set_colors(self.factor_colors, "factor (largest share)")
        for lyr in layers:
            lyr.visible = False
        self.color_by.choices = ["factor", *names, "section"]
        self.color_by.value = "factor"
        self.table.set_frame(_programs(adata))
        self.reconstruct_button.setEnabled(True)
        qc = rec["qc"]
        self.runner.status.setText(f"{len(rec['sections'])} sections, {adata.n_obs:,} cells, {qc['n_shared_genes']:,} "
                                   f"shared genes; {len(names)} factors ({rec['method']}).")

    def _recolor(self, value) -> None:
        if self.layer is None or value is None or self.layer not in self.viewer.layers:
            return
        kw = color_kwargs(None, self.layer.features[value], value)
        legend = kw.pop("_categories", None)
        if value == "factor":
            self.layer.face_color = [self.factor_colors.get(str(f), "#404040") for f in self.layer.features["factor"]]
            self.layer.metadata["legend"] = {"title": "factor (largest share)", "colors": dict(self.factor_colors)}
        else:
            self.layer.face_color = kw["face_color"]
            if legend is not None:
                self.layer.metadata["legend"] = {"title": value, "colors": legend}
            else:
                self.layer.metadata.pop("legend", None)
            if "face_colormap" in kw:
                self.layer.face_colormap = kw["face_colormap"]
                self.layer.face_contrast_limits = kw["face_contrast_limits"]
        install(self.viewer).refresh()

    def reconstruct(self) -> None:
        """Align adjacent sections (in the list's order) and add them stacked in 3D (µm)."""
        if self.result is None:
            return
        adata = self.result.adata
        try:
            table = tl.reconstruct_3d(adata, spacing=float(self.spacing.value),
                                      um_per_unit=float(self.um_per_unit.value))
        except (ValueError, KeyError) as exc:
            self.runner.fail(exc)
            return
        xyz = np.asarray(adata.obsm["spatial_3d"])[:, ::-1]  # napari (z, y, x)
        feats = self.layer.features.copy()
        kw = {"name": "integrated sections in 3D (µm)", "features": feats, "size": max(self.layer.size.mean(), 1.0)
              * float(self.um_per_unit.value), "border_width": 0, "axis_labels": ("z", "y", "x"),
              "metadata": {RESULT_ID: self.result.id, "key": "integration"},
              "face_color": [self.factor_colors.get(str(f), "#404040") for f in feats["factor"]]}
        if all(str(u) == "micrometer" for lyr in self.viewer.layers for u in lyr.units):
            kw["units"] = ("micrometer",) * 3  # (napari ignores units, with a warning, when layers disagree)
        self.viewer.add_points(xyz, **kw)
        self.viewer.dims.ndisplay = 3
        self.viewer.reset_view()
        # tilted, so the stack's depth shows (napari 0.9 moved the camera to viewer.scene)
        scene = getattr(self.viewer, "scene", None)
        (scene.camera if scene is not None else self.viewer.camera).angles = (-30.0, 30.0, 120.0)
        (scene.overlays.axes if scene is not None else self.viewer.axes).visible = True
        self.runner.status.setText("3D: " + "; ".join(f"{r.section} rotated {r.angle_deg:.1f}°"
                                                      for r in table.itertuples()))


def _programs(adata) -> pd.DataFrame:
    from ..pipeline import program_table

    table = program_table(adata, n_top=10)
    for col in ("loading", "score"):
        table[col] = table[col].map(lambda v: float(f"{v:.3g}"))
    return table
