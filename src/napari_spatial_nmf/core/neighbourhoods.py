"""Each section's neighbourhood, from its own distances: spots and single cells alike.

INSPIRE sets its graph radius to ``rad_coef`` times the smallest distance between two cells
of the first section. On a Visium lattice that is the spot pitch; on single-cell data it is
one unusually close pair, and most cells end with no neighbour but themselves (93-100 % on
the BARISTAseq slices). Here the default comes from each section's distribution of
nearest-neighbour distances instead: the radius that gives the median cell
:data:`TARGET_DEGREE` neighbours (on a hexagonal Visium lattice, just over the pitch: the
six spots around each spot), and for joint NNMF the kernel lengthscale of NNMF's own rule
(the mean distance to the 14th neighbour) computed per section. A graph whose cells have on
average fewer than :data:`MIN_MEAN_DEGREE` neighbours, or that leaves most cells alone, is
reported with a warning naming the section and the fix.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

TARGET_DEGREE = 6
MIN_MEAN_DEGREE = 3.0
MAX_ISOLATED = 0.5
RADIUS_SLACK = 1.05  # just beyond the k-th neighbour: ties on a lattice are all inside


@dataclass
class GraphStats:
    """One section's neighbour graph: the radius (or lengthscale) and how connected it is.

    Attributes
    ----------
    section : str
    scale : float
        Radius (INSPIRE) or lengthscale (joint NNMF), in the coordinates' unit.
    mean_degree : float
        Mean number of neighbours per cell (the cell itself not counted).
    isolated : float
        Share of cells with no neighbour.
    rule : str
        Where the scale came from.
    """

    section: str
    scale: float
    mean_degree: float
    isolated: float
    rule: str

    def as_dict(self) -> dict:
        """The record stored in ``uns`` (plain numbers)."""
        return {"section": self.section, "scale": float(self.scale), "mean_degree": float(self.mean_degree),
                "isolated": float(self.isolated), "rule": self.rule}


def kth_neighbour_distances(coords: np.ndarray, k: int) -> np.ndarray:
    """Each cell's distance to its k-th nearest other cell (k-d tree; fewer cells: the farthest)."""
    C = np.asarray(coords, dtype=np.float64)
    kk = min(k + 1, len(C))
    d, _ = cKDTree(C).query(C, k=kk)
    return d[:, kk - 1] if kk > 1 else np.zeros(len(C))


def data_radius(coords: np.ndarray, degree: int = TARGET_DEGREE) -> float:
    """The radius at which the median cell has ``degree`` neighbours (slightly beyond, so a
    lattice's equidistant neighbours are all in).
    """
    d = kth_neighbour_distances(coords, degree)
    return float(RADIUS_SLACK * np.median(d))


def degree_stats(coords: np.ndarray, radius: float) -> tuple[float, float]:
    """(mean number of neighbours within ``radius``, share of cells with none)."""
    tree = cKDTree(np.asarray(coords, dtype=np.float64))
    counts = tree.query_ball_point(tree.data, r=radius, return_length=True) - 1  # not the cell itself
    return float(counts.mean()), float(np.mean(counts == 0))


def kernel_degree_stats(coords: np.ndarray, lengthscale: float, cutoff: float = 0.1) -> tuple[float, float]:
    """As :func:`degree_stats` for NNMF's Gaussian kernel (neighbours: weight above ``cutoff``)."""
    return degree_stats(coords, lengthscale * np.sqrt(-np.log(cutoff)))


def warn_if_degenerate(stats: list[GraphStats], what: str, fix: str, stacklevel: int = 3) -> list[str]:
    """Warn for each section whose neighbourhoods are degenerate; returns the messages."""
    msgs = []
    for s in stats:
        if s.mean_degree < MIN_MEAN_DEGREE or s.isolated > MAX_ISOLATED:
            msgs.append(f"Section {s.section!r}: the {what} ({s.rule}, {s.scale:.4g}) gives its cells "
                        f"{s.mean_degree:.1f} neighbours on average and leaves {s.isolated:.0%} alone, so the model "
                        f"sees little of the tissue around each cell. {fix}")
    for m in msgs:
        warnings.warn(m, UserWarning, stacklevel=stacklevel)
    return msgs
