"""Rigid registration of serial sections from an integrated latent space, and 3D stacking.

The INSPIRE tutorial's recipe (``3d_stereoseq_rigid.ipynb``; methods-digest §3.7): pairs of
cells of two adjacent sections that are mutual nearest neighbours in the integrated space
(cells that look alike), then the rigid transform (rotation + translation, Kabsch /
Umeyama) that best maps one section's pair members onto the other's. Mutual nearest
neighbours come from scikit-learn (cosine distance, the tutorial's "angular" Annoy index);
the fit is scikit-image's ``EuclideanTransform`` (Umeyama 1991, no reflection) inside
``skimage.measure.ransac``, which drops the pairs whose positions disagree (cells alike in
expression but far apart, e.g. two stretches of the same cortical layer).

RANSAC's answer is then refined: single cells on the sections' cell-density fields
(:func:`refine_by_density`: BARISTAseq 0.918 -> 0.9725 on the protocol below), spots on an
array (:func:`on_array`) on the sections' feature fields (:func:`refine_by_fields`):
the rotation and translation under which each moving cell's features best match the fixed
section's features around where it lands. RANSAC rests on a few hundred matched pairs, and
hypotheses with nearly as many inliers differ by several degrees; the fields use every cell.
On iSTBench's protocol this took the layer match from 0.903 ± 0.047 to 0.918 ± 0.008 on
BARISTAseq's single cells and from 0.868 ± 0.004 to 0.871 ± 0.002 on DLPFC's spots (5 seeds;
``benchmarks/registration_istbench.py``): a small gain, and a six-fold smaller spread on
single cells. An iterative-closest-point refinement (each moving cell paired with the most
similar fixed cell near it, refitted over shrinking radii) had been tried before and dropped:
it lowered DLPFC's score (0.873 -> 0.857).
"""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import NearestNeighbors

MIN_INLIERS_OVER_CHANCE = 2.0  # a fit whose inlier fraction is under twice the chance fraction is weak
MAX_INCONSISTENCY = 3.0  # cell spacings
FIELD_SIGMA = 2.0  # cell spacings: width of the Gaussian over which the fixed section's features are averaged
FIELD_REACH = 3.0  # cell spacings: a cell landing farther than this from every fixed cell lands off the tissue
FIELD_NEIGHBOURS = 12  # fixed cells averaged around each landing point
FIELD_STEP = 2.0  # the refinement's first steps: degrees of rotation, cell spacings of translation
DENSITY_SIGMA = 2.0  # cell spacings: width of the Gaussian of each cell in a section's density field
DENSITY_NEIGHBOURS = 60  # fixed cells summed around each landing point (to about 2 widths)
ARRAY_MAX_CV = 0.2  # nearest-neighbour distances varying less than this (s.d. / mean) are an array of spots


def _nearest_distances(coords: np.ndarray) -> np.ndarray:
    """Each point's distance to its nearest other point (empty for fewer than 2 points)."""
    from scipy.spatial import cKDTree

    C = np.asarray(coords, dtype=np.float64)
    if len(C) < 2:
        return np.zeros(0)
    return cKDTree(C).query(C, k=2)[0][:, 1]


def typical_spacing(coords: np.ndarray) -> float:
    """The median distance from a cell to its nearest neighbour."""
    d = _nearest_distances(coords)
    return float(np.median(d)) if len(d) else 0.0


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
        out["angle_deg"] = angle_deg(R)
    return out


def angle_deg(rotation: np.ndarray) -> float:
    """The angle (degrees, counter-clockwise) of a 2-D rotation matrix."""
    return float(np.degrees(np.arctan2(rotation[1, 0], rotation[0, 0])))


def _rotation(angle: float) -> np.ndarray:
    return np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])


