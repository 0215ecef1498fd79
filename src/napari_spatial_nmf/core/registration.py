"""Rigid registration of serial sections from an integrated latent space, and 3D stacking.

The INSPIRE tutorial's recipe (``3d_stereoseq_rigid.ipynb``; methods-digest §3.7): pairs of
cells of two adjacent sections that are mutual nearest neighbours in the integrated space
(cells that look alike), then the rigid transform (rotation + translation, Kabsch /
Umeyama) that best maps one section's pair members onto the other's. Mutual nearest
neighbours come from scikit-learn (cosine distance, the tutorial's "angular" Annoy index);
the fit is scikit-image's ``EuclideanTransform`` (Umeyama 1991, no reflection) inside
``skimage.measure.ransac``, which drops the pairs whose positions disagree (cells alike in
expression but far apart, e.g. two stretches of the same cortical layer).

An iterative-closest-point refinement after RANSAC (each moving cell paired with the most
similar fixed cell near its current position, refitted over shrinking radii) was measured on
iSTBench's protocol and dropped: it lowered the layer match on DLPFC (0.873 -> 0.857, one
seed) and did not raise it on BARISTAseq (``benchmarks/registration_istbench.py``).
"""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import NearestNeighbors

MIN_INLIERS_OVER_CHANCE = 2.0  # a fit whose inlier fraction is under twice the chance fraction is weak
MAX_INCONSISTENCY = 3.0  # cell spacings


def typical_spacing(coords: np.ndarray) -> float:
    """The median distance from a cell to its nearest neighbour."""
    from scipy.spatial import cKDTree

    C = np.asarray(coords, dtype=np.float64)
    if len(C) < 2:
        return 0.0
    return float(np.median(cKDTree(C).query(C, k=2)[0][:, 1]))


