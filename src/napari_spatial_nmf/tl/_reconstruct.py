"""Rebuild 3D tissue from serial sections: rigid registration in the integrated space, then stacking."""

from __future__ import annotations

import warnings
from collections.abc import Generator, Sequence

import anndata as ad
import numpy as np
import pandas as pd

from ..core import registration as _R
from ..core._progress import Progress
from ..core._validation import check_positive
from ._common import blocking, check_adata, store_result

SURROUNDINGS = 15  # cells whose mean PCA scores describe a cell's surroundings (itself and ~2 rings)


def _surroundings(groups: list[np.ndarray], coords: np.ndarray) -> list[np.ndarray]:
    """Per section of ``groups``: the indices (within the section) of each cell's
    ``SURROUNDINGS`` nearest cells, itself included; computed once, used by the embedding and
    by the fields.
    """
    from scipy.spatial import cKDTree

    out = []
    for m in groups:
        n = int(m.sum())
        k = min(SURROUNDINGS, n)
        out.append(cKDTree(coords[m]).query(coords[m], k=k)[1].reshape(n, k))
    return out


def _around(values: np.ndarray, groups: list[np.ndarray], near: list[np.ndarray]) -> np.ndarray:
    """Each cell's mean of ``values`` over its surroundings (cells outside ``groups`` keep their own)."""
    out = values.copy()
    for m, idx in zip(groups, near):
        out[m] = values[m][idx].mean(axis=1)
    return out


def _embedding(adata: ad.AnnData, key: str, groups: list[np.ndarray],
               near: list[np.ndarray]) -> tuple[np.ndarray, str]:
    """INSPIRE's latent space if present (its graph encoder already sees each cell's
    neighbours); else each cell's top 30 principal components of the log-normalised shared
    genes beside the mean of those over its ``SURROUNDINGS`` nearest cells of its own section.

    A single cell's own profile of a few dozen genes is a noisy key for pairing cells across
    sections; its surroundings say which layer it sits in. On iSTBench's protocol (BARISTAseq,
    6 RANSAC seeds) the layer match was 0.888 ± 0.051 with the surroundings and 0.871 ± 0.034
    without: a small gain, inside RANSAC's own spread (``benchmarks/registration_istbench.py``).
    """
    if f"X_{key}_latent" in adata.obsm:
        return np.asarray(adata.obsm[f"X_{key}_latent"], dtype=np.float64), "latent"
    if f"X_{key}" not in adata.obsm:
        raise KeyError(f"No integration result {key!r} (obsm['X_{key}']): run tl.integrate first.")
    from sklearn.decomposition import PCA

    X = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    L = np.log1p(X / np.maximum(X.sum(axis=1, keepdims=True), 1e-12) * 1e4)
    n = min(30, L.shape[1] - 1, L.shape[0] - 1)
    E = PCA(n, random_state=0).fit_transform(L)
    basis = f"PCA of log-normalised shared genes, each cell's own and the mean of its {SURROUNDINGS} nearest cells'"
    return np.hstack([E, _around(E, groups, near)]), basis


def _fields(adata: ad.AnnData, key: str, groups: list[np.ndarray], near: list[np.ndarray],
            embedding: np.ndarray) -> np.ndarray:
    """The features whose fields :func:`~napari_spatial_nmf.core.registration.refine_by_fields`
    matches between sections: each cell's registration embedding beside its surroundings in
    the integration (the mean of ``obsm[f"X_{key}"]``, the factor proportions every section
    shares, over its ``SURROUNDINGS`` nearest cells), each part scaled to unit length so that
    both weigh the same in the cosine.

    Measured on iSTBench's protocol (5 seeds each; docs/integration.md): from RANSAC's 0.903 ±
    0.047 (BARISTAseq single cells) and 0.868 ± 0.004 (DLPFC spots), the factors alone gave
    0.928 and 0.829 (they pull spot sections off the layers), the embedding alone 0.897 and
    0.874, both together 0.918 ± 0.008 and 0.871 ± 0.002.
    """
    around = _around(np.asarray(adata.obsm[f"X_{key}"], dtype=np.float64), groups, near)

    def unit(X):
        return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)

    return np.hstack([unit(np.asarray(embedding, dtype=np.float64)), unit(around)])


UM = ("µm", "um", "micrometer", "micron")


