"""Domains and scores of any factorization: clusters, ARI / NMI / ASW, factor diversity and coherence."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from ..core import metrics as _M
from ..core._validation import check_int
from ._common import check_adata, store_result

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
        Categorical domains D1..Dn (also in ``obs``).

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
            if spatial_key not in adata.obsm:
                raise KeyError(f"No obsm[{spatial_key!r}] with coordinates for the neighbourhoods; pass "
                               "neighbours=() to cluster the cells by themselves.")
            E = D.neighbourhood_features(E, np.asarray(adata.obsm[spatial_key])[:, :2], sections, neighbours)
        lab = D.mixture_labels(E, n_domains, covariance_type=covariance_type, n_init=n_init,
                               random_state=random_state)
    if refine:
        lab = D.refine_labels(lab, np.asarray(adata.obsm[spatial_key])[:, :2], sections, refine)
    uniq = np.unique(lab)
    lab = np.searchsorted(uniq, lab)
    names = [f"D{i + 1}" for i in range(len(uniq))]
    dom = pd.Categorical(np.asarray(names)[lab], categories=names)
    col = key_added or f"{key}_domain"
    adata.obs[col] = dom
    adata.uns[f"{col}_params"] = {"basis": basis, "scale": scale, "neighbours": list(neighbours), "refine": refine,
                                  "covariance_type": covariance_type, "n_init": n_init, "random_state": random_state,
                                  "n_domains": len(names)}
    return adata.obs[col]


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
