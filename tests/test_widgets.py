"""Dock widgets, samples, readers and writers inside a real napari viewer (Xvfb)."""

import gc
import shutil
import weakref
import zipfile

import numpy as np
import pandas as pd
import pytest

from napari_spatial_nmf._reader import get_reader
from napari_spatial_nmf._widgets.pattern_discovery import PatternDiscoveryWidget
from napari_spatial_nmf._widgets.region_correlation import HIGHLIGHT_KEY, RegionCorrelationWidget
from napari_spatial_nmf.datasets import DATA
from napari_spatial_nmf.results import REGISTRY, RESULT_ID

PLUGIN = "napari-spatial-nmf"


def _wait(qtbot, runner, timeout=60_000):
    qtbot.waitUntil(lambda: not runner.running, timeout=timeout)


@pytest.mark.parametrize("key, names", [("allen_200um", ["CCFv3 annotation", "Pdyn", "Nrp1"]),
                                        ("bdgp", ["BDGP images"]), ("osmfish", ["osmFISH cells"]),
                                        ("starmap_3d", ["STARmap 3D cells"])])
def test_samples_open(make_napari_viewer, key, names):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, key)
    assert [lyr.name for lyr in viewer.layers] == names
    # one gene volume shown at a time (the others are a click away in the layer list)
    assert [lyr.visible for lyr in viewer.layers] == [lyr.name != "Nrp1" for lyr in viewer.layers]


def test_atlas_hover_names_structures(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "allen_200um")
    atlas = viewer.layers["CCFv3 annotation"]
    cp = np.argwhere(atlas.data == 672)[0]  # a caudoputamen voxel
    viewer.dims.set_point(viewer.dims.ndim - 3, cp[0] * 200.0)  # hover reads the current AP plane
    status = atlas.get_status(tuple(cp * 200.0), world=True)
    assert "acronym: CP" in status["value"] and "Caudoputamen" in status["value"]
    assert atlas.colormap.map(672)[:3] == pytest.approx(np.array([152, 214, 249]) / 255, abs=0.01)  # Allen 98D6F9
    assert tuple(viewer.layers["Pdyn"].axis_labels) == ("AP", "DV", "ML")


def test_osmfish_regions_get_a_categorical_palette(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "osmfish")
    cells = viewer.layers["osmFISH cells"]
    regions = cells.features["region"].astype(str)
    colours = {r: tuple(c) for r, c in zip(regions, np.round(cells.face_color, 3))}
    assert len(set(colours.values())) == regions.nunique() == 12  # one colour per region, not 2 alternating
    legend = cells.metadata["legend"]["colors"]
    assert set(legend) == set(regions) and all(colours[r] == tuple(np.round(
        __import__("matplotlib").colors.to_rgba(legend[r]), 3)) for r in legend)


def test_readers_sniff_and_decline(tmp_path):
    shutil.copy(DATA / "Pdyn_P56_coronal_71717084_200um.zip", tmp_path)
    layers = get_reader(str(tmp_path))(str(tmp_path))
    assert layers[0][2] == "image" and layers[0][1]["name"] == "Pdyn"
    ann = get_reader(str(DATA / "annotation_200um_ccf2017_ishgrid.nrrd"))
    assert ann(str(DATA / "annotation_200um_ccf2017_ishgrid.nrrd"))[0][2] == "labels"
    cells = get_reader(str(DATA / "osmfish_sscortex_6471cells_33genes.h5ad"))
    assert cells(str(DATA / "osmfish_sscortex_6471cells_33genes.h5ad"))[0][2] == "points"
    # not ours: napari gets None and can try another reader
    with zipfile.ZipFile(tmp_path / "photos.zip", "w") as zf:
        zf.writestr("a.txt", "hello")
    import tifffile

    tifffile.imwrite(tmp_path / "plain.tif", np.zeros((4, 4), np.uint8))
    np.savez(tmp_path / "other.npz", weights=np.ones(3))
    for name in ("photos.zip", "plain.tif", "other.npz", "notes.txt"):
        assert get_reader(str(tmp_path / name)) is None, name