def check_stacking(n_sections: int, dims: int, unit, spacing, um_per_unit) -> tuple[np.ndarray, float]:
    """Check the arguments of a 3D stack before any work (also run before an integration that
    will be stacked): 2-D sections, a unit in µm or ``um_per_unit``, and spacings.

    Returns
    -------
    (gaps, um_per_unit) : the spacing of each of the ``n_sections - 1`` gaps (µm) and µm per unit.

    Raises
    ------
    ValueError
        3-D coordinates, an unknown unit without ``um_per_unit``, a spacing list of the wrong
        length or a negative or non-finite spacing.
    TypeError
        A spacing or ``um_per_unit`` that is not a number.
    """
    if dims != 2:
        raise ValueError(f"reconstruct_3d stacks 2-D sections; the coordinates have {dims} columns.")
    if um_per_unit is None:
        if unit not in UM:
            raise ValueError(f"The coordinates' unit is {unit or 'not given'} (uns['spatial_unit']): pass um_per_unit "
                             "(--um-per-unit), the µm per coordinate unit, so the stack is in µm.")
        um_per_unit = 1.0
    um_per_unit = check_positive(um_per_unit, "um_per_unit")
    values = [spacing] if np.ndim(spacing) == 0 else list(spacing)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise TypeError(f"spacing must be numbers (µm); got {v!r}.")
    gaps = np.asarray(values, dtype=float)
    if len(values) == 1:
        gaps = np.repeat(gaps, max(n_sections - 1, 0))
    if gaps.shape != (n_sections - 1,) or not np.isfinite(gaps).all() or (gaps < 0).any():
        raise ValueError(f"spacing needs one non-negative value or {n_sections - 1} (one per gap between the "
                         f"{n_sections} sections), in µm; got {spacing!r}.")
    return gaps, um_per_unit


