"""Atlas analysis dock (osNMF suite): region combinations, bubble chart, marker genes,
co-expression networks, Moran's I and reconstruction accuracy of a volume NMF result."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from magicgui.widgets import ComboBox, Container, SpinBox
from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from .. import tl
from ..core import atlas_stats as _A
from ..core.grid import grid_of, to_volume
from ..plotting import draw_network, draw_structure_bubbles, structure_score_matrix
from ._runner import JobRunner
from ._tables import fill_table, read_only_table
from .region_correlation import highlight_mask

if TYPE_CHECKING:
    import napari

RESULT_KEY = "nmf_result"  # pattern layers' metadata: the result AnnData they came from
LEVELS = {"annotation structures": None, "coarse: 12 major divisions": "coarse",
          "medium: children of the 12 (osNMF)": "medium",
          **{f"ontology depth {d}": d for d in range(3, 9)}}
GENE_LAYER_KEY = "napari_spatial_nmf_gene"


def _canvas(figsize):
    from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, tight_layout=True)
    return fig, FigureCanvasQTAgg(fig)


class AtlasAnalysisWidget(QWidget):
    """The osNMF analysis suite for principal patterns over an atlas.

    Choose an NMF result (its pattern layers, made by the Pattern discovery dock) and an
    atlas Labels layer with an ontology; *Analyse* runs in a worker thread (progress,
    Cancel) and fills four tabs:

    * **Regions**: the best single structure, contiguous pair and contiguous triple per
      pattern (exhaustive), the ranked list (select a row to outline the combination over
      the atlas) and the pattern × structure bubble chart (the osNMF paper's Fig. 2);
    * **Marker genes**: genes assigned to each pattern, ranked by importance; select a gene
      to open its expression volume as a new layer;
    * **Network**: the pattern's spatial gene co-expression network, drawn, with GraphML
      and CSV export;
    * **Coherence**: Moran's I and reconstruction accuracy beside PCA at the same K.

    *Save all…* writes every table, the networks and the parameters to a folder (the same
    files as ``napari-spatial-nmf run``). Layers and the result are never modified, except
    for new keys on the result AnnData.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.results: dict | None = None
        self._adata = None
        self._atlas = None
        self._labels = None
        self.result = ComboBox(label="NMF result", choices=self._result_choices)
        self.atlas = ComboBox(label="atlas", choices=self._atlas_choices, nullable=True)
        self.level = ComboBox(label="structures", choices=list(LEVELS))
        self.score = ComboBox(label="score", choices=["pearson", "dice"])
        self.n_genes = SpinBox(label="genes per network", min=2, max=500, value=20)
        self.rule = ComboBox(label="network edges", choices=[("top 5% of r (paper)", "paper"),
                                                             ("all r > 0 (reference code)", "reference")])
        self.form = Container(widgets=[self.result, self.atlas, self.level, self.score, self.n_genes, self.rule])
        self.runner = JobRunner("Analyse")
        self.runner.run_button.clicked.connect(self.run)

        # Regions tab
        self.pattern_filter = ComboBox(label="pattern", choices=self._pattern_choices)
        self.pattern_filter.changed.connect(lambda _: self._show_regions())
        self.region_cols = ["pattern", "size", "rank", "structures", "score", "n_voxels"]
        self.region_table = read_only_table(self.region_cols)
        self.region_table.itemSelectionChanged.connect(self._on_region_select)
        self.bubble_fig, self.bubble_canvas = _canvas((4.2, 2.6))
        self.bubble_canvas.setMinimumHeight(220)
        regions = QWidget()
        lay = QVBoxLayout(regions)
        lay.addWidget(self.pattern_filter.native)
        lay.addWidget(self.region_table)
        lay.addWidget(self.bubble_canvas)

        # Marker genes tab
        self.marker_cols = ["pattern", "rank", "gene", "importance", "coefficient"]
        self.marker_table = read_only_table(self.marker_cols)
        self.marker_table.itemSelectionChanged.connect(self._on_marker_select)
        markers = QWidget()
        QVBoxLayout(markers).addWidget(self.marker_table)

        # Network tab
        self.network_pattern = ComboBox(label="pattern", choices=self._network_choices)
        self.network_pattern.changed.connect(lambda _: self._draw_network())
        self.net_fig, self.net_canvas = _canvas((4.0, 3.2))
        self.net_canvas.setMinimumHeight(260)
        self.graphml_button = QPushButton("Export GraphML…")
        self.edges_button = QPushButton("Export CSV…")
        self.graphml_button.clicked.connect(lambda: self._export_dialog("graphml"))
        self.edges_button.clicked.connect(lambda: self._export_dialog("csv"))
        network = QWidget()
        lay = QVBoxLayout(network)
        lay.addWidget(self.network_pattern.native)
        lay.addWidget(self.net_canvas)
        row = QHBoxLayout()
        row.addWidget(self.graphml_button)
        row.addWidget(self.edges_button)
        lay.addLayout(row)

        # Coherence tab
        self.moran_table = read_only_table(["pattern"])
        self.recon_fig, self.recon_canvas = _canvas((4.0, 2.2))
        self.recon_canvas.setMinimumHeight(180)
        coherence = QWidget()
        lay = QVBoxLayout(coherence)
        lay.addWidget(QLabel("Moran's I of each pattern's hard map (rook adjacency in the mask)"))
        lay.addWidget(self.moran_table)
        lay.addWidget(self.recon_canvas)

        self.tabs = QTabWidget()
        for w, title in ((regions, "Regions"), (markers, "Marker genes"), (network, "Network"),
                         (coherence, "Coherence")):
            self.tabs.addTab(w, title)
        self.save_button = QPushButton("Save all…")
        self.save_button.clicked.connect(self._save_dialog)
        layout = QVBoxLayout(self)
        layout.addWidget(self.form.native)
        layout.addWidget(self.runner)
        layout.addWidget(self.tabs)
        layout.addWidget(self.save_button)
        self._set_enabled(False)
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            ev.connect(lambda _e: self.form.reset_choices())

    # ---------------------------------------------------------------- choices
    def _result_choices(self, _w=None):
        seen, out = set(), []
        for lyr in self.viewer.layers:
            res = lyr.metadata.get(RESULT_KEY)
            if res is not None and id(res) not in seen and GENE_LAYER_KEY not in lyr.metadata:
                seen.add(id(res))
                src = lyr.metadata.get("source") or "NMF"
                out.append((f"{src} (K={res.obsm['X_' + lyr.metadata['key']].shape[1]})",
                            (res, lyr.metadata["key"])))
        return out

    def _atlas_choices(self, _w=None):
        from napari.layers import Labels

        return [(lyr.name, lyr) for lyr in self.viewer.layers
                if isinstance(lyr, Labels) and lyr.metadata.get("ontology") is not None]

    def _pattern_choices(self, _w=None):
        if self.results is None or self.results["region_combinations"] is None:
            return [("(all)", None)]
        names = list(dict.fromkeys(self.results["region_combinations"]["pattern"]))
        return [("(best of each)", None)] + [(n, n) for n in names]

    def _network_choices(self, _w=None):
        return list(self.results["networks"]) if self.results and self.results["networks"] else []

    def _set_enabled(self, on: bool) -> None:
        for b in (self.save_button, self.graphml_button, self.edges_button):
            b.setEnabled(on)

    # ---------------------------------------------------------------- run
    def _prepare(self):
        if self.result.value is None:
            raise ValueError("Choose an NMF result: run the Pattern discovery dock on image layers first.")
        adata, key = self.result.value
        atlas = self.atlas.value
        ann = onto = None
        if atlas is not None:
            ann, onto = np.asarray(atlas.data), atlas.metadata["ontology"]
        layer = "imputed" if "imputed" in adata.layers else None
        job = tl.iter_osnmf_suite(adata, ann, onto, key=key, layer=layer, level=LEVELS[self.level.value],
                                  score=self.score.value, n_network_genes=int(self.n_genes.value),
                                  network_rule=self.rule.value)
        return adata, key, atlas, job

    def run(self) -> None:
        """Start the analysis in a worker thread (the Analyse button)."""
        if self.runner.running:
            return
        try:
            adata, key, atlas, job = self._prepare()
            first = next(job)  # runs the input checks now, before the worker starts
        except (ValueError, KeyError, TypeError) as exc:
            self.runner.fail(exc)
            return

        def resumed():
            yield first
            return (yield from job)

        self.runner.start(resumed(), first.total, lambda res: self._show(res, adata, key, atlas),
                          description="osNMF analysis")

    # ---------------------------------------------------------------- results
    def _show(self, res: dict, adata, key: str, atlas) -> None:
        self.results, self._adata, self._key, self._atlas = res, adata, key, atlas
        self._labels = res["labels"]
        self.pattern_filter.reset_choices()
        self.network_pattern.reset_choices()
        self._show_regions()
        self._draw_bubbles()
        fill_table(self.marker_table, res["marker_genes"], self.marker_cols)
        self._draw_network()
        self._show_coherence()
        self._set_enabled(True)
        if res["region_combinations"] is not None:
            best = _A.best_combinations(res["region_combinations"])
            c = res["counts"]
            self.runner.status.setText(
                f"{c['n_structures']} structures, {c['n_pairs']} contiguous pairs, {c['n_triples']} triples; "
                + "; ".join(f"{r.pattern}: {r.structures} ({r.score:.2f})" for r in best.itertuples()))

    def _show_regions(self) -> None:
        if self.results is None or self.results["region_combinations"] is None:
            self.region_table.setRowCount(0)
            return
        table = self.results["region_combinations"]
        p = self.pattern_filter.value
        if p is None:  # each pattern's best single, pair and triple, pattern by pattern
            df = pd.concat([g for _, g in table[table["rank"] == 1].groupby("pattern", sort=False)])
        else:
            df = table[table["pattern"] == p]
        self._region_rows = df = df.reset_index(drop=True)
        fill_table(self.region_table, df, self.region_cols)

    def _draw_bubbles(self) -> None:
        self.bubble_fig.clear()
        if self.results is not None and self.results["region_combinations"] is not None:
            M = structure_score_matrix(self.results["region_combinations"], order=self.results["structure_order"])
            draw_structure_bubbles(self.bubble_fig.add_subplot(111), M, score=self.results["params"]["params"]["score"])
            self.bubble_matrix = M
        self.bubble_canvas.draw_idle()

    def _draw_network(self) -> None:
        self.net_fig.clear()
        G = self.network
        if G is not None:
            ax = self.net_fig.add_subplot(111)
            draw_network(ax, G)
            ax.set_title(f"{self.network_pattern.value}: {G.number_of_nodes()} genes, {G.number_of_edges()} edges",
                         fontsize=8)
        self.net_canvas.draw_idle()

    @property
    def network(self):
        """The network shown (networkx.Graph), or None."""
        if not self.results or not self.results["networks"] or self.network_pattern.value is None:
            return None
        return self.results["networks"][self.network_pattern.value]

    def _show_coherence(self) -> None:
        mi = self.results["morans_i"]
        cols = list(mi.columns)
        self.moran_table.setColumnCount(len(cols))
        self.moran_table.setHorizontalHeaderLabels(cols)
        fill_table(self.moran_table, mi, cols)
        rec = self.results["reconstruction_accuracy"]
        self.recon_fig.clear()
        ax = self.recon_fig.add_subplot(111)
        bins = np.linspace(min(-0.2, float(np.nanmin(rec.to_numpy()))), 1.0, 30)
        for c in rec.columns:
            v = rec[c].dropna().to_numpy()
            ax.hist(v, bins=bins, alpha=0.6, label=f"{c.split('_')[0].upper()} (median {np.median(v):.2f})")
        ax.set_xlabel("Pearson r, data vs reconstruction (per gene)", fontsize=8)
        ax.set_ylabel("genes", fontsize=8)
        ax.legend(fontsize=7)
        self.recon_canvas.draw_idle()

    # ---------------------------------------------------------------- selection
    def select_combination(self, row: int) -> None:
        """Outline the union of the row's structures over the atlas and move the view there."""
        if self._atlas is None or self._labels is None:
            return
        rec = self._region_rows.iloc[row]
        ids = [int(i) for i in str(rec["ids"]).split(",")]
        highlight_mask(self.viewer, self._atlas, np.isin(self._labels, ids), rec["structures"],
                       structure_ids=ids)

    def _on_region_select(self) -> None:
        rows = {i.row() for i in self.region_table.selectedItems()}
        if rows:
            self.select_combination(min(rows))

    def open_gene(self, gene: str):
        """Add the gene's expression volume (NaN = missing) as a new Image layer, or select
        the one already open."""
        for lyr in self.viewer.layers:
            if lyr.metadata.get(GENE_LAYER_KEY) == gene and lyr.metadata.get(RESULT_KEY) is self._adata:
                self.viewer.layers.selection.active = lyr
                return lyr
        adata = self._adata
        j = list(adata.var_names).index(gene)
        col = adata.X[:, j]
        col = np.asarray(col.toarray() if hasattr(col, "toarray") else col, dtype=np.float32).ravel()
        vol = to_volume(adata, col)
        grid = grid_of(adata)
        finite = vol[np.isfinite(vol)]
        hi = float(np.percentile(finite, 99.5)) if finite.size else 1.0
        return self.viewer.add_image(vol, name=f"{gene} expression", scale=grid.voxel_size, translate=grid.origin,
                                     colormap="magma", blending="additive", contrast_limits=(0.0, hi or 1.0),
                                     metadata={GENE_LAYER_KEY: gene, RESULT_KEY: adata, "key": self._key,
                                               "source": "gene"})

    def _on_marker_select(self) -> None:
        rows = {i.row() for i in self.marker_table.selectedItems()}
        if rows:
            self.open_gene(self.marker_table.item(min(rows), self.marker_cols.index("gene")).text())

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
            pd.DataFrame([(a, b, d["weight"]) for a, b, d in G.edges(data=True)],
                         columns=["gene_a", "gene_b", "r"]).to_csv(path, index=False)
        return path

    def save_all(self, folder) -> Path:
        """Write every table, the networks, the bubble chart and the parameters to ``folder``."""
        from ..pipeline import write_osnmf_suite

        if self.results is None:
            raise ValueError("Nothing to save yet: run the analysis first.")
        write_osnmf_suite(self.results, folder)
        return Path(folder)

    def _export_dialog(self, fmt: str) -> None:
        name = f"{self.network_pattern.value}_network.{'graphml' if fmt == 'graphml' else 'csv'}"
        path, _ = QFileDialog.getSaveFileName(self, "Export network", name,
                                              "GraphML (*.graphml)" if fmt == "graphml" else "CSV (*.csv)")
        if path:
            self.export_network(path, fmt)

    def _save_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Save the osNMF analysis to a folder")
        if folder:
            self.save_all(folder)
