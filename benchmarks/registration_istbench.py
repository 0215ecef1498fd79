"""Serial-section registration on iSTBench's protocol: ours beside PASTE, in one run.

The protocol of iSTBench (Dong et al. 2025, Genome Biol 26:318; ``bm2-lab/iSTBench``,
``Analysis/Spatial_alignment/code/2.1Alignment_metric.R``): every slice after the first is
moved by a random rotation and translation, the slices are aligned in a chain (2 onto 1, 3
onto the aligned 2, ...), and each adjacent pair is scored by the nearest-neighbour layer
match averaged over both directions (the share of cells of one slice whose nearest cell of
the other carries the same expert label, and the reverse). The score is the mean over pairs.

Real data (``../shared/data``): the four DLPFC Visium sections 151673-151676 (spots, raw
counts, layers L1-L6 and WM) and the three BARISTAseq VISp slices (single cells,
log-normalised, six layers). Published (iSTBench): DLPFC SPACEL 0.876, PASTE 0.847, GraphST
0.757, STAligner 0.732; BARISTAseq SPACEL 0.980, GraphST 0.979, STalign 0.971, PASTE 0.962.

* ours: ``tl.integrate`` (joint NNMF, the defaults) then ``tl.reconstruct_3d`` (mutual nearest
  neighbours in a PCA of the shared genes, each cell's own scores beside its surroundings',
  then a RANSAC rigid fit refined, ``refine="auto"``: on the cell-density fields for single
  cells, on the feature fields (embedding and factor surroundings) for spots on an array),
  which chains by construction; the seed moves the slices and seeds the integration and
  RANSAC. Also scored from the same integration with each refinement forced
  (``ours_ransac``: RANSAC alone, ``ours_fields``, ``ours_density``);
* PASTE 1.4.0 (``pairwise_align`` on the pair's shared genes, then its generalised Procrustes
  step), chained in the same order.

Also reported: the score of the moved slices (no alignment) and of the original coordinates,
and for each of ours how far every moved slice lands from its original frame (``from_original``:
root-mean-square distance, in cell spacings of the first slice; the original frame is the
authors' own registration, not a truth, but the labels were drawn in it).

``--data starmap``: a second single-cell test whose true alignment is known. The STARmap 3-D
volume of mouse V1 (Wang et al. 2018; ``../shared/data/starmap_3d_visual_cortex``, no labels)
cut into three slabs along z (planes < 36, 36-65, >= 66; each seen from above as a 2-D
section); the slabs are moved as above, integrated (the values are integers, taken as counts)
and registered. Scored by each slab's root-mean-square distance from where it truly lies,
in cell spacings (the first slab's median nearest-neighbour distance, 4.1 voxels), lower is
better; PASTE is not run there (11,000 cells per slab).

``--bound`` measures how high any rigid registration can score on this metric (labels used,
so not a method): for each adjacent pair, starting from ours, (1) the same field refinement
with the expert labels (one-hot) as the features, then (2) the metric itself maximised over a
grid of rigid transforms around that (angle ± 3° in 0.5° steps, translation ± 2 cell spacings
in 0.25-spacing steps). Each pair's maximum does not depend on where the previous slice lies,
so the mean of the pairs' maxima bounds the chained score.

    python benchmarks/registration_istbench.py             # the three data sets, 5 seeds of the motion
    python benchmarks/registration_istbench.py --data barista starmap \
        --out benchmarks/results/registration_istbench.json
    python benchmarks/registration_istbench.py --bound --seeds 3 --no-paste \
        --out benchmarks/results/registration_istbench_bound.json
    python benchmarks/registration_istbench.py --quick
"""

from __future__ import annotations

import itertools
import time
import warnings

import anndata as ad
import benchmarks_common as common
import numpy as np
from scipy.spatial import cKDTree

from napari_spatial_nmf import tl

