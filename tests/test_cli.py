"""The headless command line: the main job on real files, and a clear error on bad input."""

import json

import anndata as ad
import pandas as pd
import pytest

from napari_spatial_nmf.cli import main
from napari_spatial_nmf.datasets import DATA


def test_run_allen_volumes_over_atlas(tmp_path):
    out = tmp_path / "res"
    rc = main(["run", "--volumes", str(DATA / "Pdyn_P56_coronal_71717084_200um.zip"),
               str(DATA / "Nrp1_P56_coronal_74272479_200um.zip"),
               "--atlas", str(DATA / "annotation_200um_ccf2017_ishgrid.nrrd"),
               "--ontology", str(DATA / "structure_tree_safe_2017.csv.gz"), "-k", "2", "--out", str(out)])
    assert rc == 0
    adata = ad.read_h5ad(out / "result.h5ad")
    assert adata.obsm["X_nmf"].shape[1] == 2 and adata.uns["nmf"]["params"]["n_components"] == 2
    genes = pd.read_csv(out / "gene_region_correlation.csv")
    assert genes[genes["pattern"] == "Pdyn"].iloc[0]["acronym"] == "STR"
    assert len(pd.read_csv(out / "region_correlation.csv")) > 100
    assert (out / "patterns.png").stat().st_size > 10_000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_components"] == 2 and summary["random_state"] == 0