def mnn_pairs(A: np.ndarray, B: np.ndarray, k: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Mutual nearest neighbours between two sets of embeddings (cosine distance).

    Parameters
    ----------
    A, B : numpy.ndarray, (n_a, d) and (n_b, d)
        Embeddings of the two sections' cells.
    k : int
        Neighbours searched on each side (INSPIRE: 30).

    Returns
    -------
    (ia, ib) : numpy.ndarray of int
        Pairs: B[ib[p]] is among A[ia[p]]'s k nearest and vice versa.
    """
    k = int(min(k, len(A), len(B)))
    nb = NearestNeighbors(n_neighbors=k, metric="cosine").fit(B).kneighbors(A, return_distance=False)
    na = NearestNeighbors(n_neighbors=k, metric="cosine").fit(A).kneighbors(B, return_distance=False)
    ia = np.repeat(np.arange(len(A)), k)
    ib = nb.ravel()
    mutual = (na[ib] == ia[:, None]).any(axis=1)
    return ia[mutual], ib[mutual]


RANSAC_PAIRS = 5000


def rigid_fit(moving: np.ndarray, fixed: np.ndarray, *, residual_threshold: float, random_state: int = 0,
              max_trials: int = 2000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Robust rigid transform taking ``moving`` points onto their ``fixed`` partners.

    Parameters
    ----------
    moving, fixed : numpy.ndarray, (n_pairs, 2 or 3)
        Corresponding points.
    residual_threshold : float
        RANSAC's inlier distance (coordinate units).
    random_state : int
        RANSAC's seed.
    max_trials : int
        RANSAC's most trials; it stops earlier once a sample free of outliers has been drawn
        with probability 0.999 given the inlier fraction found so far (Fischler & Bolles'
        trial count, scikit-image's ``stop_probability``).

    Returns
    -------
    (R, t, inliers)
        Rotation matrix (d x d, det +1), translation (d,) with fixed ≈ moving @ R.T + t, and
        the inlier mask.

    Raises
    ------
    ValueError
        Fewer than d + 1 pairs, or no consistent transform.
    """
    from skimage.measure import ransac
    from skimage.transform import EuclideanTransform

    d = moving.shape[1]
    if len(moving) < d + 1:
        raise ValueError(f"Only {len(moving)} matched cell pairs: too few to fit a rigid transform. The sections may "
                         "share too little tissue, or the integration did not align them (train longer).")
    # hypotheses are scored on at most RANSAC_PAIRS pairs (tens of thousands of MNN pairs make every
    # trial's residuals the cost), then the winner's inliers among all pairs are refitted
    rng = np.random.default_rng(random_state)
    sub = np.sort(rng.choice(len(moving), RANSAC_PAIRS, replace=False)) if len(moving) > RANSAC_PAIRS else None
    pts = (moving, fixed) if sub is None else (moving[sub], fixed[sub])
    model, inliers = ransac(pts, EuclideanTransform, min_samples=d + 1, residual_threshold=residual_threshold,
                            max_trials=max_trials, stop_probability=0.999, rng=random_state)
    if model is None or inliers is None or inliers.sum() < d + 1:
        raise ValueError("No rigid transform is consistent with the matched cells (RANSAC found no inliers).")
    if sub is not None:
        inliers = model.residuals(moving, fixed) < residual_threshold
        model = EuclideanTransform.from_estimate(moving[inliers], fixed[inliers])
        if not model:
            raise ValueError("No rigid transform is consistent with the matched cells (the refit failed).")
    M = model.params
    return M[:d, :d], M[:d, d], inliers


def align_pair(coords_moving: np.ndarray, emb_moving: np.ndarray, coords_fixed: np.ndarray, emb_fixed: np.ndarray,
               *, k: int = 10, max_cells: int = 20_000, residual_threshold: float | None = None,
               random_state: int = 0) -> dict:
    """The rigid transform aligning one section onto its neighbour, from their embeddings.

    Parameters
    ----------
    coords_moving, coords_fixed : numpy.ndarray, (n, 2 or 3)
        The sections' coordinates.
    emb_moving, emb_fixed : numpy.ndarray, (n, d)
        Their cells in the integrated space (INSPIRE's latent Z, or factor proportions).
    k : int
        Mutual-nearest-neighbour k.
    max_cells : int
        Cells sampled per section (the tutorial samples 20,000).
    residual_threshold : float, optional
        RANSAC's inlier distance; default 4 times the typical distance between neighbouring
        cells of the fixed section (:func:`typical_spacing`).
    random_state : int
        Seed of the sampling and of RANSAC.

    Returns
    -------
    dict
        ``rotation`` (d x d), ``translation`` (d,), ``n_pairs``, ``n_inliers`` (the MNN pairs
        and RANSAC's inliers), ``chance_inlier_fraction`` (the share of the pairs the same
        transform brings within the inlier distance when the pairs are shuffled: the fraction
        expected by chance), ``angle_deg`` (2-D: the rotation angle).
    """
    rng = np.random.default_rng(random_state)
    im = rng.choice(len(coords_moving), min(max_cells, len(coords_moving)), replace=False)
    jf = rng.choice(len(coords_fixed), min(max_cells, len(coords_fixed)), replace=False)
    ia, ib = mnn_pairs(emb_moving[im], emb_fixed[jf], k=k)
    if residual_threshold is None:
        residual_threshold = 4 * typical_spacing(coords_fixed)
    moving, fixed = coords_moving[im][ia], coords_fixed[jf][ib]
    R, t, inl = rigid_fit(moving, fixed, residual_threshold=residual_threshold, random_state=random_state)
    # the inlier fraction the same transform gives pairs matched at random: what RANSAC finds by
    # chance when the sections are small beside the inlier distance (mean of 5 shuffles)
    landed = apply(moving, R, t)
    chance = float(np.mean([np.mean(np.linalg.norm(landed - fixed[rng.permutation(len(fixed))], axis=1)
                                    < residual_threshold) for _ in range(5)]))
    out = {"rotation": R, "translation": t, "n_pairs": len(ia), "n_inliers": int(inl.sum()),
           "chance_inlier_fraction": chance}
    if R.shape == (2, 2):
        out["angle_deg"] = float(np.degrees(np.arctan2(R[1, 0], R[0, 0])))
    return out


def apply(coords: np.ndarray, rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """``coords @ R.T + t``."""
    return np.asarray(coords) @ np.asarray(rotation).T + np.asarray(translation)


def label_transfer_accuracy(coords_a: np.ndarray, labels_a, coords_b: np.ndarray, labels_b) -> float:
    """Share of section B's labelled cells whose nearest cell of section A (in the given,
    e.g. aligned, coordinates) carries the same label; cells without a label are left out.
    """
    from scipy.spatial import cKDTree

    la, lb = np.asarray(labels_a, dtype=object), np.asarray(labels_b, dtype=object)
    oka = np.array([v == v and v is not None for v in la])
    okb = np.array([v == v and v is not None for v in lb])
    _, j = cKDTree(np.asarray(coords_a)[oka]).query(np.asarray(coords_b)[okb])
    return float(np.mean(la[oka][j].astype(str) == lb[okb].astype(str)))
