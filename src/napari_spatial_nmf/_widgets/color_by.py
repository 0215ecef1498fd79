"""Colour a cell layer by any gene (searchable) or any obs column, as scanpy's ``pl.spatial(color=...)``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import ComboBox, Container
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QCompleter, QLabel

from .._canvas import install
from .._layers import colorable_columns, recolor_points
from ._base import Dock

if TYPE_CHECKING:
    import napari

HEADER = ("Colour a points layer of cells by any gene or obs column: categories get their colours from "
          "uns['<column>_colors'] (else tab10/tab20) and a legend on the canvas; numbers a colour bar. The AnnData "
          "is not changed.")


def cell_layer_choices(viewer) -> list[tuple[str, object]]:
    """Every points layer backed by an AnnData: inputs and results."""
    from napari.layers import Points

    return [(lyr.name, lyr) for lyr in viewer.layers if isinstance(lyr, Points) and "adata" in lyr.metadata]


class ColorByWidget(Dock):
    """Pick a cell layer, then type or pick a gene or an obs column (the list completes what
    you type, anywhere in the name); the layer is recoloured at once.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(napari_viewer, HEADER)
        self.cells = ComboBox(label="cells", choices=lambda _w: cell_layer_choices(self.viewer))
        self.form = Container(widgets=[self.cells])
        self.column = QComboBox()
        self.column.setEditable(True)
        self.column.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.column.lineEdit().setPlaceholderText("type a gene or column name")
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.add(self.form)
        self.add(QLabel("colour by (obs columns first, then genes)"))
        self.add(self.column)
        self.add(self.message)
        self.layout_.addStretch()
        self.cells.changed.connect(self._on_cells)
        self.column.activated.connect(lambda _i: self.apply(self.column.currentText()))
        self.column.lineEdit().returnPressed.connect(lambda: self.apply(self.column.currentText()))
        self.reset_choices()
        self._on_cells()

    def _on_cells(self, _value=None) -> None:
        layer = self.cells.value
        self.column.clear()
        if layer is None:
            return
        obs, genes = colorable_columns(layer.metadata["adata"])
        self.column.addItems([*obs, *genes])
        completer = QCompleter([*obs, *genes], self.column)
        completer.setFilterMode(Qt.MatchFlag.MatchContains)
        completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.column.setCompleter(completer)
        current = layer.metadata.get("color_by")
        if current in [*obs, *genes]:
            self.column.setCurrentText(current)
        self.message.setText(f"{len(obs)} columns, {len(genes)} genes")

    def apply(self, column: str) -> None:
        """Recolour the chosen layer by ``column`` (a gene or obs column); unknown names are reported."""
        layer = self.cells.value
        if layer is None or not column:
            return
        try:
            legend = recolor_points(layer, column)
        except (KeyError, ValueError) as exc:
            self.message.setText(f"Error: {exc.args[0] if exc.args else exc}")
            return
        layer.visible = True
        self.viewer.layers.selection.active = layer
        install(self.viewer).refresh()
        kind = f"{len(legend)} categories (legend on the canvas)" if legend else "numbers (colour bar on the canvas)"
        self.message.setText(f"{layer.name} coloured by {column}: {kind}.")