def test_nmf_dock_on_allen_sample_defaults_fit_the_data(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "allen_200um")
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Pattern discovery (NMF)")
    assert isinstance(w, PatternDiscoveryWidget)
    # opened from the menu: both genes chosen, the atlas as mask, K at most the 2 genes
    assert [lyr.name for lyr in w.inputs.value] == ["Pdyn", "Nrp1"]
    assert w.mask.value is viewer.layers["CCFv3 annotation"]
    assert w.n_components.value == 2 and w.n_components.max == 2
    before = viewer.layers["Pdyn"].data.copy()
    w.run()
    _wait(qtbot, w.runner)
    pps = [lyr for lyr in viewer.layers if RESULT_ID in lyr.metadata]
    assert [lyr.name for lyr in pps] == ["Pdyn + Nrp1 PP1", "Pdyn + Nrp1 PP2"]
    for lyr in pps:
        assert lyr.data.shape == (67, 41, 58) and tuple(lyr.scale) == (200.0, 200.0, 200.0)
        assert lyr.blending == "additive" and lyr.metadata["params"]["n_components"] == 2
        assert REGISTRY.get(lyr.metadata[RESULT_ID]) is w.result
    assert pps[0].colormap.name != pps[1].colormap.name
    assert np.array_equal(viewer.layers["Pdyn"].data, before, equal_nan=True)  # the input data are untouched
    atlas = viewer.layers["CCFv3 annotation"]
    assert not viewer.layers["Pdyn"].visible and atlas.visible
    # the 200 µm grid is too coarse for outlines: a dim atlas under the additive patterns
    assert atlas.contour == 0 and atlas.opacity < 0.5 and viewer.layers[0] is atlas
    assert w.result.adata.uns["nmf"]["params"]["layer"] == "imputed"
    assert "relative error" in w.runner.status.text()


def test_nmf_dock_bdgp_21_patterns_and_atlas_dock_without_atlas(make_napari_viewer, qtbot, tmp_path):
    import networkx as nx

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "bdgp")
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Pattern discovery (NMF)")
    w.n_components.value = 21
    w.run()
    _wait(qtbot, w.runner)
    pps = viewer.layers[1:]
    embryo = ~np.isnan(viewer.layers["BDGP images"].data[0])
    assert len(pps) == 21
    for lyr in pps:
        assert lyr.data.shape == (16, 32)
        assert (lyr.data[~embryo] == 0).all() and lyr.data[embryo].max() == pytest.approx(1.0)
    _, a = viewer.window.add_plugin_dock_widget(PLUGIN, "Atlas analysis (osNMF)")
    assert a.atlas.value is None and a.result.value is w.result
    a.n_genes.value = 12
    a.run()
    _wait(qtbot, a.runner)
    assert a.results["region_combinations"] is None and a.region_table.rowCount() == 0
    assert "Choose an atlas" in a.regions_note.text()
    assert a.runner.status.text().startswith("Analysis finished")
    assert "nmf_marker_genes" in w.result.adata.uns  # stored on the main thread once finished
    assert len(a.network_pattern.choices) == 21
    a.network_pattern.value = a.network_pattern.choices[3]
    G = a.network
    assert G.number_of_nodes() == 12 and G.number_of_edges() == int(np.ceil(0.05 * 66))  # top 5% of 66 pairs
    back = nx.read_graphml(a.export_network(tmp_path / "net.graphml"))
    assert sorted(map(sorted, back.edges)) == sorted(map(sorted, G.edges))
    edges = pd.read_csv(a.export_network(tmp_path / "net.csv", fmt="csv"))
    assert list(edges.columns) == ["gene_a", "gene_b", "r"] and len(edges) == G.number_of_edges()
    res = w.result.adata  # the edges are the 4 most correlated pairs of the genes' reconstructed images
    idx = [list(res.var_names).index(g) for g in G.nodes]
    C = np.corrcoef(res.obsm["X_nmf"] @ res.varm["nmf_coefficients"][idx].T, rowvar=False)
    top4 = np.sort(C[np.triu_indices(12, 1)])[::-1][:4]
    assert np.allclose(np.sort(edges["r"].to_numpy())[::-1], top4, atol=1e-5)
    a.marker_table.selectRow(0)
    gene = a.marker_table.text(0, "gene")
    assert viewer.layers[f"{gene} expression"].data.shape == (16, 32)


