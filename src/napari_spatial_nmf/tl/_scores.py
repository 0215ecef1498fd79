"""Domains and scores of any factorization: clusters, ARI / NMI / ASW, factor diversity and coherence."""

from __future__ import annotations

from collections.abc import Generator

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..core import metrics as _M
from ..core._progress import Progress
from ..core._validation import check_int
from ._common import blocking, check_adata, store_result, stored_matrix, tool

PROGRAM_KEYS = ("{key}_programs", "{key}_signatures", "{key}_coefficients")


def programs_of(adata: ad.AnnData, key: str) -> np.ndarray:
    """The (K, G) gene loadings of result ``key``: integration programs, NNMF signatures or
    NMF coefficients.

    Raises
    ------
    KeyError
        No such result.
    """
    for pattern in PROGRAM_KEYS:
        k = pattern.format(key=key)
        if k in check_adata(adata).varm:
            return np.asarray(adata.varm[k], dtype=np.float64).T
    raise KeyError(f"No gene programs of a result {key!r} in varm (looked for "
                   f"{[p.format(key=key) for p in PROGRAM_KEYS]}).")


DOMAIN_NEIGHBOURS = (12, 36, 108)  # nearest cells of the same section: a cell's surroundings at three ranges


def cluster_domains(adata: ad.AnnData, n_domains: int | None = None, *, key: str = "integration",
                    basis: str = "auto", scale: str = "section", neighbours=DOMAIN_NEIGHBOURS, refine: int = 0,
                    section_key: str = "section", spatial_key: str = "spatial", covariance_type: str = "tied",
                    n_init: int = 5, random_state: int = 0, key_added: str | None = None) -> pd.Series:
    """Spatial domains of an integration (or any factorization): a Gaussian mixture on the
    cells' integrated description and its surroundings, or the argmax factor.

    The steps (:mod:`napari_spatial_nmf.core.domains`): the embedding (``basis``) is
    standardised within each section (``scale="section"``), described by its mean over each
    cell's ``neighbours`` nearest cells of the same section (several ranges side by side;
    MENDER's multi-range description), clustered by a Gaussian mixture (the most likely of
    ``n_init`` starts), and optionally refined by a neighbour majority vote (``refine``).
    Measured on DLPFC and BARISTAseq in ``docs/benchmarks.md``.

    Parameters
    ----------
    adata : anndata.AnnData
        With a result ``key``.
    n_domains : int, optional
        Mixture components (e.g. the number of expert layers). Required unless
        ``basis="argmax"``, which gives one domain per factor in use.
    key : str
        The result.
    basis : {"auto", "latent", "factors", "argmax"}
        ``obsm[f"X_{key}_latent"]`` (INSPIRE), ``obsm[f"X_{key}"]`` (factor proportions),
        or the argmax factor; "auto": the latent space when there is one, else the factors.
    scale : {"section", "none"}
        Standardise each dimension within each section first (removes section-wide shifts,
        a batch or platform effect: +0.35 pooled ARI on the BARISTAseq slices), or not.
    neighbours : sequence of int
        Numbers of nearest cells (same section, the cell included) whose mean describes each
        cell, one range per value (cells tied with the k-th nearest count too); () describes
        each cell by itself. The default, 12, 36 and 108 cells (a cell's ring to about a
        cortical layer's width), against the earlier (18, 54): BARISTAseq single cells pooled
        ARI 0.705 against 0.690 (16 seeds, higher in 14), DLPFC spots 0.564 against 0.560 (5
        seeds), one osmFISH section 0.642 against 0.654 (5 seeds); docs/benchmarks.md.
    refine : int
        Neighbour majority vote over this many nearest cells after clustering (0: none;
        6 is the Visium lattice's ring).
    section_key, spatial_key : str
        Sections (neighbourhoods never cross them) and coordinates.
    covariance_type : {"tied", "full", "diag", "spherical"}
        The mixture's covariance ("tied" scored best: docs/benchmarks.md).
    n_init : int
        Mixture starts; the most likely is kept (no labels used).
    random_state : int
        The mixture's seed.
    key_added : str, optional
        ``obs`` column (default ``f"{key}_domain"``); the parameters go to
        ``uns[f"{key_added}_params"]``.

    Returns
    -------
    pandas.Series
        Categorical domains D1..Dn (also in ``obs``); cells without values in the basis
        (NaN rows, e.g. cells NNMF's ``filter_cells`` left out) get none (NaN).

    Raises
    ------
    KeyError
        The basis, section or coordinates are not in the AnnData (joint NNMF has no latent
        space).
    TypeError
        ``n_domains``, ``n_init`` or ``refine`` not integers.
    ValueError
        An unknown basis, scale or covariance; ``n_domains`` missing, below 1 or above the
        cells; ``n_domains`` with ``basis="argmax"`` that differs from the factors in use.
    """
    from ..core import domains as D

    n_init = check_int(n_init, "n_init", minimum=1)
    refine = check_int(refine, "refine", minimum=0)
    if covariance_type not in ("tied", "full", "diag", "spherical"):
        raise ValueError(f"covariance_type must be 'tied', 'full', 'diag' or 'spherical'; got {covariance_type!r}.")
    if scale not in ("section", "none"):
        raise ValueError(f"scale must be 'section' or 'none'; got {scale!r}.")
    neighbours = tuple(check_int(k, "each value of neighbours", minimum=1) for k in neighbours)
    if basis == "auto":
        basis = "latent" if f"X_{key}_latent" in check_adata(adata).obsm else "factors"
    name = {"latent": f"X_{key}_latent", "factors": f"X_{key}", "argmax": f"X_{key}"}.get(basis)
    if name is None:
        raise ValueError(f"basis must be 'auto', 'latent', 'factors' or 'argmax'; got {basis!r}.")
    if name not in check_adata(adata).obsm:
        raise KeyError(f"No obsm[{name!r}]: " + ("this result has no latent space (joint NNMF); use "
                                                  "basis='factors'." if basis == "latent" else "run the tool first."))
    sections = adata.obs[section_key].to_numpy() if section_key in adata.obs else np.zeros(adata.n_obs)
    E = np.asarray(adata.obsm[name], dtype=np.float64)
    # cells a tool left without values (NaN rows, e.g. NNMF's filter_cells) get no domain
    finite = np.isfinite(E).all(axis=1)
    if not finite.any():
        raise ValueError(f"obsm[{name!r}] holds no cell with finite values.")
    E, sections = E[finite], sections[finite]
    coords = np.asarray(adata.obsm[spatial_key])[finite, :2] if spatial_key in adata.obsm else None
    if basis == "argmax":
        used = np.unique(E.argmax(axis=1))
        if n_domains is not None and check_int(n_domains, "n_domains", minimum=1) != len(used):
            raise ValueError(f"basis='argmax' gives one domain per factor in use ({len(used)} of {E.shape[1]}), not "
                             f"n_domains = {n_domains}: leave n_domains out, or cluster with basis='factors'.")
        lab = np.searchsorted(used, E.argmax(axis=1))
    else:
        if n_domains is None:
            raise ValueError("Give n_domains (e.g. the number of expert layers), or use basis='argmax'.")
        n_domains = check_int(n_domains, "n_domains", minimum=1)
        if n_domains > len(E):
            raise ValueError(f"n_domains = {n_domains} is more than the {len(E):,} cells.")
        if scale == "section":
            E = D.standardise(E, sections)
        if neighbours:
            if coords is None:
                raise KeyError(f"No obsm[{spatial_key!r}] with coordinates for the neighbourhoods; pass "
                               "neighbours=() to cluster the cells by themselves.")
            E = D.neighbourhood_features(E, coords, sections, neighbours)
        lab = D.mixture_labels(E, n_domains, covariance_type=covariance_type, n_init=n_init,
                               random_state=random_state)
    if refine:
        if coords is None:
            raise KeyError(f"No obsm[{spatial_key!r}] with coordinates for the refinement; pass refine=0.")
        lab = D.refine_labels(lab, coords, sections, refine)
    uniq = np.unique(lab)
    lab = np.searchsorted(uniq, lab)
    names = [f"D{i + 1}" for i in range(len(uniq))]
    full = np.full(adata.n_obs, None, dtype=object)
    full[finite] = np.asarray(names)[lab]
    dom = pd.Categorical(full, categories=names)
    col = key_added or f"{key}_domain"
    adata.obs[col] = dom
    adata.uns[f"{col}_params"] = {"basis": basis, "scale": scale, "neighbours": list(neighbours), "refine": refine,
                                  "covariance_type": covariance_type, "n_init": n_init, "random_state": random_state,
                                  "n_domains": len(names)}
    return adata.obs[col]