PUBLISHED = {"dlpfc": {"SPACEL": 0.876, "PASTE": 0.847, "GraphST": 0.757, "STAligner": 0.732},
             "barista": {"SPACEL": 0.980, "GraphST": 0.979, "STalign": 0.971, "PASTE": 0.962}}


STARMAP_SLABS = (0, 36, 66, 10_000)  # z planes


def load(name: str, quick: bool):
    if name == "starmap":
        full = ad.read_h5ad(common.shared("starmap_3d_visual_cortex") / "starmap_3d_33598cells_28genes.h5ad")
        z = full.obs["z"].to_numpy()
        secs = []
        for lo, hi in itertools.pairwise(STARMAP_SLABS):
            s = full[(z >= lo) & (z < hi)].copy()
            s.obsm["spatial"] = np.asarray(s.obsm["spatial"], float)[:, :2]
            s.obs["true_x"], s.obs["true_y"] = s.obsm["spatial"][:, 0], s.obsm["spatial"][:, 1]
            secs.append(s)
        names = ["slab1", "slab2", "slab3"]
        if quick:
            secs, names = [s[:400].copy() for s in secs[:2]], names[:2]
        return secs, names, None, {"n_hvgs": None}
    if name == "dlpfc":
        folder = common.shared("dlpfc_visium_151673_151676")
        names = ["151673", "151674", "151675", "151676"]
        secs = [ad.read_h5ad(folder / f"dlpfc_{s}_5000hvg.h5ad") for s in names]
        label, kwargs = "layer", {}
    else:
        folder = common.shared("baristaseq_visp_3slices")
        names = ["slice1", "slice2", "slice3"]
        secs = [ad.read_h5ad(folder / f"baristaseq_visp_slice{i}.h5ad") for i in (1, 2, 3)]
        label, kwargs = "original_domain", {"counts": "recover", "n_hvgs": None}
    if quick:
        secs, names = [s[:150].copy() for s in secs[:2]], names[:2]
    for s in secs:  # cells without an expert label cannot be scored
        s._inplace_subset_obs(s.obs[label].notna().to_numpy())
        # the original frame (the authors' own registration), to measure how far a method lands from it
        xy = np.asarray(s.obsm["spatial"], float)
        s.obs["true_x"], s.obs["true_y"] = xy[:, 0], xy[:, 1]
    return secs, names, label, kwargs


def move(secs, rng):
    """Every slice after the first by a random rotation and translation (iSTBench)."""
    out = [secs[0].copy()]
    for s in secs[1:]:
        s = s.copy()
        xy = np.asarray(s.obsm["spatial"], float)
        th = rng.uniform(0, 2 * np.pi)
        rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        extent = np.ptp(xy, axis=0)
        s.obsm["spatial"] = (xy - xy.mean(0)) @ rot.T + xy.mean(0) + rng.uniform(-0.5, 0.5, 2) * extent
        out.append(s)
    return out


def score(coords, labels) -> dict:
    """iSTBench's metric per adjacent pair: mean of the label match of each cell's nearest
    cell in the other slice, both directions; and the mean over pairs."""
    pairs = []
    for i in range(len(coords) - 1):
        a, b = coords[i], coords[i + 1]
        la, lb = np.asarray(labels[i]).astype(str), np.asarray(labels[i + 1]).astype(str)
        ab = np.mean(la == lb[cKDTree(b).query(a)[1]])
        ba = np.mean(lb == la[cKDTree(a).query(b)[1]])
        pairs.append(round(float((ab + ba) / 2), 4))
    return {"pairs": pairs, "mean": round(float(np.mean(pairs)), 4)}


def integrate(secs, names, kwargs, seed):
    t = time.perf_counter()
    res = tl.integrate(secs, 12, section_names=names, random_state=seed, **kwargs)
    return res, time.perf_counter() - t