def test_cancel_adds_nothing_and_keeps_the_inputs(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "bdgp")
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Pattern discovery (NMF)")
    w.n_components.value = 21
    w.max_iter.value = 100_000
    w.run()
    qtbot.waitUntil(lambda: w.runner.progress.value() >= 3, timeout=20_000)  # it is really iterating
    w.runner.cancel()
    _wait(qtbot, w.runner, timeout=10_000)
    assert len(viewer.layers) == 1 and w.result is None and viewer.layers[0].visible
    assert w.runner.status.text().startswith("Cancelled") and w.runner.run_button.isEnabled()


def test_nmf_dock_rejects_bad_input_before_running(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "allen_200um")
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Pattern discovery (NMF)")
    viewer.add_labels(np.ones((10, 10, 10), np.uint8), name="wrong grid")
    w.mask.value = viewer.layers["wrong grid"]
    w.run()
    assert not w.runner.running and "same grid" in w.runner.status.text() and len(viewer.layers) == 4
    w.missing.value = "stop with an error"
    w.mask.value = viewer.layers["CCFv3 annotation"]
    w.run()
    assert "missing values" in w.runner.status.text()


def test_nmf_dock_on_cells(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "osmfish")
    cells = viewer.layers["osmFISH cells"]
    adata = cells.metadata["adata"]
    features_before = cells.features.copy()
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Pattern discovery (NMF)")
    assert w.inputs.value == [cells]
    w.n_components.value = 11
    w.run()
    _wait(qtbot, w.runner)
    out = viewer.layers["osmFISH cells NMF weights"]
    assert out.data.shape == (6471, 2) and all(f"PP{i}" in out.features for i in range(1, 12))
    assert np.allclose(out.features["PP3"], w.result.adata.obsm["X_nmf"][:, 2])
    assert "X_nmf" not in adata.obsm  # the source AnnData is not changed
    pd.testing.assert_frame_equal(cells.features, features_before)


def test_region_dock_table_selection_and_export(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "allen_200um")
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Region correlation")
    assert isinstance(w, RegionCorrelationWidget)
    w.source.value = viewer.layers["Pdyn"]
    w.atlas.value = viewer.layers["CCFv3 annotation"]
    w.run()
    assert w.table.rowCount() == len(w.result) > 100
    assert w.table.text(0, "acronym") == "STR"
    from qtpy.QtCore import Qt
    tip = w.table.proxy.index(0, 0).data(Qt.ItemDataRole.ToolTipRole)  # the whole row on hover
    assert "acronym: STR" in tip and "name: Striatum" in tip and "level:" in tip
    w.table.selectRow(0)
    hl = next(lyr for lyr in viewer.layers if lyr.metadata.get(HIGHLIGHT_KEY))
    onto = viewer.layers["CCFv3 annotation"].metadata["ontology"]
    expected = np.isin(viewer.layers["CCFv3 annotation"].data, onto.descendants("STR"))
    assert np.array_equal(hl.data > 0, expected) and hl.name == "highlight: STR"
    ap = viewer.dims.point[0]  # the view moved to the striatum's centre
    assert abs(ap - np.argwhere(expected)[:, 0].mean() * 200) < 200
    df = pd.read_csv(w.export_csv(tmp_path / "regions.csv"))
    assert list(df.columns) == ["pattern", "rank", "id", "acronym", "name", "depth", "n_voxels", "r"]
    assert df.iloc[0]["acronym"] == "STR"


