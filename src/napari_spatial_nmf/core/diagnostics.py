"""Did an integration work? Measures that need no labels, and the warnings they trigger.

* **Factor usage**: each factor's mean share in each section. A factor used by one section
  only (at least :data:`DOMINANCE` of its mass in one section, while it carries at least
  :data:`MIN_USAGE` of some section) is *section-specific*: the model explained that
  section apart instead of sharing programs.
* **Mixing**: how well the sections mix in the integrated space, the integration LISI of
  Korsunsky et al. 2019 (Harmony; as scIB computes it): for each cell, the effective number
  of sections among its neighbours (inverse Simpson index with Gaussian weights calibrated to
  a perplexity), rescaled to 0 (each cell sees only its own section) ... 1 (sections
  perfectly mixed). Computed on the embedding the domains are clustered on.
* **Shared domains**: how many domains hold at least :data:`MIN_DOMAIN_SHARE` of every
  section (a cross-technology run in which sections keep their own domains has none).

:func:`integration_warnings` turns them into messages naming the sections and factors.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.neighbors import NearestNeighbors

MIN_USAGE = 0.02
DOMINANCE = 0.9
MIN_DOMAIN_SHARE = 0.05
POOR_MIXING = 0.1  # below this the sections barely meet (0.20 on the well-integrated BARISTAseq slices)
UNEQUAL_PANELS = 10  # a union of panels whose largest is this many times its smallest (poor mixing: say why)


def factor_usage(proportions: np.ndarray, sections) -> pd.DataFrame:
    """Mean proportion of every factor in every section: (sections x factors), rows sum to 1."""
    P = np.asarray(proportions, dtype=np.float64)
    s = pd.Series(np.asarray(sections).astype(str))
    return pd.DataFrame(P).groupby(s.to_numpy(), sort=False).mean()


def section_specific(usage: pd.DataFrame, sizes: dict, *, min_usage: float = MIN_USAGE,
                     dominance: float = DOMINANCE) -> dict[int, str]:
    """Factors whose mass lies (almost) all in one section: {factor index: section}."""
    mass = usage.mul(pd.Series(sizes), axis=0)
    out = {}
    if len(usage) < 2:
        return out
    for k in usage.columns:
        total = mass[k].sum()
        if total <= 0 or usage[k].max() < min_usage:
            continue
        top = mass[k].idxmax()
        if mass.loc[top, k] / total >= dominance:
            out[int(k)] = str(top)
    return out


def _perplexity_weights(d2: np.ndarray, perplexity: float, tol: float = 1e-5, steps: int = 50) -> np.ndarray:
    """Row-wise Gaussian weights over the neighbours' squared distances with the given perplexity
    (the bisection on the precision that Harmony's compute_lisi and t-SNE use).
    """
    n = d2.shape[0]
    target = np.log(perplexity)
    beta = np.ones(n)
    lo, hi = np.zeros(n), np.full(n, np.inf)
    d2 = d2 - d2[:, :1]
    for _ in range(steps):
        P = np.exp(-d2 * beta[:, None])
        sP = P.sum(axis=1)
        H = np.log(sP) + beta * (d2 * P).sum(axis=1) / sP
        diff = H - target
        done = np.abs(diff) < tol
        if done.all():
            break
        up = diff > 0  # entropy too high: sharpen
        lo = np.where(up, beta, lo)
        hi = np.where(up, hi, beta)
        beta = np.where(up, np.where(np.isinf(hi), beta * 2, (beta + hi) / 2), (beta + lo) / 2)
    P = np.exp(-d2 * beta[:, None])
    return P / P.sum(axis=1, keepdims=True)


def lisi(embedding: np.ndarray, labels, *, perplexity: float = 30.0, max_cells: int = 20_000,
         random_state: int = 0) -> np.ndarray:
    """Local inverse Simpson's index of ``labels`` for (a sample of) the cells of ``embedding``.

    Parameters
    ----------
    embedding : numpy.ndarray, (n, d)
        Cells in the integrated space.
    labels : array-like, (n,)
        E.g. each cell's section.
    perplexity : float
        Effective neighbourhood size (Harmony and scIB: 30); 3 x perplexity neighbours are searched.
    max_cells : int
        Cells scored (a random sample above this; the neighbours come from all cells).
    random_state : int
        Seed of the sample.

    Returns
    -------
    numpy.ndarray
        One value per scored cell, from 1 (one label around it) to the number of labels.
    """
    E = np.asarray(embedding, dtype=np.float64)
    lab = pd.factorize(np.asarray(labels).astype(str))[0]
    n = len(E)
    k = int(min(n - 1, 3 * perplexity))
    rng = np.random.default_rng(random_state)
    idx = rng.choice(n, max_cells, replace=False) if n > max_cells else np.arange(n)
    dist, nbr = NearestNeighbors(n_neighbors=k + 1).fit(E).kneighbors(E[idx])
    dist, nbr = dist[:, 1:], nbr[:, 1:]
    W = _perplexity_weights(dist**2, min(perplexity, k / 3))
    n_lab = lab.max() + 1
    onehot = np.zeros((len(idx), n_lab))
    for j in range(k):
        np.add.at(onehot, (np.arange(len(idx)), lab[nbr[:, j]]), W[:, j])
    return 1.0 / np.maximum((onehot**2).sum(axis=1), 1e-12)


def mixing_score(embedding: np.ndarray, sections, **kwargs) -> float:
    """Median integration LISI rescaled to [0, 1]: 0 = sections apart, 1 = perfectly mixed."""
    n_sec = len(pd.unique(np.asarray(sections).astype(str)))
    if n_sec < 2:
        return float("nan")
    values = lisi(embedding, sections, **kwargs)
    return float(np.clip((np.median(values) - 1) / (n_sec - 1), 0, 1))


def shared_domains(domains, sections, *, min_share: float = MIN_DOMAIN_SHARE) -> tuple[int, int]:
    """(domains holding at least ``min_share`` of every section, all domains)."""
    table = pd.crosstab(np.asarray(domains).astype(str), np.asarray(sections).astype(str), normalize="columns")
    return int((table >= min_share).all(axis=1).sum()), len(table)


def integration_warnings(diag: dict) -> list[str]:
    """The messages a user needs when an integration probably failed (see the module docstring)."""
    msgs = []
    spec = diag.get("section_specific", {})
    if spec:
        said = ", ".join(f"{f} ({s})" for f, s in spec.items())
        msgs.append(f"Factors used by one section only: {said}. Those sections were explained apart instead of "
                    "sharing programs; try fewer factors (K), or choose K by stability "
                    "(tl.integrate_stability), and check that the sections measure the same tissue.")
    mix = diag.get("mixing")
    if mix is not None and np.isfinite(mix) and mix < POOR_MIXING:
        msgs.append(f"The sections barely mix in the integrated space (mixing {mix:.2f}; 0 = apart, 1 = mixed): "
                    "their cells do not meet. Domains clustered with scale='section' (the default: each section "
                    "standardised) can still be shared; check which domains hold cells of every section "
                    "(tl.diagnose with domain_key) and look for a batch or platform effect.")
        sizes = diag.get("panel_sizes") or {}
        if sizes and max(sizes.values()) >= UNEQUAL_PANELS * max(min(sizes.values()), 1):
            small, large = min(sizes, key=sizes.get), max(sizes, key=sizes.get)
            msgs[-1] += (f" The panels are very unequal ({small!r} measured {sizes[small]:,} genes, {large!r} "
                         f"{sizes[large]:,}): on so few genes the small panel's cells sit on other combinations "
                         "of the programs. genes='shared' (every section on the genes they all measured) "
                         "mixed far better in a 100- vs 2,340-gene DLPFC simulation (0.30 against 0.04; "
                         "docs/integration.md).")
    shared = diag.get("shared_domains")
    if shared is not None and shared[1] > 0 and shared[0] <= 1:
        msgs.append(f"Only {shared[0]} of {shared[1]} domains hold at least {MIN_DOMAIN_SHARE:.0%} of every "
                    "section: the sections kept their own domains (a failed integration, or sections of different "
                    "tissue).")
    return msgs