def test_run_on_mismatched_grid_fails_clearly(tmp_path, capsys):
    import nrrd
    import numpy as np

    nrrd.write(str(tmp_path / "ann.nrrd"), np.ones((10, 10, 10), np.uint32))
    (tmp_path / "structure_tree.csv").write_text("id,acronym,name,parent_structure_id\n1,a,A,\n")
    rc = main(["run", "--volumes", str(DATA / "Pdyn_P56_coronal_71717084_200um.zip"), "--atlas",
               str(tmp_path / "ann.nrrd"), "-k", "1", "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "same grid" in capsys.readouterr().err
    assert not (tmp_path / "o" / "result.h5ad").exists()


def test_headless_demo(tmp_path, capsys):
    assert main(["demo", "--headless", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "Pdyn: best structure STR" in text
    for sub in ("allen", "bdgp", "osmfish"):
        assert (tmp_path / sub / "result.h5ad").exists() and (tmp_path / sub / "patterns.png").exists()
    bdgp = ad.read_h5ad(tmp_path / "bdgp" / "result.h5ad")
    assert bdgp.obsm["X_nmf"].shape == (405, 21)


def test_stability_command_resumes(tmp_path, capsys):
    import numpy as np
    import pandas as pd

    from napari_spatial_nmf import datasets

    stack = datasets.bdgp()
    np.savez(tmp_path / "bdgp.npz", images=np.nan_to_num(stack.data[:200], nan=-1.0),
             image_names=np.array(stack.genes[:200]), missing_value=-1.0)
    args = ["stability", "--volumes", str(tmp_path / "bdgp.npz"), "--k-min", "3", "--k-max", "5", "-n", "3",
            "--out", str(tmp_path / "st")]
    # the -1 pixels (outside the embryo) are no data: the mask drops them, no imputation needed
    assert main(args) == 0
    first = pd.read_csv(tmp_path / "st" / "stability.csv")
    assert list(first["k"]) == [3, 4, 5] and (tmp_path / "st" / "instability.png").exists()
    assert main(args) == 2  # a second run into the same folder is refused ...
    assert main([*args, "--overwrite"]) == 0  # ... unless asked; everything is in the store: same numbers
    again = pd.read_csv(tmp_path / "st" / "stability.csv")
    assert np.array_equal(first["instability"], again["instability"])
    adata = ad.read_h5ad(tmp_path / "st" / "result.h5ad")
    assert adata.uns["stability"]["best_k"] == adata.obsm["X_nmf"].shape[1]


ALLEN = [str(DATA / "Pdyn_P56_coronal_71717084_200um.zip"), str(DATA / "Nrp1_P56_coronal_74272479_200um.zip")]


@pytest.mark.parametrize("name, inputs, ks", [
    ("allen", ["--volumes", *ALLEN, "--atlas", str(DATA / "annotation_200um_ccf2017_ishgrid.nrrd")], (2, 2)),
    ("bdgp", ["--volumes", str(DATA / "bdgp_wu2016_405px_1640images.npz")], (3, 4)),
    ("osmfish", ["--cells", str(DATA / "osmfish_sscortex_6471cells_33genes.h5ad")], (3, 4)),
])
def test_stability_command_on_every_shipped_sample(tmp_path, name, inputs, ks):
    """staNMF (genes resampled, osNMF) on each sample as shipped: 2 genes (Allen), the BDGP
    .npz with its missing-value code, osmFISH cells with all-zero cells."""
    out = tmp_path / name
    args = ["stability", *inputs, "--k-min", str(ks[0]), "--k-max", str(ks[1]), "-n", "3", "--quiet", "--out", str(out)]
    assert main(args) == 0
    table = pd.read_csv(out / "stability.csv")
    assert list(table["k"]) == list(range(ks[0], ks[1] + 1))
    assert table["instability"].between(0, 1).all() and table["instability"].iloc[-1] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert all((out / f).exists() for f in summary["files"].values())


def test_nnmf_command_scores_the_osmfish_regions(tmp_path):
    out = tmp_path / "nnmf"
    args = ["nnmf", "--cells", str(DATA / "osmfish_sscortex_6471cells_33genes.h5ad"), "-k", "6", "--max-iter", "60",
            "--label-key", "region", "--quiet", "--out", str(out)]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert all((out / f).exists() for f in summary["files"].values())
    adata = ad.read_h5ad(out / "result.h5ad")
    assert adata.obsm["X_nnmf"].shape[1] == 6 and adata.uns["nnmf"]["lengthscale"] > 0
    # the domains follow the expert regions, not perfectly
    assert 0.1 < summary["ari"] < 1 and summary["spatial_unit"] == "µm"


def test_integrate_command_joint_nnmf_and_3d_on_stahl(tmp_path):
    out = tmp_path / "integrated"
    args = ["integrate", "--cells", str(DATA / "stahl2016_breast_cancer_4layers_3000genes.h5ad"), "--section-key",
            "section", "-k", "5", "--method", "joint_nnmf", "--max-iter", "60", "--n-hvgs", "0", "--reconstruct-3d",
            "--spacing", "100", "--um-per-unit", "200", "--quiet", "--out", str(out)]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    # ST spots on an array: the automatic refinement is the feature fields; a chosen one is used
    assert pd.read_csv(out / "registration.csv")["refine"].iloc[1:].eq("fields").all()
    forced = tmp_path / "forced"
    args_forced = [*args[:args.index("--max-iter") + 1], "5", *args[args.index("--max-iter") + 2:-1], str(forced),
                   "--registration-refine", "none"]
    assert main(args_forced) == 0
    assert pd.read_csv(forced / "registration.csv")["refine"].iloc[1:].eq("none").all()
    assert all((out / f).exists() for f in summary["files"].values())
    programs = pd.read_csv(out / "programs.csv")
    assert set(programs["factor"]) == {f"F{i}" for i in range(1, 6)}
    cells = pd.read_csv(out / "cells_3d.csv")
    assert len(cells) == 1031
    z = cells.groupby("section")["z_um"].mean().sort_index()
    assert list(z.round(6)) == [0.0, 100.0, 200.0, 300.0]


def test_transfer_command_carries_the_osmfish_regions_to_a_small_panel(tmp_path, halves, capsys):
    """`transfer`: the left half's expert regions onto the right half cut to 16 genes; the summary
    scores them against the right half's own regions; the inputs are refused as the output."""
    left, right = tmp_path / "left.h5ad", tmp_path / "right16.h5ad"
    halves[0].write_h5ad(left)
    halves[1][:, :16].copy().write_h5ad(right)
    out = tmp_path / "transfer"
    args = ["transfer", "--reference", str(left), "--query", str(right), "--labels-key", "region", "--quiet",
            "--out", str(out)]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert all((out / f).exists() for f in summary["files"].values())
    assert summary["n_genes"] == 16 and summary["ari"] > 0.5  # measured 0.58
    assert any("Only 16 shared genes" in w for w in summary["warnings"])
    assert 0 < summary["depth_kept"]["median"] <= 1
    labels = pd.read_csv(out / "labels.csv")
    assert len(labels) == halves[1].n_obs and labels["confidence"].between(0, 1 + 1e-6).all()
    res = ad.read_h5ad(out / "result.h5ad")
    assert res.n_vars == 16 and "region_transferred" in res.obs and "region_transferred_probability" in res.obsm
    capsys.readouterr()
    assert main([*args[:-1], str(tmp_path / "kept"), "--keep-depth"]) == 0
    assert json.loads((tmp_path / "kept" / "summary.json").read_text())["depth_kept"] is None
    capsys.readouterr()
    # bad input: one line, exit 2, nothing written
    for bad, message in ((["--labels-key", "layer"], "no obs['layer']"),
                         (["--query", str(left)], "are the same file")):
        argv = [*args[:-1], str(tmp_path / "bad")]
        for i in range(0, len(bad), 2):
            argv[argv.index(bad[i]) + 1] = bad[i + 1]
        assert main(argv) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "bad").exists()