def test_stability_dock_plot_pick_k_and_fit(make_napari_viewer, qtbot):
    from napari_spatial_nmf._widgets.stability import StabilityWidget

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "bdgp")
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Stability (staNMF)")
    assert isinstance(w, StabilityWidget) and w.inputs.value == [viewer.layers["BDGP images"]]
    w.k_min.value, w.k_max.value, w.n_replicates.value = 4, 6, 3
    assert "9 fits" in w.estimate.text()
    w.run()
    _wait(qtbot, w.runner, timeout=120_000)
    table = w.result.uns["stability"]["table"]
    assert list(table["k"]) == [4, 5, 6] and sorted(w.plot.points) == [4, 5, 6]  # the live plot got every K
    best = int(table.loc[table["instability"].idxmin(), "k"])
    assert w.chosen_k.value == best and w.fit_button.isEnabled()
    assert (w.edge.text() != "") == (best in (4, 6))  # a minimum at an end of the range is flagged
    w.chosen_k.value = 5
    w.fit_final()
    _wait(qtbot, w.runner)
    pps = [lyr for lyr in viewer.layers if lyr.name.startswith("BDGP images PP")]
    assert len(pps) == 5 and pps[0].data.shape == (16, 32)
    assert pps[0].metadata["params"]["n_components"] == 5


def test_stability_dock_refuses_bad_k_range(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "bdgp")
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Stability (staNMF)")
    w.k_min.value, w.k_max.value = 5, 3
    w.run()
    assert "must not exceed" in w.runner.status.text() and w.plot.points == {}


def test_stability_dock_cancel_keeps_the_previous_sweep(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "bdgp")
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Stability (staNMF)")
    w.k_min.value, w.k_max.value, w.n_replicates.value = 3, 4, 2
    w.run()
    _wait(qtbot, w.runner, timeout=120_000)
    first, points = w.result, dict(w.plot.points)
    w.k_min.value, w.k_max.value, w.n_replicates.value = 15, 30, 100
    w.run()
    qtbot.waitUntil(lambda: "pass" in w.runner.status.text(), timeout=60_000)
    w.runner.cancel()
    _wait(qtbot, w.runner, timeout=20_000)
    assert w.result is first and w.plot.points == points and w.fit_button.isEnabled()
    assert len(viewer.layers) == 1


def test_nnmf_dock_on_osmfish(make_napari_viewer, qtbot):
    from napari_spatial_nmf._widgets.nnmf import NNMFWidget

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "osmfish")
    cells = viewer.layers["osmFISH cells"]
    adata = cells.metadata["adata"]
    obsm_before, x_before = set(adata.obsm), np.asarray(adata.X).copy()
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Neighbourhood NMF (cells)")
    assert isinstance(w, NNMFWidget) and w.cells.value is cells
    assert "µm" in w.unit.text()
    assert "cell_id" not in w.slice_key.choices and "total_molecules" not in w.slice_key.choices
    w.estimate()
    _wait(qtbot, w.runner)
    assert w.curve is not None and w.lengthscale.value > 0 and "µm" in w.runner.status.text()
    w.n_components.value = 6
    w.max_iter.value = 100
    w.run()
    _wait(qtbot, w.runner)
    weights = viewer.layers["osmFISH cells NNMF weights"]
    domains = viewer.layers["osmFISH cells NNMF domains"]
    assert {"S1", "S6", "domain"} <= set(weights.features.columns)
    assert len(weights.data) == adata.n_obs and len(domains.data) == adata.n_obs
    assert w.legend.entries[:6] == [f"S{i}" for i in range(1, 7)]
    top = w.top_genes
    assert w.table.rowCount() == len(top) and (top["score"] > 0).all()
    assert w.table.text(0, "signature") == "S1" and w.table.text(0, "rank") == "1"
    assert w.result.adata.uns["nnmf"]["lengthscale"] == pytest.approx(w.lengthscale.value)
    w.color_by.value = "S3"
    assert weights.face_color.shape == (adata.n_obs, 4)
    w.color_by.value = "domain"
    assert len(np.unique(weights.face_color, axis=0)) >= 2
    assert set(adata.obsm) == obsm_before
    np.testing.assert_array_equal(np.asarray(adata.X), x_before)


