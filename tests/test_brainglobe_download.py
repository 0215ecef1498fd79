"""Downloading a BrainGlobe atlas through brainglobe-atlasapi, from a local S3 stand-in (moto).

brainglobe-atlasapi 3 reads its atlases from an S3 bucket (``s3://brainglobe/atlas/...``) with
s3fs; here a moto server on 127.0.0.1 holds a small atlas in that layout (built from the
shipped CCFv3 200 µm grid) and botocore's ``AWS_ENDPOINT_URL`` points s3fs at it.
"""

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from brainglobe_fixture import NAME, write_ccf_200um

from napari_spatial_nmf import datasets, io


@pytest.fixture()
def s3(monkeypatch):
    pytest.importorskip("brainglobe_atlasapi")
    moto_server = pytest.importorskip("moto.server")
    import boto3
    import s3fs
    from brainglobe_atlasapi import descriptors, utils

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="test",
                          aws_secret_access_key="test")
    client.create_bucket(Bucket="brainglobe")
    _, atlas = datasets.allen_200um()
    with tempfile.TemporaryDirectory() as src:
        write_ccf_200um(Path(src), atlas)
        root = Path(src) / "brainglobe-atlasapi"
        for f in root.rglob("*"):
            if f.is_file():
                client.put_object(Bucket="brainglobe", Key=f"atlas/{f.relative_to(root).as_posix()}",
                                  Body=f.read_bytes(), ACL="public-read")
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    monkeypatch.setattr(descriptors, "remote_url_s3_http", url + "/brainglobe/atlas/{}")
    monkeypatch.setattr(utils.descriptors, "remote_url_s3_http", url + "/brainglobe/atlas/{}")
    s3fs.S3FileSystem.clear_instance_cache()
    yield url, atlas
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def test_download_with_progress_then_offline(s3, tmp_path):
    _, shipped = s3
    gen = io.iter_download_brainglobe_atlas(NAME, brainglobe_dir=tmp_path)
    messages = []
    while True:
        try:
            messages.append(next(gen).message)
        except StopIteration as stop:
            atlas = stop.value
            break
    assert any("MB" in m for m in messages)
    np.testing.assert_array_equal(atlas.annotation, shipped.annotation)
    assert atlas.ontology.table.loc[672, "acronym"] == "CP"
    assert NAME in io.local_brainglobe_atlases(tmp_path)
    again = io.read_brainglobe_atlas(NAME, brainglobe_dir=tmp_path)  # offline now
    assert again.annotation.shape == shipped.annotation.shape


def test_an_unknown_atlas_and_an_unwritable_folder(s3, tmp_path):
    with pytest.raises(ValueError, match="no atlas 'not_an_atlas'"):
        io.download_brainglobe_atlas("not_an_atlas", brainglobe_dir=tmp_path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(PermissionError, match="cannot be written"):
        io.iter_download_brainglobe_atlas(NAME, brainglobe_dir=tmp_path / "f" / "bg")
    assert json.loads("{}") == {}


def test_the_fetch_dock_downloads_an_atlas(s3, tmp_path, monkeypatch, make_napari_viewer, qtbot):
    from brainglobe_atlasapi import config

    from napari_spatial_nmf._widgets.fetch import FetchWidget

    conf = config.read_config()
    conf["default_dirs"]["brainglobe_dir"] = str(tmp_path)
    monkeypatch.setattr(config, "read_config", lambda *a, **k: conf)
    viewer = make_napari_viewer()
    w = FetchWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.atlas_name.value = NAME
    w.download_atlas()
    qtbot.waitUntil(lambda: not w.atlas_runner.running, timeout=60_000)
    assert [lyr.name for lyr in viewer.layers] == [NAME], w.atlas_runner.status.text()
    assert viewer.layers[NAME].metadata["ontology"].table.loc[672, "acronym"] == "CP"
