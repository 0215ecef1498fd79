"""The osNMF analysis suite on atlas volumes (Cahill et al. 2024, PNAS 121:e2319804121).

Region combinations, Moran's I, reconstruction accuracy, marker genes, gene co-expression
networks and the k-NN imputation hold-out check; ``methods-digest.md`` §2.5-§2.9 gives
what the osNMF reference code (abbasilab/osNMF) does, and each function says where it
follows it and where it differs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .ontology import Ontology

# The 12 major divisions of the Allen Mouse Brain ontology, the osNMF "coarse" atlas
# (``mouse_coarse_structure_atlas.npy``, 12 masks).
COARSE_12 = ("Isocortex", "OLF", "HPF", "CTXsp", "STR", "PAL", "TH", "HY", "MB", "P", "MY", "CB")


def medium_structures(ontology: Ontology) -> list[int]:
    """The osNMF "medium" level: every child of the 12 coarse divisions, in ontology order.

    Cahill et al. 2024 (Fig. 2 and its text) define the medium-level regions as "all child
    regions for the 12 coarse CCF regions" and count 66 in their ontology version; the
    CCFv3 2017 structure tree shipped here gives 62 (Isocortex 17, OLF 10, HPF 2, CTXsp 7,
    STR 4, PAL 4, TH 2, HY 5, MB 3, P 3, MY 3, CB 2).

    Raises
    ------
    ValueError
        The ontology lacks one of the 12 coarse divisions (not the Allen mouse ontology).
    """
    missing = [s for s in COARSE_12 if s not in ontology]
    if missing:
        raise ValueError(f"The ontology has no structure(s) {missing}; the medium level needs the Allen Mouse "
                         "Brain ontology (or pass your own list of structures).")
    t = ontology.table
    coarse = {ontology.id_of(s) for s in COARSE_12}
    return [int(i) for i in t.index[t["parent_id"].isin(coarse)]]


# --------------------------------------------------------------------------- structures

def structure_labels(annotation: np.ndarray, ontology: Ontology, level=None) -> np.ndarray:
    """Relabel the annotation at an ontology level; 0 = not in any structure of the level.

    Parameters
    ----------
    annotation : ndarray of int, grid shape
    ontology : Ontology
    level : None, "coarse", "medium", int, or sequence of ids/acronyms
        None: the annotation's own labels (the finest structures present). "coarse": the
        12 major divisions (:data:`COARSE_12`, the osNMF coarse atlas). "medium": their
        children (:func:`medium_structures`, the osNMF medium level). An int: the
        structures at that depth of the tree (voxels of shallower labels are dropped).
        A sequence: these structures (each the union of its descendants; they must not
        overlap).

    Raises
    ------
    ValueError
        Labels not in the ontology, a depth deeper than the tree, unknown acronyms,
        overlapping structures.
    """
    ann = np.asarray(annotation)
    if ann.dtype.kind not in "iu":
        raise ValueError(f"The annotation must hold integer structure ids; got dtype {ann.dtype}.")
    ontology.check_labels(ann)
    if level is None:
        return ann.astype(np.int64)
    labels, inverse = np.unique(ann, return_inverse=True)
    if isinstance(level, (int, np.integer)) and not isinstance(level, bool):
        max_depth = int(ontology.table["depth"].max())
        if not 0 <= level <= max_depth:
            raise ValueError(f"The ontology has depths 0..{max_depth}; level={level} does not exist.")
        mapped = []
        for lab in labels:
            if lab == 0:
                mapped.append(0)
                continue
            anc = [a for a in ontology.ancestors(int(lab)) if ontology.table.at[a, "depth"] == level]
            mapped.append(anc[0] if anc else 0)
        return np.asarray(mapped, np.int64)[inverse].reshape(ann.shape)
    chosen = level
    if isinstance(level, str) and level == "coarse":
        chosen = COARSE_12
    elif isinstance(level, str) and level == "medium":
        chosen = medium_structures(ontology)
    if isinstance(chosen, str):
        raise ValueError(f"Unknown level {level!r}: use None, 'coarse', 'medium', an ontology depth or a list of "
                         "structures.")
    missing = [s for s in chosen if s not in ontology]
    if missing:
        raise ValueError(f"The ontology has no structure(s) {missing}; this level needs the Allen Mouse Brain "
                         "ontology (or pass your own list of structures).")
    ids = [ontology.id_of(s) for s in chosen]
    mapped = np.zeros(len(labels), np.int64)
    for i in ids:
        inside = np.isin(labels, ontology.descendants(i))
        if (mapped[inside] != 0).any():
            raise ValueError(f"Structure {ontology.table.at[i, 'acronym']} overlaps another structure of the level.")
        mapped[inside] = i
    return mapped[inverse].reshape(ann.shape)


def structure_adjacency(labels: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Structures that touch: ids and their (n_edges, 2) index pairs (i < j).

    Two structures are adjacent if a voxel of one is a face neighbour (6-connectivity in
    3D, 4 in 2D) of a voxel of the other, i.e. ``binary_dilation(A) & B`` is non-empty with
    the cross structuring element, as in the osNMF paper; computed from shifted label
    arrays instead of one dilation per structure.
    """
    lab = np.where(mask, labels, 0) if mask is not None else np.asarray(labels)
    ids = np.unique(lab)
    ids = ids[ids != 0]
    index = np.searchsorted(ids, lab)
    pairs = []
    for ax in range(lab.ndim):
        a = np.moveaxis(lab, ax, 0)
        ia = np.moveaxis(index, ax, 0)
        touch = (a[1:] != a[:-1]) & (a[1:] != 0) & (a[:-1] != 0)
        u, v = ia[1:][touch], ia[:-1][touch]
        pairs.append(np.stack([np.minimum(u, v), np.maximum(u, v)], axis=1))
    edges = np.unique(np.concatenate(pairs), axis=0) if pairs else np.empty((0, 2), np.int64)
    return ids, edges.astype(np.int64)