def test_nnmf_dock_3d_starmap_refuses_then_cancels(make_napari_viewer, qtbot):
    from napari_spatial_nmf._widgets.nnmf import NNMFWidget

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "starmap_3d")
    viewer.dims.ndisplay = 3
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Neighbourhood NMF (cells)")
    assert isinstance(w, NNMFWidget)
    w.filter_cells.value = False
    w.run()  # 753 empty cells: refused at once with the fix in the message
    assert not w.runner.running and "filter_cells" in w.runner.status.text()
    w.filter_cells.value = True
    w.n_components.value = 4
    w.max_iter.value = 5
    w.run()
    qtbot.waitUntil(lambda: w.runner.progress.value() >= 3, timeout=60_000)
    w.runner.cancel()
    _wait(qtbot, w.runner)
    assert len(viewer.layers) == 1  # cancelled: nothing added


def test_atlas_analysis_dock_on_allen_sample(make_napari_viewer, qtbot, tmp_path):
    """osNMF dock: region combinations (Pdyn's pattern -> striatal triple), bubble chart,
    marker gene click -> gene volume, Moran's I vs PCA, save all."""
    from napari_spatial_nmf._widgets.atlas_analysis import AtlasAnalysisWidget

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "allen_200um")
    _, nmf = viewer.window.add_plugin_dock_widget(PLUGIN, "Pattern discovery (NMF)")
    nmf.run()
    _wait(qtbot, nmf.runner)
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Atlas analysis (osNMF)")
    assert isinstance(w, AtlasAnalysisWidget)
    assert len(w.result.choices) == 1 and w.result.value is nmf.result
    assert w.atlas.value is viewer.layers["CCFv3 annotation"]
    n_layers = len(viewer.layers)
    w.run()
    _wait(qtbot, w.runner)
    res = w.results
    assert res["counts"]["n_structures"] > 600 and res["counts"]["n_triples"] > 80_000
    coef = nmf.result.adata.varm["nmf_coefficients"]
    pdyn_pp = nmf.result.adata.uns["nmf"]["pattern_names"][int(np.argmax(coef[0]))]
    best = res["region_combinations"].query("pattern == @pdyn_pp and size == 3").iloc[0]
    onto = viewer.layers["CCFv3 annotation"].metadata["ontology"]
    assert {int(i) for i in best["ids"].split(",")} <= set(onto.descendants("STR"))
    assert w.region_table.rowCount() == 2 * 3  # best single, pair and triple of each pattern
    w.region_table.selectRow(0)
    hl = next(lyr for lyr in viewer.layers if lyr.metadata.get(HIGHLIGHT_KEY))
    ids = [int(i) for i in w.region_table.row_record(0)["ids"].split(",")]
    assert np.array_equal(hl.data > 0, np.isin(viewer.layers["CCFv3 annotation"].data, ids))
    M = w.bubble_matrix
    assert M.shape[0] == 2 and 2 <= M.shape[1] <= 30
    offsets = w.bubble_fig.axes[0].collections[0].get_offsets()
    assert len(offsets) == np.isfinite(M.to_numpy()).sum()
    row = next(i for i in range(w.marker_table.rowCount()) if w.marker_table.text(i, "gene") == "Pdyn")
    w.marker_table.selectRow(row)
    gene_layer = viewer.layers["Pdyn expression"]
    brain = viewer.layers["CCFv3 annotation"].data > 0
    assert np.array_equal(gene_layer.data[brain], viewer.layers["Pdyn"].data[brain], equal_nan=True)
    assert np.isnan(gene_layer.data[~brain]).all() and np.isfinite(gene_layer.data[brain]).mean() > 0.5
    w.marker_table.clearSelection()
    w.marker_table.selectRow(row)
    assert len([lyr for lyr in viewer.layers if lyr.name == "Pdyn expression"]) == 1
    assert list(res["morans_i"].columns) == ["pattern", "morans_i", "pca_morans_i"]
    assert "complements" in w.coherence_note.text()  # K = 2: equal Moran's I, explained
    assert w.network is None and not w.graphml_button.isEnabled() and "at least 3 genes" in w.network_note.text()
    out = w.save_all(tmp_path / "suite")
    assert pdyn_pp in set(pd.read_csv(out / "best_region_combinations.csv")["pattern"])
    scores = pd.read_csv(out / "structure_scores.csv", index_col=0)
    assert scores.shape == (2, res["counts"]["n_structures"])
    assert (out / "structure_bubbles.png").stat().st_size > 10_000
    assert not list(out.glob(".*.tmp*"))  # every file moved into place
    assert len(viewer.layers) == n_layers + 2  # highlight + gene layer; nothing else changed


