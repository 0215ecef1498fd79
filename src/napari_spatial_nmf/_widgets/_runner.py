"""Run / Cancel buttons, one progress bar and a status line for one background job."""

from __future__ import annotations

from collections.abc import Callable, Generator

from napari.qt.threading import create_worker
from napari.utils import progress as napari_progress
from napari.utils.notifications import show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from ..core._progress import Progress
from ._base import is_deleted

PROGRESS_INTERVAL_MS = 50  # the bar and status are redrawn at most this often, whatever the job yields


class JobRunner(QWidget):
    """Runs a core generator in a napari worker thread; Cancel quits at the next yield.

    One progress path: every :class:`~napari_spatial_nmf.core.Progress` the job yields is
    kept as the latest, and a timer redraws the bar, the status line and napari's own
    ``progress`` (shown in napari's activity panel) from it at most every
    :data:`PROGRESS_INTERVAL_MS`. napari's bar processes Qt events while it redraws, which
    delivers more progress signals; they only replace the latest record, so no redraw ever
    runs inside another (the recursion that broke the docks after Cancel and Run).

    The result callback runs on the main thread only when the job finished (never after
    Cancel or an error), so a cancelled run leaves nothing behind. The job belongs to this
    runner: :meth:`cancel` stops it, and the dock calls it when it is closed.
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
        self._job = None
        self._pbar = None
        self._latest: Progress | None = None
        self._pending = False
        self._applying = False
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
        """Report an input error (raised before the job started): in the status line and as a
        warning that napari dismisses by itself.
        """
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        self.status.setText(f"Error: {msg}")
        show_warning(str(msg))

    def start(self, job: Generator[Progress, None, object], on_result: Callable[[object], None],
              description: str = "", on_data: Callable[[dict], None] | None = None) -> None:
        """Run ``job``; ``on_result(value)`` and ``on_data(progress.data)`` run on the main thread."""
        def run():
            return (yield from job)

        worker = create_worker(run)
        self._job = job
        self.progress.setRange(0, 0)  # busy until the first Progress gives the total
        self.status.setText(f"{description or 'job'}: starting…")
        self._latest, self._pending, self._applying = None, False, False
        self._pbar = napari_progress(total=0, desc=description or "napari-spatial-nmf")
        worker.yielded.connect(self._on_progress)
        if on_data is not None:
            worker.yielded.connect(lambda p: on_data(p.data) if isinstance(p, Progress) and p.data
                                   and not is_deleted(self) else None)
        # the endings first drop any progress still waiting for its redraw: a coalesced update whose
        # timer fires after the result (a slow on_result, the finished signal still queued) would
        # otherwise overwrite the result's status with the job's last progress message
        worker.returned.connect(self._done)
        worker.returned.connect(lambda value: None if is_deleted(self) else on_result(value))
        worker.errored.connect(self._error)
        worker.aborted.connect(self._aborted)
        worker.finished.connect(self._finished)
        self.worker = worker
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        worker.start()

    # ------------------------------------------------------------------ progress, coalesced
    def _on_progress(self, p) -> None:
        if not isinstance(p, Progress):
            return
        self._latest = p
        if not self._pending:
            self._pending = True
            QTimer.singleShot(PROGRESS_INTERVAL_MS, self._apply)

    def _apply(self) -> None:
        self._pending = False
        if is_deleted(self) or self.worker is None or self._latest is None:
            return
        if self._applying:  # napari's bar processed events while redrawing: come back later
            self._pending = True
            QTimer.singleShot(PROGRESS_INTERVAL_MS, self._apply)
            return
        self._applying = True
        try:
            p = self._latest
            total = max(p.total, 1)
            self.progress.setRange(0, total)
            self.progress.setValue(min(p.step, total))
            if self.worker is not None and not self.worker.abort_requested:
                self.status.setText(p.message)
            pbar = self._pbar
            if pbar is not None:
                pbar.total = total
                pbar.update(min(p.step, total) - pbar.n)
                pbar.set_description(p.message[:60])
        finally:
            self._applying = False

    # ------------------------------------------------------------------ endings
    def _error(self, exc) -> None:
        self._latest = None
        if is_deleted(self):
            return
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        self.status.setText(f"Error: {msg}")

    def _aborted(self) -> None:
        self._latest = None
        if not is_deleted(self):
            self.status.setText("Cancelled: nothing was added or changed.")

    def _done(self, _result=None) -> None:
        self._latest = None
        if is_deleted(self):
            return
        self.progress.setRange(0, 1)
        self.progress.setValue(1)  # converged runs stop before max_iter

    def cancel(self) -> None:
        """Ask the running job to stop at its next step (every job yields at least every ~2 s)."""
        if self.worker is not None:
            if not is_deleted(self):
                self.status.setText("Cancelling…")
            self.worker.quit()

    def _finished(self) -> None:
        self.worker = None
        self._latest = None
        job, self._job = getattr(self, "_job", None), None
        if job is not None:  # a cancelled job ends now, not when it is collected: its stores unlock, files close
            try:
                job.close()
            except Exception as exc:  # noqa: BLE001 - its clean-up failed; the user should know, napari must live
                show_warning(f"Cleaning up after the job failed: {exc}")
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        if is_deleted(self):
            return
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