def connected_triples(n_nodes: int, edges: np.ndarray) -> np.ndarray:
    """All sets of three structures whose adjacency subgraph is connected (paths and triangles), (m, 3) sorted."""
    A = sp.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n_nodes, n_nodes))
    A = (A + A.T).tocsr()
    out = []
    for b in range(n_nodes):
        nb = A.indices[A.indptr[b]:A.indptr[b + 1]]
        if len(nb) < 2:
            continue
        i, j = np.triu_indices(len(nb), k=1)
        tri = np.sort(np.stack([nb[i], nb[j], np.full(len(i), b)], axis=1), axis=1)
        out.append(tri)
    if not out:
        return np.empty((0, 3), np.int64)
    return np.unique(np.concatenate(out), axis=0)


def _scores(S: np.ndarray, n: np.ndarray, total_n: int, ss: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Pearson r of each pattern with the indicator of each union: (K, m).

    S (K, n_struct): per-structure sums of the centred patterns; n (n_struct,) voxel counts;
    members (m, c) structure indices of each combination (disjoint structures, so sums add).
    """
    Su = S[:, members].sum(axis=2)
    nu = n[members].sum(axis=1).astype(np.float64)
    denom = np.sqrt(ss[:, None] * nu[None, :] * (1 - nu[None, :] / total_n))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, Su / denom, np.nan)


def _dice(P: np.ndarray, n: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Dice of each binary pattern with each union: 2 |P & U| / (|P| + |U|); P (K, n_struct) voxel counts inside."""
    inter = P[:, members].sum(axis=2)
    nu = n[members].sum(axis=1).astype(np.float64)
    size = P.sum(axis=1)  # voxels of the binary pattern inside the structures
    return 2 * inter / (size[:, None] + nu[None, :])


def region_combinations(
    patterns: np.ndarray,
    labels: np.ndarray,
    ontology: Ontology,
    *,
    names: Sequence[str] | None = None,
    mask: np.ndarray | None = None,
    max_size: int = 3,
    score: str = "pearson",
    n_top: int = 20,
    all_singles: bool = False,
) -> tuple[pd.DataFrame, dict]:
    """Best single structure, contiguous pair and contiguous triple per pattern (exhaustive).

    For every structure, every pair of adjacent structures and every connected triple,
    the score of each pattern with the union's indicator inside the mask: Pearson r, or
    Dice with the pattern's hard map (voxels where it is the largest pattern and > 0, as
    osNMF's Moran's I). Exact and exhaustive, from per-structure sums: with c the pattern
    centred over the N mask voxels, S_s = sum of c over s and n_s its voxel count, the
    union U of disjoint structures has r = S_U / sqrt(sum c^2 n_U (1 - n_U/N)) with
    S_U = sum S_s, n_U = sum n_s. No volume per combination is built.

    Parameters
    ----------
    patterns : ndarray (K, *grid) float
        Principal patterns on the annotation's grid (NaN = outside / missing: excluded).
    labels : ndarray of int, grid shape
        Structure per voxel at the chosen level (:func:`structure_labels`), 0 = none.
    ontology : Ontology
    names : K names, optional
    mask : bool ndarray, grid shape, optional
        Voxels used (default: labels > 0, the brain).
    max_size : {1, 2, 3}
    score : {"pearson", "dice"}
    n_top : int
        Rows kept per pattern and size in the ranked table.
    all_singles : bool
        Keep every single structure (not only the ``n_top`` best): the pattern × structure
        scores of the bubble chart.

    Returns
    -------
    (pandas.DataFrame, dict)
        Ranked table: ``pattern, size, rank, structures`` (acronyms joined by "+"),
        ``ids``, ``score``, ``n_voxels``; and counts: ``n_structures, n_pairs, n_triples``.

    Raises
    ------
    ValueError
        Patterns and labels on different grids, an empty mask, unknown ``score``.
    """
    P = np.asarray(patterns, dtype=np.float64)
    lab = np.asarray(labels)
    if P.shape[1:] != lab.shape:
        raise ValueError(f"The patterns have grid shape {P.shape[1:]} but the annotation has {lab.shape}: "
                         "they must be on the same grid.")
    if score not in ("pearson", "dice"):
        raise ValueError(f"score must be 'pearson' or 'dice'; got {score!r}.")
    if max_size not in (1, 2, 3):
        raise ValueError(f"max_size must be 1, 2 or 3; got {max_size!r}.")
    m = (lab > 0) if mask is None else (np.asarray(mask, bool) & (lab > 0))
    m &= np.isfinite(P).all(axis=0)
    if not m.any():
        raise ValueError("The mask is empty: no voxel is inside the annotation with finite pattern values.")
    K = P.shape[0]
    names = list(names) if names is not None else [f"PP{i + 1}" for i in range(K)]
    ids, edges = structure_adjacency(lab, m)
    idx = np.searchsorted(ids, lab[m])
    n = np.bincount(idx, minlength=len(ids))
    vals = P[:, m]
    if score == "pearson":
        c = vals - vals.mean(axis=1, keepdims=True)
        S = np.stack([np.bincount(idx, weights=ck, minlength=len(ids)) for ck in c])
        ss = (c**2).sum(axis=1)

        def f(members):
            return _scores(S, n, int(m.sum()), ss, members)
    else:
        hard = vals.argmax(axis=0)
        inside = vals.max(axis=0) > 0
        B = np.stack([np.bincount(idx, weights=((hard == k) & inside).astype(float), minlength=len(ids))
                      for k in range(K)])

        def f(members):
            return _dice(B, n, members)

    combos = [np.arange(len(ids))[:, None]]
    if max_size >= 2:
        combos.append(edges)
    if max_size >= 3:
        combos.append(connected_triples(len(ids), edges))
    acr = ontology.table["acronym"].reindex(ids).fillna("?").astype(str).to_numpy()
    rows = []
    for members in combos:
        size = members.shape[1]
        if len(members) == 0:
            continue
        sc = f(members)
        nu = n[members].sum(axis=1)
        for k in range(K):
            s = np.nan_to_num(sc[k], nan=-np.inf)
            top = np.argsort(-s, kind="stable")[:None if size == 1 and all_singles else n_top]
            for r, t in enumerate(top):
                rows.append((names[k], size, r + 1, "+".join(acr[members[t]]),
                             ",".join(str(int(x)) for x in ids[members[t]]), float(sc[k, t]), int(nu[t])))
    table = pd.DataFrame(rows, columns=["pattern", "size", "rank", "structures", "ids", "score", "n_voxels"])
    counts = {"n_structures": len(ids), "n_pairs": len(edges),
              "n_triples": len(combos[2]) if max_size >= 3 else 0, "score": score}
    return table, counts


def best_combinations(table: pd.DataFrame) -> pd.DataFrame:
    """Per pattern, the best combination of any size: the rank-1 row with the highest score
    (one row per pattern; ``size`` says whether it is a single structure, a pair or a triple).
    """
    best = table[table["rank"] == 1].copy()
    overall = best.loc[best.groupby("pattern", sort=False)["score"].idxmax()]
    return overall.reset_index(drop=True)


# --------------------------------------------------------------------------- Moran's I

def rook_weights(mask: np.ndarray) -> sp.csr_matrix:
    """Sparse rook (face-neighbour) adjacency among the True voxels of ``mask``, (N, N), symmetric 0/1."""
    m = np.asarray(mask, bool)
    index = np.full(m.shape, -1, np.int64)
    index[m] = np.arange(int(m.sum()))
    rows, cols = [], []
    for ax in range(m.ndim):
        a = np.moveaxis(index, ax, 0)
        u, v = a[1:], a[:-1]
        ok = (u >= 0) & (v >= 0)
        rows += [u[ok], v[ok]]
        cols += [v[ok], u[ok]]
    N = int(m.sum())
    r, c = np.concatenate(rows), np.concatenate(cols)
    return sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(N, N))