def truth_error(res, names) -> dict:
    """Each moved section's root-mean-square distance from where it truly lies (STARmap) or from
    the data's original frame (the authors' registration; labelled data), in cell spacings of
    the first section; "mean" over the moved sections."""
    from napari_spatial_nmf.core.registration import typical_spacing

    groups = res.obs["section"].astype(str).to_numpy()
    xy, true = np.asarray(res.obsm["spatial_aligned"]), res.obs[["true_x", "true_y"]].to_numpy()
    spacing = typical_spacing(true[groups == names[0]])
    err = [float(np.sqrt(np.mean(np.sum((xy[groups == n] - true[groups == n]) ** 2, axis=1)))) / spacing
           for n in names[1:]]
    return {"pairs": [round(e, 3) for e in err], "mean": round(float(np.mean(err)), 3), "spacing": round(spacing, 2)}


def ours(res, names, label, seed, refine="auto"):
    t = time.perf_counter()
    table = tl.reconstruct_3d(res, spacing=10.0, um_per_unit=1.0, refine=refine, random_state=seed)
    t_reg = time.perf_counter() - t
    groups = res.obs["section"].astype(str).to_numpy()
    xy = np.asarray(res.obsm["spatial_aligned"])
    fits = table[["section", "angle_deg", "inlier_fraction", "chance_inlier_fraction", "refine", "refine_shift_um",
                  "consistency_um"]].iloc[1:]
    if label is None:
        return {**truth_error(res, names), "fits": fits.round(4).to_dict("records")}, t_reg
    coords = [xy[groups == n] for n in names]
    labels = [res.obs[label].to_numpy()[groups == n] for n in names]
    return {**score(coords, labels), "from_original": truth_error(res, names),
            "fits": fits.round(4).to_dict("records")}, t_reg


def pair_score(a, la, b, lb) -> float:
    """iSTBench's score of one pair (labels as str arrays)."""
    return float((np.mean(la == lb[cKDTree(b).query(a)[1]]) + np.mean(lb == la[cKDTree(a).query(b)[1]])) / 2)


def bound(res, names, label, quick: bool) -> dict:
    """The highest score a rigid registration reaches with the expert labels in hand (see the module text)."""
    from napari_spatial_nmf.core import registration as R

    groups = res.obs["section"].astype(str).to_numpy()
    xy = np.asarray(res.obsm["spatial_aligned"], float)
    lab = res.obs[label].astype(str).to_numpy()
    cats = np.unique(lab)
    angles = np.arange(-3, 3.01, 0.5) if not quick else np.array([-0.5, 0.0, 0.5])
    steps = np.arange(-2, 2.01, 0.25) if not quick else np.array([-0.25, 0.0, 0.25])
    out = {"ours": [], "labels_refined": [], "grid_max": [], "grid_argmax": []}
    for prev, cur in itertools.pairwise(names):
        a, b = xy[groups == prev], xy[groups == cur]
        la, lb = lab[groups == prev], lab[groups == cur]
        out["ours"].append(round(pair_score(a, la, b, lb), 4))
        onehot = [(x[:, None] == cats[None]).astype(float) for x in (lb, la)]
        fit = R.refine_by_fields(b, onehot[0], a, onehot[1], np.eye(2), np.zeros(2))
        b = R.apply(b, fit["rotation"], fit["translation"])
        out["labels_refined"].append(round(pair_score(a, la, b, lb), 4))
        spacing, centre = R.typical_spacing(a), b.mean(axis=0)
        best, arg = -1.0, None
        for ang in angles:
            turn = R._rotation(np.radians(ang))
            for dx in steps:
                for dy in steps:
                    s = pair_score(a, la, (b - centre) @ turn.T + centre + np.array([dx, dy]) * spacing, lb)
                    if s > best:
                        best, arg = s, [float(ang), float(dx), float(dy)]
        out["grid_max"].append(round(best, 4))
        out["grid_argmax"].append(arg)  # degrees, cell spacings, cell spacings
    means = {f"{k}_mean": round(float(np.mean(out[k])), 4) for k in ("ours", "labels_refined", "grid_max")}
    return {**out, **means, "mean": means["grid_max_mean"]}  # "mean": the bound