def refine_by_fields(coords_moving: np.ndarray, features_moving: np.ndarray, coords_fixed: np.ndarray,
                     features_fixed: np.ndarray, rotation: np.ndarray, translation: np.ndarray, *,
                     spacing: float | None = None, max_cells: int = 4000, random_state: int = 0) -> dict:
    """Refine a 2-D rigid transform so that the sections' feature fields agree.

    The score of a transform T is the mean, over the moving section's cells i, of the cosine
    similarity between the cell's features f_i and the fixed section's features around T(x_i)
    (a Gaussian-weighted mean over its 12 nearest fixed cells, width ``FIELD_SIGMA`` = 2 cell
    spacings); a cell landing more than ``FIELD_REACH`` = 3 spacings from every fixed cell
    scores 0, so sliding off the tissue is never rewarded. The angle (about the landed cells'
    centre) and the translation are optimised from the given transform by the Nelder-Mead
    simplex method (``scipy.optimize.minimize``; first steps of 2° and 2 cell spacings). This
    is a dense counterpart of the matched pairs: RANSAC (:func:`rigid_fit`) finds the right
    basin from a few hundred pairs, the fields place the transform within it using every cell.

    Source: this project's method, not a port: the rigid, similarity-driven registration of
    image registration (as STalign, Clifton et al. 2023, matches rasterised expression),
    applied to point clouds through nearest-cell averages. Measured on iSTBench's protocol in
    docs/integration.md (registration section) and ``benchmarks/registration_istbench.py``.

    Parameters
    ----------
    coords_moving, coords_fixed : numpy.ndarray, (n, 2)
        The sections' coordinates (one unit, e.g. µm).
    features_moving, features_fixed : numpy.ndarray, (n, d)
        Each cell's features in a space the sections share (e.g. its surroundings' factor
        proportions in an integration).
    rotation, translation : numpy.ndarray, (2, 2) and (2,)
        The starting transform (fixed ≈ moving @ R.T + t), e.g. from :func:`align_pair`.
    spacing : float, optional
        The fixed section's typical distance between neighbouring cells (default
        :func:`typical_spacing`).
    max_cells : int
        Moving cells sampled to score a transform.
    random_state : int
        Seed of the sampling.

    Returns
    -------
    dict
        ``rotation``, ``translation`` (refined), ``similarity_before``, ``similarity_after``
        (the score of the start and of the result) and ``shift`` (root-mean-square distance
        between where the cells landed before and after, coordinate units).

    Raises
    ------
    ValueError
        Coordinates that are not 2-D, or features whose widths differ.
    """
    from scipy.spatial import cKDTree

    Pm, Pf = np.asarray(coords_moving, dtype=np.float64), np.asarray(coords_fixed, dtype=np.float64)
    Fm, Ff = np.asarray(features_moving, dtype=np.float64), np.asarray(features_fixed, dtype=np.float64)
    _check_2d(Pm, Pf)
    if Fm.shape[1] != Ff.shape[1]:
        raise ValueError(f"The sections' features differ in width ({Fm.shape[1]} and {Ff.shape[1]}): they must "
                         "come from one shared space.")
    spacing = typical_spacing(Pf) if spacing is None else float(spacing)
    rng = np.random.default_rng(random_state)
    if len(Pm) > max_cells:
        keep = rng.choice(len(Pm), max_cells, replace=False)
        Pm, Fm = Pm[keep], Fm[keep]
    Fm = Fm / np.maximum(np.linalg.norm(Fm, axis=1, keepdims=True), 1e-12)
    tree, k = cKDTree(Pf), min(FIELD_NEIGHBOURS, len(Pf))

    def score(landed: np.ndarray) -> float:
        d, j = tree.query(landed, k=k)
        d, j = d.reshape(len(landed), k), j.reshape(len(landed), k)
        w = np.exp(-0.5 * (d / (FIELD_SIGMA * spacing)) ** 2)
        around = np.einsum("nk,nkd->nd", w, Ff[j])
        around /= np.maximum(np.linalg.norm(around, axis=1, keepdims=True), 1e-12)
        return float(np.mean(np.sum(Fm * around, axis=1) * (d[:, 0] < FIELD_REACH * spacing)))

    return _maximise_rigid(score, Pm, rotation, translation, spacing)