def morans_i(values: np.ndarray, weights: sp.csr_matrix) -> np.ndarray:
    """Global Moran's I of each column: I = (N / W) sum_ij w_ij z_i z_j / sum_i z_i^2.

    values (N, K) over the mask voxels; z centred over the mask voxels (osNMF's
    ``morans_index.py`` centres over the whole cropped box; we do not count voxels outside
    the brain). A constant column gives NaN.
    """
    V = np.asarray(values, dtype=np.float64)
    if V.ndim == 1:
        V = V[:, None]
    z = V - V.mean(axis=0)
    W = weights.sum()
    num = (z * (weights @ z)).sum(axis=0)
    den = (z**2).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return V.shape[0] / W * num / den


def hard_map_indicators(patterns: np.ndarray, threshold: float = 0.0) -> np.ndarray:
    """(N, K) 0/1: voxel's largest pattern is k and exceeds ``threshold`` (osNMF's hard map)."""
    P = np.asarray(patterns)
    arg = P.argmax(axis=1)
    ok = P.max(axis=1) > threshold
    return (np.arange(P.shape[1])[None, :] == arg[:, None]) & ok[:, None]


# --------------------------------------------------------------------------- genes

def reconstruction_accuracy(X: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Pearson r per gene between the data and a reconstruction (W H for NMF), (n_genes,).

    osNMF's ``geneReconstructionAcccuracy``: the data clipped at 0, NaN r (a constant
    column) as 0. X and R (n_obs, n_genes).
    """
    A = np.maximum(np.asarray(X, dtype=np.float64), 0)
    R = np.asarray(R, dtype=np.float64)
    a = A - A.mean(axis=0)
    b = R - R.mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=0) / np.sqrt((a**2).sum(axis=0) * (b**2).sum(axis=0))
    return np.nan_to_num(r, nan=0.0)


def pca_patterns(X: np.ndarray, n_components: int, random_state: int = 0):
    """PCA baseline at the same K (scikit-learn): patterns (n_obs, K), loadings (K, n_genes), mean (n_obs,).

    As the osNMF comparison, genes are the samples: the patterns are the principal axes
    over voxels of the genes x voxels matrix; X ~ mean[:, None] + patterns @ loadings.
    NaN must be filled first.
    """
    from sklearn.decomposition import PCA

    pca = PCA(n_components=n_components, random_state=random_state)
    scores = pca.fit_transform(np.asarray(X, dtype=np.float64).T)  # (n_genes, K)
    return pca.components_.T, scores.T, pca.mean_


def marker_genes(coefficients: np.ndarray, genes: Sequence[str], names: Sequence[str],
                 n_top: int = 10) -> pd.DataFrame:
    """OsNMF marker genes: per pattern, the genes whose largest coefficient is that pattern,
    ranked by the importance score a_kj / sum_k a_kj (tutorial §6).

    coefficients (K, n_genes) non-negative. Returns columns ``pattern, rank, gene,
    importance, coefficient``.
    """
    A = np.asarray(coefficients, dtype=np.float64)
    tot = A.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        imp = np.where(tot > 0, A / tot, 0.0)
    arg = A.argmax(axis=0)
    rows = []
    for k, name in enumerate(names):
        g = np.flatnonzero((arg == k) & (tot > 0))
        g = g[np.argsort(-imp[k, g], kind="stable")][:n_top]
        rows += [(name, r + 1, str(genes[j]), float(imp[k, j]), float(A[k, j])) for r, j in enumerate(g)]
    return pd.DataFrame(rows, columns=["pattern", "rank", "gene", "importance", "coefficient"])


def coexpression_network(W: np.ndarray, H: np.ndarray, genes: Sequence[str], pattern: int, *,
                         n_genes: int = 20, edge_quantile: float = 0.95, rule: str = "paper"):
    """Spatial gene co-expression network of one pattern (networkx.Graph).

    Nodes: the pattern's top genes by importance a_kj / sum_k a_kj (all genes, so a
    network has ``n_genes`` nodes). Edges: pairwise Pearson correlations of the genes'
    reconstructed volumes W h_j across voxels; ``rule="paper"`` keeps the top 5% (the
    pairs above the ``edge_quantile`` quantile, the osNMF paper's text);
    ``rule="reference"`` keeps every pair with r > 0 (the osNMF tutorial code,
    ``upper_bound = 0``). Edge attribute ``weight`` = r; node attribute ``importance``.
    """
    import networkx as nx

    Hm = np.asarray(H, dtype=np.float64)
    tot = Hm.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        imp = np.where(tot > 0, Hm[pattern] / tot, 0.0)
    top = np.argsort(-imp, kind="stable")[:n_genes]
    R = np.asarray(W, dtype=np.float64) @ Hm[:, top]
    C = np.corrcoef(R, rowvar=False)
    iu = np.triu_indices(len(top), k=1)
    vals = C[iu]
    if rule == "paper":
        cut = np.nanquantile(vals, edge_quantile)
        keep = vals >= cut
    elif rule == "reference":
        keep = vals > 0
    else:
        raise ValueError(f"rule must be 'paper' or 'reference'; got {rule!r}.")
    G = nx.Graph(pattern=int(pattern), rule=rule)
    for j in top:
        G.add_node(str(genes[j]), importance=float(imp[j]))
    for a, b, v in zip(iu[0][keep], iu[1][keep], vals[keep]):
        G.add_edge(str(genes[top[a]]), str(genes[top[b]]), weight=float(v))
    return G


def imputation_holdout(X: np.ndarray, coords: np.ndarray, *, fraction: float = 0.05, n_neighbors: int = 6,
                       random_state: int = 0, names: Sequence[str] | None = None) -> pd.DataFrame:
    """Hold-out check of the k-NN imputation (osNMF ``knn_impute.py``), per gene.

    Hides a random ``fraction`` of each gene's measured voxels, imputes them from the
    remaining measured voxels (distance-weighted k-NN, k=6, scikit-learn), and reports
    the mean absolute error and Pearson r between held-out truth and imputed values.
    Returns columns ``gene_index, n_held_out, mae, r, mean_value``. ``names`` (the genes)
    name a gene with too few measured voxels in the error.
    """
    from .impute import impute_knn

    names = [f"column {j}" for j in range(np.shape(X)[1])] if names is None else list(names)
    rng = np.random.default_rng(random_state)
    A = np.asarray(X, dtype=np.float64)
    rows = []
    for g in range(A.shape[1]):
        meas = np.flatnonzero(np.isfinite(A[:, g]))  # only measured voxels: the truly missing ones are not scored
        col = A[meas, g]
        hide = rng.choice(meas.size, max(1, round(fraction * meas.size)), replace=False)
        truth = col[hide].copy()
        col[hide] = np.nan
        pred = impute_knn(col[:, None], coords[meas], n_neighbors=n_neighbors, names=[names[g]])[hide, 0]
        r = float(np.corrcoef(truth, pred)[0, 1]) if truth.std() > 0 and pred.std() > 0 else float("nan")
        rows.append((g, hide.size, float(np.abs(truth - pred).mean()), r, float(truth.mean())))
    return pd.DataFrame(rows, columns=["gene_index", "n_held_out", "mae", "r", "mean_value"])
