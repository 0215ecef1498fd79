"""Regenerate the screenshots in docs/images from the shipped real samples.

The whole window is captured (docks included) at a laptop size, 1280 x 800, so the pictures
show what a user sees. Run under a display (or Xvfb; never Qt's offscreen platform):

    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1400x1000x24" .venv/bin/python docs/make_screenshots.py
"""

from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

OUT = Path(__file__).parent / "images"
OUT.mkdir(exist_ok=True)
PLUGIN = "napari-spatial-nmf"
SIZE = (1280, 800)


def wait(runner):
    while runner.running:
        QApplication.processEvents()


def shot(viewer, name):
    for _ in range(10):
        QApplication.processEvents()
    viewer.screenshot(str(OUT / name), canvas_only=False, flash=False)
    print("wrote", OUT / name, "window", viewer.window._qt_window.width(), "x", viewer.window._qt_window.height())


def grid(viewer):
    """The canvas grid (``viewer.canvas.grid`` since napari 0.6, ``viewer.grid`` before)."""
    return viewer.canvas.grid if hasattr(viewer, "canvas") else viewer.grid


def fresh(viewer):
    viewer.window.remove_dock_widget("all")
    viewer.layers.clear()
    axes(viewer).visible = False
    viewer.dims.ndisplay = 2
    grid(viewer).enabled = False
    viewer.window._qt_window.resize(*SIZE)


def camera(viewer):
    return viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera


def axes(viewer):
    return viewer.scene.overlays.axes if hasattr(viewer, "scene") else viewer.axes


viewer = napari.Viewer(show=True, title="napari-spatial-nmf")
viewer.window._qt_window.resize(*SIZE)

# 1. The Allen sample: two ISH energy volumes over the dim CCFv3 atlas (coronal plane at AP 4.2 mm)
viewer.open_sample(PLUGIN, "allen_200um")
atlas = viewer.layers["CCFv3 annotation"]
viewer.dims.set_point(0, 21 * 200.0)
shot(viewer, "01_allen_sample.png")

# 2. Pattern discovery, opened from the menu: defaults fit the 2 genes; patterns over atlas outlines
_, nmf = viewer.window.add_plugin_dock_widget(PLUGIN, "Pattern discovery (NMF)")
nmf.run()
wait(nmf.runner)
shot(viewer, "02_patterns.png")
viewer.dims.set_point(0, 38 * 200.0)  # a caudal plane: hippocampus, thalamus, hypothalamus
shot(viewer, "02b_patterns_caudal.png")
viewer.dims.set_point(0, 25 * 200.0)  # the striatum's widest plane (AP 5.0 mm)

# 3. Region correlation of the first pattern (one dock at a time: the pattern dock is closed)
viewer.window.remove_dock_widget("all")
_, reg = viewer.window.add_plugin_dock_widget(PLUGIN, "Region correlation")
reg.source.value = [lyr for lyr in viewer.layers if lyr.name.endswith("PP1")][0]
reg.atlas.value = atlas
reg.run()
wait(reg.runner)
reg.table.selectRow(0)
shot(viewer, "03_region_correlation.png")

# 4. Atlas analysis (osNMF suite) on the same result
viewer.window.remove_dock_widget(reg)
_, osn = viewer.window.add_plugin_dock_widget(PLUGIN, "Atlas analysis (osNMF)")
osn.atlas.value = atlas
osn.run()
wait(osn.runner)
osn.region_table.selectRow(0)
shot(viewer, "06_atlas_analysis.png")

# 5. BDGP: 21 principal patterns of 405 embryo images, in a grid
fresh(viewer)
viewer.open_sample(PLUGIN, "bdgp")
_, nmf = viewer.window.add_plugin_dock_widget(PLUGIN, "Pattern discovery (NMF)")
nmf.n_components.value = 21
nmf.run()
wait(nmf.runner)
grid(viewer).enabled = True
grid(viewer).shape = (5, 5)
viewer.reset_view()
shot(viewer, "04_bdgp_21_patterns.png")

