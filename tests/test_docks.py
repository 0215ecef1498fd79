"""napari that never crashes, never orphans a job, and speaks on the canvas (issue 26).

Each test failed before its fix: the README's demo command with a display, INSPIRE started
from the dock with a torch that imports triton, a dock closed while its job runs, Cancel
and Run again, Cancel of INSPIRE, structure names under the cursor, the docks' first click
on their own samples, scale bars / colour bars / legends, and colouring cells by anything.
"""

import itertools
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from napari_spatial_nmf._canvas import install, scale_bar
from napari_spatial_nmf._widgets.color_by import ColorByWidget
from napari_spatial_nmf.core._progress import Progress
from napari_spatial_nmf.results import RESULT_ID

PLUGIN = "napari-spatial-nmf"
ROOT = Path(__file__).resolve().parents[1]


def _wait(qtbot, runner, timeout=120_000):
    qtbot.waitUntil(lambda: not runner.running, timeout=timeout)


def _dock(viewer, title):
    return viewer.window.add_plugin_dock_widget(PLUGIN, title)[1]


# ------------------------------------------------------------------ the README's first command, with a display

def test_readme_demo_command_opens_napari_with_the_sample_and_docks():
    """`bash scripts/demo.sh` with a display (pytest-xvfb's): napari's event loop comes up with
    the Allen sample and both docks, the NMF dock ready (genes, atlas mask, K = 2), then closes."""
    assert os.environ.get("DISPLAY"), "pytest-xvfb provides the display"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "QT_QPA_PLATFORM": "xcb"}
    out = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh"), "--exit-after", "4"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    state = json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])
    assert state["layers"] == ["CCFv3 annotation", "Pdyn", "Nrp1"]
    assert any("Pattern discovery" in d for d in state["docks"]) and any("Region correlation" in d
                                                                          for d in state["docks"])
    assert state["nmf_inputs"] == ["Pdyn", "Nrp1"] and state["nmf_mask"] == "CCFv3 annotation" and state["k"] == 2


# ------------------------------------------------------------------ INSPIRE from the dock, with a triton-bearing torch

FAKE_TRITON = """
# Stands in for the triton of CUDA builds of torch: importing it from a worker thread of a Qt
# application killed napari (issue 26). A worker-thread import ends the process as that crash
# did (status 139); a main-thread import reports "not available", as on a CPU-only machine.
import os, threading
if threading.current_thread() is not threading.main_thread():
    os._exit(139)
raise ImportError("triton is not available here")
"""

INSPIRE_FROM_DOCK = """
import napari
from napari_spatial_nmf._widgets.integration import IntegrationWidget
v = napari.Viewer(show=True)
v.open_sample("napari-spatial-nmf", "stahl_4_sections")
w = IntegrationWidget(v)
v.window.add_dock_widget(w)
w.method.value = "inspire"
w.n_steps.value = 10
w.n_hvgs.value = 300
w.run()
assert w.runner.running, w.runner.status.text()
def finished():
    print("layers:", [lyr.name for lyr in v.layers], flush=True)
    v.close()
w.runner.worker.finished.connect(finished)
napari.run()
"""


def test_inspire_from_the_dock_survives_a_torch_that_imports_triton(tmp_path):
    pytest.importorskip("torch")
    (tmp_path / "triton").mkdir()
    (tmp_path / "triton" / "__init__.py").write_text(FAKE_TRITON)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "PYTHONWARNINGS": "ignore", "QT_QPA_PLATFORM": "xcb"}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(INSPIRE_FROM_DOCK)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, f"status {out.returncode}: {out.stderr[-2000:]}"
    assert "integrated factors (sections side by side)" in out.stdout


# ------------------------------------------------------------------ jobs have one owner

def test_closing_a_dock_cancels_its_job(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "osmfish")
    w = _dock(viewer, "Stability (staNMF)")
    w.k_min.value, w.k_max.value, w.n_replicates.value = 2, 12, 500
    w.run()
    qtbot.waitUntil(lambda: w.runner._latest is not None, timeout=60_000)
    worker = w.runner.worker
    aborted = []
    worker.aborted.connect(lambda: aborted.append(True))
    viewer.window.remove_dock_widget(w)
    qtbot.waitUntil(lambda: w.runner.worker is None, timeout=60_000)
    assert aborted and w.result is None


