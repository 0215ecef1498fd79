"""Regenerate the screenshots in docs/images from the shipped real samples.

Run under a display (or Xvfb):
    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1400x900x24" .venv/bin/python docs/make_screenshots.py
"""

from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

OUT = Path(__file__).parent / "images"
OUT.mkdir(exist_ok=True)
PLUGIN = "napari-spatial-nmf"


def wait(runner):
    while runner.running:
        QApplication.processEvents()


def shot(viewer, name):
    for _ in range(5):
        QApplication.processEvents()
    viewer.screenshot(str(OUT / name), canvas_only=False, flash=False)
    print("wrote", OUT / name)


viewer = napari.Viewer(show=True, title="napari-spatial-nmf")
viewer.window._qt_window.resize(1400, 900)
viewer.open_sample(PLUGIN, "allen_200um")
atlas = viewer.layers["CCFv3 annotation"]
genes = viewer.layers["Allen ISH energy"]
viewer.dims.set_point(1, 21 * 200.0)  # a coronal plane through the striatum
viewer.dims.set_point(0, 0)  # Pdyn
shot(viewer, "01_allen_sample.png")

_, nmf = viewer.window.add_plugin_dock_widget(PLUGIN, "Pattern discovery (NMF)")
nmf.inputs.value = [genes]
nmf.mask.value = atlas
nmf.n_components.value = 2
nmf.run()
wait(nmf.runner)
genes.visible = False
shot(viewer, "02_patterns.png")

_, reg = viewer.window.add_plugin_dock_widget(PLUGIN, "Region correlation")
reg.source.value = viewer.layers["Allen ISH energy PP1"]
reg.atlas.value = atlas
reg.run()
reg.table.selectRow(0)
viewer.layers["Allen ISH energy PP2"].visible = False
shot(viewer, "03_region_correlation.png")

viewer.window.remove_dock_widget("all")
_, osn = viewer.window.add_plugin_dock_widget(PLUGIN, "Atlas analysis (osNMF)")
osn.atlas.value = atlas
osn.level.value = "coarse: 12 major divisions"
osn.run()
wait(osn.runner)
osn.region_table.selectRow(0)
viewer.layers["Allen ISH energy PP2"].visible = True
shot(viewer, "06_atlas_analysis.png")

viewer.layers.clear()
viewer.open_sample(PLUGIN, "bdgp")
nmf.form.reset_choices()
nmf.inputs.value = [viewer.layers["BDGP images"]]
nmf.n_components.value = 21
nmf.run()
wait(nmf.runner)
viewer.layers["BDGP images"].visible = False
viewer.grid.enabled = True
viewer.grid.shape = (5, 5)
viewer.reset_view()
shot(viewer, "04_bdgp_21_patterns.png")

viewer.grid.enabled = False
viewer.layers.clear()
viewer.open_sample(PLUGIN, "osmfish")
nmf.form.reset_choices()
nmf.inputs.value = [viewer.layers["osmFISH cells"]]
nmf.n_components.value = 11
nmf.run()
wait(nmf.runner)
viewer.layers["osmFISH cells"].visible = False
w = viewer.layers["osmFISH cells NMF weights"]
w.face_color = "PP4"
w.face_colormap = "viridis"
w.face_contrast_limits = (0.0, float(np.percentile(w.features["PP4"], 99)))
viewer.reset_view()
shot(viewer, "05_osmfish_cell_weights.png")
viewer.close()
