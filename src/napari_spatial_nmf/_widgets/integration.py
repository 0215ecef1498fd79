"""Integration dock: several sections -> shared spatial factors and gene programs; 3D stack."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, Select, SpinBox
from qtpy.QtWidgets import QLabel, QPushButton

from .. import tl
from .._canvas import install
from .._layers import cells_layer, color_kwargs
from ..results import REGISTRY, RESULT_ID
from ._base import Dock, Legend, is_deleted
from ._runner import JobRunner
from ._tables import DataFrameTable
from .nnmf import points_layer_choices, slice_key_choices
from .stability import InstabilityPlot

if TYPE_CHECKING:
    import napari

HEADER = ("Integrate sections (serial sections, replicates, other platforms) into K spatial factors with gene "
          "programs shared by all sections: joint neighbourhood NMF (CPU) or INSPIRE (PyTorch). K can be chosen by "
          "stability. Sections are shown side by side, one colour per factor; Reconstruct 3D stacks serial sections.")
COUNTS_CHOICES = [("counts", "raw"), ("normalised: recover counts", "recover"), ("normalised: pseudo-counts", "pseudo")]
GENES_CHOICES = [("shared by all sections", "shared"), ("union of the panels (imputed)", "union")]
WARN_STYLE = "color: #e0a040;"
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
        self.method = ComboBox(label="method", choices=[("joint NNMF (CPU)", "joint_nnmf"),
                                                        ("INSPIRE (PyTorch)", "inspire")],
                               tooltip="joint NNMF: closed-form updates on the CPU, seconds to a minute for a few "
                                       "thousand cells per section. INSPIRE: a graph neural network (PyTorch), "
                                       "minutes on a CPU.")
        self.counts = ComboBox(label="values", choices=COUNTS_CHOICES)
        self.genes = ComboBox(label="genes", choices=GENES_CHOICES)
        self.n_factors = SpinBox(label="K (factors)", min=2, max=200, value=12)
        self.by_stability = CheckBox(label="choose K by stability", value=False)
        self.k_max = SpinBox(label="K to", min=2, max=200, value=16, visible=False)
        self.n_restarts = SpinBox(label="restarts", min=1, max=1000, value=1)
        self.by_stability.changed.connect(self._on_stability)
        self.n_steps = SpinBox(label="iterations", min=10, max=100_000, value=300, step=100)
        self.method.changed.connect(self._on_method)
        self.n_hvgs = SpinBox(label="highly variable genes", min=0, max=50_000, value=3000, step=500,
                              tooltip="seurat_v3 HVGs (0: every gene). Joint NNMF ranks the genes all sections share "
                                      "over the sections together; INSPIRE takes this many per section and their "
                                      "intersection.")
        self.seed = SpinBox(label="random state", min=0, max=2**31 - 1, value=0)
        self.form = Container(widgets=[self.sections, self.section_key, self.method, self.counts, self.genes,
                                       self.n_factors, self.by_stability, self.k_max, self.n_restarts, self.n_steps,
                                       self.n_hvgs, self.seed])
        self.sections.changed.connect(self._on_sections)
        self.runner = JobRunner("Integrate")
        self.runner.run_button.clicked.connect(self.run)
        self.plot = InstabilityPlot("K (number of spatial factors)")
        self.plot.setVisible(False)
        self.diagnostics = QLabel("")
        self.diagnostics.setWordWrap(True)
        self.diagnostics.setStyleSheet(WARN_STYLE)
        self.color_by = ComboBox(label="colour cells by", choices=[])
        self.color_by.changed.connect(self._recolor)
        self.gene = ComboBox(label="or by gene", choices=[], nullable=True)
        self.gene.changed.connect(self._color_by_gene)
        self.legend = Legend(columns=4)
        self.table = DataFrameTable(PROGRAM_COLUMNS, stretch="gene", min_height=200)
        self.spacing = FloatSpinBox(label="section spacing (µm)", min=0.0, max=1e6, value=10.0)
        self.um_per_unit = FloatSpinBox(label="µm per coordinate unit", min=1e-6, max=1e6, value=1.0, step=0.1)
        self.reconstruct_button = QPushButton("Reconstruct 3D")
        self.reconstruct_button.setEnabled(False)
        self.reconstruct_button.clicked.connect(self.reconstruct)
        self._stores = None  # the dock's results stores: a cancelled sweep resumes from its finished fits
        # in labelled forms, so that each box says what it is
        colouring = Container(widgets=[self.color_by, self.gene])
        stacking = Container(widgets=[self.spacing, self.um_per_unit])
        for w in (self.form, self.runner, self.plot, self.diagnostics, colouring, self.legend,
                  self.table, stacking, self.reconstruct_button):
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
        self.n_steps.value = 2000 if inspire else 300
        if inspire:  # INSPIRE's decoder fits the shared genes only
            self.genes.value = "shared"
        self.genes.enabled = not inspire

    def _on_stability(self, on=None) -> None:
        """K by stability: a range of K and at least 2 restarts per K (5 is typical)."""
        on = bool(self.by_stability.value)
        self.k_max.visible = on
        self.plot.setVisible(on)
        self.n_factors.label = "K from" if on else "K (factors)"
        self.n_restarts.min = 2 if on else 1
        if on:
            self.n_factors.value = min(self.n_factors.value, 8)
            self.k_max.value = max(self.k_max.value, self.n_factors.value)
            self.n_restarts.value = max(self.n_restarts.value, 5)
        else:
            self.n_restarts.value = 1

    def _key_choices(self, _w=None):
        layers = list(self.sections.value) if hasattr(self, "sections") else []
        return slice_key_choices(layers[0].metadata["adata"].obs) if len(layers) == 1 else []

    def _on_sections(self, _value=None) -> None:
        self.section_key.reset_choices()
        layers = list(self.sections.value)
        if layers:
            from ..core.sections import suggest_counts

            guesses = {suggest_counts(lyr.metadata["adata"]) for lyr in layers}
            self.counts.value = "raw" if guesses == {"raw"} else ("pseudo" if "pseudo" in guesses else "recover")
            unit = tl.spatial_unit(layers[0].metadata["adata"])
            self.um_per_unit.value = 1.0 if unit in ("µm", "um") else self.um_per_unit.value
            self.um_per_unit.label = f"µm per coordinate unit ({unit})"

    def _job(self):
        layers = list(self.sections.value)
        if not layers:
            raise ValueError("Choose the sections: two or more points layers of cells, or one with a section key.")
        kw = {"method": self.method.value, "n_hvgs": int(self.n_hvgs.value) or None,
              "random_state": int(self.seed.value), "counts": self.counts.value, "genes": self.genes.value}
        kw["n_steps" if self.method.value == "inspire" else "max_iter"] = int(self.n_steps.value)
        if len(layers) == 1:
            if self.section_key.value is None:
                raise ValueError("One layer was chosen: pick its section key, or choose one layer per section.")
            data = layers[0].metadata["adata"]
            kw["section_key"] = self.section_key.value
        else:
            data = [lyr.metadata["adata"] for lyr in layers]
            kw["section_names"] = [lyr.name for lyr in layers]
        if self.by_stability.value:
            ks = range(int(self.n_factors.value), int(self.k_max.value) + 1)
            if not len(ks):
                raise ValueError(f"'K to' ({self.k_max.value}) is below 'K from' ({self.n_factors.value}).")
            store = self._store(layers, kw)
            return tl.iter_integrate_stability(data, ks, int(self.n_restarts.value), store=store, **kw), layers
        return tl.iter_integrate(data, int(self.n_factors.value), n_restarts=int(self.n_restarts.value),
                                 **kw), layers

    def _store(self, layers, kw) -> str:
        """A results store for these inputs and settings, kept while the dock lives: running the
        same sweep again (after Cancel, or with a wider K range) reuses every finished fit.
        """
        import hashlib
        import tempfile

        if self._stores is None:
            self._stores = tempfile.TemporaryDirectory(prefix="napari-spatial-nmf-integration-")
        key = repr(([id(lyr.metadata["adata"]) for lyr in layers], sorted(kw.items()), int(self.n_restarts.value)))
        return f"{self._stores.name}/{hashlib.sha1(key.encode()).hexdigest()[:16]}"

    def run(self) -> None:
        """Start the integration in a worker thread; bad input is refused at once."""
        if self.runner.running:
            return
        try:
            job, layers = self._job()
        except (ValueError, TypeError, KeyError, ImportError) as exc:
            self.runner.fail(exc)
            return
        if self.by_stability.value:
            self.plot.set_points({})
            self.runner.start(job, lambda res: self._show(res, layers), description="integration, K by stability",
                              on_data=self._on_k)
        else:
            self.runner.start(job, lambda res: self._show(res, layers), description="integration")

    def _on_k(self, row: dict) -> None:
        """A K finished: its point on the curve (a cancelled sweep keeps them)."""
        if "instability" in row:
            self.plot.add(row["k"], row["instability"], row["sd"], mixing=row["mixing"],
                          n_section_specific=row["n_section_specific"])

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
        self.gene.choices = list(adata.var_names)
        self.gene.value = None
        self.table.set_frame(_programs(adata))
        self.reconstruct_button.setEnabled(True)
        qc = rec["qc"]
        text = (f"{len(rec['sections'])} sections, {adata.n_obs:,} cells, {qc['n_shared_genes']:,} shared genes"
                + (f" of {qc['n_genes']:,}" if qc["n_genes"] != qc["n_shared_genes"] else "")
                + f"; {len(names)} factors ({rec['method']}).")
        sweep = adata.uns.get("integration_stability")
        if sweep is not None:
            table = sweep["table"]
            self.plot.set_points({int(r["k"]): {c: r[c] for c in table.columns if c != "k"}
                                  for r in table.to_dict(orient="records")})
            text += f" K = {sweep['best_k']} chosen by stability."
        self.runner.status.setText(text)
        self.diagnostics.setText(_diagnostics_text(rec, sweep))

    def _color_by_gene(self, gene) -> None:
        """Colour cells by a gene's expression: the model's (imputed where the section did not
        measure the gene, those cells ringed in white) with panels that differ, else log1p of
        the normalised counts.
        """
        if gene is None or self.layer is None or self.result is None or self.layer not in self.viewer.layers:
            return
        adata = self.result.adata
        j = adata.var_names.get_loc(gene)
        imputed = np.zeros(adata.n_obs, dtype=bool)
        if "integration_imputed" in adata.layers:
            values = np.log1p(np.asarray(adata.layers["integration_imputed"][:, j], dtype=np.float64) * 1e4)
            panels = adata.uns["integration"]["panels"]
            missing = [s for s in panels.columns if not bool(panels.loc[gene, s])]
            imputed = adata.obs["section"].isin(missing).to_numpy()
            title = f"{gene} (model)" + (f"; imputed in {', '.join(missing)} (white rings)" if missing else "")
        else:
            x = adata.X[:, j]
            x = np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float64).ravel()
            values = np.log1p(x / np.maximum(adata.obs["library_size"].to_numpy(), 1e-12) * 1e4)
            title = f"{gene}: log1p(normalised counts)"
        column = f"{gene} ({'imputed/model' if imputed.any() else 'expression'})"
        feats = self.layer.features.copy()
        feats[column], feats["imputed"] = values, imputed
        self.layer.features = feats
        kw = color_kwargs(None, pd.Series(values), column)
        self.layer.face_color = column
        self.layer.face_colormap = kw["face_colormap"]
        self.layer.face_contrast_limits = kw["face_contrast_limits"]
        self.layer.border_color = np.where(imputed[:, None], [[1.0, 1.0, 1.0, 1.0]], [[0.0, 0.0, 0.0, 0.0]])
        self.layer.border_width = 0.25 if imputed.any() else 0
        self.layer.metadata.pop("legend", None)
        self.legend.set_colors({}, title)
        install(self.viewer).refresh()

    def _recolor(self, value) -> None:
        if self.layer is None or value is None or self.layer not in self.viewer.layers:
            return
        kw = color_kwargs(None, self.layer.features[value], value)
        legend = kw.pop("_categories", None)
        self.layer.border_width = 0  # the imputation rings belong to a gene's colours
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
        """Align adjacent sections (in the list's order) in a worker thread, then add them
        stacked in 3D (µm), with each registration's quality in the status and any weak fit
        among the warnings.
        """
        if self.result is None or self.runner.running:
            return
        self.reconstruct_button.setEnabled(False)
        job = tl.iter_reconstruct_3d(self.result.adata, spacing=float(self.spacing.value),
                                     um_per_unit=float(self.um_per_unit.value))
        self.runner.start(job, self._show_3d, description="3D reconstruction")
        self.runner.worker.finished.connect(self._reconstruct_finished)  # also after Cancel or an error

    def _reconstruct_finished(self) -> None:
        if not is_deleted(self):
            self.reconstruct_button.setEnabled(self.result is not None)

    def _show_3d(self, table: pd.DataFrame) -> None:
        adata = self.result.adata
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
        self.runner.status.setText(f"3D{_refinement_text(table)}: "
                                   + "; ".join(_registration_text(r) for r in table.iloc[1:].itertuples()))
        weak = [str(w) for w in adata.uns.get("integration_registration", {}).get("warnings", [])]
        self.diagnostics.setText("\n".join([_diagnostics_text(adata.uns["integration"],
                                                              adata.uns.get("integration_stability")), *weak]))


def _registration_text(r) -> str:
    """One registration in words: the turn, what the fit rests on, and how well both directions agree."""
    return (f"{r.section} turned {r.angle_deg:.1f}°, {r.inlier_fraction:.1%} of {r.n_pairs:,} matched pairs "
            f"fit ({r.chance_inlier_fraction:.1%} by chance), the two directions agree to {r.consistency_um:.0f} µm")


REFINED = {"density": "refined on the cell density", "fields": "refined on the feature fields", "none": "not refined"}


def _refinement_text(table: pd.DataFrame) -> str:
    """How the registrations were refined: once (" (refined on the cell density)"), or per section if they differ."""
    used = table["refine"].iloc[1:].astype(str).tolist()
    if not used:
        return ""
    if len(set(used)) == 1:
        return f" ({REFINED.get(used[0], used[0])})"
    return " (" + ", ".join(f"{s} {REFINED.get(u, u)}" for s, u in zip(table["section"].iloc[1:], used)) + ")"


def _programs(adata) -> pd.DataFrame:
    from ..pipeline import program_table

    table = program_table(adata, n_top=10)
    for col in ("loading", "score"):
        table[col] = table[col].map(lambda v: float(f"{v:.3g}"))
    return table


def _diagnostics_text(rec: dict, sweep: dict | None) -> str:
    """The integration's warnings (section-specific factors, poor mixing, weak fits) in words."""
    diag = rec.get("diagnostics", {})
    lines = [f"Mixing of sections: {float(diag.get('mixing', np.nan)):.2f} (0 apart, 1 mixed)."]
    lines += [str(w) for w in diag.get("warnings", [])]
    if sweep is not None and sweep.get("note"):
        lines.append(str(sweep["note"]))
    return "\n".join(lines)
