"""Run / Cancel buttons, a progress bar and a status line for one background job."""

from __future__ import annotations

from collections.abc import Callable, Generator

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from ..core._progress import Progress


class JobRunner(QWidget):
    """Runs a core generator in a napari worker thread; Cancel quits at the next yield.

    ``start(job, total, on_result)`` takes a generator that yields
    :class:`~napari_spatial_nmf.core.Progress` and returns the result; ``on_result`` is
    called on the main thread only when the job finished (never after Cancel or an error),
    so a cancelled run leaves nothing behind.
    """

    def __init__(self, run_text: str = "Run", parent=None):
        super().__init__(parent)
        self.run_button = QPushButton(run_text)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.worker = None
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        self.cancel_button.clicked.connect(self.cancel)

    @property
    def running(self) -> bool:
        return self.worker is not None

    def fail(self, exc: Exception) -> None:
        """Report an input error (raised before the job started) to the user."""
        self.status.setText(f"Error: {exc}")
        show_error(str(exc))

    def start(self, job: Generator[Progress, None, object], total: int, on_result: Callable[[object], None],
              description: str = "", on_data: Callable[[dict], None] | None = None) -> None:
        def run():
            return (yield from job)

        worker = create_worker(run, _progress={"total": total, "desc": description or "napari-spatial-nmf"})
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(0)
        self.status.setText("running…")
        worker.yielded.connect(self._on_progress)
        if on_data is not None:
            worker.yielded.connect(lambda p: on_data(p.data) if isinstance(p, Progress) and p.data else None)
        worker.returned.connect(on_result)
        worker.returned.connect(self._done)
        worker.errored.connect(lambda e: self.status.setText(f"Error: {e}"))
        worker.aborted.connect(lambda: self.status.setText("cancelled"))
        worker.finished.connect(self._finished)
        self.worker = worker
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        worker.start()

    def _on_progress(self, p) -> None:
        if isinstance(p, Progress):
            self.progress.setMaximum(max(p.total, 1))
            self.progress.setValue(min(p.step, p.total))
            self.status.setText(p.message)

    def _done(self, _result=None) -> None:
        self.progress.setValue(self.progress.maximum())  # converged runs stop before max_iter
        self.status.setText(f"done ({self.status.text()})" if self.status.text() else "done")

    def cancel(self) -> None:
        if self.worker is not None:
            self.status.setText("cancelling…")
            self.worker.quit()

    def _finished(self) -> None:
        self.worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