def test_run_result_opens_as_patterns_and_saves_back(make_napari_viewer, tmp_path):
    """`napari-spatial-nmf run`'s result.h5ad opens as pattern layers the atlas dock lists;
    File > Save writes the result back (h5ad) and a pattern as .tif that reopens."""
    import anndata as ad

    from napari_spatial_nmf import datasets, pipeline

    stack, atlas = datasets.allen_200um()
    res, _ = pipeline.run_volumes(stack, 2, tmp_path / "pdyn_nrp1", atlas=atlas, max_iter=50)
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "allen_200um")
    layers = viewer.open(str(tmp_path / "pdyn_nrp1" / "result.h5ad"), plugin=PLUGIN)
    assert [lyr.name for lyr in layers] == ["pdyn_nrp1 PP1", "pdyn_nrp1 PP2"]
    assert np.nanmax(layers[1].data) == pytest.approx(float(res.obsm["X_nmf"][:, 1].max()), rel=1e-6)
    assert layers[0].metadata[RESULT_ID] == layers[1].metadata[RESULT_ID]
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Atlas analysis (osNMF)")
    assert len(w.result.choices) == 1 and w.result.value.adata.obsm["X_nmf"].shape == (res.n_obs, 2)
    viewer.layers.selection = {layers[0]}
    saved = viewer.layers.save(str(tmp_path / "again.h5ad"), selected=True, plugin=PLUGIN)
    assert saved and ad.read_h5ad(tmp_path / "again.h5ad").obsm["X_nmf"].shape == (res.n_obs, 2)
    viewer.layers.save(str(tmp_path / "pp1.tif"), selected=True, plugin=PLUGIN)
    back = viewer.open(str(tmp_path / "pp1.tif"), plugin=PLUGIN)[0]
    assert back.name.startswith("pdyn_nrp1 PP1") and np.array_equal(back.data, layers[0].data)
    assert tuple(back.scale) == (200.0, 200.0, 200.0)
    cells = viewer.open(str(DATA / "osmfish_sscortex_6471cells_33genes.h5ad"), plugin=PLUGIN)
    assert type(cells[0]).__name__ == "Points"


def test_closed_docks_are_released(make_napari_viewer):
    """Docks keep no strong reference from the viewer's events or the results registry."""
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "allen_200um")
    refs = []
    for name in ("Pattern discovery (NMF)", "Stability (staNMF)", "Region correlation",
                 "Neighbourhood NMF (cells)", "Atlas analysis (osNMF)"):
        dock, w = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        refs.append(weakref.ref(w))
        viewer.window.remove_dock_widget(dock)
        del dock, w
    gc.collect()
    viewer.add_image(np.zeros((4, 4)))  # layer events still work with the docks gone
    gc.collect()
    assert [r() for r in refs] == [None] * len(refs)


