"""Atlas analysis dock (osNMF suite): region combinations, bubble chart, marker genes,
co-expression networks, Moran's I and reconstruction accuracy of a volume NMF result.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import ComboBox, Container, SpinBox
from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QPushButton, QTabWidget, QVBoxLayout, QWidget

from .. import pl, tl
from ..core.grid import grid_of, to_volume
from ..results import REGISTRY, RESULT_ID
from ._base import Dock
from ._runner import JobRunner
from ._tables import DataFrameTable
from .region_correlation import highlight_mask

if TYPE_CHECKING:
    import napari

LEVELS = {"annotation structures": None, "coarse: 12 major divisions": "coarse",
          "medium: children of the 12 (osNMF)": "medium", **{f"ontology depth {d}": d for d in range(3, 9)}}
GENE_LAYER_KEY = "napari_spatial_nmf_gene"
HEADER = ("The osNMF read-outs of a volume NMF result: which atlas structures (and contiguous pairs and triples) "
          "each pattern matches, its marker genes, gene co-expression networks, and how coherent the patterns are.")


def _canvas(figsize, min_height):
    from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, tight_layout=True)
    canvas = FigureCanvasQTAgg(fig)
    canvas.setMinimumHeight(min_height)
    return fig, canvas


def _note():
    label = QLabel("")
    label.setWordWrap(True)
    label.setStyleSheet("color: #a0a0a0;")
    return label


class AtlasAnalysisWidget(Dock):
    """The osNMF analysis suite for principal patterns over an atlas.

    Choose an NMF result (made by the Pattern discovery dock, or a ``result.h5ad`` of
    ``napari-spatial-nmf run`` opened in napari) and an atlas Labels layer with an ontology;
    *Analyse* computes in a worker thread (progress, Cancel) and the read-outs are stored
    on the result only when it finishes. Four tabs: **Regions** (best single structure,
    contiguous pair and triple per pattern; select a row to outline it; the pattern ×
    structure bubble chart), **Marker genes** (select a gene to open its volume),
    **Network** (drawn, exported as GraphML or CSV), **Coherence** (Moran's I and
    reconstruction accuracy beside PCA). *Save all…* writes the files of
    ``napari-spatial-nmf run``.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(napari_viewer, HEADER)
        self.results: dict | None = None
        self._result = None
        self._atlas = None
        self.result = ComboBox(label="NMF result", choices=self._result_choices)
        self.atlas = ComboBox(label="atlas", choices=self._atlas_choices, nullable=True)
        self.level = ComboBox(label="structures", choices=list(LEVELS))
        self.score = ComboBox(label="score", choices=["pearson", "dice"])
        self.n_genes = SpinBox(label="genes per network", min=3, max=500, value=20)
        self.rule = ComboBox(label="network edges", choices=[("top 5% of r (paper)", "paper"),
                                                             ("all r > 0 (reference code)", "reference")])
        self.form = Container(widgets=[self.result, self.atlas, self.level, self.score, self.n_genes, self.rule])
        self.runner = JobRunner("Analyse")
        self.runner.run_button.clicked.connect(self.run)
        self.tabs = QTabWidget()
        self._build_regions()
        self._build_markers()
        self._build_network()
        self._build_coherence()
        self.save_button = QPushButton("Save all…")
        self.save_button.clicked.connect(self._save_dialog)
        for w in (self.form, self.runner, self.tabs, self.save_button):
            self.add(w)
        REGISTRY.connect(self.reset_choices)
        self._set_enabled(False)
        self.reset_choices()
        atlases = [c for c in self.atlas.choices if c is not None]
        if self.atlas.value is None and atlases:
            self.atlas.value = atlases[0]

    # ---------------------------------------------------------------- tabs
    def _tab(self, title: str, *widgets) -> QVBoxLayout:
        page = QWidget()
        lay = QVBoxLayout(page)
        for w in widgets:
            lay.addWidget(getattr(w, "native", w))
        self.tabs.addTab(page, title)
        return lay

    def _build_regions(self) -> None:
        self.regions_note = _note()
        self.pattern_filter = ComboBox(label="pattern", choices=self._pattern_choices)
        self.pattern_filter.changed.connect(self._show_regions)
        self.region_table = DataFrameTable([("pattern", "pattern"), ("size", "size"), ("structures", "structures"),
                                            ("score", "score"), ("n_voxels", "voxels")], stretch="structures",
                                           sortable=False)
        self.region_table.on_select(self.select_combination)
        self.bubble_fig, self.bubble_canvas = _canvas((4.2, 2.6), 230)
        self._tab("Regions", self.regions_note, self.pattern_filter, self.region_table, self.bubble_canvas)

    def _build_markers(self) -> None:
        self.marker_table = DataFrameTable([("pattern", "pattern"), ("rank", "rank"), ("gene", "gene"),
                                            ("importance", "importance")], stretch="gene", min_height=260)
        self.marker_table.on_select(self._on_marker)
        self._tab("Marker genes", _note_text("Select a gene to open its expression volume."), self.marker_table)

    def _build_network(self) -> None:
        self.network_note = _note()
        self.network_pattern = ComboBox(label="pattern", choices=self._network_choices)
        self.network_pattern.changed.connect(self._draw_network)
        self.net_fig, self.net_canvas = _canvas((4.0, 3.4), 280)
        self.net_canvas.setVisible(False)  # shown once there is a network to draw
        self.graphml_button = QPushButton("Export GraphML…")
        self.edges_button = QPushButton("Export CSV…")
        self.graphml_button.clicked.connect(self._export_graphml)
        self.edges_button.clicked.connect(self._export_csv)
        lay = self._tab("Network", self.network_note, self.network_pattern, self.net_canvas)
        row = QHBoxLayout()
        row.addWidget(self.graphml_button)
        row.addWidget(self.edges_button)
        lay.addLayout(row)

    def _build_coherence(self) -> None:
        self.coherence_note = _note()
        self.moran_table = DataFrameTable([("pattern", "pattern"), ("morans_i", "Moran's I (NMF)"),
                                           ("pca_morans_i", "Moran's I (PCA)")], min_height=120)
        self.recon_fig, self.recon_canvas = _canvas((4.0, 2.2), 180)
        self._tab("Coherence", self.coherence_note, self.moran_table, self.recon_canvas)

    # ---------------------------------------------------------------- choices
    def _result_choices(self, _w=None):
        return [(r.label, r) for r in REGISTRY.for_layers(self.viewer.layers, kind="nmf") if "grid" in r.adata.uns]

    def _atlas_choices(self, _w=None):
        from napari.layers import Labels

        return [(lyr.name, lyr) for lyr in self.viewer.layers
                if isinstance(lyr, Labels) and lyr.metadata.get("ontology") is not None]

    def _pattern_choices(self, _w=None):
        if self.results is None or self.results["region_combinations"] is None:
            return [("(best of each)", None)]
        names = list(dict.fromkeys(self.results["region_combinations"]["pattern"]))
        return [("(best of each)", None)] + [(n, n) for n in names]

    def _network_choices(self, _w=None):
        return list(self.results["networks"]) if self.results and self.results["networks"] else []

    def _set_enabled(self, on: bool) -> None:
        self.save_button.setEnabled(on)
        has_net = bool(on and self.results and self.results["networks"])
        for b in (self.graphml_button, self.edges_button):
            b.setEnabled(has_net)

    # ---------------------------------------------------------------- run
    def run(self) -> None:
        """Start the analysis in a worker thread (the Analyse button); bad input is refused at once."""
        if self.runner.running:
            return
        try:
            result, atlas = self.result.value, self.atlas.value
            if result is None:
                raise ValueError("Choose an NMF result: run the Pattern discovery dock on gene images first, or "
                                 "open a result.h5ad.")
            ann = onto = None
            if atlas is not None:
                ann, onto = np.asarray(atlas.data), atlas.metadata["ontology"]
            layer = "imputed" if "imputed" in result.adata.layers else None
            job = tl.iter_osnmf_suite(result.adata, ann, onto, key=result.key, layer=layer,
                                      level=LEVELS[self.level.value], score=self.score.value,
                                      n_network_genes=int(self.n_genes.value), network_rule=self.rule.value)
        except (ValueError, KeyError, TypeError) as exc:
            self.runner.fail(exc)
            return

        def done(res):
            tl.store_osnmf_suite(result.adata, res)  # on the main thread, only once finished
            REGISTRY.update(result.id, "osnmf_suite", res)
            self._show(res, result, atlas)

        self.runner.start(job, done, description="osNMF analysis")

    # ---------------------------------------------------------------- results
    def _show(self, res: dict, result, atlas) -> None:
        self.results, self._result, self._atlas = res, result, atlas
        self.pattern_filter.reset_choices()
        self.network_pattern.reset_choices()
        self._show_regions()
        self._draw_bubbles()
        self.marker_table.set_frame(res["marker_genes"])
        self._draw_network()
        self._show_coherence()
        self._set_enabled(True)
        parts = [f"{len(res['marker_genes']['gene'].unique())} marker genes"]
        if res["region_combinations"] is not None:
            c = res["counts"]
            parts.insert(0, f"{c['n_structures']} structures, {c['n_pairs']:,} contiguous pairs, "
                            f"{c['n_triples']:,} triples")
        self.runner.status.setText("Analysis finished: " + "; ".join(parts) + ".")

    def _show_regions(self, _value=None) -> None:
        table = None if self.results is None else self.results["region_combinations"]
        if table is None:
            self.region_table.set_frame(self.region_table.frame.iloc[0:0])
            self.regions_note.setText("Choose an atlas layer and analyse again to see the structures each pattern "
                                      "matches." if self.results is not None else "")
            return
        self.regions_note.setText("Each pattern's best single structure, contiguous pair and triple (Pearson r with "
                                  "the union). Select a row to outline it over the atlas.")
        p = self.pattern_filter.value
        df = table[table["rank"] == 1] if p is None else table[table["pattern"] == p]
        self.region_table.set_frame(df.reset_index(drop=True))

    def _draw_bubbles(self) -> None:
        self.bubble_fig.clear()
        self.bubble_matrix = None
        if self.results is not None and self.results["region_combinations"] is not None:
            M = pl.structure_score_matrix(self.results["region_combinations"], order=self.results["structure_order"])
            pl.structure_bubbles(M, score=self.results["params"]["params"]["score"],
                                 ax=self.bubble_fig.add_subplot(111))
            self.bubble_matrix = M
        self.bubble_canvas.draw_idle()

    def _draw_network(self, _value=None) -> None:
        self.net_fig.clear()
        G = self.network
        if self.results is not None and not self.results["networks"]:
            self.network_note.setText(f"A co-expression network needs at least 3 genes; this result has "
                                      f"{self._result.adata.n_vars}.")
        else:
            self.network_note.setText("")
        if G is not None:
            pl.network(G, ax=self.net_fig.add_subplot(111),
                       title=f"{self.network_pattern.value}: {G.number_of_nodes()} genes, {G.number_of_edges()} edges")
        # no empty white plot: the canvas and the pattern choice show only with a network
        self.net_canvas.setVisible(G is not None)
        self.network_pattern.visible = G is not None
        self.net_canvas.draw_idle()

    @property
    def network(self):
        """The network shown (networkx.Graph), or None."""
        if not self.results or not self.results["networks"] or self.network_pattern.value is None:
            return None
        return self.results["networks"][self.network_pattern.value]

    def _show_coherence(self) -> None:
        mi = self.results["morans_i"]
        self.moran_table.set_frame(mi)
        note = "Moran's I of each pattern's hard map (each voxel to its largest pattern; rook adjacency)."
        if len(mi) == 2:
            note += " With K = 2 the two maps are complements, so their Moran's I are equal."
        self.coherence_note.setText(note)
        rec = self.results["reconstruction_accuracy"]
        self.recon_fig.clear()
        ax = self.recon_fig.add_subplot(111)
        bins = np.linspace(min(-0.2, float(np.nanmin(rec.to_numpy()))), 1.0, 30)
        for c in rec.columns:
            v = rec[c].dropna().to_numpy()
            method = "PCA" if c.startswith("pca") else "NMF"
            ax.hist(v, bins=bins, alpha=0.6, label=f"{method} (median {np.median(v):.2f})")
        ax.set_xlabel("Pearson r, data vs reconstruction (per gene)", fontsize=8)
        ax.set_ylabel("genes", fontsize=8)
        ax.legend(fontsize=7)
        self.recon_canvas.draw_idle()

    # ---------------------------------------------------------------- selection
    def select_combination(self, row) -> None:
        """Outline the union of a table row's structures over the atlas and move the view there."""
        if self._atlas is None or self.results is None or self.results["labels"] is None:
            return
        ids = [int(i) for i in str(row["ids"]).split(",")]
        highlight_mask(self.viewer, self._atlas, np.isin(self.results["labels"], ids), row["structures"],
                       structure_ids=ids)

    def _on_marker(self, row) -> None:
        self.open_gene(str(row["gene"]))

    def open_gene(self, gene: str):
        """Add the gene's expression volume (NaN = missing) as a new Image layer, or select it if open."""
        adata = self._result.adata
        for lyr in self.viewer.layers:
            if lyr.metadata.get(GENE_LAYER_KEY) == gene and lyr.metadata.get(RESULT_ID) == self._result.id:
                self.viewer.layers.selection.active = lyr
                return lyr
        col = adata.X[:, list(adata.var_names).index(gene)]
        col = np.asarray(col.toarray() if hasattr(col, "toarray") else col, dtype=np.float32).ravel()
        vol = to_volume(adata, col)
        grid = grid_of(adata)
        finite = vol[np.isfinite(vol)]
        hi = float(np.percentile(finite, 99.5)) if finite.size else 1.0
        return self.viewer.add_image(vol, name=f"{gene} expression", scale=grid.voxel_size, translate=grid.origin,
                                     colormap="magma", blending="additive", contrast_limits=(0.0, hi or 1.0),
                                     units=("micrometer",) * vol.ndim, axis_labels=grid.axes,
                                     metadata={GENE_LAYER_KEY: gene, RESULT_ID: self._result.id, "gene": gene})

    # ---------------------------------------------------------------- export
    def export_network(self, path, fmt: str = "graphml") -> Path:
        """Write the shown network as GraphML or as an edge CSV (gene_a, gene_b, r)."""
        import networkx as nx

        G = self.network
        if G is None:
            raise ValueError("No network to export: run the analysis on a result with at least 3 genes.")
        path = Path(path)
        if fmt == "graphml":
            nx.write_graphml(G, path)
        else:
            tl.network_edges({"": G}).drop(columns="pattern").to_csv(path, index=False)
        return path

    def save_all(self, folder) -> Path:
        """Write every table, the networks, the bubble chart and the parameters to ``folder``."""
        from ..pipeline import write_osnmf_suite

        if self.results is None:
            raise ValueError("Nothing to save yet: run the analysis first.")
        write_osnmf_suite(self.results, folder)
        return Path(folder)

    def _export_graphml(self) -> None:
        self._export_dialog("graphml")

    def _export_csv(self) -> None:
        self._export_dialog("csv")

    def _export_dialog(self, fmt: str) -> None:
        from ..pipeline import safe_filename

        name = f"{safe_filename(self.network_pattern.value)}_network.{'graphml' if fmt == 'graphml' else 'csv'}"
        path, _ = QFileDialog.getSaveFileName(self, "Export network", name,
                                              "GraphML (*.graphml)" if fmt == "graphml" else "CSV (*.csv)")
        if path:
            self.export_network(path, fmt)

    def _save_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Save the osNMF analysis to a folder")
        if folder:
            self.save_all(folder)


def _note_text(text: str) -> QLabel:
    label = _note()
    label.setText(text)
    return label