def test_cancel_then_run_again_with_napari_pumping_events(make_napari_viewer, qtbot):
    """A job that yields thousands of records as fast as it can, while napari's own progress bar
    processes events on every redraw: no nested redraw (RecursionError), Cancel, then Run again
    in another dock adds its layers."""
    from qtpy.QtWidgets import QApplication

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "bdgp")
    w = _dock(viewer, "Pattern discovery (NMF)")

    def flood():  # as fast as a generator can yield: the signals queue up faster than they are handled
        import time

        i = 0
        while True:  # until cancelled: 20,000 records at once, then a record every 10 ms
            yield Progress(i, 20_000, f"record {i}")
            i += 1
            if i > 20_000:
                time.sleep(0.01)

    w.runner.start(flood(), lambda _r: None, description="flood")
    for _ in range(200):  # a script driving napari pumps the event loop
        QApplication.processEvents()
    # mid-flood (a generous timeout: a loaded machine handles the queued records slowly)
    qtbot.waitUntil(lambda: w.runner._latest is not None and w.runner._latest.step > 100, timeout=300_000)
    w.runner.cancel()
    _wait(qtbot, w.runner)
    assert w.runner.run_button.isEnabled()
    w.n_components.value = 3
    w.max_iter.value = 20
    w.run()
    _wait(qtbot, w.runner)
    assert len([lyr for lyr in viewer.layers if RESULT_ID in lyr.metadata]) == 3


def test_inspire_cancel_is_answered_within_a_step(make_napari_viewer, qtbot):
    pytest.importorskip("torch")
    from qtpy.QtCore import Qt

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "stahl_4_sections")
    w = _dock(viewer, "Integrate sections")
    w.method.value, w.n_steps.value, w.n_hvgs.value = "inspire", 100_000, 300
    steps = []
    w.run()
    # counted in the worker thread as it yields (a queued connection lags behind on a loaded machine)
    w.runner.worker.yielded.connect(lambda p: steps.append(p.step), Qt.ConnectionType.DirectConnection)
    qtbot.waitUntil(lambda: len(steps) > 0 and max(steps) >= 3, timeout=120_000)
    at_cancel = max(steps)
    w.runner.cancel()
    _wait(qtbot, w.runner)
    assert max(steps) - at_cancel <= 1  # stopped at the next yield: within the step it was in
    assert not [lyr for lyr in viewer.layers if RESULT_ID in lyr.metadata]


def test_closing_napari_while_a_job_runs(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "osmfish")
    w = _dock(viewer, "Stability (staNMF)")
    w.k_min.value, w.k_max.value, w.n_replicates.value = 2, 12, 500
    w.run()
    worker = w.runner.worker
    done = []
    worker.finished.connect(lambda: done.append(True))
    qtbot.waitUntil(lambda: w.runner._latest is not None, timeout=60_000)
    viewer.close()
    qtbot.waitUntil(lambda: bool(done), timeout=60_000)  # ends without a traceback (pytest-qt would fail)


def test_run_pressed_twice_starts_one_job(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "osmfish")
    w = _dock(viewer, "Neighbourhood NMF (cells)")
    w.max_iter.value = 30
    w.run()
    first = w.runner.worker
    w.run()
    assert w.runner.worker is first
    _wait(qtbot, w.runner)
    assert len([lyr for lyr in viewer.layers if RESULT_ID in lyr.metadata]) == 2
    assert "gkl_rose" not in w.runner.status.text() and "neighbours per cell" in w.runner.status.text()


