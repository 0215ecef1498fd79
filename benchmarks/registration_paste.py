"""Serial-section registration: ours (MNN in the integrated space + robust rigid fit) beside PASTE.

PASTE (Zeira et al. 2022, ``paste-bio`` 1.4.0 with POT 0.9.4: the newest POT breaks its
``pairwise_align``) is run from a benchmark-only folder, never a package dependency:

    pip install -r benchmarks/requirements-paste.txt   # also in the testing extra
    python benchmarks/registration_paste.py

Both methods run in the same process on the same data:

* the four Ståhl 2016 breast-cancer layers (PASTE's own example; ST array units): the mean
  distance between the spot pairs PASTE maps (its coupling π), before and after each
  method's alignment of consecutive layers, and the time per pair;
* the two adjacent DLPFC pairs (151673/151674, 151675/151676; image units, ~16.2 µm each):
  the label-transfer accuracy (a spot's layer equals its nearest aligned neighbour's),
  before and after alignment, and the time; then one section of each pair is rotated and
  moved by a known random rigid transform, and the error of the recovered transform
  (degrees, µm) is reported for each method.

Ours: the sections are integrated with INSPIRE (``tl.integrate``, GAT, K = 8, 300 steps) and
aligned with ``core.registration.align_pair`` (k = 5) on its latent space; the time is
reported with and without the integration. Besides PASTE's own measure (the π-weighted
distance, which PASTE's Procrustes step minimises by construction), both alignments are
scored by one that neither method optimises: the mean cosine similarity of log-normalised
expression between each spot and its nearest spot of the other layer after alignment.
"""

from __future__ import annotations

import json
import time

import anndata as ad
import benchmarks_common as common
import numpy as np

from napari_spatial_nmf import tl
from napari_spatial_nmf.core import registration as R

SHARED = common.SHARED
UM_PER_UNIT_DLPFC = 16.2


def paste_align(A: ad.AnnData, B: ad.AnnData):
    """PASTE pairwise alignment of B onto A; returns (B in A's frame, π, seconds)."""
    import paste

    t0 = time.perf_counter()
    pi = paste.pairwise_align(A, B, backend=__import__("ot").backend.NumpyBackend(), verbose=False)
    _, _, Rm, tX, tY = paste.visualization.generalized_procrustes_analysis(
        np.asarray(A.obsm["spatial"], float), np.asarray(B.obsm["spatial"], float), pi, output_params=True,
        matrix=True)
    out = (np.asarray(B.obsm["spatial"], float) - tY) @ Rm.T + tX
    return out, pi, time.perf_counter() - t0


def ours_align(A_xy, A_emb, B_xy, B_emb, seed=0):
    t0 = time.perf_counter()
    fit = R.align_pair(B_xy, B_emb, A_xy, A_emb, k=5, random_state=seed)
    return R.apply(B_xy, fit["rotation"], fit["translation"]), fit, time.perf_counter() - t0


def integrate(sections, names, K=8, steps=300):
    t0 = time.perf_counter()
    out = tl.integrate(sections, K, method="inspire", variant="gat", section_names=names, n_steps=steps,
                       random_state=0)
    emb = np.asarray(out.obsm["X_integration_latent"])
    parts = [emb[(out.obs["section"] == n).to_numpy()] for n in names]
    keep = [set(out.obs_names[(out.obs["section"] == n).to_numpy()]) for n in names]
    return parts, keep, time.perf_counter() - t0


def pi_distance(A_xy, B_xy, pi) -> float:
    """π-weighted mean distance between mapped spot pairs."""
    i, j = np.nonzero(pi > 0)
    w = pi[i, j]
    return float((w * np.linalg.norm(A_xy[i] - B_xy[j], axis=1)).sum() / w.sum())


def neighbour_similarity(A: ad.AnnData, A_xy, B: ad.AnnData, B_xy) -> float:
    """Mean cosine similarity of log-normalised expression (shared genes) between each spot of
    B and its nearest spot of A, in the given coordinates."""
    from scipy.spatial import cKDTree

    genes = sorted(set(A.var_names) & set(B.var_names))

    def unit(a):
        X = a[:, genes].X
        X = np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=float)
        L = np.log1p(X / np.maximum(X.sum(1, keepdims=True), 1) * 1e4)
        return L / np.maximum(np.linalg.norm(L, axis=1, keepdims=True), 1e-12)

    _, j = cKDTree(A_xy).query(B_xy)
    return float(np.einsum("pd,pd->p", unit(A)[j], unit(B)).mean())


def rigid_from_points(src, dst):
    """Rotation angle (deg) and translation of the rigid map src -> dst (least squares)."""
    from skimage.transform import EuclideanTransform

    t = EuclideanTransform.from_estimate(src, dst)
    M = t.params
    return float(np.degrees(np.arctan2(M[1, 0], M[0, 0]))), M[:2, 2]


