"""NMF solver: agreement with scikit-learn on the real BDGP data, determinism, bad input."""

import numpy as np
import pytest
from sklearn.decomposition import NMF

from napari_spatial_nmf.core import Progress, fit_nmf, iter_fit_nmf


def test_bdgp_k21_matches_sklearn_and_is_deterministic(bdgp):
    _, X = bdgp  # 405 pixels x 1,640 images (Wu et al. 2016)
    ours = fit_nmf(X, 21, random_state=0)
    again = fit_nmf(X, 21, random_state=0)
    ref = NMF(n_components=21, random_state=0)  # same settings: nndsvda, cd, tol 1e-4, 200 its
    W = ref.fit_transform(X)
    rel_ref = np.linalg.norm(X - W @ ref.components_) / np.linalg.norm(X)
    assert abs(ours.relative_error - rel_ref) / rel_ref < 0.01
    # the same iterations as scikit-learn's coordinate descent, not merely a similar error
    assert np.allclose(ours.patterns @ ours.coefficients, W @ ref.components_, atol=1e-8)
    assert np.array_equal(ours.patterns, again.patterns)
    assert np.array_equal(ours.coefficients, again.coefficients)
    assert ours.patterns.shape == (405, 21) and ours.coefficients.shape == (21, 1640)
    assert (ours.patterns >= 0).all() and np.allclose(ours.patterns.max(axis=0), 1)


def test_seed_matters_for_random_init(bdgp):
    _, X = bdgp
    a = fit_nmf(X[:, :300], 5, init="random", random_state=0, max_iter=20)
    b = fit_nmf(X[:, :300], 5, init="random", random_state=1, max_iter=20)
    assert not np.allclose(a.patterns, b.patterns)


def test_generator_yields_progress_and_can_stop_early(bdgp):
    _, X = bdgp
    gen = iter_fit_nmf(X, 10, max_iter=50, tol=0)
    steps = [next(gen) for _ in range(3)]
    assert all(isinstance(p, Progress) for p in steps)
    assert [p.step for p in steps] == [1, 2, 3] and steps[0].total == 50
    gen.close()  # what Cancel does: no result is produced
    with pytest.raises(StopIteration):
        next(gen)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda X: X.__setitem__((0, 0), np.nan), "missing values"),
        (lambda X: X.__setitem__((0, 0), -0.5), "negative"),
        (lambda X: X.__setitem__((0, 0), np.inf), "infinite"),
    ],
)
def test_bad_values_are_refused_before_fitting(bdgp, mutate, match):
    X = bdgp[1][:50, :40].copy()
    mutate(X)
    with pytest.raises(ValueError, match=match):
        iter_fit_nmf(X, 3)  # raised at the call, before any iteration


def test_k_out_of_range(bdgp):
    X = bdgp[1][:50, :40]
    with pytest.raises(ValueError, match=r"between 1 and the number of genes \(40\)"):
        fit_nmf(X, 41)
    with pytest.raises(ValueError, match="between 1"):
        fit_nmf(X, 0)


def test_all_zero_matrix():
    with pytest.raises(ValueError, match="all zeros"):
        fit_nmf(np.zeros((10, 5)), 2)