def refine_by_density(coords_moving: np.ndarray, coords_fixed: np.ndarray, rotation: np.ndarray,
                      translation: np.ndarray, *, spacing: float | None = None, max_cells: int = 4000,
                      random_state: int = 0) -> dict:
    """Refine a 2-D rigid transform so that the sections' cell-density fields agree.

    The score of a transform T is the mean, over the moving section's cells i, of the fixed
    section's cell density at T(x_i): a sum of Gaussians of width ``DENSITY_SIGMA`` = 2 cell
    spacings over its ``DENSITY_NEIGHBOURS`` = 60 nearest fixed cells (about 2 widths around;
    20 cells scored 0.969 on BARISTAseq against 0.9725), divided by the same sum
    averaged over the fixed section's own cells (so 1 is "as dense as the fixed section on
    average"). It is the cross-correlation of the two sections' density images: high when
    the tissue outlines and the dense and sparse bands (a cortex's cytoarchitecture: the sparse
    layer 1, the dense layers 2-4) fall on each other. The transform is optimised as in
    :func:`refine_by_fields` (Nelder-Mead from the given transform).

    For single cells, whose density is part of the tissue's structure; for spots on an
    array (Visium, ST) the density is the array's and says nothing but the outline:
    :func:`on_array` tells them apart. Measured (docs/benchmarks.md#registration-istbench):
    on BARISTAseq's single cells (iSTBench's protocol, 5 seeds) the layer match rose from
    0.918 ± 0.008 with :func:`refine_by_fields` to 0.9725 ± 0.0003; on three STARmap slabs of one
    3-D volume, whose true alignment is known, the distance from it fell from 3.4 ± 1.5 to
    1.6 ± 0.4 cell spacings (``benchmarks/registration_istbench.py --data starmap``); on
    DLPFC's spots it fell from 0.871 to 0.844.

    Source: this project's method, after STalign (Clifton et al. 2023, Nat Commun 14:8123),
    which registers single-cell data as rasterised cell-density images; here rigid, on the
    points themselves, from the starting transform.

    Parameters
    ----------
    coords_moving, coords_fixed : numpy.ndarray, (n, 2)
        The sections' coordinates (one unit, e.g. µm).
    rotation, translation : numpy.ndarray, (2, 2) and (2,)
        The starting transform (fixed ≈ moving @ R.T + t), e.g. from :func:`align_pair`.
    spacing : float, optional
        The fixed section's typical distance between neighbouring cells (default
        :func:`typical_spacing`).
    max_cells : int
        Moving cells sampled to score a transform.
    random_state : int
        Seed of the sampling.

    Returns
    -------
    dict
        As :func:`refine_by_fields`: ``rotation``, ``translation``, ``similarity_before``,
        ``similarity_after`` (the normalised density score) and ``shift``.

    Raises
    ------
    ValueError
        Coordinates that are not 2-D.
    """
    from scipy.spatial import cKDTree

    Pm, Pf = np.asarray(coords_moving, dtype=np.float64), np.asarray(coords_fixed, dtype=np.float64)
    _check_2d(Pm, Pf)
    spacing = typical_spacing(Pf) if spacing is None else float(spacing)
    rng = np.random.default_rng(random_state)
    if len(Pm) > max_cells:
        Pm = Pm[rng.choice(len(Pm), max_cells, replace=False)]
    tree, k = cKDTree(Pf), min(DENSITY_NEIGHBOURS, len(Pf))
    width = DENSITY_SIGMA * max(spacing, 1e-12)

    def density(points: np.ndarray) -> np.ndarray:
        d = tree.query(points, k=k)[0].reshape(len(points), k)
        return np.exp(-0.5 * (d / width) ** 2).sum(axis=1)

    own = float(np.mean(density(Pf)))
    return _maximise_rigid(lambda landed: float(np.mean(density(landed))) / own, Pm, rotation, translation, spacing)


def on_array(coords: np.ndarray) -> bool:
    """Whether the points are spots on a regular array (Visium, ST) rather than single cells.

    True when the nearest-neighbour distances vary by less than ``ARRAY_MAX_CV`` = 0.2
    (coefficient of variation). Measured on the shared data: Visium (DLPFC) 0.03, ST (Ståhl
    breast cancer) 0.06, against 0.37-0.89 for single cells (BARISTAseq, MERFISH, osmFISH,
    STARmap).
    """
    d = _nearest_distances(coords)
    return len(d) >= 3 and bool(np.std(d) < ARRAY_MAX_CV * np.mean(d))


def _check_2d(Pm: np.ndarray, Pf: np.ndarray) -> None:
    if Pm.ndim != 2 or Pf.ndim != 2 or Pm.shape[1] != 2 or Pf.shape[1] != 2:
        raise ValueError(f"The refinement aligns 2-D sections; the coordinates have shapes {Pm.shape} and "
                         f"{Pf.shape}.")


def _maximise_rigid(score, Pm: np.ndarray, rotation: np.ndarray, translation: np.ndarray, spacing: float) -> dict:
    """The rigid transform near (rotation, translation) that maximises ``score(landed points)``:
    the angle about the landed cells' centre and the translation (in cell spacings), by the
    Nelder-Mead simplex method from a simplex of ``FIELD_STEP`` degrees and spacings.
    """
    from scipy.optimize import minimize

    R0, t0 = np.asarray(rotation, dtype=np.float64), np.asarray(translation, dtype=np.float64)
    start = apply(Pm, R0, t0)
    centre = start.mean(axis=0)

    def transform(p):
        turn = _rotation(np.radians(p[0]))
        return turn @ R0, (t0 - centre) @ turn.T + centre + np.asarray(p[1:]) * spacing

    before = score(start)
    # Nelder-Mead: the scores are piecewise smooth (nearest neighbours change as cells move),
    # where Powell's line searches stalled up to 40 µm short of the optimum (osmFISH test),
    # Nelder-Mead came within 7 µm in half the evaluations
    simplex = np.vstack([np.zeros(3), np.eye(3) * FIELD_STEP])
    best = minimize(lambda p: -score(apply(Pm, *transform(p))), np.zeros(3), method="Nelder-Mead",
                    options={"initial_simplex": simplex, "xatol": 1e-2, "fatol": 1e-6})
    R, t = transform(best.x)
    after = -float(best.fun)
    if after < before:  # the search never ends worse than its start, but keep the start if it did
        R, t, after = R0, t0, before
    shift = float(np.sqrt(np.mean(np.sum((apply(Pm, R, t) - start) ** 2, axis=1))))
    return {"rotation": R, "translation": t, "similarity_before": before, "similarity_after": after,
            "shift": shift}


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
