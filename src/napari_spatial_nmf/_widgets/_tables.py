"""Read-only result tables shared by the docks (Qt only; no computation)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QAbstractItemView, QTableWidget, QTableWidgetItem


def read_only_table(headers: list[str], *, sortable: bool = False, min_height: int = 180) -> QTableWidget:
    """A QTableWidget selecting whole rows, one at a time, with no editing."""
    t = QTableWidget(0, len(headers))
    t.setHorizontalHeaderLabels(headers)
    t.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    t.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    t.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    t.setSortingEnabled(sortable)
    t.setMinimumHeight(min_height)
    return t


def fill_table(table: QTableWidget, df: pd.DataFrame, columns: list[str], *, user_data: str | None = None) -> None:
    """Show ``df[columns]`` (floats to 4 significant digits; numbers sort as numbers). With
    ``user_data``, each item's UserRole holds that column's value for its row."""
    sortable = table.isSortingEnabled()
    table.setSortingEnabled(False)  # filling a sorted table would reorder rows mid-way
    table.clearContents()
    table.setRowCount(len(df))
    values = [df[c].to_numpy() for c in columns]  # per column, so integer columns stay integers
    extra = df[user_data].to_numpy() if user_data is not None else None
    for i in range(len(df)):
        for j, col_values in enumerate(values):
            v = col_values[i]
            item = QTableWidgetItem()
            if isinstance(v, (float, np.floating)):
                item.setData(Qt.ItemDataRole.DisplayRole, float(f"{v:.4g}"))
            elif isinstance(v, (int, np.integer)):
                item.setData(Qt.ItemDataRole.DisplayRole, int(v))
            else:
                item.setData(Qt.ItemDataRole.DisplayRole, str(v))
            if extra is not None:
                item.setData(Qt.ItemDataRole.UserRole, extra[i].item() if hasattr(extra[i], "item") else extra[i])
            table.setItem(i, j, item)
    table.setSortingEnabled(sortable)
    table.resizeColumnsToContents()
