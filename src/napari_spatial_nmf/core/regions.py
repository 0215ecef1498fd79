"""Region correlation: how well does a pattern (or gene) volume match each atlas structure?

For a volume v and a structure s (the union of s and its descendants in the ontology), the
score is the Pearson correlation between v and the indicator of s over the valid voxels
(inside the brain mask, not missing). This is the readout of the osNMF paper (Cahill et al.
2024, PNAS 121:e2319804121; reference code ``decgene/other_functions.py::
correlation_map_with_CCF`` correlates patterns with structure masks by ``np.corrcoef``).

It needs no volume per structure: with c = v - mean(v) over the N valid voxels, n_s voxels
in s and S_s = sum of c over s,

    r_s = S_s / sqrt(n_s (1 - n_s / N) * sum(c**2)),

and S_s, n_s are sums of per-label sums over the labels inside s (a sparse product).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .ontology import Ontology


def region_correlation(
    volumes: np.ndarray,
    annotation: np.ndarray,
    ontology: Ontology,
    *,
    names: Sequence[str] | None = None,
    mask: np.ndarray | None = None,
    missing_value: float | None = None,
    min_voxels: int = 1,
) -> pd.DataFrame:
    """Pearson correlation of each volume with every structure of the ontology.

    Parameters
    ----------
    volumes : numpy.ndarray, shape grid_shape or (n, *grid_shape)
        Pattern or gene volumes, float. NaN (and ``missing_value``) mark missing voxels,
        which are excluded, never counted as zero.
    annotation : numpy.ndarray of int, shape grid_shape
        Structure id per voxel; 0 is outside the atlas.
    ontology : Ontology
        The structure tree that the annotation's ids belong to.
    names : sequence of str, optional
        One name per volume (default ``"0"``, ``"1"``, ...).
    mask : numpy.ndarray of bool, shape grid_shape, optional
        Voxels to use; default the brain, ``annotation > 0``.
    missing_value : float, optional
        A missing-data code to exclude (Allen grids: -1), in addition to NaN.
    min_voxels : int
        Leave out structures with fewer valid voxels than this.

    Returns
    -------
    pandas.DataFrame
        Columns ``pattern, rank, id, acronym, name, depth, n_voxels, r``; for each pattern,
        rows are sorted by r, best first. Structures with no valid voxel, or covering every
        valid voxel (r undefined), are left out.

    Raises
    ------
    ValueError
        Volumes and annotation on different grids; an empty mask; labels missing from the
        ontology; a volume with no valid voxel in the mask.
    """
    annotation = np.asarray(annotation)
    vols = np.asarray(volumes, dtype=np.float64)
    if vols.shape == annotation.shape:
        vols = vols[None]
    if vols.shape[1:] != annotation.shape:
        raise ValueError(
            f"The volume(s) have shape {vols.shape[1:]} but the annotation has shape "
            f"{annotation.shape}: they must be on the same grid."
        )
    if annotation.dtype.kind not in "iu":
        raise ValueError(f"The annotation must hold integer structure ids; got dtype {annotation.dtype}.")
    names = [str(i) for i in range(len(vols))] if names is None else [str(n) for n in names]
    if len(names) != len(vols):
        raise ValueError(f"{len(names)} names for {len(vols)} volumes.")
    brain = annotation > 0 if mask is None else np.asarray(mask, dtype=bool)
    if brain.shape != annotation.shape:
        raise ValueError(f"The mask has shape {brain.shape}, the annotation {annotation.shape}.")
    if not brain.any():
        raise ValueError("The mask is empty: no voxel of the annotation is inside the atlas.")
    labels_all = np.unique(annotation[brain])
    ontology.check_labels(labels_all)
    member = ontology.membership(labels_all)  # n_structures x n_labels
    table = ontology.table
    frames = []
    for name, vol in zip(names, vols):
        valid = brain & np.isfinite(vol)
        if missing_value is not None:
            valid &= vol != missing_value
        if not valid.any():
            raise ValueError(f"Volume {name!r} has no valid (non-missing) voxel inside the mask.")
        v = vol[valid]
        lab_idx = np.searchsorted(labels_all, annotation[valid])
        c = v - v.mean()
        ss = float(c @ c)
        sums = member @ np.bincount(lab_idx, weights=c, minlength=labels_all.size)
        counts = member @ np.bincount(lab_idx, minlength=labels_all.size).astype(np.float64)
        n_total = float(v.size)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = sums / np.sqrt(counts * (1 - counts / n_total) * ss)
        keep = (counts >= max(min_voxels, 1)) & (counts < n_total) & np.isfinite(r)
        df = pd.DataFrame({
            "pattern": name,
            "id": table["id"].to_numpy()[keep],
            "acronym": table["acronym"].to_numpy()[keep],
            "name": table["name"].to_numpy()[keep],
            "depth": table["depth"].to_numpy()[keep],
            "n_voxels": counts[keep].astype(np.int64),
            "r": r[keep],
        }).sort_values("r", ascending=False, kind="stable")
        df.insert(1, "rank", np.arange(1, len(df) + 1))
        frames.append(df)
    return pd.concat(frames, ignore_index=True)
