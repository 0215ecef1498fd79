"""Shared fixtures: the real samples shipped inside the package (loaded once per session)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_spatial_nmf import datasets


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


@pytest.fixture(scope="session")
def shared_data():
    """The project's shared real datasets (``../shared/data`` beside the repository; CI has it).

    Fails, never skips, when it is missing: these tests check the readers on original files.
    """
    from pathlib import Path

    root = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not root.is_dir():
        pytest.fail(f"The shared datasets are expected at {root} (see the developers' guide).")
    return root
