"""What every dock shares: a scrollable page that fits a laptop screen, napari's
``reset_choices`` convention, a legend for categorical colours, and a message line.
"""

from __future__ import annotations

from qtpy.QtCore import QEvent, QSize, Qt, QTimer
from qtpy.QtWidgets import QComboBox, QFrame, QGridLayout, QLabel, QScrollArea, QSizePolicy, QVBoxLayout, QWidget

from ..results import REGISTRY

DOCK_MIN_WIDTH = 340
COMBO_MIN_CHARS = 14  # a combo box is at least this many characters wide, whatever its entries
STOP_TEXT = {"tol": "converged", "gkl_rose": "stopped when the divergence rose (NNMF's rule)",
             "max_iter": "reached the iteration limit (raise max iterations to go on)"}


def stop_text(reason) -> str:
    """Why a fit stopped, in words (``stop_reason`` of the results)."""
    return STOP_TEXT.get(str(reason), str(reason))


def is_deleted(obj) -> bool:
    """True once Qt has deleted the C++ side of a widget (its Python object may live on)."""
    try:
        from qtpy import sip
    except ImportError:  # PySide
        import shiboken6

        return not shiboken6.isValid(obj)
    return sip.isdeleted(obj)


def _fit_popup(combo: QComboBox) -> None:
    """The open list of a combo box as wide as its longest entry (the box itself stays narrow)."""
    if not is_deleted(combo):
        combo.view().setMinimumWidth(combo.view().sizeHintForColumn(0) + 24)


class Dock(QScrollArea):
    """A dock page inside a vertical scroll area, so it fits any screen height.

    napari connects ``reset_choices`` to its layer-list events when the dock is added and
    disconnects it when the dock is removed; subclasses keep their combo boxes in
    ``self.form`` (a magicgui Container) and never connect to the viewer themselves.

    A dock owns its jobs: when napari removes it (its close button), every job it started is
    cancelled, so nothing runs on unseen and uncancellable. The first time it is shown, the
    canvas is re-fitted to the space the dock leaves.
    """

    def __init__(self, napari_viewer, header: str = ""):
        super().__init__()
        from .._canvas import install

        self.viewer = napari_viewer
        self._fitted = False
        install(napari_viewer)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.page = QWidget()
        self.layout_ = QVBoxLayout(self.page)
        self.layout_.setContentsMargins(6, 6, 6, 6)
        if header:
            intro = QLabel(header)
            intro.setWordWrap(True)
            intro.setStyleSheet("color: #a0a0a0;")
            self.layout_.addWidget(intro)
        self.setWidget(self.page)
        self.form = None

    def _content_width(self) -> int:
        """The page's narrowest readable width plus the vertical scroll bar (never clipped)."""
        return max(DOCK_MIN_WIDTH, self.page.minimumSizeHint().width() + self.verticalScrollBar().sizeHint().width()
                   + 2 * self.frameWidth())

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt override; the page is never squeezed below its content
        return QSize(self._content_width(), super().minimumSizeHint().height())

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override; as narrow as the content allows
        return QSize(self._content_width(), super().sizeHint().height())

    def add(self, widget) -> None:
        native = getattr(widget, "native", widget)
        if isinstance(native, QLabel):
            native.setWordWrap(True)  # a line of text wraps rather than widening the dock
        self.layout_.addWidget(native)
        # a combo box sized to its longest entry (a gene list, a long layer name) would widen the
        # whole page past the dock and push a horizontal scroll bar under it: size them to a
        # readable minimum instead; the open list still shows whole entries
        for combo in [native, *native.findChildren(QComboBox)]:
            if isinstance(combo, QComboBox):
                combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
                combo.setMinimumContentsLength(COMBO_MIN_CHARS)
                model = combo.model()
                for signal in (model.rowsInserted, model.modelReset):
                    signal.connect(self._fit_popups)  # a bound method: the connection keeps no dock alive
                _fit_popup(combo)

    def _fit_popups(self, *_args) -> None:
        """Refit every combo box's open list (its entries changed)."""
        if not is_deleted(self):
            for combo in self.page.findChildren(QComboBox):
                _fit_popup(combo)

    def runners(self) -> list:
        """The job runners of this dock."""
        from ._runner import JobRunner

        return self.findChildren(JobRunner)

    def cancel_jobs(self) -> None:
        """Cancel every job this dock started."""
        for runner in self.runners():
            runner.cancel()

    def event(self, ev) -> bool:
        if ev.type() == QEvent.Type.ParentChange and self.parent() is None and not is_deleted(self):
            self.cancel_jobs()  # napari removed the dock (its close button): its jobs end with it
        return super().event(ev)

    def showEvent(self, ev) -> None:  # noqa: N802 - Qt override
        super().showEvent(ev)
        if not self._fitted:
            self._fitted = True
            QTimer.singleShot(0, self._fit_canvas)

    def _fit_canvas(self) -> None:
        if not is_deleted(self) and len(self.viewer.layers):
            self.viewer.reset_view()

    def reset_choices(self, _event=None) -> None:
        """Refresh the layer choices (napari calls this when layers change)."""
        if is_deleted(self):
            return
        REGISTRY.retain(self.viewer.layers)
        if self.form is not None:
            self.form.reset_choices()


class Legend(QWidget):
    """Colour swatches with names, for categorical layers (domains, factors, regions)."""

    def __init__(self, columns: int = 3):
        super().__init__()
        self.columns = columns
        self.grid = QGridLayout(self)
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.grid.setHorizontalSpacing(10)
        self.grid.setVerticalSpacing(2)
        self.title = ""
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)

    def set_colors(self, colors: dict[str, str], title: str = "") -> None:
        """Show ``{name: colour}``."""
        while self.grid.count():
            self.grid.takeAt(0).widget().deleteLater()
        self.title = title
        if title:
            heading = QLabel(f"<b>{title}</b>")
            heading.setWordWrap(True)  # a long title wraps rather than widening the dock
            self.grid.addWidget(heading, 0, 0, 1, self.columns)
        for i, (name, color) in enumerate(colors.items()):
            label = QLabel(f'<span style="color:{color}; font-size:14px;">■</span> {name}')
            self.grid.addWidget(label, 1 + i // self.columns, i % self.columns)

    @property
    def entries(self) -> list[str]:
        """The names shown, in order."""
        items = [self.grid.itemAt(i).widget().text() for i in range(self.grid.count())]
        return [t.split("</span> ", 1)[1] for t in items if "</span> " in t]