def test_a_slow_result_keeps_its_status_over_the_last_progress(make_napari_viewer, qtbot):
    """Progress is redrawn at most every PROGRESS_INTERVAL_MS, by a timer. A result handler slower
    than that (the Integration dock's 3D step adds a layer and turns the camera) let the timer of
    the job's last progress fire after it and before the worker's finished signal, and the status
    went back to "registered layer4 onto layer3 (3 of 3)" (seen once in CI). That order is
    forced here; then a real job with a slow result keeps its status and a full bar."""
    import time
    from types import SimpleNamespace

    from napari_spatial_nmf._widgets._runner import PROGRESS_INTERVAL_MS, JobRunner

    make_napari_viewer()  # napari's application and its progress machinery, as in a dock
    runner = JobRunner()
    qtbot.addWidget(runner)
    runner.worker = SimpleNamespace(abort_requested=False)  # a job between its result and its end
    runner._on_progress(Progress(2, 3, "the last step"))  # its redraw waits on the timer
    runner._done("value")  # the worker's returned signal: the endings, then the result
    runner.status.setText("done: value")
    qtbot.wait(4 * PROGRESS_INTERVAL_MS)  # the timer fires; the finished signal has not come
    assert runner.status.text() == "done: value"
    runner.worker = None

    def job():
        yield Progress(2, 3, "the last step")
        return "value"

    def on_result(value):
        time.sleep(4 * PROGRESS_INTERVAL_MS / 1000)
        runner.status.setText(f"done again: {value}")

    runner.start(job(), on_result, description="a job")
    _wait(qtbot, runner, timeout=20_000)
    qtbot.wait(4 * PROGRESS_INTERVAL_MS)
    assert runner.status.text() == "done again: value"
    assert runner.progress.value() == runner.progress.maximum()


# ------------------------------------------------------------------ the canvas speaks for itself

def test_structure_names_under_the_cursor_whatever_layer_is_active(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "allen_200um")
    atlas = viewer.layers["CCFv3 annotation"]
    viewer.layers.selection.active = viewer.layers["Pdyn"]
    cp = np.argwhere(atlas.data == 672)[0]  # a caudoputamen voxel
    viewer.dims.set_point(0, cp[0] * 200.0)
    viewer.mouse_over_canvas = True
    viewer.cursor.position = tuple(cp * 200.0)
    viewer.update_status_from_cursor()
    status = viewer.status if isinstance(viewer.status, str) else viewer.status["coordinates"]
    assert "atlas: CP (Caudoputamen)" in status


def test_samples_open_with_scale_bar_colour_bar_and_legend(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "osmfish")
    helper = install(viewer)
    cells = viewer.layers["osmFISH cells"]
    legend = helper.legend_entries()
    assert scale_bar(viewer).visible and legend[0] == "region" and len(legend) == 13
    assert {e[2:] for e in legend[1:]} == set(cells.metadata["legend"]["colors"])
    viewer.open_sample(PLUGIN, "allen_200um")
    viewer.layers.selection.active = viewer.layers["Pdyn"]
    assert viewer.layers["Pdyn"].colorbar.visible
    viewer.layers.selection.active = viewer.layers["Nrp1"]
    assert viewer.layers["Nrp1"].colorbar.visible and not viewer.layers["Pdyn"].colorbar.visible


def test_starmap_opens_in_3d_and_stahl_side_by_side(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "starmap_3d")
    qtbot.waitUntil(lambda: viewer.dims.ndisplay == 3, timeout=10_000)
    viewer2 = make_napari_viewer()
    viewer2.open_sample(PLUGIN, "stahl_4_sections")
    spans = sorted((lyr.data[:, 1].min() + lyr.translate[1], lyr.data[:, 1].max() + lyr.translate[1])
                   for lyr in viewer2.layers)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(spans))  # four sections, none on top of another


def test_colour_cells_by_a_gene_or_a_column(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "osmfish")
    cells = viewer.layers["osmFISH cells"]
    before = cells.metadata["adata"].X.copy()
    w = ColorByWidget(viewer)
    viewer.window.add_dock_widget(w)
    assert w.cells.value is cells and w.column.findText("Gad2") >= 0 and w.column.findText("region") >= 0
    w.apply("Gad2")
    assert str(cells.face_color_mode) == "colormap" and cells.face_colorbar.visible
    assert "legend" not in cells.metadata and install(viewer).legend_entries() == []
    w.apply("region")
    assert install(viewer).legend_entries()[0] == "region"
    w.apply("not a gene")
    assert w.message.text().startswith("Error:")
    np.testing.assert_array_equal(cells.metadata["adata"].X, before)  # the AnnData is not changed


