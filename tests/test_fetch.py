"""Fetching Allen ISH grids by gene and the whole set, from a local stand-in server (no internet).

The stand-in (tests/allen_server.py) answers like the Allen API and IBL's mirror; each test
points the fetcher at it with the documented environment variables and gets a fresh cache.
"""

import errno
import socket

import numpy as np
import pandas as pd
import pytest
from allen_server import GRIDS, AllenStandIn

from napari_spatial_nmf import datasets, io, tl
from napari_spatial_nmf.cli import main
from napari_spatial_nmf.datasets import DATA


@pytest.fixture()
def allen(tmp_path, monkeypatch):
    with AllenStandIn() as server:
        monkeypatch.setenv("NAPARI_SPATIAL_NMF_ALLEN_API", server.url)
        monkeypatch.setenv("NAPARI_SPATIAL_NMF_AGEA_MIRROR", server.url + "/atlas")
        monkeypatch.setenv("NAPARI_SPATIAL_NMF_CACHE", str(tmp_path / "cache"))
        yield server


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _shipped():
    return io.read_allen_energy(DATA / "Pdyn_P56_coronal_71717084_200um.zip").concat(
        io.read_allen_energy(DATA / "Nrp1_P56_coronal_74272479_200um.zip"))


def test_fetch_by_gene_into_nmf_and_region_correlation(allen):
    stack = io.fetch_allen(["Pdyn", "Nrp1"])
    shipped = _shipped()
    assert stack.genes == ["Pdyn", "Nrp1"] and stack.meta["section_data_set_ids"] == [71717084, 74272479]
    np.testing.assert_array_equal(stack.data, shipped.data)
    assert stack.voxel_size == (200.0, 200.0, 200.0) and stack.axes == ("AP", "DV", "ML")
    _, atlas = datasets.allen_200um()
    adata = stack.to_anndata(mask=atlas.mask)
    tl.impute_knn(adata)
    tl.nmf(adata, 2, layer="imputed", random_state=0)
    table = tl.region_correlation(adata, atlas.annotation, atlas.ontology, min_voxels=50)
    pdyn_pp = f"PP{int(np.argmax(adata.varm['nmf_coefficients'][0])) + 1}"  # the pattern Pdyn loads on
    best = table[table["pattern"] == pdyn_pp].iloc[0]
    assert best["acronym"] in ("STR", "STRd", "CP")  # Pdyn is a striatal marker


def test_a_rerun_needs_no_network(allen, monkeypatch):
    io.fetch_allen(["Pdyn"])
    monkeypatch.setenv("NAPARI_SPATIAL_NMF_ALLEN_API", _closed_port())  # the server is gone
    stack = io.fetch_allen(["Pdyn"])  # the API's answer and the grid come from the cache
    assert stack.genes == ["Pdyn"]


def test_a_dropped_connection_resumes_where_it_stopped(allen):
    path = f"/grid_data/download/{GRIDS['Pdyn'][0]}"
    allen.drop_once.add(path)
    stack = io.fetch_allen(["Pdyn"])
    ranges = [r for p, r in allen.requests if p == path]
    assert ranges[0] is None and ranges[-1] is not None and ranges[-1].startswith("bytes=")  # resumed, not restarted
    np.testing.assert_array_equal(stack.data[0], _shipped().data[0])