def test_integration_dock_on_stahl_sections_then_3d(make_napari_viewer, qtbot):
    """Integration dock: the four Ståhl layers -> joint NNMF -> one layer with the sections side
    by side, one colour per factor with a legend, the gene-program table, then Reconstruct 3D;
    a cancelled INSPIRE run adds nothing; the users' cells are untouched."""
    from napari_spatial_nmf._widgets.integration import IntegrationWidget

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "stahl_4_sections")
    layers = list(viewer.layers)
    assert [lyr.name for lyr in layers] == ["layer1", "layer2", "layer3", "layer4"]
    before = [(set(lyr.metadata["adata"].obsm), lyr.metadata["adata"].X.copy()) for lyr in layers]
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Integrate sections")
    assert isinstance(w, IntegrationWidget)
    w.sections.value = layers

    w.n_factors.value = 5
    w.n_steps.value = 200
    w.run()  # INSPIRE (default method): cancelled after its first steps
    qtbot.waitUntil(lambda: w.runner.progress.value() >= 10, timeout=120_000)
    w.runner.cancel()
    _wait(qtbot, w.runner)
    assert len(viewer.layers) == 4 and w.result is None

    w.method.value = "joint_nnmf"
    w.n_steps.value = 100
    w.run()
    _wait(qtbot, w.runner, timeout=180_000)
    out = viewer.layers["integrated factors (sections side by side)"]
    n = sum(lyr.metadata["adata"].n_obs for lyr in layers)
    assert len(out.data) == n and set(out.features["section"]) == {"layer1", "layer2", "layer3", "layer4"}
    # side by side: the sections' x ranges do not overlap
    xr = out.features.assign(x=out.data[:, 1]).groupby("section")["x"].agg(["min", "max"]).sort_values("min")
    assert (xr["min"].to_numpy()[1:] > xr["max"].to_numpy()[:-1]).all()
    assert set(w.legend.entries) <= {f"F{i}" for i in range(1, 6)} and len(w.legend.entries) >= 2
    assert w.table.rowCount() == 50 and "4 sections" in w.runner.status.text()
    assert not any(lyr.visible for lyr in layers)

    w.spacing.value = 100.0
    w.um_per_unit.value = 200.0  # ST array units: one spot spacing is about 200 µm
    w.reconstruct()  # in a worker: the dock stays live, and the button waits for the job
    assert not w.reconstruct_button.isEnabled()
    _wait(qtbot, w.runner, timeout=120_000)
    assert w.reconstruct_button.isEnabled()
    stack = viewer.layers["integrated sections in 3D (µm)"]
    status = w.runner.status.text()  # each registration's quality, in words
    # spots on an array: refined on the feature fields, said once
    assert status.startswith("3D (refined on the feature fields): ") and status.count("matched pairs") == 3
    assert "directions agree" in status
    assert viewer.dims.ndisplay == 3 and len(stack.data) == n
    z = pd.Series(stack.data[:, 0]).groupby(stack.features["section"].to_numpy()).mean()
    np.testing.assert_allclose(np.diff(z.sort_index().to_numpy()), 100.0)
    for lyr, (obsm, X) in zip(layers, before):
        assert set(lyr.metadata["adata"].obsm) == obsm
        assert (lyr.metadata["adata"].X != X).nnz == 0


