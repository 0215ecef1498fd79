"""The headless command line: the main job on real files, and a clear error on bad input."""

import json

import anndata as ad
import pandas as pd

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