def test_a_damaged_zip_is_never_kept(allen, tmp_path):
    path = f"/grid_data/download/{GRIDS['Nrp1'][0]}"
    good = bytearray(allen.files[path])
    good[len(good) // 2] ^= 0xFF
    allen.files[path] = bytes(good)
    with pytest.raises(ValueError, match="damaged"):
        io.fetch_allen(["Nrp1"])
    cached = list((tmp_path / "cache").rglob("*"))
    assert not [p for p in cached if p.suffix == ".zip" or p.name.endswith(".part")], cached


def test_404_and_genes_without_experiments_are_named_not_fatal(allen):
    extra = dict(allen.experiments["Pdyn"][0], id=123)  # listed by the API, but no grid on the server
    allen.experiments["Pdyn"].append(extra)
    stack = io.fetch_allen(["Pdyn", "Nrp1", "Aaas"])  # Aaas: sagittal experiments only
    assert stack.genes == ["Pdyn", "Nrp1"]
    assert "Aaas" in stack.meta["missing"] and "coronal" in stack.meta["missing"]["Aaas"]
    assert "Pdyn (123)" in stack.meta["missing"] and "404" in stack.meta["missing"]["Pdyn (123)"]


def test_several_experiments_all_or_one(allen):
    second = dict(allen.experiments["Pdyn"][0], id=555)
    allen.experiments["Pdyn"].append(second)
    grid = bytearray(allen.files[f"/grid_data/download/{GRIDS['Pdyn'][0]}"])
    allen.files["/grid_data/download/555"] = bytes(grid)
    both = io.fetch_allen(["Pdyn"], experiments="all")
    assert both.genes == ["Pdyn (555)", "Pdyn (71717084)"] or both.genes == ["Pdyn (71717084)", "Pdyn (555)"]
    one = io.fetch_allen(["Pdyn"], experiments="one")
    assert one.genes == ["Pdyn"] and one.meta["section_data_set_ids"] == [555]  # equal coverage: the lower id


def test_unknown_genes_get_suggestions_before_any_download(allen):
    with pytest.raises(ValueError, match=r"pdyn \(did you mean Pdyn\?\).*Gad22 \(did you mean Gad2"):
        io.iter_fetch_allen(["pdyn", "Gad22"])
    assert allen.requests == []


def test_an_answer_the_api_does_not_document_is_refused(allen):
    allen.broken_answer.add("Pdyn")
    with pytest.raises(ValueError, match="not what it documents"):
        io.fetch_allen(["Pdyn"])


def test_offline_without_the_files_names_the_cache(allen, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SPATIAL_NMF_ALLEN_API", _closed_port())
    with pytest.warns(UserWarning, match="shipped experiment index"), \
            pytest.raises(ConnectionError, match=str(tmp_path / "cache")):
        io.fetch_allen(["Pdyn"])


def test_a_cache_that_cannot_be_written_is_refused(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(PermissionError, match="cannot be written"):
        io.iter_fetch_allen(["Pdyn"], cache=tmp_path / "afile" / "cache")


def test_a_full_disk_leaves_nothing_half_written(allen, tmp_path, monkeypatch, capsys):
    from napari_spatial_nmf.io import _fetch

    real_open = open

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(_fetch, "open", lambda p, mode="r", *a, **k: FullDisk(real_open(p, mode, *a, **k))
                        if ("b" in mode and "a" in mode) or mode == "wb" else real_open(p, mode, *a, **k),
                        raising=False)
    assert main(["fetch", "--genes", "Pdyn", "--out", str(tmp_path / "out")]) == 2
    assert "disk is full" in capsys.readouterr().err
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.suffix in (".zip", ".part")]


def test_cancel_stops_and_a_later_fetch_completes(allen):
    gen = io.iter_fetch_allen(["Pdyn", "Nrp1"])
    next(gen)
    gen.close()  # what the dock's Cancel does
    stack = io.fetch_allen(["Pdyn", "Nrp1"])
    assert stack.genes == ["Pdyn", "Nrp1"]


def _whole_set(server, n_bytes=None):
    shipped = _shipped()
    table = pd.DataFrame({"gene": shipped.genes, "id": [71717084, 74272479]})
    import io as stdio

    buf = stdio.BytesIO()
    table.to_parquet(buf)
    vols = np.nan_to_num(shipped.data, nan=-1.0).transpose(0, 3, 2, 1).astype(np.float16)  # IBL: ML, DV, AP
    server.files["/atlas/gene-expression.pqt"] = buf.getvalue()
    body = vols.tobytes()
    server.files["/atlas/gene-expression.bin"] = body if n_bytes is None else body[:n_bytes]
    return shipped


def test_the_whole_set_in_one_call(allen):
    pytest.importorskip("pyarrow")
    shipped = _whole_set(allen)
    stack = io.fetch_allen_all()
    assert stack.genes == ["Pdyn", "Nrp1"] and stack.data.shape == (2, 67, 41, 58)
    assert np.array_equal(np.isnan(stack.data), np.isnan(shipped.data))  # -1 = no data as NaN, same voxels
    np.testing.assert_allclose(stack.data, shipped.data, rtol=1e-3, atol=2e-2, equal_nan=True)  # float16


def test_a_whole_set_of_the_wrong_size_is_refused(allen, tmp_path):
    pytest.importorskip("pyarrow")
    _whole_set(allen, n_bytes=1000)
    with pytest.raises(ValueError, match="bytes"):
        io.fetch_allen_all()
    assert not (tmp_path / "cache" / "allen-agea" / "gene-expression.bin").exists()


def test_cli_fetch_and_run_by_gene(allen, tmp_path, capsys):
    assert main(["fetch", "--genes", "Pdyn", "Nrp1", "--out", str(tmp_path / "grids")]) == 0
    assert sorted(p.name for p in (tmp_path / "grids").glob("*.zip")) == [
        "Nrp1_coronal_74272479_energy.zip", "Pdyn_coronal_71717084_energy.zip"]
    capsys.readouterr()
    assert main(["run", "--genes", "Pdyn", "Nrp1", "--atlas", str(DATA / "annotation_200um_ccf2017_ishgrid.nrrd"),
                 "-k", "2", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert (tmp_path / "run" / "region_correlation.csv").exists()


def test_cli_osnmf_pipeline_on_fetched_genes(allen, tmp_path, capsys):
    assert main(["osnmf", "--genes", "Pdyn", "Nrp1", "--k-min", "2", "--k-max", "2", "-n", "3", "--out",
                 str(tmp_path / "osnmf"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "fits" in err and "of memory" in err  # the estimate comes before the work
    for name in ("stability.csv", "instability.png", "region_correlation.csv", "patterns.png", "summary.json"):
        assert (tmp_path / "osnmf" / name).exists(), name
    assert (tmp_path / "osnmf.store" / "manifest.json").exists()  # resumable


def test_fetch_dock_adds_the_genes_over_the_atlas(allen, make_napari_viewer, qtbot):
    from napari_spatial_nmf._widgets.fetch import FetchWidget

    viewer = make_napari_viewer()
    w = FetchWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.genes.value = "pdyn"
    w.run()
    assert "did you mean Pdyn" in w.runner.status.text() and not w.runner.running
    w.genes.value = "Pdyn, Nrp1"
    w.run()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=60_000)
    assert [lyr.name for lyr in viewer.layers] == ["CCFv3 annotation", "Pdyn", "Nrp1"], w.runner.status.text()
    np.testing.assert_array_equal(viewer.layers["Pdyn"].data, _shipped().data[0])