def stahl(rows, steps=300, pairs=3, shipped=False):
    if shipped:  # the package's sample (3,000 genes): no shared data needed
        from napari_spatial_nmf import datasets

        layers = datasets.stahl_breast_cancer()
    else:
        layers = [ad.read_h5ad(SHARED / "breast_cancer_st_stahl2016_layers" / f"stahl2016_bc_layer{i}.h5ad")
                  for i in range(1, 5)]
    for a in layers:
        a.X = a.X.astype(np.float32)
    names = [f"layer{i}" for i in range(1, 5)]
    emb, keep, t_int = integrate(layers, names, steps=steps)
    for i in range(pairs):
        A, B = layers[i], layers[i + 1]
        a_keep = np.isin(A.obs_names + f"-{names[i]}", list(keep[i]))
        b_keep = np.isin(B.obs_names + f"-{names[i + 1]}", list(keep[i + 1]))
        A, B = A[a_keep].copy(), B[b_keep].copy()
        A_xy, B_xy = np.asarray(A.obsm["spatial"], float), np.asarray(B.obsm["spatial"], float)
        p_xy, pi, t_paste = paste_align(A, B)
        o_xy, fit, t_ours = ours_align(A_xy, emb[i], B_xy, emb[i + 1])
        rows.append({"data": "Stahl 2016 breast cancer", "pair": f"{names[i]}/{names[i + 1]}",
                     "pi_distance_raw": pi_distance(A_xy, B_xy, pi), "pi_distance_paste": pi_distance(A_xy, p_xy, pi),
                     "pi_distance_ours": pi_distance(A_xy, o_xy, pi),
                     "similarity_raw": neighbour_similarity(A, A_xy, B, B_xy),
                     "similarity_paste": neighbour_similarity(A, A_xy, B, p_xy),
                     "similarity_ours": neighbour_similarity(A, A_xy, B, o_xy), "seconds_paste": t_paste,
                     "seconds_ours_align": t_ours, "seconds_ours_integration_all_layers": t_int,
                     "ours_pairs": fit["n_pairs"], "ours_inliers": fit["n_inliers"]})
        print(json.dumps(rows[-1]), flush=True)


def dlpfc(rows, seed):
    d = SHARED / "dlpfc_visium_151673_151676"
    rng = np.random.default_rng(seed)
    for a_name, b_name in (("151673", "151674"), ("151675", "151676")):
        A0, B0 = (ad.read_h5ad(d / f"dlpfc_{n}_5000hvg.h5ad") for n in (a_name, b_name))
        for a in (A0, B0):
            a.X = a.X.astype(np.float32)
        emb, keep, t_int = integrate([A0, B0], [a_name, b_name], K=10)
        A = A0[np.isin(A0.obs_names + f"-{a_name}", list(keep[0]))].copy()
        B = B0[np.isin(B0.obs_names + f"-{b_name}", list(keep[1]))].copy()
        genes = sorted(set(A.var_names) & set(B.var_names))  # PASTE needs the same genes
        A, B = A[:, genes].copy(), B[:, genes].copy()
        A_xy, B_xy = np.asarray(A.obsm["spatial"], float), np.asarray(B.obsm["spatial"], float)
        la, lb = A.obs["layer"].to_numpy(), B.obs["layer"].to_numpy()
        row = {"data": "DLPFC Visium", "pair": f"{a_name}/{b_name}", "n_shared_genes": len(genes),
               "label_transfer_raw": R.label_transfer_accuracy(A_xy, la, B_xy, lb),
               "seconds_ours_integration_pair": t_int}
        p_xy, _, row["seconds_paste"] = paste_align(A, B)
        o_xy, _, row["seconds_ours_align"] = ours_align(A_xy, emb[0], B_xy, emb[1])
        row["label_transfer_paste"] = R.label_transfer_accuracy(A_xy, la, p_xy, lb)
        row["label_transfer_ours"] = R.label_transfer_accuracy(A_xy, la, o_xy, lb)
        # a known rigid motion of B: the method must undo it (B's own small misalignment included)
        theta = float(rng.uniform(20, 160) * rng.choice([-1, 1]))
        th = np.radians(theta)
        rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        shift = rng.uniform(-300, 300, 2)
        Bm = B.copy()
        Bm.obsm["spatial"] = (B_xy - B_xy.mean(0)) @ rot.T + B_xy.mean(0) + shift
        p_xy, _, row["seconds_paste_rotated"] = paste_align(A, Bm)
        o_xy, _, row["seconds_ours_align_rotated"] = ours_align(A_xy, emb[0], np.asarray(Bm.obsm["spatial"]), emb[1])
        truth_angle, _ = rigid_from_points(np.asarray(Bm.obsm["spatial"]), B_xy)
        row.update(applied_rotation_deg=theta, applied_translation_units=shift.tolist())
        for name, xy in (("paste", p_xy), ("ours", o_xy)):
            ang, _ = rigid_from_points(np.asarray(Bm.obsm["spatial"]), xy)
            row[f"rotation_error_deg_{name}"] = abs((ang - truth_angle + 180) % 360 - 180)
            row[f"translation_error_um_{name}"] = float(np.linalg.norm(xy.mean(0) - B_xy.mean(0)) * UM_PER_UNIT_DLPFC)
            row[f"label_transfer_rotated_{name}"] = R.label_transfer_accuracy(A_xy, la, xy, lb)
        rows.append(row)
        print(json.dumps(row), flush=True)


def main(argv=None):
    ap = common.parser(__doc__)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-dlpfc", action="store_true")
    args = ap.parse_args(argv)
    import ot
    import paste

    rows = []
    if args.quick:  # the same code on tiny sizes (CI): one Ståhl pair, a few training steps
        stahl(rows, steps=5, pairs=1, shipped=True)
    else:
        stahl(rows)
        if not args.skip_dlpfc:
            dlpfc(rows, args.seed)
    common.write(args, "registration_paste", {"paste": getattr(paste, "__version__", "1.4.0"),
                                              "pot": ot.__version__, "rows": rows})


if __name__ == "__main__":
    main()