# ------------------------------------------------------------------ each dock's first click on its own sample

def test_stability_dock_first_click_on_the_allen_sample(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "allen_200um")
    w = _dock(viewer, "Stability (staNMF)")
    assert [lyr.name for lyr in w.inputs.value] == ["Pdyn", "Nrp1"]
    assert w.mask.value is viewer.layers["CCFv3 annotation"]
    assert w.k_min.value <= w.k_max.value <= 2
    w.run()
    _wait(qtbot, w.runner)
    assert w.result is not None and w.fit_button.isEnabled(), w.runner.status.text()
    w.fit_final()
    _wait(qtbot, w.runner)
    assert len([lyr for lyr in viewer.layers if RESULT_ID in lyr.metadata]) == 2


def test_integration_dock_first_click_on_the_stahl_sample(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "stahl_4_sections")
    w = _dock(viewer, "Integrate sections")
    assert [lyr.name for lyr in w.sections.value] == ["layer1", "layer2", "layer3", "layer4"]
    w.run()
    _wait(qtbot, w.runner, timeout=600_000)
    assert "integrated factors (sections side by side)" in viewer.layers, w.runner.status.text()
    # the results (gene and column lists, legend, table) must not widen the page past the dock:
    # before the fix the combo boxes took their longest entry's width and a horizontal scroll
    # bar cut the dock's text off at the right
    qtbot.wait(50)
    assert w.page.minimumSizeHint().width() <= w.viewport().width(), (w.page.minimumSizeHint(), w.viewport().width())


DOCKS = ["Pattern discovery (NMF)", "Stability (staNMF)", "Region correlation", "Neighbourhood NMF (cells)",
         "Atlas analysis (osNMF)", "Integrate sections", "Colour cells by gene or column", "Fetch Allen ISH grids"]


def test_no_dock_is_widened_by_a_long_layer_name(make_napari_viewer, qtbot):
    from qtpy.QtWidgets import QComboBox

    from napari_spatial_nmf._widgets._base import DOCK_MIN_WIDTH

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "stahl_4_sections")
    viewer.layers[0].name = "section " + "very long name " * 8
    for title in DOCKS:
        w = _dock(viewer, title)
        qtbot.wait(20)
        width = w.page.minimumSizeHint().width()
        assert width <= DOCK_MIN_WIDTH + 60, f"{title}: the page needs {width} px"
        for combo in w.page.findChildren(QComboBox):  # the open lists still show whole entries
            if any(combo.itemText(i) == viewer.layers[0].name for i in range(combo.count())):
                assert combo.view().minimumWidth() >= combo.view().sizeHintForColumn(0), title


def test_nnmf_dock_first_click_on_the_osmfish_sample(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "osmfish")
    w = _dock(viewer, "Neighbourhood NMF (cells)")
    w.run()
    _wait(qtbot, w.runner)
    assert [lyr.name for lyr in viewer.layers if RESULT_ID in lyr.metadata] == [
        "osmFISH cells NNMF domains", "osmFISH cells NNMF weights"]
    assert install(viewer).legend_entries()[0].startswith("domain")


def test_network_tab_without_a_network_shows_no_empty_plot(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "allen_200um")
    nmf = _dock(viewer, "Pattern discovery (NMF)")
    nmf.run()
    _wait(qtbot, nmf.runner)
    w = _dock(viewer, "Atlas analysis (osNMF)")
    w.run()
    _wait(qtbot, w.runner)
    assert not w.net_canvas.isVisibleTo(w) and "at least 3 genes" in w.network_note.text()


