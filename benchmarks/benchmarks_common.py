"""Shared loaders for the benchmark scripts (real data from the package's samples)."""

import numpy as np

from napari_spatial_nmf import datasets


def bdgp_matrix() -> np.ndarray:
    """The BDGP matrix of Wu et al. 2016: 405 embryo pixels x 1,640 images, float64, in the
    original table's pixel order (the template's pixels in column-major order)."""
    s = datasets.bdgp()
    T = ~np.isnan(s.data[0])
    rc = np.argwhere(T.T)[:, ::-1]
    return s.data[:, rc[:, 0], rc[:, 1]].T.astype(np.float64)
