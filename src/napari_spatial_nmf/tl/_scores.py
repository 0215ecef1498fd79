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


def cluster_domains(adata: ad.AnnData, n_domains: int, *, key: str = "integration", basis: str = "latent",
                    covariance_type: str = "tied", n_init: int = 5, random_state: int = 0,
                    key_added: str | None = None) -> pd.Series:
    """Spatial domains: a Gaussian mixture on the latent space (INSPIRE's clustering) or on the
    factor proportions, or the argmax factor.

    Parameters
    ----------
    adata : anndata.AnnData
        With a result ``key``.
    n_domains : int
        Mixture components (e.g. the number of expert layers).
    key : str
        The result.
    basis : {"latent", "factors", "argmax"}
        ``obsm[f"X_{key}_latent"]`` (INSPIRE), ``obsm[f"X_{key}"]``, or its argmax.
    covariance_type : {"tied", "full", "diag", "spherical"}
        scikit-learn's mixture covariance (INSPIRE's notebook is not public; "tied", one
        shared covariance, scored best on the DLPFC latent space: docs/benchmarks.md).
    n_init : int
        Mixture fits from different starts; the one with the highest likelihood is kept (no
        labels used). About one fit in ten lands in a poor optimum on the DLPFC latent space (ARI
        0.44 instead of 0.57; docs/benchmarks.md); each start costs about 0.8 s per 14,000 cells.
    random_state : int
        The mixture's seed.
    key_added : str, optional
        ``obs`` column (default ``f"{key}_domain"``).

    Returns
    -------
    pandas.Series
        Categorical domains D1..Dn (also in ``obs``).

    Raises
    ------
    KeyError
        The basis is not in the AnnData (joint NNMF has no latent space: use "factors").
    TypeError
        ``n_init`` is not an integer.
    ValueError
        An unknown basis, or ``n_init`` below 1.
    """
    from sklearn.mixture import GaussianMixture

    n_init = check_int(n_init, "n_init", minimum=1)
    n_domains = check_int(n_domains, "n_domains", minimum=1)
    if covariance_type not in ("tied", "full", "diag", "spherical"):
        raise ValueError(f"covariance_type must be 'tied', 'full', 'diag' or 'spherical'; got {covariance_type!r}.")
    name = {"latent": f"X_{key}_latent", "factors": f"X_{key}", "argmax": f"X_{key}"}.get(basis)
    if name is None:
        raise ValueError(f"basis must be 'latent', 'factors' or 'argmax'; got {basis!r}.")
    if name not in check_adata(adata).obsm:
        raise KeyError(f"No obsm[{name!r}]: " + ("this result has no latent space (joint NNMF); use "
                                                  "basis='factors'." if basis == "latent" else "run the tool first."))
    E = np.asarray(adata.obsm[name], dtype=np.float64)
    if basis != "argmax" and n_domains > len(E):
        raise ValueError(f"n_domains = {n_domains} is more than the {len(E):,} cells.")
    if basis == "argmax":
        lab = E.argmax(axis=1)
    else:
        lab = GaussianMixture(int(n_domains), covariance_type=covariance_type, n_init=n_init,
                              random_state=random_state, reg_covar=1e-5).fit_predict(E)
    names = [f"D{i + 1}" for i in range(int(lab.max()) + 1)]
    dom = pd.Categorical(np.asarray(names)[lab], categories=names)
    col = key_added or f"{key}_domain"
    adata.obs[col] = dom
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
