"""Stability dock: choose K by staNMF (bootstrap instability), then fit patterns at that K."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, LineEdit, Select, SpinBox
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from .. import pl, tl
from ..core.stability import check_stability_input
from ._base import Dock, is_deleted
from ._inputs import (
    MISSING_CHOICES,
    add_result_layers,
    build_input,
    input_layer_choices,
    mask_layer_choices,
    n_genes_of,
    n_obs_of,
    preselect,
)
from ._runner import JobRunner

if TYPE_CHECKING:
    import napari

HEADER = ("Choose K by stability (staNMF): NMF is fitted to N bootstrap replicates at each K, and the instability "
          "is how much their patterns differ. A low instability means reproducible patterns.")
# A rough cost per observation x gene x K x replicate x pass: the BDGP sweep (405 x 1,640, K = 15..30, N = 100,
# ~150 passes) took 530 s on the 2-core benchmark machine (docs/benchmarks.md).
SECONDS_PER_UNIT = 1.5e-10
PASSES = 150


class InstabilityPlot(QWidget):
    """Instability vs K with error bars (matplotlib in the dock), redrawn as K finish.

    Rows may carry more columns of the sweep's table (an integration's ``chosen`` and
    ``n_section_specific``: :func:`napari_spatial_nmf.pl.instability` marks them).
    """

    def __init__(self, xlabel: str = "K (number of principal patterns)"):
        super().__init__()
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.xlabel = xlabel
        self.figure = Figure(figsize=(4, 2.6), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.rows: dict[int, dict] = {}
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.setMinimumHeight(200)
        self.draw()

    @property
    def points(self) -> dict[int, tuple[float, float]]:
        """``{K: (instability, sd)}`` of the finished K."""
        return {k: (r["instability"], r["sd"]) for k, r in self.rows.items()}

    def set_points(self, points: dict) -> None:
        """Show these K: ``{K: (instability, sd)}`` or ``{K: row dict}``."""
        self.rows = {int(k): (dict(v) if isinstance(v, dict) else {"instability": float(v[0]), "sd": float(v[1])})
                     for k, v in points.items()}
        self.draw()

    def add(self, k: int, value: float, sd: float, **extra) -> None:
        self.rows[int(k)] = {"instability": float(value), "sd": float(sd), **extra}
        self.draw()

    def draw(self) -> None:
        import pandas as pd

        self.figure.clear()
        ax = self.figure.add_subplot(111)
        if self.rows:
            ks = sorted(self.rows)
            table = pd.DataFrame([{"k": k, **self.rows[k]} for k in ks])
            pl.instability(table, ax=ax)
            ax.set_xlabel(self.xlabel)
        else:
            ax.set_xlabel(self.xlabel)
            ax.set_ylabel("instability")
        self.canvas.draw_idle()


class StabilityWidget(Dock):
    """staNMF: fit NMF to bootstrap replicates for a range of K and plot the instability.

    The instability score of a K is the mean dissimilarity of the replicates' dictionaries
    over all pairs (Hungarian or Amari matching). The lowest is preselected (with a warning
    when it sits at an end of the range); *Fit patterns at K* adds the patterns as layers,
    exactly as the Pattern discovery dock does. A cancelled sweep keeps the previous one.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(napari_viewer, HEADER)
        self.result = None  # the AnnData of the last finished sweep
        self._input = None
        self.inputs = Select(label="input", choices=lambda _w: input_layer_choices(self.viewer), allow_multiple=True)
        self.inputs.native.setMaximumHeight(90)
        self.mask = ComboBox(label="mask", choices=lambda _w: mask_layer_choices(self.viewer), nullable=True)
        self.missing = ComboBox(label="missing values", choices=list(MISSING_CHOICES))
        self.k_min = SpinBox(label="K from", min=2, max=500, value=2)
        self.k_max = SpinBox(label="K to", min=2, max=500, value=12)
        self.n_replicates = SpinBox(label="replicates (N)", min=2, max=10_000, value=20)
        self.resample = ComboBox(label="resample", choices=["genes", "obs", "none"])
        self.matching = ComboBox(label="matching", choices=["hungarian", "amari"])
        self.similarity = ComboBox(label="similarity", choices=["cosine", "pearson"])
        self.seed = SpinBox(label="random state", min=0, max=2**31 - 1, value=0)
        self.backend = ComboBox(label="backend", choices=["local", "dask"])
        self.scheduler = LineEdit(label="dask scheduler", value="")
        self.store = FileEdit(label="results store", mode="d", value="")
        self.form = Container(widgets=[self.inputs, self.mask, self.missing, self.k_min, self.k_max,
                                       self.n_replicates, self.resample, self.matching, self.similarity,
                                       self.seed, self.backend, self.scheduler, self.store])
        for w in (self.inputs, self.k_min, self.k_max, self.n_replicates):
            w.changed.connect(self._estimate)
        self.estimate = QLabel("")
        self.estimate.setWordWrap(True)
        self.runner = JobRunner("Run stability sweep")
        self.runner.run_button.clicked.connect(self.run)
        self.plot = InstabilityPlot()
        self.edge = QLabel("")
        self.edge.setWordWrap(True)
        self.edge.setStyleSheet("color: #e0a040;")
        self.chosen_k = SpinBox(label="K", min=2, max=500, value=5)
        self.fit_button = QPushButton("Fit patterns at K")
        self.fit_button.setEnabled(False)
        self.fit_button.clicked.connect(self.fit_final)
        row = QHBoxLayout()
        row.addWidget(QLabel("chosen"))
        row.addWidget(self.chosen_k.native)
        row.addWidget(self.fit_button)
        for w in (self.form, self.estimate, self.runner, self.plot, self.edge):
            self.add(w)
        self.layout_.addLayout(row)
        self.layout_.addStretch()
        self.reset_choices()
        self._preselect()

    def reset_choices(self, _event=None) -> None:
        """Refresh the layer choices (napari calls this when layers change)."""
        super().reset_choices()
        if hasattr(self, "k_max") and not is_deleted(self):
            self._preselect()

    def _preselect(self) -> None:
        """Start from what is open (all gene images or the cell layer, the atlas as mask), with a
        K range the data allow: from 2 to at most 12 and the number of genes.
        """
        preselect(self.inputs, self.mask)
        self._estimate()

    def _ks(self) -> list[int]:
        return list(range(int(self.k_min.value), int(self.k_max.value) + 1))

    def _estimate(self, _value=None) -> None:
        """Fits and a rough time for the sweep, before it starts."""
        layers = list(self.inputs.value)
        n_genes = n_genes_of(layers)
        if not layers or not n_genes:
            self.estimate.setText("")
            return
        top = max(2, n_genes)  # K runs from 2 to the number of genes
        self.k_max.max = self.k_min.max = top
        self.k_max.value = min(self.k_max.value, top)  # what the data allow; a reversed range is refused on Run
        self.k_min.value = min(self.k_min.value, top)
        if n_genes < 2:
            self.estimate.setText("staNMF needs at least 2 genes: choose more input layers.")
            return
        ks, n = self._ks(), int(self.n_replicates.value)
        seconds = SECONDS_PER_UNIT * n_obs_of(layers) * n_genes * sum(ks) * n * PASSES
        self.estimate.setText(f"{len(ks) * n} fits ({len(ks)} K x {n} replicates); roughly "
                              f"{_duration(seconds)} on a 2-core machine.")

    def _sweep_kwargs(self) -> dict:
        store = str(self.store.value) if str(self.store.value) not in ("", ".") else None
        return {"resample": self.resample.value, "matching": self.matching.value,
                "similarity": self.similarity.value, "random_state": int(self.seed.value),
                "backend": self.backend.value, "scheduler": self.scheduler.value or None, "store": store}

    def run(self) -> None:
        """Start the sweep in a worker thread (the Run button); bad input is refused at once."""
        if self.runner.running:
            return
        ks, n, kwargs = self._ks(), int(self.n_replicates.value), self._sweep_kwargs()
        missing = MISSING_CHOICES[self.missing.value]
        try:
            if not ks:
                raise ValueError("'K from' must not exceed 'K to'.")
            adata, source, is_points, prepare = build_input(list(self.inputs.value), self.mask.value, missing,
                                                            max(ks))
            X = np.asarray(adata.X, dtype=np.float32)
            check_stability_input(np.nan_to_num(X), ks, n, kwargs["resample"], kwargs["matching"],
                                  kwargs["similarity"], check_values=not (missing == "impute" and np.isnan(X).any()))
        except (ValueError, KeyError, TypeError) as exc:
            self.runner.fail(exc)
            return

        def job():
            layer, miss = yield from prepare()
            return (yield from tl.iter_stability(adata, ks, n, layer=layer, missing=miss, fit_final=False,
                                                 copy=True, **kwargs))

        previous = dict(self.plot.points)
        self.plot.set_points({})
        started = time.perf_counter()

        def done(res):
            self.result, self._input = res, (source, is_points, list(self.inputs.value))
            rec = res.uns["stability"]
            self.chosen_k.value = int(rec["best_k"])
            self.fit_button.setEnabled(True)
            self.edge.setText(rec.get("edge_warning") or "")
            self.runner.status.setText(f"Lowest instability at K = {rec['best_k']} "
                                       f"({_duration(time.perf_counter() - started)}).")

        self.runner.start(job(), done, description="staNMF", on_data=lambda d: self.plot.add(d["k"], d["instability"],
                                                                                              d["sd"]))
        self.runner.worker.aborted.connect(lambda: self.plot.set_points(previous))

    def fit_final(self) -> None:
        """Fit NMF on the full data at the chosen K; add the patterns as layers."""
        if self.result is None or self.runner.running:
            return
        source, is_points, inputs = self._input
        k = int(self.chosen_k.value)
        layer = self.result.uns["stability"]["params"].get("layer")
        try:
            job = tl.iter_nmf(self.result, k, layer=layer, random_state=int(self.seed.value), copy=True)
        except (ValueError, KeyError, TypeError) as exc:
            self.runner.fail(exc)
            return

        def done(res):
            res.uns["nmf"]["selected_by"] = "stability"
            add_result_layers(self.viewer, res, source, is_points, inputs)
            self.runner.status.setText(f"{k} patterns added.")

        self.runner.start(job, done, description=f"NMF at K = {k}")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
