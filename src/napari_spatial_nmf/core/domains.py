"""Spatial domains from an integrated embedding: the steps around the Gaussian mixture.

1. **Per-section standardisation** (``scale="section"``): every embedding dimension centred
   and scaled within each section, so a section-wide shift (a batch or platform effect that
   the model left in its factors) does not split the domains by section.
2. **Neighbourhood composition** (``neighbours=(k1, k2, ...)``): each cell described by the
   mean of the embedding over its k nearest cells of the same section, for several k (a
   multi-range description of the cell's surroundings, as MENDER describes cells by the
   cell types around them at several ranges; Yuan 2024 Nat Commun 15:1162). With factor
   proportions as the embedding this is the mix of programs around each cell.
3. A Gaussian mixture (scikit-learn; tied covariance, the most likely of several starts).
4. Optional **refinement** (``refine=k``): each cell takes the label most of its k nearest
   cells of the same section carry (the majority smoothing SpaGCN and GraphST apply before
   scoring).

All neighbourhoods are counts of nearest cells, so they adapt to each section's own density.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.spatial import cKDTree

from ._memory import check_memory


def _groups(sections) -> list[np.ndarray]:
    codes = pd.factorize(np.asarray(sections).astype(str))[0]
    return [np.flatnonzero(codes == c) for c in range(codes.max() + 1)]


def standardise(E: np.ndarray, sections) -> np.ndarray:
    """Each column centred and scaled to unit variance within each section (constant columns: 0)."""
    E = np.asarray(E, dtype=np.float64)
    out = np.empty_like(E)
    for idx in _groups(sections):
        block = E[idx]
        sd = block.std(axis=0)
        out[idx] = (block - block.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    return out


TIE_MARGIN = 24  # extra neighbours queried so that cells tied with the k-th nearest are all found
TIE_RTOL = 1e-9  # distances within this relative tolerance of the k-th nearest tie with it
CHUNK_VALUES = 1 << 22  # values per gathered (cells, k, d) block: 32 MB, whatever k and the embedding's width


def _nearest(tree: cKDTree, points: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Distances and indices of each point's ``k`` nearest tree points, as (m, k) arrays."""
    dist, nbr = tree.query(points, k=k, workers=-1)
    return np.asarray(dist).reshape(len(points), k), np.asarray(nbr).reshape(len(points), k)


def _with_ties(dist: np.ndarray, k: int) -> np.ndarray:
    """(m, kq) mask of the k nearest and every one tied with the k-th (``dist`` sorted per row)."""
    return dist <= (dist[:, k - 1] * (1 + TIE_RTOL) + 1e-12)[:, None]


def neighbour_matrix(coords: np.ndarray, sections, k: int) -> sp.csr_matrix:
    """Row-stochastic (n x n) average over each cell's k nearest cells of its section (itself
    included, and the cells tied with the k-th nearest, as in :func:`neighbourhood_features`).
    """
    C = np.asarray(coords, dtype=np.float64)
    n = len(C)
    check_memory(24 * n * (k + TIE_MARGIN), f"the {k}-nearest-cell neighbourhoods of {n:,} cells",
                 "Use smaller neighbourhoods.")
    rows, cols, vals = [], [], []
    for idx in _groups(sections):
        dist, nbr = _nearest(cKDTree(C[idx]), C[idx], int(min(k + TIE_MARGIN, len(idx))))
        keep = _with_ties(dist, int(min(k, len(idx))))
        r, c = np.nonzero(keep)
        rows.append(idx[r])
        cols.append(idx[nbr[r, c]])
        vals.append(1.0 / keep.sum(axis=1)[r])
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))


