"""Region correlation on the real Allen grids over the CCFv3 annotation."""

import numpy as np
import pytest

from napari_spatial_nmf.core import Ontology, region_correlation


def test_pdyn_ranks_striatum_first(allen):
    stack, atlas = allen
    pdyn = stack.data[stack.genes.index("Pdyn")]
    df = region_correlation(pdyn, atlas.annotation, atlas.ontology, names=["Pdyn"], min_voxels=50)
    best = df.iloc[0]
    striatum = set(atlas.ontology.descendants("STR").tolist())
    assert best["id"] in striatum, df.head()
    assert best["n_voxels"] >= 50 and best["r"] > 0.4
    assert (df["n_voxels"] >= 50).all() and df["r"].is_monotonic_decreasing


def test_matches_numpy_corrcoef_on_valid_voxels(allen):
    stack, atlas = allen
    pdyn = stack.data[stack.genes.index("Pdyn")]
    df = region_correlation(pdyn, atlas.annotation, atlas.ontology)
    valid = (atlas.annotation > 0) & np.isfinite(pdyn)
    for acronym in ("STR", "HPF", "CB"):
        indicator = np.isin(atlas.annotation, atlas.ontology.descendants(acronym))[valid]
        expected = np.corrcoef(pdyn[valid], indicator)[0, 1]
        row = df[df["acronym"] == acronym].iloc[0]
        assert row["r"] == pytest.approx(expected, abs=1e-9)
        assert row["n_voxels"] == indicator.sum()


def test_missing_voxels_are_excluded_not_zero(allen):
    stack, atlas = allen
    pdyn = stack.data[stack.genes.index("Pdyn")]
    assert np.isnan(pdyn[atlas.mask]).sum() > 2000  # 3.3 % of the brain has no data (-1) on this grid
    excluded = region_correlation(pdyn, atlas.annotation, atlas.ontology).set_index("acronym")
    as_zero = region_correlation(np.nan_to_num(pdyn), atlas.annotation, atlas.ontology).set_index("acronym")
    raw = np.where(np.isnan(pdyn), -1.0, pdyn)  # Allen's code passed explicitly
    coded = region_correlation(raw, atlas.annotation, atlas.ontology, missing_value=-1).set_index("acronym")
    assert np.allclose(excluded.loc["STR", "r"], coded.loc["STR", "r"])
    n_valid = int((atlas.mask & np.isfinite(pdyn)).sum())
    assert excluded.loc["CTX", "n_voxels"] < as_zero.loc["CTX", "n_voxels"]
    assert excluded.loc["STR", "r"] != pytest.approx(as_zero.loc["STR", "r"], abs=1e-4)
    assert excluded["n_voxels"].max() < n_valid


def test_bad_input(allen):
    stack, atlas = allen
    pdyn = stack.data[1]
    with pytest.raises(ValueError, match="same grid"):
        region_correlation(pdyn[:-1], atlas.annotation, atlas.ontology)
    with pytest.raises(ValueError, match="mask is empty"):
        region_correlation(pdyn, atlas.annotation, atlas.ontology, mask=np.zeros_like(atlas.mask))
    ann = atlas.annotation.copy()
    ann[30, 20, 20] = 999_999_999
    with pytest.raises(ValueError, match="not structures of the ontology"):
        region_correlation(pdyn, ann, atlas.ontology)


def test_ontology_parents_must_resolve(allen):
    t = allen[1].ontology.table.copy()
    t.loc[t["acronym"] == "STR", "parent_id"] = 123456789
    with pytest.raises(ValueError, match="parent id that is not in the ontology"):
        Ontology(t.reset_index(drop=True))
