"""Stability dock: choose K by staNMF (bootstrap instability), then fit patterns at that K."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, LineEdit, Select, SpinBox
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from .. import tl
from ..core.stability import check_stability_input
from ._runner import JobRunner
from .pattern_discovery import (
    MISSING_CHOICES,
    add_result_layers,
    build_input,
    input_layer_choices,
    mask_layer_choices,
)

if TYPE_CHECKING:
    import napari


class InstabilityPlot(QWidget):
    """Instability vs K with error bars (matplotlib in the dock), redrawn as K finish."""

    def __init__(self):
        super().__init__()
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 2.6), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.ax = self.figure.add_subplot(111)
        self.points: dict[int, tuple[float, float]] = {}
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.setMinimumHeight(200)
        self.draw()

    def clear(self) -> None:
        self.points = {}
        self.draw()

    def add(self, k: int, value: float, sd: float) -> None:
        self.points[int(k)] = (float(value), float(sd))
        self.draw()

    def draw(self) -> None:
        ax = self.ax
        ax.clear()
        ax.set_xlabel("K (number of principal patterns)")
        ax.set_ylabel("instability")
        if self.points:
            ks = sorted(self.points)
            v = np.array([self.points[k][0] for k in ks])
            e = np.array([self.points[k][1] for k in ks])
            ax.errorbar(ks, v, yerr=e, marker="o", ms=4, capsize=2, lw=1)
            best = ks[int(np.argmin(v))]
            ax.axvline(best, color="tab:red", ls=":", lw=1)
            ax.set_title(f"lowest at K = {best}", fontsize=9)
        self.canvas.draw_idle()


class StabilityWidget(QWidget):
    """staNMF: fit NMF to bootstrap replicates for a range of K and plot the instability.

    The instability score of a K is the mean dissimilarity of the replicates' dictionaries
    over all pairs (Hungarian or Amari matching). Pick the K (the lowest is preselected) and
    fit the final patterns, which become layers exactly as in the pattern-discovery dock.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.result: ad.AnnData | None = None
        self._input = None
        self.inputs = Select(label="input", choices=lambda _w: input_layer_choices(self.viewer),
                             allow_multiple=True)
        self.inputs.native.setMaximumHeight(90)
        self.mask = ComboBox(label="mask", choices=lambda _w: mask_layer_choices(self.viewer), nullable=True)
        self.missing = ComboBox(label="missing values", choices=list(MISSING_CHOICES))
        self.k_min = SpinBox(label="K from", min=2, max=500, value=5)
        self.k_max = SpinBox(label="K to", min=2, max=500, value=12)
        self.n_replicates = SpinBox(label="replicates (N)", min=2, max=10_000, value=20)
        self.resample = ComboBox(label="resample", choices=["genes", "obs", "none"])
        self.matching = ComboBox(label="matching", choices=["hungarian", "amari"])
        self.similarity = ComboBox(label="similarity", choices=["cosine", "pearson"])
        self.seed = SpinBox(label="seed", min=0, max=2**31 - 1, value=0)
        self.backend = ComboBox(label="backend", choices=["local", "dask"])
        self.scheduler = LineEdit(label="dask scheduler", value="")
        self.store = FileEdit(label="results store", mode="d", value="")
        self.form = Container(widgets=[self.inputs, self.mask, self.missing, self.k_min, self.k_max,
                                       self.n_replicates, self.resample, self.matching, self.similarity,
                                       self.seed, self.backend, self.scheduler, self.store])
        self.runner = JobRunner("Run stability sweep")
        self.runner.run_button.clicked.connect(self.run)
        self.plot = InstabilityPlot()
        self.chosen_k = SpinBox(label="K", min=2, max=500, value=5)
        self.fit_button = QPushButton("Fit patterns at K")
        self.fit_button.setEnabled(False)
        self.fit_button.clicked.connect(self.fit_final)
        row = QHBoxLayout()
        row.addWidget(QLabel("chosen"))
        row.addWidget(self.chosen_k.native)
        row.addWidget(self.fit_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.form.native)
        layout.addWidget(self.runner)
        layout.addWidget(self.plot)
        layout.addLayout(row)
        layout.addStretch()
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            ev.connect(lambda _e: self.form.reset_choices())

    def _sweep_kwargs(self) -> dict:
        store = str(self.store.value) if str(self.store.value) not in ("", ".") else None
        return {"resample": self.resample.value, "matching": self.matching.value,
                "similarity": self.similarity.value, "random_state": int(self.seed.value),
                "backend": self.backend.value, "scheduler": self.scheduler.value or None, "store": store}

    def run(self) -> None:
        """Start the sweep in a worker thread (the Run button)."""
        if self.runner.running:
            return
        ks = list(range(int(self.k_min.value), int(self.k_max.value) + 1))
        n = int(self.n_replicates.value)
        kwargs = self._sweep_kwargs()
        try:
            if not ks:
                raise ValueError("'K from' must not exceed 'K to'.")
            adata, source, is_points, prepare = build_input(
                list(self.inputs.value), self.mask.value, MISSING_CHOICES[self.missing.value], max(ks))
            X = np.asarray(adata.X, dtype=np.float32)
            will_impute = MISSING_CHOICES[self.missing.value] == "impute" and bool(np.isnan(X).any())
            check_stability_input(np.nan_to_num(X), ks, n, kwargs["resample"], kwargs["matching"],
                                  kwargs["similarity"], check_values=not will_impute)
        except (ValueError, KeyError, TypeError) as exc:
            self.runner.fail(exc)
            return

        def job():
            layer, missing = yield from prepare()
            if missing == "zero":
                adata.layers["missing_as_zero"] = np.nan_to_num(np.asarray(adata.X, dtype=np.float32))
                layer = "missing_as_zero"
            return (yield from tl.iter_stability(adata, ks, n, layer=layer, fit_final=False, **kwargs))

        self._input = (adata, source, is_points)
        self.plot.clear()
        self.fit_button.setEnabled(False)
        self.runner.start(job(), len(ks) * n, self._done, description="staNMF", on_data=self._on_k)

    def _on_k(self, data: dict) -> None:
        self.plot.add(data["k"], data["instability"], data["sd"])

    def _done(self, adata: ad.AnnData) -> None:
        self.result = adata
        best = int(adata.uns["stability"]["best_k"])
        self.chosen_k.value = best
        self.fit_button.setEnabled(True)
        self.runner.status.setText(f"lowest instability at K = {best}")

    def fit_final(self) -> None:
        """Fit NMF on the full data at the chosen K; add the patterns as layers."""
        if self.result is None or self.runner.running:
            return
        adata, source, is_points = self._input
        k = int(self.chosen_k.value)
        layer = adata.uns["stability"]["params"].get("layer")
        layer = None if layer in (None, "None") else layer
        try:
            job = tl.iter_nmf(adata, k, layer=layer, random_state=int(self.seed.value))
        except (ValueError, KeyError, TypeError) as exc:
            self.runner.fail(exc)
            return

        def done(res):
            res.uns["nmf"]["selected_by"] = "stability"
            add_result_layers(self.viewer, res, source, is_points)

        self.runner.start(job, 200, done, description=f"NMF at K = {k}")