# 6. osmFISH: expert regions with a legend, then NNMF domains with a legend
fresh(viewer)
viewer.open_sample(PLUGIN, "osmfish")
viewer.reset_view()
shot(viewer, "05a_osmfish_regions.png")
_, nn = viewer.window.add_plugin_dock_widget(PLUGIN, "Neighbourhood NMF (cells)")
nn.n_components.value = 11
nn.max_iter.value = 300
nn.run()
wait(nn.runner)
nn.color_by.value = "domain"
viewer.reset_view()
shot(viewer, "05_osmfish_nnmf_domains.png")

# 7. STARmap 3D: the cloud in napari's 3D view, tilted so the layers' depth shows
fresh(viewer)
viewer.open_sample(PLUGIN, "starmap_3d")
viewer.dims.ndisplay = 3
viewer.reset_view()
camera(viewer).angles = (-30.0, 30.0, 120.0)
axes(viewer).visible = True
shot(viewer, "07_starmap_3d.png")

def label_transfer(viewer):
    """The shipped osmFISH as two sections (its left half, its right half on 16 of the 33 genes),
    NNMF domains of the left half, then the Label transfer dock carrying them to the right half.
    """
    import numpy as np

    from napari_spatial_nmf import datasets
    from napari_spatial_nmf._layers import cells_layer

    fresh(viewer)
    cells = datasets.osmfish()
    cells = cells[(cells.obs["region"] != "Excluded").to_numpy()]
    left = np.asarray(cells.obsm["spatial"])[:, 0] < np.median(np.asarray(cells.obsm["spatial"])[:, 0])
    for a, name in ((cells[left].copy(), "osmFISH left half"), (cells[~left, :16].copy(), "right half, 16 genes")):
        data, kw, _ = cells_layer(a, name)
        viewer.add_points(data, **kw)
    _, nn = viewer.window.add_plugin_dock_widget(PLUGIN, "Neighbourhood NMF (cells)")
    nn.cells.value = viewer.layers["osmFISH left half"]
    nn.n_components.value = 8
    nn.max_iter.value = 300
    nn.run()
    wait(nn.runner)
    viewer.window.remove_dock_widget("all")
    viewer.layers["osmFISH left half NNMF weights"].visible = False
    _, tr = viewer.window.add_plugin_dock_widget(PLUGIN, "Label transfer")
    tr.reference.value = viewer.layers["osmFISH left half NNMF domains"]
    tr.query.value = viewer.layers["right half, 16 genes"]
    tr.run()
    wait(tr.runner)
    viewer.reset_view()
    return tr


def integrate_stahl(viewer, **values):
    """The Ståhl sample in a fresh window, the Integrate dock given ``values`` and run."""
    fresh(viewer)
    viewer.open_sample(PLUGIN, "stahl_4_sections")
    _, ig = viewer.window.add_plugin_dock_widget(PLUGIN, "Integrate sections")
    ig.sections.value = list(viewer.layers)
    for name, value in values.items():
        getattr(ig, name).value = value
    ig.run()
    wait(ig.runner)
    viewer.reset_view()
    return ig


# 8. Integration of the four Ståhl sections (joint NNMF), then the 3D stack
ig = integrate_stahl(viewer, method="joint_nnmf", n_factors=6, n_steps=300)
shot(viewer, "08_integration.png")
ig.spacing.value = 1000.0  # exaggerated for display (the sections' real spacing is not in the data)
ig.um_per_unit.value = 200.0
ig.reconstruct()
wait(ig.runner)
viewer.layers["integrated factors (sections side by side)"].visible = False
shot(viewer, "09_integration_3d.png")

# 10. K for the integration chosen by stability: the live curve in the dock
ig = integrate_stahl(viewer, by_stability=True, n_factors=4, k_max=7, n_restarts=3, n_steps=100)
ig.ensureWidgetVisible(ig.plot, 0, 0)  # the dock scrolled down to the curve
shot(viewer, "10_integration_k_by_stability.png")

# 11. Label transfer: the osmFISH left half's NNMF domains carried to the right half, cut to 16 genes
label_transfer(viewer)
shot(viewer, "11_label_transfer.png")
viewer.close()
