"""Run / Cancel buttons, one progress bar and a status line for one background job."""

from __future__ import annotations

from collections.abc import Callable, Generator

from napari.qt.threading import create_worker
from napari.utils import progress as napari_progress
from napari.utils.notifications import show_error
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from ..core._progress import Progress


class JobRunner(QWidget):
    """Runs a core generator in a napari worker thread; Cancel quits at the next yield.

    One progress path: every :class:`~napari_spatial_nmf.core.Progress` the job yields sets
    the bar to its ``step`` of ``total`` and the status line to its message, and the same
    numbers drive napari's own ``progress`` (shown in napari's activity panel). The
    result callback runs on the main thread only when the job finished (never after Cancel
    or an error), so a cancelled run leaves nothing behind.
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
        self._pbar = None
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
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        self.status.setText(f"Error: {msg}")
        show_error(str(msg))

    def start(self, job: Generator[Progress, None, object], on_result: Callable[[object], None],
              description: str = "", on_data: Callable[[dict], None] | None = None) -> None:
        """Run ``job``; ``on_result(value)`` and ``on_data(progress.data)`` run on the main thread."""
        def run():
            return (yield from job)

        worker = create_worker(run)
        self.progress.setRange(0, 0)  # busy until the first Progress gives the total
        self.status.setText(f"{description or 'job'}: starting…")
        self._pbar = napari_progress(total=0, desc=description or "napari-spatial-nmf")
        worker.yielded.connect(self._on_progress)
        if on_data is not None:
            worker.yielded.connect(lambda p: on_data(p.data) if isinstance(p, Progress) and p.data else None)
        worker.returned.connect(on_result)
        worker.returned.connect(self._done)
        worker.errored.connect(self._error)
        worker.aborted.connect(lambda: self.status.setText("Cancelled: nothing was added or changed."))
        worker.finished.connect(self._finished)
        self.worker = worker
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        worker.start()

    def _on_progress(self, p) -> None:
        if not isinstance(p, Progress):
            return
        total = max(p.total, 1)
        self.progress.setRange(0, total)
        self.progress.setValue(min(p.step, total))
        self.status.setText(p.message)
        pbar = self._pbar  # napari's bar may process events (and this job's end) while it updates
        if pbar is not None:
            pbar.total = total
            pbar.update(min(p.step, total) - pbar.n)
            pbar.set_description(p.message[:60])

    def _error(self, exc) -> None:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        self.status.setText(f"Error: {msg}")

    def _done(self, _result=None) -> None:
        self.progress.setRange(0, 1)
        self.progress.setValue(1)  # converged runs stop before max_iter

    def cancel(self) -> None:
        """Ask the running job to stop at its next step."""
        if self.worker is not None:
            self.status.setText("Cancelling…")
            self.worker.quit()

    def _finished(self) -> None:
        self.worker = None
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
