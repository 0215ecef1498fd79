"""Scores of a factorization: agreement with labels and the quality of its gene programs.

INSPIRE's helpers (``utils.py``, jiazhao97/INSPIRE@12b7516; methods-digest §3.7), usable for
every factorization in the project (NMF coefficients, NNMF signatures, integration
programs). ARI, NMI and the silhouette width come from scikit-learn.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score


def clustering_scores(labels, domains, embedding: np.ndarray | None = None, *,
                      max_silhouette_cells: int = 20_000, random_state: int = 0) -> dict[str, float]:
    """ARI and NMI of ``domains`` against ``labels``, and the average silhouette width (ASW)
    of the labels in ``embedding``.

    Parameters
    ----------
    labels, domains : array-like, (n,)
        Expert labels and the clustering to score (cells with a missing label, NaN or
        None, are left out).
    embedding : numpy.ndarray, (n, d), optional
        E.g. the latent space; the ASW uses at most ``max_silhouette_cells`` cells (sampled).
    max_silhouette_cells : int
        Sample size for the O(n^2) silhouette.
    random_state : int
        Seed of that sample.

    Returns
    -------
    dict
        ``ari``, ``nmi`` (and ``asw``), ``n_cells``.
    """
    lab = np.asarray(labels, dtype=object)
    ok = np.array([v is not None and v == v and str(v) not in ("nan", "NA", "") for v in lab])
    lab, dom = lab[ok].astype(str), np.asarray(domains, dtype=object)[ok].astype(str)
    out = {"ari": float(adjusted_rand_score(lab, dom)), "nmi": float(normalized_mutual_info_score(lab, dom)),
           "n_cells": int(ok.sum())}
    if embedding is not None and len(np.unique(lab)) > 1:
        E = np.asarray(embedding)[ok]
        out["asw"] = float(silhouette_score(E, lab, sample_size=min(len(E), max_silhouette_cells),
                                            random_state=random_state))
    return out


def top_genes(programs: np.ndarray, n_top: int) -> np.ndarray:
    """(K, n_top) gene indices of each program's largest loadings."""
    return np.argsort(-np.asarray(programs), axis=1, kind="stable")[:, :n_top]


def factor_diversity(programs: np.ndarray, n_top: int = 10) -> float:
    """Share of the programs' top genes that are in no other program's top list (INSPIRE's
    ``calculate_factor_diversity``); 1 = every program has its own genes.

    Parameters
    ----------
    programs : numpy.ndarray, (K, G)
        Non-negative gene loadings (rows = factors).
    n_top : int
        Top genes per factor.

    Returns
    -------
    float
    """
    top = top_genes(programs, n_top)
    values, counts = np.unique(top, return_counts=True)
    shared = dict(zip(values, counts))
    return float(np.mean([[shared[g] == 1 for g in row] for row in top]))


def factor_coherence(programs: np.ndarray, counts, n_top: int = 10) -> float:
    """Mean normalised pointwise mutual information of the top-gene pairs of each program
    (INSPIRE's ``calculate_factor_coherence``): -log(p_ab / (p_a p_b)) / log p_ab on binarised
    counts; higher = the programs' genes are expressed together.

    Parameters
    ----------
    programs : numpy.ndarray, (K, G)
        Gene loadings.
    counts : array-like or sparse, (n_cells, G)
        Counts (binarised here: > 0).
    n_top : int
        Top genes per factor.

    Returns
    -------
    float
        NaN pairs (a gene never expressed, or never together) are left out of the mean.
    """
    B = (sp.csc_matrix(counts) > 0).astype(np.float64)
    n = B.shape[0]
    vals = []
    for row in top_genes(programs, n_top):
        sub = B[:, row]
        p = np.asarray(sub.sum(axis=0)).ravel() / n
        joint = (sub.T @ sub).toarray() / n
        for a in range(len(row)):
            for b in range(a + 1, len(row)):
                pj = joint[a, b]
                if 0 < pj < 1 and p[a] > 0 and p[b] > 0:
                    vals.append(-np.log(pj / (p[a] * p[b])) / np.log(pj))
    return float(np.mean(vals)) if vals else float("nan")
