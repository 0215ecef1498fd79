"""What the tool refuses, and what it keeps safe (docs/refusals.md).

The catalogue of bad inputs: each must fail at once with a message that says what is wrong
(the fragment checked here) and leave the user's data as it was. Then the output folder,
the results store, the warnings a user needs, and data of unusual scale.
"""

import json
import shutil
import warnings
import zipfile

import anndata as ad
import nrrd
import numpy as np
import pandas as pd
import pytest

from napari_spatial_nmf import datasets, io, pipeline, tl
from napari_spatial_nmf.cli import main
from napari_spatial_nmf.core._memory import MemoryLimitError
from napari_spatial_nmf.core.ontology import Ontology
from napari_spatial_nmf.datasets import DATA

PDYN = DATA / "Pdyn_P56_coronal_71717084_200um.zip"


@pytest.fixture(scope="module")
def cells():
    from napari_spatial_nmf.core.nnmf import duplicated_cells

    a = datasets.osmfish()
    a = a[np.asarray(a.X.sum(1)).ravel() > 0].copy()
    return a[~duplicated_cells(np.asarray(a.obsm["spatial"]))][:800].copy()


@pytest.fixture(scope="module")
def voxels():
    stack, atlas = datasets.allen_200um()
    a = stack.to_anndata(mask=atlas.mask)
    tl.impute_knn(a)
    return a


def _snapshot(a: ad.AnnData):
    return (np.array(a.X, dtype=float, copy=True), a.obs.copy(), {k: np.array(v) for k, v in a.obsm.items()},
            set(a.uns), set(a.layers))


def _unchanged(a, snap):
    X, obs, obsm, uns, layers = snap
    np.testing.assert_array_equal(np.asarray(a.X, dtype=float), X)
    pd.testing.assert_frame_equal(a.obs, obs)
    assert {k: np.array(v).shape for k, v in a.obsm.items()} == {k: v.shape for k, v in obsm.items()}
    assert set(a.uns) == uns and set(a.layers) == layers


def _with_inf(a):
    b = a.copy()
    b.X = np.asarray(b.X, dtype=np.float32)
    b.X[0, 0] = np.inf
    return b


CELL_CASES = [
    ("nmf K 0", lambda a: tl.iter_nmf(a, 0), ValueError, "between 1"),
    ("nmf K 2.5", lambda a: tl.iter_nmf(a, 2.5), TypeError, "integer"),
    ("nmf unknown layer", lambda a: tl.iter_nmf(a, 3, layer="counts"), KeyError, "No layer"),
    ("nmf missing mode", lambda a: tl.iter_nmf(a, 3, missing="drop"), ValueError, "missing must be"),
    ("nmf +inf with missing='zero'", lambda a: tl.iter_nmf(_with_inf(a), 1, missing="zero"), ValueError, "infinite"),
    ("stability N 2.7", lambda a: tl.iter_stability(a, [2, 3], 2.7), TypeError, "integer"),
    ("stability K 2.9", lambda a: tl.iter_stability(a, [2.9, 3.9], 3), TypeError, "integer"),
    ("stability K '23'", lambda a: tl.iter_stability(a, "23", 3), TypeError, "sequence of integers"),
    ("stability N 1", lambda a: tl.iter_stability(a, [2, 3], 1), ValueError, ">= 2"),
    ("stability N 10^9", lambda a: tl.iter_stability(a, [2, 3], 10**9), MemoryLimitError, "would need about"),
    ("nnmf lengthscale '10'", lambda a: tl.iter_nnmf(a, 3, lengthscale="10"), TypeError, "number"),
    ("nnmf misspelt spatial_key", lambda a: tl.iter_nnmf(a, 3, spatial_key="spatail"), KeyError, "spatial_key=None"),
    ("nnmf slice key with NaN", lambda a: tl.iter_nnmf(_nan_slices(a), 3, slice_key="run"), ValueError,
     "missing values"),
    ("nnmf negative counts", lambda a: tl.iter_nnmf(_negative(a), 3), ValueError, "negative"),
    ("nnmf max_iter 0", lambda a: tl.iter_nnmf(a, 3, max_iter=0), ValueError, "at least 1"),
]