def paste_chain(secs, label):
    import ot
    import paste

    t = time.perf_counter()
    coords = [np.asarray(secs[0].obsm["spatial"], float)]
    for prev, cur in itertools.pairwise(secs):
        genes = sorted(set(prev.var_names) & set(cur.var_names))
        A, B = prev[:, genes].copy(), cur[:, genes].copy()
        A.obsm["spatial"] = coords[-1]
        for x in (A, B):
            x.X = np.asarray(x.X.toarray() if hasattr(x.X, "toarray") else x.X, dtype=np.float64)
        pi = paste.pairwise_align(A, B, backend=ot.backend.NumpyBackend(), verbose=False)
        _, _, Rm, tX, tY = paste.visualization.generalized_procrustes_analysis(
            A.obsm["spatial"], np.asarray(B.obsm["spatial"], float), pi, output_params=True, matrix=True)
        coords.append((np.asarray(B.obsm["spatial"], float) - tY) @ Rm.T + tX)
    return score(coords, [s.obs[label].to_numpy() for s in secs]), time.perf_counter() - t


def main(argv=None) -> int:
    ap = common.parser(__doc__)
    data = ["dlpfc", "barista", "starmap"]
    ap.add_argument("--data", nargs="+", default=data, choices=data)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--no-paste", action="store_true")
    ap.add_argument("--bound", action="store_true", help="also the highest score a rigid registration reaches "
                                                          "with the labels in hand (see the module text)")
    a = ap.parse_args(argv)
    if a.quick:
        a.seeds = 1
    warnings.simplefilter("ignore")
    result = {"published": PUBLISHED, "settings": {k: str(v) for k, v in vars(a).items()}, "rows": []}
    for data in a.data:
        secs, names, label, kwargs = load(data, a.quick)
        original = (score([np.asarray(s.obsm["spatial"], float) for s in secs], [s.obs[label] for s in secs])
                    if label else None)
        for seed in range(a.seeds):
            moved = move(secs, np.random.default_rng(seed))
            row = {"data": data, "seed": seed}
            if label:
                row["original"] = original
                row["moved"] = score([np.asarray(s.obsm["spatial"], float) for s in moved],
                                     [s.obs[label] for s in moved])
            res, row["seconds_ours_integration"] = integrate(moved, names, kwargs, seed)
            row["ours_ransac"], row["seconds_ours_ransac_registration"] = ours(res, names, label, seed, refine="none")
            row["ours_fields"], _ = ours(res, names, label, seed, refine="fields")
            row["ours_density"], _ = ours(res, names, label, seed, refine="density")
            row["ours"], row["seconds_ours_registration"] = ours(res, names, label, seed)
            if label and (a.bound or a.quick):
                row["bound"] = bound(res, names, label, a.quick)
            if label and not a.no_paste:
                row["paste"], row["seconds_paste"] = paste_chain(moved, label)
            result["rows"].append(row)
            common.write(a, "registration_istbench", result)  # after every row: a long run that stops keeps them
            print(data, seed, {k: v["mean"] for k, v in row.items() if isinstance(v, dict)}, flush=True)
        rows = [r for r in result["rows"] if r["data"] == data]
        methods = ("original", "moved", "ours_ransac", "ours_fields", "ours_density", "ours", "paste", "bound")
        result[f"{data}_mean_sd"] = {m: common.mean_sd([r[m]["mean"] for r in rows]) for m in methods if m in rows[0]}
        if label:  # how far each of ours lands from the original frame (cell spacings)
            result[f"{data}_from_original_mean_sd"] = {m: common.mean_sd([r[m]["from_original"]["mean"] for r in rows])
                                                       for m in methods if m.startswith("ours")}
        print(data, result[f"{data}_mean_sd"], flush=True)
    common.write(a, "registration_istbench", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