def test_label_transfer_dock_carries_layers_and_domains(make_napari_viewer, qtbot, halves):
    """Label transfer dock: the osmFISH left half's expert regions onto the right half cut to
    16 genes (a new layer in the reference's colours, scored against the right half's own
    regions); then NNMF domains of the left half, from their domains layer, in its colours.
    The inputs are untouched; a reference without labels is refused before any work."""
    from napari_spatial_nmf import tl
    from napari_spatial_nmf._layers import cells_layer, domain_layer
    from napari_spatial_nmf._widgets.transfer import LabelTransferWidget
    from napari_spatial_nmf.core.metrics import clustering_scores

    ref, right = halves
    panel = right[:, :16].copy()
    viewer = make_napari_viewer()
    for a, name in ((ref, "left half"), (panel, "right half, 16 genes")):
        data, kw, _ = cells_layer(a, name)
        viewer.add_points(data, **kw)
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Label transfer")
    assert isinstance(w, LabelTransferWidget)
    w.reference.value = viewer.layers["left half"]
    assert "region" in w.labels.choices and "cluster_name" in w.labels.choices
    assert "cell_id" not in w.labels.choices  # one value per cell: an id, not labels
    assert [c for c in w.query.choices] == [viewer.layers["right half, 16 genes"]]  # never the reference itself
    w.labels.value = "region"
    assert w.section_key.value is None and "region" in w.section_key.choices  # offered, never guessed from labels
    X_before = panel.X.copy()
    n_layers = len(viewer.layers)
    w.run()
    w.runner.cancel()  # stops at its next stage: nothing is added
    _wait(qtbot, w.runner)
    assert len(viewer.layers) == n_layers and w.result is None and "Cancelled" in w.runner.status.text()
    w.run()
    _wait(qtbot, w.runner)
    out = viewer.layers["right half, 16 genes: region from left half"]
    assert len(out.data) == panel.n_obs and "confidence" in out.features
    conf = out.features["confidence"].to_numpy()
    assert ((conf > 0) & (conf <= 1 + 1e-6)).all()
    labels = out.features["region_transferred"].astype(str).to_numpy()
    assert clustering_scores(panel.obs["region"].astype(str).to_numpy(), labels)["ari"] > 0.5  # measured 0.58
    assert "Only 16 shared genes" in w.diagnostics.text() and "mean confidence" in w.runner.status.text()
    assert "thinned to the query's depth" in w.runner.status.text()  # the right half is shallower on these genes
    assert w.legend.entries == [str(c) for c in w.result.adata.obs["region_transferred"].cat.categories]
    w.color_by.value = "region"  # the query's own regions, named alike coloured alike
    own = dict(zip(w.result.adata.obs["region"].cat.categories, w.result.adata.uns["region_colors"]))
    for c in w.colors:
        if c in own:
            assert own[c] == w.colors[c]
    w.color_by.value = "confidence"
    assert out.face_contrast_limits == (0.0, 1.0)
    np.testing.assert_array_equal(panel.X, X_before)
    assert "region_transferred" not in panel.obs and viewer.layers["right half, 16 genes"].metadata["adata"] is panel
    assert not viewer.layers["right half, 16 genes"].visible

    # NNMF domains as the reference, from their layer: the layer's colours carry over
    res = tl.nnmf(ref.copy(), 6, max_iter=100, filter_cells=True, copy=True)  # as the NNMF dock runs it
    result = REGISTRY.add(res, "nnmf", "nnmf", "left half")
    data, kw, _ = domain_layer(result, column="nnmf_domain", name="left half NNMF domains")
    dom_layer = viewer.add_points(data, **kw)
    w.reference.value = dom_layer
    assert w.labels.value == "nnmf_domain"  # a result's domains are what it offers first
    w.query.value = viewer.layers["right half, 16 genes"]
    w.run()
    _wait(qtbot, w.runner)
    out = viewer.layers["right half, 16 genes: nnmf_domain from left half NNMF domains"]
    palette = dom_layer.metadata["legend"]["colors"]
    assert all(w.colors[c] == palette[c] for c in w.colors)
    assert len(w.colors) >= 3

    # a reference with no column of labels is refused at once; nothing is added
    bare = ref.copy()
    bare.obs = bare.obs[["x_um"]]
    data, kw, _ = cells_layer(bare, "no labels")
    viewer.add_points(data, **kw)
    n = len(viewer.layers)
    w.reference.value = viewer.layers["no labels"]
    w.run()
    assert "no column of labels" in w.runner.status.text() and len(viewer.layers) == n