def _nan_slices(a):
    b = a.copy()
    b.obs["run"] = pd.Series(["a", "b"] * (b.n_obs // 2) + ["a"] * (b.n_obs % 2), dtype=object).to_numpy()
    b.obs.iloc[3, b.obs.columns.get_loc("run")] = np.nan
    return b


def _negative(a):
    b = a.copy()
    b.X = -np.asarray(b.X, dtype=float)
    return b


@pytest.mark.parametrize("name, call, exc, fragment", CELL_CASES, ids=[c[0] for c in CELL_CASES])
def test_refused_at_the_call_and_nothing_changes(cells, name, call, exc, fragment):
    snap = _snapshot(cells)
    with pytest.raises(exc, match=fragment):
        call(cells)
    _unchanged(cells, snap)


def test_imputation_names_the_gene(voxels):
    a = voxels.copy()
    X = np.array(a.X, dtype=np.float32)
    X[np.flatnonzero(np.isfinite(X[:, 1]))[3:], 1] = np.nan  # Nrp1 keeps 3 measured voxels
    a.X = X
    with pytest.raises(ValueError, match=r"Nrp1 \(3 measured\)"):
        tl.impute_knn(a)


def test_a_kernel_that_cannot_fit_is_refused_before_it_is_built():
    """NNMF at l = 1e5 (40 x the extent) on the 33,598 STARmap cells: every pair is a neighbour (~10^9 non-zeros);
    refused with the estimate before anything is allocated (the kernel is never built)."""
    import resource

    a = datasets.starmap_3d()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(MemoryLimitError, match=r"smaller lengthscale"):
        tl.iter_nnmf(a, 3, lengthscale=1e5, filter_cells=True)
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2**20 < 1.0  # GB


def test_lengthscale_scan_on_starmap_stays_in_memory():
    """The shipped STARmap sample: at the smallest candidate most cells have no neighbour; they
    are predicted by their slice's mean without an n x n block (the 8 GiB request of old)."""
    import resource

    a = datasets.starmap_3d()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    best, curve = tl.estimate_lengthscale(a, filter_cells=True, n_grid=4)
    grown_gb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2**20
    assert len(curve) == 4 and curve["mean_neighbors"].iloc[0] < 1 and best in set(curve["lengthscale"])
    assert grown_gb < 2.0


# ------------------------------------------------------------------ files

def _zip(path, members):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _bad_crc(tmp):
    raw = bytearray(PDYN.read_bytes())
    with zipfile.ZipFile(PDYN) as zf:
        info = zf.getinfo("energy.raw")
    pos = info.header_offset + 30 + len(info.filename) + len(info.extra) + 200
    raw[pos] ^= 0xFF
    (tmp / "crc.zip").write_bytes(bytes(raw))
    return lambda: io.read_allen_energy(tmp / "crc.zip")


def _bomb(tmp):
    header = "NDims = 3\nDimSize = 1024 1024 256\nElementType = MET_FLOAT\nElementDataFile = energy.raw\n"
    _zip(tmp / "bomb.zip", {"energy.mhd": header, "energy.raw": b"\0" * (1024 * 1024 * 256 * 4)})
    return lambda: io.read_allen_energy(tmp / "bomb.zip")


def _index_without_columns(tmp):
    (tmp / "idx.csv").write_text("id,gene\n1,Pdyn\n")
    return lambda: io.read_allen_energy(PDYN, experiment_index=tmp / "idx.csv")


def _npz(tmp, name, **arrays):
    np.savez(tmp / name, **arrays)
    return lambda: io.read_image_stack(tmp / name)


FILE_CASES = [
    ("zip with a bad CRC", _bad_crc, "damaged"),
    ("zip bomb", _bomb, "100:1"),
    ("garbage .npz", lambda t: ((t / "g.npz").write_bytes(b"\x93NUMPYgarbage" * 10),
                                lambda: io.read_image_stack(t / "g.npz"))[1], "not a valid .npz"),
    ("pickled .npz", lambda t: _npz(t, "p.npz", stack=np.array([{"a": 1}], dtype=object)), "pickled"),
    ("names of the wrong length", lambda t: _npz(t, "n.npz", stack=np.zeros((3, 4, 4, 4)), genes=np.array(["a", "b"])),
     "one name per volume"),
    ("voxel size of the wrong length", lambda t: _npz(t, "v.npz", stack=np.zeros((2, 4, 4, 4)),
                                                      voxel_size_um=np.array([1.0, 2.0])), "2 values for a 3-D grid"),
    ("experiment index without its columns", lambda t: _index_without_columns(t), "lacks the column"),
    ("malformed ontology JSON", lambda t: ((t / "structures.json").write_text("{not json"),
                                           lambda: Ontology.read(t / "structures.json"))[1], "structures.json"),
    ("atlas id >= 2^32", lambda t: (nrrd.write(str(t / "big.nrrd"), np.full((2, 2, 2), 2**32 + 672, np.int64)),
                                    lambda: io.read_atlas(t / "big.nrrd"))[1], "4,294,967,295"),
]


@pytest.mark.parametrize("name, make, fragment", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_bad_files_are_named_and_refused(tmp_path, name, make, fragment):
    call = make(tmp_path)
    with pytest.raises(ValueError, match=fragment):
        call()


# ------------------------------------------------------------------ the output folder

ARGS = ["run", "--volumes", str(PDYN), str(DATA / "Nrp1_P56_coronal_74272479_200um.zip"), "--atlas",
        str(DATA / "annotation_200um_ccf2017_ishgrid.nrrd"), "-k", "2", "--max-iter", "30", "--quiet", "--out"]


def test_a_second_run_is_refused_and_overwrite_replaces_the_whole_set(tmp_path, capsys):
    out = tmp_path / "O"
    assert main([*ARGS, str(out)]) == 0
    first = set(p.name for p in out.iterdir())
    assert {"region_correlation.csv", "summary.json", "result.h5ad"} <= first
    assert main(["run", "--volumes", str(PDYN), "-k", "1", "--quiet", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert set(p.name for p in out.iterdir()) == first  # untouched
    assert main(["run", "--volumes", str(PDYN), "-k", "1", "--quiet", "--overwrite", "--out", str(out)]) == 0
    second = set(p.name for p in out.iterdir())
    assert "region_correlation.csv" not in second  # no stale file of the first run
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["files"].values()) == {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert not list(tmp_path.glob(".O.*"))


@pytest.mark.parametrize("where, fragment", [("file", "is a file"), ("under_file", "lies under"),
                                             ("proc", "Cannot write")])
def test_unusable_output_folders_fail_before_any_work(tmp_path, capsys, where, fragment):
    (tmp_path / "f").write_text("x")
    out = {"file": tmp_path / "f", "under_file": tmp_path / "f" / "sub", "proc": "/proc/nsn-test/out"}[where]
    assert main([*ARGS, str(out)]) == 2
    assert fragment in capsys.readouterr().err


def test_a_failed_run_leaves_nothing(tmp_path, monkeypatch, cells):
    def boom(*a, **k):
        raise ValueError("figure failed")

    monkeypatch.setattr(pipeline.pl, "cell_patterns", boom)
    with pytest.raises(ValueError, match="figure failed"):
        pipeline.run_cells(cells, 3, tmp_path / "O", max_iter=20)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a partial one


def test_volumes_and_cells_together_are_refused(tmp_path, capsys):
    assert main(["run", "--volumes", str(PDYN), "--cells", str(DATA / "osmfish_sscortex_6471cells_33genes.h5ad"),
                 "-k", "2", "--out", str(tmp_path / "o")]) == 2
    assert "one source of data, not --volumes and --cells" in capsys.readouterr().err


def test_names_from_data_never_become_paths(tmp_path, voxels):
    a = voxels.copy()
    a = ad.concat([a, a], axis=1, merge="first")  # four genes: networks need three
    a.var_names = ["g1", "g2", "g3", "g4"]
    a.uns = voxels.uns.copy()
    a.layers["imputed"] = np.hstack([voxels.layers["imputed"]] * 2)
    tl.nmf(a, 2, layer="imputed")
    a.uns["nmf"]["pattern_names"] = ["../../evil", "PP2"]
    res = tl.osnmf_suite(a, layer="imputed")
    pipeline.write_osnmf_suite(res, tmp_path / "suite")
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert "suite/networks/evil.graphml" in written and all(w.startswith("suite/") for w in written)


# ------------------------------------------------------------------ the stability store

@pytest.fixture()
def sweep_input(bdgp):
    return np.ascontiguousarray(bdgp[1][:, :200])


def _sweep(X, store, ks=(3, 4), **kw):
    from napari_spatial_nmf.core import drain
    from napari_spatial_nmf.core.stability import iter_stability

    return drain(iter_stability(X, list(ks), 3, batch_size=3, store=store, **kw))


def test_store_damaged_or_altered_records_are_refitted(tmp_path, sweep_input):
    clean = _sweep(sweep_input, tmp_path / "s")
    rec = tmp_path / "s" / "k004" / "r0001.npz"
    with np.load(rec) as z:
        d = dict(z)
    d["dictionary"] = d["dictionary"] * 3  # right shape, altered values
    np.savez(rec, **d)
    (tmp_path / "s" / "k003" / "r0000.npz").write_bytes(b"PK\x03\x04 broken")
    with pytest.warns(UserWarning, match=r"r0001\.npz.*checksum"):
        again = _sweep(sweep_input, tmp_path / "s")
    assert np.array_equal(again.table["instability"], clean.table["instability"])


def test_store_faults_name_the_path(tmp_path, sweep_input):
    from napari_spatial_nmf.core.stability import StabilityStore, StoreError

    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        _sweep(sweep_input, tmp_path / "file")
    _sweep(sweep_input, tmp_path / "s")
    (tmp_path / "s" / "manifest.json").write_text("{broken")
    with pytest.raises(StoreError, match=r"manifest\.json is damaged"):
        _sweep(sweep_input, tmp_path / "s")
    (tmp_path / "s" / "manifest.json").unlink()
    holder = StabilityStore(tmp_path / "t", {"a": 1}, "x")  # another sweep is writing
    with pytest.raises(StoreError, match="Another sweep"):
        StabilityStore(tmp_path / "t", {"a": 1}, "x")
    holder.close()


def test_store_extends_the_k_range_with_the_finished_fits(tmp_path, sweep_input):
    from napari_spatial_nmf.core.stability import iter_stability

    first = _sweep(sweep_input, tmp_path / "s", ks=(3, 4, 5))
    msgs = [p.message for p in iter_stability(sweep_input, [3, 4, 5, 6], 3, batch_size=3, store=tmp_path / "s")]
    assert any("9/12 fits already in the store" in m for m in msgs)
    wider = _sweep(sweep_input, tmp_path / "s", ks=(3, 4, 5, 6))
    assert np.array_equal(wider.table["instability"][:3], first.table["instability"])


# ------------------------------------------------------------------ warnings a user needs

def test_warnings(cells, voxels):
    a = cells.copy()
    with pytest.warns(UserWarning, match="Replacing the earlier result"):
        tl.nmf(a, 2, max_iter=20)
        tl.nmf(a, 2, max_iter=20)
    b = cells.copy()
    b.X = np.log1p(np.asarray(b.X, dtype=float))
    with pytest.warns(UserWarning, match="not counts"):
        tl.iter_nnmf(b, 3)
    two = ad.concat([cells, cells], label="section", keys=["s1", "s2"], index_unique="-")
    two.obsm["spatial"] = np.asarray(two.obsm["spatial"]) + np.random.default_rng(0).normal(0, 1, (two.n_obs, 2))
    with pytest.warns(UserWarning, match="overlap"):
        tl.iter_nnmf(two, 3)
    with pytest.warns(UserWarning, match="extend the grid"):
        tl.estimate_lengthscale(cells, lengthscales=[0.5, 1.0, 2.0])


def test_scaled_data_give_the_same_patterns(voxels):
    ref = tl.nmf(voxels, 2, layer="imputed", copy=True)
    for scale in (1e-30, 1e6):
        a = voxels.copy()
        a.layers["imputed"] = (a.layers["imputed"] * scale).astype(np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = tl.nmf(a, 2, layer="imputed", copy=True)
        # the data are fitted at a power-of-two scale near unit size: the same fit up to float32 rounding
        np.testing.assert_allclose(out.obsm["X_nmf"], ref.obsm["X_nmf"], atol=2e-3)
        assert abs(out.uns["nmf"]["n_iter"] - ref.uns["nmf"]["n_iter"]) <= 3
        assert out.uns["nmf"]["relative_error"] == pytest.approx(ref.uns["nmf"]["relative_error"], abs=1e-4)


def test_cli_store_default_is_beside_the_output(tmp_path):
    stack = datasets.bdgp()
    np.savez(tmp_path / "b.npz", images=np.nan_to_num(stack.data[:60], nan=-1.0), missing_value=-1.0)
    assert main(["stability", "--volumes", str(tmp_path / "b.npz"), "--k-min", "2", "--k-max", "3", "-n", "2",
                 "--quiet", "--out", str(tmp_path / "st")]) == 0
    assert (tmp_path / "st.store" / "manifest.json").exists() and not (tmp_path / "st" / "store").exists()
    shutil.rmtree(tmp_path / "st")
