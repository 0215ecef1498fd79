"""A consensus of several restarts of a factorization (programs matched, then averaged).

Restarts from different seeds find the same programs in different orders and with small
differences. Each restart's programs are matched to the first restart's by the Hungarian
algorithm on their cosine similarity (``scipy.optimize.linear_sum_assignment``, as staNMF
matches dictionaries), and the matched programs and cell proportions are averaged. The
matched similarities say how reproducible each program is (staNMF's instability of the
restarts is one minus their mean), which is what :mod:`napari_spatial_nmf.tl` reports.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment


@dataclass
class Consensus:
    """The averaged fit.

    Attributes
    ----------
    proportions : numpy.ndarray, (n_cells, K)
        Mean of the matched proportions (rows sum to 1).
    programs : numpy.ndarray, (K, G)
        Mean of the matched programs (rows sum to 1).
    gamma : numpy.ndarray, (n_sections, G)
        Mean per-section gene scaling (log).
    similarity : numpy.ndarray, (n_restarts, K)
        Each restart's matched cosine similarity to the reference, per program (the
        reference's row is 1).
    instability : float
        One minus the mean matched similarity over the other restarts (0: identical restarts).
    reference : int
        The restart the others were matched to (the first).
    """

    proportions: np.ndarray
    programs: np.ndarray
    gamma: np.ndarray
    similarity: np.ndarray
    instability: float
    reference: int = 0


def _unit_rows(P: np.ndarray) -> np.ndarray:
    P = np.asarray(P, dtype=np.float64)
    n = np.linalg.norm(P, axis=1, keepdims=True)
    return P / np.where(n > 0, n, 1)


def match(reference: np.ndarray, programs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The order of ``programs`` (K, G) that best matches ``reference`` (K, G), and the matched
    cosine similarities (Hungarian algorithm).
    """
    C = _unit_rows(reference) @ _unit_rows(programs).T
    rows, cols = linear_sum_assignment(-C)
    order = cols[np.argsort(rows)]
    return order, C[np.arange(len(order)), order]


def consensus(fits: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Consensus:
    """Match and average restarts given as ``(proportions (n, K), programs (K, G), gamma (S, G))``."""
    if not fits:
        raise ValueError("No restarts to combine.")
    ref_props, ref_prog, ref_gamma = fits[0]
    K = ref_prog.shape[0]
    props = np.zeros_like(ref_props, dtype=np.float64)
    progs = np.zeros_like(ref_prog, dtype=np.float64)
    gammas = np.zeros_like(ref_gamma, dtype=np.float64)
    sims = np.ones((len(fits), K))
    for r, (P, B, g) in enumerate(fits):
        order, sim = match(ref_prog, B) if r else (np.arange(K), np.ones(K))
        props += np.asarray(P, dtype=np.float64)[:, order]
        progs += np.asarray(B, dtype=np.float64)[order]
        gammas += np.nan_to_num(np.asarray(g, dtype=np.float64))
        sims[r] = sim
    n = len(fits)
    props /= n
    progs /= n
    with np.errstate(invalid="ignore", divide="ignore"):
        props /= props.sum(axis=1, keepdims=True)
        progs /= progs.sum(axis=1, keepdims=True)
    gammas = np.where(np.isnan(ref_gamma), np.nan, gammas / n)
    inst = float(1 - sims[1:].mean()) if n > 1 else 0.0
    return Consensus(props.astype(np.float32), progs.astype(np.float32), gammas.astype(np.float32), sims, inst)