def iter_reconstruct_3d(adata: ad.AnnData, *, key: str = "integration", section_key: str = "section",
                        order: Sequence[str] | None = None, spacing: float | Sequence[float] = 10.0,
                        um_per_unit: float | None = None, k: int = 30, max_cells: int = 20_000,
                        refine: bool | str = "auto", random_state: int = 0) -> Generator[Progress, None, pd.DataFrame]:
    """Align adjacent serial sections rigidly and stack them into one 3D point cloud.

    Each section is aligned to the one before it in ``order`` (mutual nearest neighbours in
    the integrated space, then a robust rigid fit; :func:`napari_spatial_nmf.core.registration.align_pair`),
    the fit is refined on the sections' cell-density fields (single cells;
    :func:`napari_spatial_nmf.core.registration.refine_by_density`) or feature fields (spots on
    an array; :func:`napari_spatial_nmf.core.registration.refine_by_fields`),
    the transforms are chained so every section lies in the first one's frame, and section
    i gets the height z_i = sum of the spacings before it.

    Parameters
    ----------
    adata : anndata.AnnData
        The result of :func:`integrate` (2-D coordinates in ``obsm["spatial"]``).
    key : str
        The integration result; INSPIRE's latent space is used when present, else the
        principal components of the log-normalised shared genes, each cell's own beside the
        mean over its 15 nearest cells (its surroundings).
    section_key : str
        Section column.
    order : sequence of str, optional
        Sections from first to last (default: the categories' order).
    spacing : float or sequence of float
        Distance between consecutive sections in µm (one value, or one per gap), e.g. 10 µm
        for adjacent 10-µm sections.
    um_per_unit : float, optional
        µm per coordinate unit (default 1 when ``uns["spatial_unit"]`` is µm; required
        otherwise, e.g. ~16.2 for the DLPFC Visium image units).
    k, max_cells, random_state
        Mutual-nearest-neighbour k, cells sampled per section, seed.
    refine : {"auto", "density", "fields", "none"} or bool
        How each RANSAC fit is refined. ``"density"``: so that the sections' cell densities
        (tissue outline, dense and sparse layers) fall on each other; ``"fields"``: so that
        every cell's features (its embedding, and its 15 nearest cells' mean factor
        proportions) match the other section's where it lands; ``"none"`` (or False): RANSAC's
        fit as it is. ``"auto"`` (or True): density when both sections of a pair are single
        cells, fields when either is spots on an array (Visium, ST), whose density is the
        array's (:func:`napari_spatial_nmf.core.registration.on_array`). On
        iSTBench's protocol (5 seeds; docs/benchmarks.md#registration-istbench): BARISTAseq's
        single cells 0.903 ± 0.047 (RANSAC), 0.918 ± 0.008 (fields), 0.9725 ± 0.0003 (density);
        DLPFC's spots 0.868 ± 0.004 (RANSAC), 0.871 ± 0.002 (fields), 0.844 (density).

    Yields
    ------
    Progress
        After each section is registered (``iter_reconstruct_3d``; ``reconstruct_3d`` runs it to
        the end). Nothing is written to ``adata`` before the last pair is done, so a run stopped
        early leaves it as it was.

    Returns
    -------
    pandas.DataFrame
        Per section: ``section, z_um, angle_deg, tx, ty`` (the transform onto the previous
        section, in the coordinates' units), ``n_pairs, n_inliers, inlier_fraction`` (RANSAC's
        inliers among the matched pairs), ``chance_inlier_fraction`` (the fraction the same
        transform gives the pairs shuffled: what chance gives), ``refine`` (the refinement used:
        density, fields or none), ``refine_shift_um`` (how far the refinement moved the cells
        from where RANSAC put them, root mean square; 0 without it)
        and ``consistency_um`` (how far the cells land from where they started when the forward
        fit is followed by the fit of the other direction: 0 for a consistent pair). Writes
        ``obsm["spatial_3d"]`` ((n, 3) µm) and ``uns[f"{key}_registration"]`` (with the warnings).

    Warns
    -----
    UserWarning
        A weak registration: the inlier fraction is under twice the chance fraction (an
        absolute threshold cannot hold: a small section, or a wide inlier distance, makes
        random pairs inliers often, and large sections of repeated layers have few inliers
        among many good pairs), or the two directions disagree by more than 3 cell spacings.

    Raises
    ------
    ValueError
        3-D input, an unknown section, a spacing list of the wrong length, a unit that is
        not µm without ``um_per_unit``, too few matched cells, an unknown ``refine``.
    TypeError
        ``refine`` that is neither a string nor True / False.
    """
    check_adata(adata)
    refine = _refine_choice(refine)
    C = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    sections = adata.obs[section_key]
    order = [str(s) for s in (order if order is not None else sections.cat.categories)]
    unknown = sorted(set(order) - set(sections.astype(str)))
    if unknown:
        raise ValueError(f"Unknown sections {unknown}; the data have {list(sections.cat.categories)}.")
    gaps, um_per_unit = check_stacking(len(order), C.shape[1], adata.uns.get("spatial_unit"), spacing, um_per_unit)
    lab = sections.astype(str).to_numpy()
    masks = [lab == s for s in order]
    near = _surroundings(masks, C)
    E, basis = _embedding(adata, key, masks, near)
    # "auto": the density when both sections of a pair are single cells; an array's density is its own
    arrays = [_R.on_array(C[m]) for m in masks] if refine == "auto" else []
    F = _fields(adata, key, masks, near, E) if refine == "fields" or any(arrays) else None
    aligned = C.copy()
    rows = [{"section": order[0], "z_um": 0.0, "angle_deg": 0.0, "tx": 0.0, "ty": 0.0, "n_pairs": 0, "n_inliers": 0,
             "inlier_fraction": np.nan, "chance_inlier_fraction": np.nan, "refine": "", "refine_shift_um": np.nan,
             "consistency_um": np.nan}]
    msgs = []
    n_pairs = len(order) - 1
    yield Progress(0, n_pairs, f"registering {n_pairs} section pair(s)")
    for i in range(1, len(order)):
        prev, cur = masks[i - 1], masks[i]
        fit = _R.align_pair(C[cur], E[cur], aligned[prev], E[prev], k=k, max_cells=max_cells,
                            random_state=random_state)
        back = _R.align_pair(aligned[prev], E[prev], C[cur], E[cur], k=k, max_cells=max_cells,
                             random_state=random_state)
        how = refine if refine != "auto" else ("fields" if arrays[i] or arrays[i - 1] else "density")
        fit, shift = _refined(fit, how, C[cur], aligned[prev], F, cur, prev, random_state)
        back, _ = _refined(back, how, aligned[prev], C[cur], F, prev, cur, random_state)
        shift *= um_per_unit
        moved = _R.apply(C[cur], fit["rotation"], fit["translation"])
        round_trip = _R.apply(moved, back["rotation"], back["translation"])  # back onto itself if consistent
        consistency = float(np.sqrt(np.mean(np.sum((round_trip - C[cur]) ** 2, axis=1)))) * um_per_unit
        aligned[cur] = moved
        frac = fit["n_inliers"] / max(fit["n_pairs"], 1)
        spacing_um = _R.typical_spacing(C[prev]) * um_per_unit
        rows.append({"section": order[i], "z_um": float(gaps[:i].sum()), "angle_deg": fit["angle_deg"],
                     "tx": float(fit["translation"][0]), "ty": float(fit["translation"][1]),
                     "n_pairs": fit["n_pairs"], "n_inliers": fit["n_inliers"], "inlier_fraction": frac,
                     "chance_inlier_fraction": fit["chance_inlier_fraction"], "refine": how, "refine_shift_um": shift,
                     "consistency_um": consistency})
        chance = fit["chance_inlier_fraction"]
        if frac < _R.MIN_INLIERS_OVER_CHANCE * chance or consistency > _R.MAX_INCONSISTENCY * spacing_um:
            msgs.append(f"The registration of {order[i]!r} onto {order[i - 1]!r} is weak: it rests on {frac:.1%} of "
                        f"its {fit['n_pairs']:,} matched pairs ({chance:.1%} would land there by chance; a fit "
                        "needs twice that), and aligning back the other way misses the start by "
                        f"{consistency:.0f} µm ({consistency / max(spacing_um, 1e-12):.1f} cell spacings). The "
                        "sections may share little tissue, or the integration did not bring them together.")
        yield Progress(i, n_pairs, f"registered {order[i]} onto {order[i - 1]} ({i} of {n_pairs})")
    for m in msgs:
        warnings.warn(m, UserWarning, stacklevel=2)
    table = pd.DataFrame(rows)
    z = np.zeros(len(C))
    for m, zz in zip(masks, table["z_um"]):
        z[m] = zz
    adata.obsm["spatial_3d"] = np.column_stack([aligned * um_per_unit, z])
    adata.obsm["spatial_aligned"] = aligned
    store_result(adata, f"{key}_registration", "reconstruct_3d",
                 {"order": order, "spacing_um": [float(g) for g in gaps], "um_per_unit": um_per_unit, "k": k,
                  "max_cells": max_cells, "refine": refine, "random_state": random_state, "embedding": basis,
                  "source": "INSPIRE tutorial recipe: MNN pairs in the integrated space + rigid fit (RANSAC, Umeyama)"
                            + ({"none": ""}.get(refine, "; refined on the sections' cell-density fields (single "
                                                        "cells) or feature fields (embedding, factor surroundings)"))},
                 record={"table": table, "warnings": msgs})
    return table