TRANSFER_NEIGHBOURS = (6, 18, 54)  # label transfer: a cell's genes averaged over its 6, 18 and 54 nearest cells
TRANSFER_SMOOTH = 18  # label transfer: class probabilities averaged over each query cell's 18 nearest cells
TRANSFER_MIN_CONFIDENCE = 0.5  # mean highest class probability under which a transfer warns
TRANSFER_FEW_GENES = 20  # fewer shared genes than this warn
TRANSFER_MAX_GENES = 200  # more shared genes than this are described by the reference's principal components,
TRANSFER_COMPONENTS = 50  # this many (the regression's cost grows with the genes x the neighbourhood ranges)


@tool
def iter_transfer_labels(reference: ad.AnnData, query: ad.AnnData, labels_key: str, *, genes=None,
                         layer: str | None = None, section_key: str | None = "section", spatial_key: str = "spatial",
                         neighbours=TRANSFER_NEIGHBOURS, smooth: int = TRANSFER_SMOOTH, match_depth: bool = True,
                         random_state: int = 0, key_added: str | None = None) -> Generator[Progress, None, pd.Series]:
    """Carry labels (spatial domains, expert layers, cell types) from a reference section to a
    query section through the genes they share and the cells' surroundings.

    For panels that differ (a targeted panel beside a whole transcriptome, another
    technology): domains clustered on the richest section (e.g. :func:`cluster_domains` after
    :func:`nnmf`), or an expert annotation, are given to the others. Each cell is described by
    its shared genes (log-normalised when they are counts, as given otherwise), each gene
    standardised within each section (a per-gene capture scaling or a platform offset
    cancels; beyond 200 genes, projected on the reference's 50 principal components), beside
    their means over its 6, 18 and 54 nearest cells; a multinomial logistic
    regression (scikit-learn, ``C = 0.1``) learns the reference's labels from these
    descriptions and predicts the query's; each query cell's class probabilities are then
    averaged over its ``smooth`` nearest cells.

    When both hold counts, the reference's shared genes are first thinned (binomially, gene by
    gene) to the query's mean count per cell wherever the query's is lower, so the regression
    learns from cells as noisy as those it labels (``match_depth``).

    Measured (``benchmarks/integration_panels.py --parts panel_transfer``, 5 seeds;
    docs/integration.md): DLPFC 151674 cut to a 100-gene panel with thinned counts gets the
    domains of an NNMF of 151673 (all genes) at layer ARI 0.53 ± 0.07 (0.50 ± 0.06 without
    matching the depth), against 0.39 ± 0.04 for the domains of an integration over the union
    of the panels; from 151673's expert layers it gets 0.66 ± 0.01 (0.63 ± 0.02).

    Source: this project's method; the logistic-regression label transfer of single-cell
    reference mapping (as Seurat's ``TransferData`` and scanpy's ``ingest`` carry labels
    across data sets), with the multi-range spatial description of MENDER (Yuan 2024) that
    :func:`cluster_domains` uses.

    ``iter_transfer_labels`` is the generator (it yields
    :class:`~napari_spatial_nmf.core.Progress` between its stages, so a GUI can cancel it;
    the input is checked at the call); ``transfer_labels`` is its blocking twin.

    Parameters
    ----------
    reference : anndata.AnnData
        Cells x genes with ``obs[labels_key]`` (cells without a label are not learnt from)
        and ``obsm[spatial_key]`` (n, 2 or 3; µm or any one unit).
    query : anndata.AnnData
        Cells x genes with ``obsm[spatial_key]`` (n, 2 or 3); gets the labels.
    labels_key : str
        The reference's labels.
    genes : sequence of str, optional
        The genes to use (default every gene both measured).
    layer : str, optional
        Use ``layers[layer]`` of both instead of ``X``.
    section_key : str or None
        ``obs`` column naming each cell's section when an AnnData holds several: genes are
        standardised and neighbourhoods taken within each section (absent, or None: each
        AnnData is one section).
    spatial_key : str
        The coordinates in ``obsm``.
    neighbours : sequence of int
        Nearest cells (same section, the cell included) over which each cell's genes are also
        averaged; ``()`` describes cells by themselves.
    smooth : int
        Nearest query cells over which the class probabilities are averaged (1: none).
    match_depth : bool
        Thin the reference's counts to the query's depth, gene by gene, where the query's is
        lower (counts on both sides only; normalised values are used as given).
    random_state : int
        The seed of the thinning and the regression.
    key_added : str, optional
        Default ``f"{labels_key}_transferred"``.

    Returns
    -------
    pandas.Series
        The query's labels (categorical, the reference's categories), also written to
        ``query.obs[key_added]``; ``query.obsm[f"{key_added}_probability"]`` (n_query,
        n_classes) float32 holds the averaged probabilities and ``query.uns[key_added]`` the
        parameters, classes, genes and mean confidence. Nothing else of either AnnData changes.

    Raises
    ------
    TypeError
        Not AnnData; ``neighbours`` or ``smooth`` not integers.
    KeyError
        No ``obs[labels_key]`` in the reference, no coordinates, or an unknown layer.
    ValueError
        Fewer than 2 shared genes (the count is given), fewer than 2 labels among the
        reference's cells, genes that one of them lacks, or values that are negative.
    napari_spatial_nmf.core._memory.MemoryLimitError (a ValueError)
        The cells' descriptions would not fit in memory (estimated before any work).

    Warns
    -----
    UserWarning
        Fewer than 20 shared genes, or a mean highest class probability under 0.5 (the
        query's cells are not confidently any of the reference's labels).
    """
    import warnings

    from ..core import domains as D
    from ..core._memory import check_memory
    from ..core.sections import is_counts

    check_adata(reference), check_adata(query)
    if labels_key not in reference.obs:
        raise KeyError(f"The reference has no obs[{labels_key!r}]; its columns are {list(reference.obs.columns)}.")
    for name, a in (("reference", reference), ("query", query)):
        if spatial_key not in a.obsm:
            raise KeyError(f"The {name} has no obsm[{spatial_key!r}] with coordinates.")
    neighbours = tuple(check_int(k, "each value of neighbours", minimum=1) for k in neighbours)
    smooth = check_int(smooth, "smooth", minimum=1)
    if genes is None:
        genes = [g for g in reference.var_names if g in set(query.var_names)]
    else:
        genes = list(genes)
        for name, a in (("reference", reference), ("query", query)):
            missing = [g for g in genes if g not in set(a.var_names)]
            if missing:
                raise ValueError(f"The {name} lacks {len(missing)} of the genes given, e.g. {missing[:5]}.")
    if len(genes) < 2:
        raise ValueError(f"The sections share {len(genes)} gene(s): label transfer needs at least 2 (better "
                         "dozens). Check that both use the same gene names (symbols or IDs).")
    labels = reference.obs[labels_key]
    known = labels.notna().to_numpy()
    if labels[known].nunique() < 2:
        raise ValueError(f"obs[{labels_key!r}] of the reference holds {labels[known].nunique()} label(s) among its "
                         "cells; label transfer needs at least 2.")
    width = TRANSFER_COMPONENTS if len(genes) > TRANSFER_MAX_GENES else len(genes)  # of each description block
    check_memory(8 * 3 * (reference.n_obs + query.n_obs) * max(len(genes), (1 + len(neighbours)) * width),
                 f"the descriptions of {reference.n_obs + query.n_obs:,} cells over {len(genes):,} genes",
                 "Transfer fewer genes (genes=...) or fewer neighbourhood ranges.")
    matrices, flags = {}, {}
    for name, a in (("reference", reference), ("query", query)):
        X = stored_matrix(a[:, genes], layer)
        X = X.tocsr() if sp.issparse(X) else sp.csr_matrix(np.asarray(X, dtype=np.float64))
        if X.nnz and X.data.min() < 0:
            raise ValueError(f"The {name}'s values are negative (e.g. scaled data): give counts or normalised "
                             "values (layer=...).")
        matrices[name], flags[name] = X, is_counts(X)
    total = 3
    yield Progress(0, total, f"describing {reference.n_obs:,} reference cells over {len(genes):,} shared genes")
    kept = None
    if match_depth and flags["reference"] and flags["query"]:  # learn from cells as noisy as the query's
        matrices["reference"], kept = D.match_depth(matrices["reference"], matrices["query"],
                                                    np.random.default_rng(random_state))
    described = []
    for name, a in (("reference", reference), ("query", query)):
        sections = a.obs[section_key].to_numpy() if section_key is not None and section_key in a.obs \
            else np.zeros(a.n_obs)
        coords = np.asarray(a.obsm[spatial_key], dtype=np.float64)  # 2-D or 3-D: neighbours in the data's own space
        described.append([D.expression_description(matrices[name], sections, counts=flags[name]), coords, sections])
    del matrices
    if len(genes) > TRANSFER_MAX_GENES:  # many genes: the reference's principal components, both projected on them
        from sklearn.decomposition import PCA

        pca = PCA(TRANSFER_COMPONENTS, random_state=random_state).fit(described[0][0])
        for d in described:
            d[0] = pca.transform(d[0])
    for d in described:
        if neighbours:
            d[0] = np.hstack([d[0], D.neighbourhood_features(d[0], d[1], d[2], neighbours)])
    (F_ref, _, _), (F_query, coords_q, sections_q) = described
    y = labels.astype(str).to_numpy()
    yield Progress(1, total, f"learning {labels[known].nunique()} labels from {int(known.sum()):,} reference cells")
    clf = D.label_classifier(F_ref[known], y[known], random_state=random_state)
    yield Progress(2, total, f"labelling {query.n_obs:,} query cells")
    near = D.neighbour_matrix(coords_q, sections_q, smooth) if smooth > 1 else None
    pred, prob, classes = D.predict_labels(clf, F_query, near)
    order = ([str(c) for c in labels.cat.categories if str(c) in set(classes)]
             if isinstance(labels.dtype, pd.CategoricalDtype) else list(classes))
    confidence = float(prob.max(axis=1).mean())
    col = key_added or f"{labels_key}_transferred"
    notes = []
    if len(genes) < TRANSFER_FEW_GENES:
        notes.append(f"Only {len(genes)} shared genes carry the labels: expect a rough transfer.")
    if confidence < TRANSFER_MIN_CONFIDENCE:
        notes.append(f"The query's cells are not confidently any of the reference's labels (mean highest "
                     f"probability {confidence:.2f}): the sections may not hold the same structures, or the shared "
                     "genes do not tell them apart.")
    yield Progress(total, total, f"{query.n_obs:,} cells labelled; mean confidence {confidence:.2f}")
    for note in notes:  # at the caller of transfer_labels (through drain and the tool's resume)
        warnings.warn(note, UserWarning, stacklevel=5)
    store_result(query, col, "transfer_labels",
                 {"labels_key": labels_key, "layer": layer, "section_key": section_key, "spatial_key": spatial_key,
                  "neighbours": list(neighbours), "smooth": smooth, "match_depth": match_depth,
                  "random_state": random_state,
                  "source": "logistic-regression label transfer over shared genes and surroundings (this project)"},
                 record={"classes": list(classes), "genes": genes, "n_genes": len(genes),
                         "counts": {k: bool(v) for k, v in flags.items()}, "mean_confidence": confidence,
                         "depth_kept": None if kept is None else {"median": float(np.median(kept)),
                                                                  "min": float(kept.min())},
                         "warnings": notes},
                 obs={col: pd.Categorical(pred, categories=order)},
                 obsm={f"{col}_probability": prob.astype(np.float32)})  # after the last yield: a cancel adds nothing
    return query.obs[col]


