"""Result tables of the docks: Qt's model/view over a pandas DataFrame (read-only, sortable)."""

from __future__ import annotations

import weakref

import numpy as np
import pandas as pd
from qtpy.QtCore import QAbstractTableModel, QSortFilterProxyModel, Qt
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableView


class DataFrameModel(QAbstractTableModel):
    """A read-only Qt model of chosen DataFrame columns; numbers sort as numbers."""

    def __init__(self, columns: list[tuple[str, str]], parent=None):
        super().__init__(parent)
        self.columns = columns  # (DataFrame column, header)
        self.df = pd.DataFrame(columns=[c for c, _ in columns])

    def set_frame(self, df: pd.DataFrame) -> None:
        self.beginResetModel()
        self.df = df.reset_index(drop=True)
        self.endResetModel()

    def rowCount(self, parent=None):  # noqa: N802 - Qt API
        return 0 if parent is not None and parent.isValid() else len(self.df)

    def columnCount(self, parent=None):  # noqa: N802 - Qt API
        return len(self.columns)

    @staticmethod
    def _text(v) -> str:
        if isinstance(v, (float, np.floating)):
            return "" if np.isnan(v) else f"{v:.4g}"
        return str(v)

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        row = self.df.iloc[index.row()]
        v = row[self.columns[index.column()][0]]
        if role == Qt.ItemDataRole.DisplayRole:
            return self._text(v)
        if role == Qt.ItemDataRole.ToolTipRole:  # the whole row, for columns scrolled out of view
            return "\n".join(f"{h}: {self._text(row[c])}" for c, h in self.columns)
        if role == Qt.ItemDataRole.UserRole:  # the sort key
            return float(v) if isinstance(v, (int, float, np.integer, np.floating)) else str(v)
        if role == Qt.ItemDataRole.TextAlignmentRole and isinstance(v, (int, float, np.integer, np.floating)):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):  # noqa: N802 - Qt API
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return self.columns[section][1]
        return None


class DataFrameTable(QTableView):
    """A table view of a DataFrame: whole-row selection, sorting by any column, and
    columns that share the dock's width (no horizontal scrolling for the key columns).
    """

    def __init__(self, columns: list[tuple[str, str]], *, sortable: bool = True, stretch: str | None = None,
                 min_height: int = 160):
        super().__init__()
        self.model_ = DataFrameModel(columns, self)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model_)
        self.proxy.setSortRole(Qt.ItemDataRole.UserRole)
        self.setModel(self.proxy)
        self.setSortingEnabled(sortable)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.verticalHeader().setVisible(False)
        self.verticalHeader().setDefaultSectionSize(20)
        self.setMinimumHeight(min_height)
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        if stretch is not None:
            header.setSectionResizeMode([c for c, _ in columns].index(stretch), QHeaderView.ResizeMode.Stretch)
        header.setStretchLastSection(stretch is None)

    @property
    def frame(self) -> pd.DataFrame:
        """The DataFrame shown (in its own order)."""
        return self.model_.df

    def set_frame(self, df: pd.DataFrame, sort_by: str | None = None, ascending: bool = True) -> None:
        """Show ``df``, sorted by a column or else in the DataFrame's own order."""
        self.model_.set_frame(df)
        if sort_by is not None:
            self.sortByColumn([c for c, _ in self.model_.columns].index(sort_by),
                              Qt.SortOrder.AscendingOrder if ascending else Qt.SortOrder.DescendingOrder)
        else:
            self.horizontalHeader().setSortIndicator(-1, Qt.SortOrder.AscendingOrder)
            self.proxy.sort(-1)

    def rowCount(self) -> int:  # noqa: N802 - mirrors QTableWidget, used by tests
        return self.proxy.rowCount()

    def row_record(self, view_row: int) -> pd.Series:
        """The DataFrame row shown at ``view_row`` (after sorting)."""
        src = self.proxy.mapToSource(self.proxy.index(view_row, 0))
        return self.model_.df.iloc[src.row()]

    def text(self, view_row: int, column: str) -> str:
        """The text shown in a cell."""
        col = [c for c, _ in self.model_.columns].index(column)
        return str(self.proxy.index(view_row, col).data())

    def on_select(self, callback) -> None:
        """Call ``callback(row Series)`` when the user selects a row. A bound method is held
        weakly, so the table never keeps its dock alive.
        """
        self._on_select = weakref.WeakMethod(callback) if hasattr(callback, "__self__") else (lambda: callback)
        self.selectionModel().selectionChanged.connect(self._selection_changed)

    def _selection_changed(self, *_):
        rows = self.selectionModel().selectedRows()
        callback = self._on_select()
        if rows and callback is not None:
            callback(self.row_record(rows[0].row()))