REFINE = ("auto", "density", "fields", "none")


def _refine_choice(refine) -> str:
    """``refine`` as one of :data:`REFINE` (True is "auto", False is "none")."""
    if isinstance(refine, (bool, np.bool_)):
        return "auto" if refine else "none"
    choices = f"refine must be one of {', '.join(map(repr, REFINE))} (or True / False); got {refine!r}."
    if not isinstance(refine, str):
        raise TypeError(choices)
    if refine not in REFINE:
        raise ValueError(choices)
    return refine


def _refined(fit: dict, how: str, moving: np.ndarray, fixed: np.ndarray, F, m_moving, m_fixed,
             random_state: int) -> tuple[dict, float]:
    """``fit`` refined by ``how`` ("density", "fields" or "none"), and the refinement's shift."""
    if how == "none":
        return fit, 0.0
    if how == "density":
        better = _R.refine_by_density(moving, fixed, fit["rotation"], fit["translation"], random_state=random_state)
    else:
        better = _R.refine_by_fields(moving, F[m_moving], fixed, F[m_fixed], fit["rotation"], fit["translation"],
                                     random_state=random_state)
    return ({**fit, "rotation": better["rotation"], "translation": better["translation"],
             "angle_deg": _R.angle_deg(better["rotation"])}, better["shift"])


reconstruct_3d = blocking(iter_reconstruct_3d, "reconstruct_3d")