transfer_labels = blocking(iter_transfer_labels, "transfer_labels")


def integration_scores(adata: ad.AnnData, labels_key: str, *, domain_key: str, key: str = "integration",
                       section_key: str = "section", basis: str = "latent") -> pd.DataFrame:
    """Per-section ARI, NMI (domains vs expert labels) and ASW (labels in ``basis``), as INSPIRE scores.

    Parameters
    ----------
    adata : anndata.AnnData
        With the domains ``obs[domain_key]`` and the labels ``obs[labels_key]``.
    labels_key : str
        Expert labels (missing labels are left out).
    domain_key : str
        Domains to score (e.g. from :func:`cluster_domains`).
    key : str
        The result (for the ASW embedding).
    section_key : str
        Per-section rows.
    basis : {"latent", "factors"}
        Embedding of the ASW (``obsm[f"X_{key}_latent"]`` or ``obsm[f"X_{key}"]``).

    Returns
    -------
    pandas.DataFrame
        ``section, ari, nmi, asw, n_cells`` (also in ``uns[f"{key}_scores"]``).
    """
    for col in (labels_key, domain_key, section_key):
        if col not in check_adata(adata).obs:
            raise KeyError(f"{col!r} is not a column of obs (it has {list(adata.obs.columns)}).")
    emb_key = f"X_{key}_latent" if basis == "latent" else f"X_{key}"
    E = np.asarray(adata.obsm[emb_key]) if emb_key in adata.obsm else None
    rows = []
    for s in pd.unique(adata.obs[section_key]):
        m = (adata.obs[section_key] == s).to_numpy()
        rows.append({"section": str(s), **_M.clustering_scores(adata.obs[labels_key].to_numpy()[m],
                                                                adata.obs[domain_key].to_numpy()[m],
                                                                None if E is None else E[m])})
    df = pd.DataFrame(rows)
    store_result(adata, f"{key}_scores", "integration_scores", {"labels_key": labels_key, "domain_key": domain_key,
                                                                  "basis": basis}, record={"table": df})
    return df


def factor_scores(adata: ad.AnnData, *, key: str = "integration", n_top: int = 10, layer: str | None = None) -> dict:
    """Factor diversity and coherence (NPMI) of a result's gene programs (INSPIRE's measures;
    any factorization: NMF coefficients, NNMF signatures, integration programs).

    Parameters
    ----------
    adata : anndata.AnnData
        With a result ``key`` and counts in ``X`` (or ``layers[layer]``).
    key : str
        The result.
    n_top : int
        Top genes per factor (INSPIRE: 10).
    layer : str, optional
        Counts for the coherence.

    Returns
    -------
    dict
        ``factor_diversity``, ``factor_coherence`` (also in ``uns[f"{key}_factor_scores"]``).
    """
    P = programs_of(adata, key)
    X = adata.X if layer is None else adata.layers[layer]
    out = {"factor_diversity": _M.factor_diversity(P, n_top), "factor_coherence": _M.factor_coherence(P, X, n_top)}
    store_result(adata, f"{key}_factor_scores", "factor_scores", {"n_top": n_top, "layer": layer}, record=out)
    return out
