"""Shared fixtures: the real samples shipped inside the package (loaded once per session)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from napari_spatial_nmf import datasets


@pytest.fixture(scope="session")
def halves():
    """The shipped osmFISH cells, the annotated ones, as two sections (left and right half)."""
    a = datasets.osmfish()
    a = a[(np.asarray(a.X.sum(1)).ravel() > 0) & (a.obs["region"] != "Excluded").to_numpy()].copy()
    x = np.asarray(a.obsm["spatial"])[:, 0]
    left = x < np.median(x)
    return [a[left].copy(), a[~left].copy()]


@pytest.fixture(scope="session")
def allen():
    """(Stack, Atlas): Allen Pdyn + Nrp1 energy and the CCFv3 annotation, 200 µm grid."""
    return datasets.allen_200um()


@pytest.fixture(scope="session")
def bdgp():
    """The BDGP stack (1640, 16, 32) and its (405 pixels x 1640 images) matrix, rows in the
    original table's order (the template's pixels in column-major order)."""
    stack = datasets.bdgp()
    template = ~np.isnan(stack.data[0])
    rc = np.argwhere(template.T)[:, ::-1]
    return stack, stack.data[:, rc[:, 0], rc[:, 1]].T.astype(np.float64)


@pytest.fixture()
def osmfish():
    return datasets.osmfish()


SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data():
    """The project's shared real datasets (``../shared/data`` beside the repository).

    Tests that use it carry the ``shared_data`` marker. Without the folder they are skipped
    with a reason that names it; with ``NSN_REQUIRE_SHARED_DATA=1`` (set by ``.ci/run``, which
    also checks the folder) they fail instead, so CI never skips them.
    """
    if not SHARED.is_dir():
        msg = f"the shared datasets folder {SHARED} is not here (it sits beside the repository in the project's CI)"
        if os.environ.get("NSN_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return SHARED


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI (``NSN_REQUIRE_SHARED_DATA=1``) every extra is installed and the data are present,
    so a skipped test (a missing optional dependency that would not import) is a failure."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("NSN_REQUIRE_SHARED_DATA") == "1" and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where nothing may be skipped: {report.longrepr}"