def test_saving_a_gene_image_as_h5ad_reopens_it(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "allen_200um")
    from napari_spatial_nmf._reader import get_reader, write_h5ad

    pdyn = viewer.layers["Pdyn"]
    written = write_h5ad(str(tmp_path / "pdyn.h5ad"), [pdyn.as_layer_data_tuple()])
    assert written
    (data, kwargs, kind), = get_reader(written[0])(written[0])
    assert kind == "image" and kwargs["name"] == "Pdyn" and tuple(kwargs["scale"]) == (200.0, 200.0, 200.0)
    np.testing.assert_allclose(data, pdyn.data, equal_nan=True)


# ------------------------------------------------------------------ issue 23 in the Integration dock

def test_integration_dock_chooses_k_by_stability_with_a_live_curve_and_cancel_keeps_finished_k(
        make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "stahl_4_sections")
    w = _dock(viewer, "Integrate sections")
    w.by_stability.value = True
    assert w.k_max.native.isVisibleTo(w) and w.plot.isVisibleTo(w) and w.n_restarts.value >= 2
    w.n_factors.value, w.k_max.value, w.n_restarts.value, w.n_steps.value, w.n_hvgs.value = 3, 6, 2, 20, 300
    w.run()
    qtbot.waitUntil(lambda: len(w.plot.rows) >= 1, timeout=300_000)  # the first K's point, live
    w.runner.cancel()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=60_000)
    kept = dict(w.plot.rows)
    assert kept and "integrated factors (sections side by side)" not in viewer.layers
    messages, on_progress = [], w.runner._on_progress
    # every message from the first one on (connected before the worker starts; the cancel may also
    # have come after a restart of the next K had finished, so at least the kept K's fits)
    w.runner._on_progress = lambda p: (messages.append(getattr(p, "message", "")), on_progress(p))
    w.run()  # the same sweep again: the finished fits come from the dock's store
    _wait(qtbot, w.runner, timeout=600_000)
    stored = [int(m.group(1)) for m in map(re.compile(r"(\d+) in the store").search, messages) if m]
    assert stored and stored[0] >= 2 * len(kept), messages[:3]
    assert sorted(w.plot.rows) == [3, 4, 5, 6], w.runner.status.text()
    best = w.result.adata.uns["integration_stability"]["best_k"]
    assert f"K = {best} chosen by stability" in w.runner.status.text()
    assert len(w.result.adata.uns["integration"]["factor_names"]) == best
    assert "Mixing of sections" in w.diagnostics.text()


def test_integration_dock_union_of_panels_colours_by_an_imputed_gene_marked(make_napari_viewer, qtbot):
    """Two osmFISH halves, one with 20 of the 33 genes: genes='union' imputes the other 13 in it,
    and colouring by one of them rings exactly that half's cells."""
    from napari_spatial_nmf import datasets
    from napari_spatial_nmf._layers import cells_layer

    cells = datasets.osmfish()
    cells = cells[(cells.obs["region"] != "Excluded").to_numpy()]
    x = cells.obsm["spatial"][:, 0]
    left, right = cells[x < np.median(x)].copy(), cells[x >= np.median(x), :20].copy()
    viewer = make_napari_viewer()
    for a, name in ((left, "left"), (right, "right (20 genes)")):
        data, kw, _ = cells_layer(a, name)
        viewer.add_points(data, **kw)
    w = _dock(viewer, "Integrate sections")
    assert w.counts.value == "raw"
    w.genes.value = "union"
    w.n_factors.value, w.n_steps.value = 6, 50
    w.run()
    _wait(qtbot, w.runner, timeout=600_000)
    res = w.result.adata
    assert res.n_vars == 33 and "integration_imputed" in res.layers, w.runner.status.text()
    gene = left.var_names[25]  # not in the right half's panel
    w.gene.value = gene
    layer = viewer.layers["integrated factors (sections side by side)"]
    ringed = (np.asarray(layer.border_width) > 0) & (np.asarray(layer.border_color)[:, 3] > 0)
    np.testing.assert_array_equal(ringed, (res.obs["section"] == "right (20 genes)").to_numpy())
    assert "imputed in right (20 genes)" in w.legend.title
    w.gene.value = left.var_names[0]  # measured in both: no rings
    assert not (np.asarray(layer.border_color)[:, 3] > 0).any()