def neighbourhood_features(E: np.ndarray, coords: np.ndarray, sections, neighbours) -> np.ndarray:
    """The embedding averaged over each cell's k nearest cells (same section, itself included),
    for each k, side by side: (n, len(neighbours) * d).

    The k nearest are taken with their ties: every cell as near as the k-th nearest counts
    (up to ``TIE_MARGIN`` more), so on a lattice (Visium spots, where rings of 6 cells are
    equidistant) the neighbourhood is whole rings and does not depend on the cells' order.
    Without this, which of a tied ring's cells the k-d tree returned moved DLPFC's domain ARI by
    up to 0.025. One query per chunk of cells at the largest k serves every range, and a chunk
    gathers at most ``CHUNK_VALUES`` values, so memory does not grow with the number of cells.
    """
    E = np.asarray(E, dtype=np.float64)
    C = np.asarray(coords, dtype=np.float64)
    ks = [int(k) for k in neighbours]
    n, d = E.shape
    out = np.empty((n, len(ks) * d))
    for idx in _groups(sections):
        kq = int(min(max(ks) + TIE_MARGIN, len(idx)))
        tree = cKDTree(C[idx])
        step = max(1, CHUNK_VALUES // max(kq * d, 1))
        for start in range(0, len(idx), step):
            rows = idx[start:start + step]
            dist, nbr = _nearest(tree, C[rows], kq)
            total = np.cumsum(E[idx[nbr]], axis=1)  # (chunk, kq, d): sums over the nearest 1..kq
            for j, k in enumerate(ks):
                count = _with_ties(dist, min(k, kq)).sum(axis=1)  # k, or more where cells tie with the k-th
                out[rows, j * d:(j + 1) * d] = total[np.arange(len(rows)), count - 1] / count[:, None]
    return out


def refine_labels(labels: np.ndarray, coords: np.ndarray, sections, k: int) -> np.ndarray:
    """Each cell's label replaced by the one most of its k nearest cells (same section, itself
    included) carry, when more than half of them agree.
    """
    lab = np.asarray(labels)
    codes, uniques = pd.factorize(lab)
    A = neighbour_matrix(coords, sections, int(k) + 1)
    votes = A @ sp.csr_matrix((np.ones(len(codes)), (np.arange(len(codes)), codes)),
                              shape=(len(codes), len(uniques)))
    votes = votes.toarray()
    best = votes.argmax(axis=1)
    keep = votes.max(axis=1) <= 0.5
    out = np.where(keep, codes, best)
    return np.asarray(uniques)[out]


def mixture_labels(E: np.ndarray, n: int, *, covariance_type: str = "tied", n_init: int = 5,
                   random_state: int = 0) -> np.ndarray:
    """Gaussian mixture labels (scikit-learn), the most likely of ``n_init`` starts."""
    from sklearn.mixture import GaussianMixture

    return GaussianMixture(int(n), covariance_type=covariance_type, n_init=n_init, random_state=random_state,
                           reg_covar=1e-5).fit_predict(np.asarray(E, dtype=np.float64))


def expression_description(X, sections, *, counts: bool) -> np.ndarray:
    """Cells described by their genes for label transfer: log-normalised (counts, over these
    genes: ``log1p(1e4 × x / total)``) or as given (already normalised values), each gene
    standardised within each section (a per-gene capture scaling or a platform's offset
    between sections cancels): (n, n_genes) float64.
    """
    M = sp.csr_matrix(X, dtype=np.float64)
    if counts:
        total = np.asarray(M.sum(axis=1)).ravel()
        M = sp.diags(1e4 / np.maximum(total, 1e-12)) @ M
        M.data = np.log1p(M.data)
    return standardise(M.toarray(), sections)


def match_depth(X_reference: sp.csr_matrix, X_query: sp.csr_matrix, rng: np.random.Generator
                ) -> tuple[sp.csr_matrix, np.ndarray]:
    """The reference's counts binomially thinned, gene by gene, to the query's mean count per
    cell where the query's is lower (a shallower panel, a lower capture; never thickened), so
    that a classifier learns from cells as noisy as the ones it will label.

    Parameters
    ----------
    X_reference, X_query : scipy.sparse.csr_matrix
        (n_reference, G) and (n_query, G) counts over the same genes.
    rng : numpy.random.Generator

    Returns
    -------
    (X, ratio) : (n_reference, G) float64 csr counts, (G,) float64 in [0, 1]
        The thinned counts and each gene's kept fraction (1: unchanged).
    """
    mean_r = np.asarray(X_reference.mean(axis=0)).ravel()
    mean_q = np.asarray(X_query.mean(axis=0)).ravel()
    ratio = np.clip(mean_q / np.maximum(mean_r, 1e-12), 0.0, 1.0)
    ratio[mean_r <= 0] = 1.0
    X = sp.csr_matrix(X_reference, dtype=np.float64, copy=True)
    X.data = rng.binomial(np.round(X.data).astype(np.int64), ratio[X.indices]).astype(np.float64)
    X.eliminate_zeros()
    return X, ratio


def label_classifier(F_reference: np.ndarray, labels: np.ndarray, *, C: float = 0.1, random_state: int = 0):
    """A multinomial logistic regression (scikit-learn, L2 penalty ``C``) of the reference
    cells' labels on their descriptions (n_reference, n_features).
    """
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=2000, random_state=random_state).fit(F_reference, labels)


def predict_labels(clf, F_query: np.ndarray, near: sp.csr_matrix | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The query cells' labels from ``clf`` (:func:`label_classifier`), each cell's class
    probabilities averaged over its nearest cells (``near``: a row-stochastic
    :func:`neighbour_matrix` of the query; None for no averaging).

    Returns
    -------
    (labels, probabilities, classes) : (n_query,) labels, (n_query, n_classes) float64, (n_classes,)
    """
    prob = clf.predict_proba(F_query)
    if near is not None:
        prob = np.asarray(near @ prob)
    return clf.classes_[prob.argmax(axis=1)], prob, clf.classes_
