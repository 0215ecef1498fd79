"""Integrate several sections or datasets into shared spatial factors and gene programs.

Two methods, one API: ``method="joint_nnmf"`` is joint neighbourhood NMF with a per-section
gene scaling (:mod:`napari_spatial_nmf.core.joint_nnmf`, CPU, no deep learning; the default);
``method="inspire"`` is the INSPIRE model (Zhao et al. 2026 Nat Genet;
:mod:`napari_spatial_nmf.core.inspire`, PyTorch, the ``integration`` extra). Both keep every
section's cells in one new AnnData and store: proportions of the K spatial factors per cell
(``obsm[f"X_{key}"]``), the gene programs (``varm[f"{key}_programs"]``, each summing to 1 over
the genes), the per-section gene scaling γ, the argmax factor, each section's neighbourhood
graph, the diagnostics of :mod:`napari_spatial_nmf.core.diagnostics` and the record in
``uns[key]``. Joint NNMF also takes panels that differ (``genes="union"``), imputing every
section's unmeasured genes, and a consensus over restarts (``n_restarts``).
"""

from __future__ import annotations

import warnings
from collections.abc import Generator, Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..core import inspire as _insp
from ..core._memory import check_memory
from ..core._progress import Progress, relay
from ..core._validation import check_int, check_positive
from ..core.sections import prepare_sections, split_sections
from ._common import blocking, store_result, tool

METHODS = ("inspire", "joint_nnmf")
LAYOUT_GAP = 0.1  # side-by-side display: gap between sections, as a fraction of a section's width


def factor_names(k: int) -> list[str]:
    """``F1`` ... ``FK``: the integration's spatial factors."""
    return [f"F{i + 1}" for i in range(k)]


def section_inputs(sections, section_key=None, section_names=None) -> tuple[list, list[str]]:
    """The sections as a list of AnnData and their names (no copy, no checks of the data).

    Raises
    ------
    TypeError
        Neither a list of AnnData nor one AnnData.
    ValueError
        One AnnData without ``section_key``.
    """
    if isinstance(sections, ad.AnnData):
        if section_key is None:
            raise ValueError("One AnnData was given: name its section column with section_key=..., or pass a list "
                             "of AnnData (one per section).")
        adatas, names = split_sections(sections, section_key)
    elif isinstance(sections, (list, tuple)):
        adatas = list(sections)
        key = section_key or "section"
        if section_names is not None:
            names = [str(n) for n in section_names]
        else:  # each AnnData's own section label when it has one, else "section i"
            names = [str(a.obs[key].iloc[0]) if isinstance(a, ad.AnnData) and key in a.obs and a.n_obs
                     and a.obs[key].nunique() == 1 else f"section {i + 1}" for i, a in enumerate(adatas)]
    else:
        raise TypeError(f"sections must be a list of AnnData or one AnnData with section_key; got "
                        f"{type(sections).__name__}.")
    return adatas, names


def layout_side_by_side(coords: list[np.ndarray]) -> np.ndarray:
    """Sections placed side by side along x (a gap of 10 % of the widest), for display."""
    width = max(np.ptp(c[:, 0]) for c in coords)
    out, x0 = [], 0.0
    for c in coords:
        shifted = c[:, :2] - c[:, :2].min(axis=0) + [x0, 0.0]
        out.append(shifted)
        x0 = shifted[:, 0].max() + LAYOUT_GAP * width
    return np.concatenate(out)


@tool
def iter_integrate(
    sections,
    n_factors: int = 12,
    *,
    method: str = "joint_nnmf",
    section_key: str | None = None,
    section_names: Sequence[str] | None = None,
    layer: str | None = None,
    spatial_key: str = "spatial",
    counts: str = "raw",
    genes: str = "shared",
    n_hvgs: int | None = 3000,
    min_genes: int = 1,
    min_cells: int = 1,
    n_restarts: int = 1,
    n_steps: int = 2000,
    variant: str = "auto",
    rad_cutoff: float | None = None,
    rad_coef: float | None = None,
    batch_size: int = 1024,
    coef_recon: float = 1.0,
    coef_geom: float = 0.02,
    lengthscale: float | None = None,
    max_iter: int = 300,
    tol: float = 1e-7,
    fit_gamma: bool = True,
    random_state: int = 0,
    key_added: str = "integration",
) -> Generator[Progress, None, ad.AnnData]:
    """Integrate sections into shared spatial factors and gene programs (joint NNMF or INSPIRE).

    Parameters
    ----------
    sections : list of anndata.AnnData, or anndata.AnnData
        One AnnData per section (counts in ``X`` or ``layers[layer]``, coordinates in
        ``obsm[spatial_key]``), or one AnnData with a section column ``section_key`` (sections
        in its category order when categorical, else in order of appearance). The order is
        INSPIRE's adversarial chain and the 3D stack's. Never modified.
    n_factors : int
        K, the number of spatial factors (at most the number of shared genes). 12 is the
        default: the K that scored best on the DLPFC and BARISTAseq benchmarks; choose it by
        stability with :func:`integrate_stability`.
    method : {"joint_nnmf", "inspire"}
        Joint neighbourhood NMF with per-section gene scaling (CPU, seconds to minutes; no
        latent space), or INSPIRE (graph attention or LGCN encoder, adversarial alignment,
        Poisson NMF decoder; needs PyTorch; minutes to hours on a CPU).
    section_key : str, optional
        The section column (one AnnData), or where to read each AnnData's name.
    section_names : sequence of str, optional
        Names of the sections of a list (default: each AnnData's single value of
        ``obs[section_key]`` (or ``obs["section"]``), else "section i").
    layer : str, optional
        Counts from this layer.
    spatial_key : str
        Coordinates' key in ``obsm``; their unit is ``uns["spatial_unit"]``, which must be
        the same in every section.
    counts : {"raw", "recover", "pseudo"}
        The values are counts (the default; non-integers are refused), or normalised values:
        ``"recover"`` recovers counts from ``log1p(normalize_total)`` data (each cell's values
        un-logged, over its smallest non-zero value, rounded; for 99.3-99.7 % of the BARISTAseq
        values within 0.01 of an integer), ``"pseudo"`` uses the un-logged values as
        pseudo-counts (:func:`napari_spatial_nmf.core.sections.to_counts`). Sections that
        already hold counts keep them (data sets of two technologies may mix both).
    genes : {"shared", "union"}
        Fit the genes every section selected (INSPIRE's intersection), or every gene some
        section selected (joint NNMF only): each section's likelihood runs over the genes it
        measured, alignment rests on the shared ones, every program has a weight for every
        gene, and each section's unmeasured genes are imputed (``layers[f"{key}_imputed"]``).
        The fit starts from a fit of the genes every section measured.
    n_hvgs : int or None
        Highly variable genes (scanpy seurat_v3). INSPIRE, and ``genes="union"``: per section,
        then their intersection (union); joint NNMF on shared genes: this many of the genes all
        sections share, ranked over the sections together (a per-section intersection shrinks
        with every section). None: every gene.
    min_genes, min_cells : int
        INSPIRE's per-section QC thresholds (dropped cells are reported, with a warning).
    n_restarts : int
        Fits from seeds ``random_state``, ``random_state + 1``, ...; their programs are matched
        (Hungarian, cosine) and the matched proportions and programs averaged
        (:mod:`napari_spatial_nmf.core.consensus`), so one call moves less between seeds. The
        matched similarities and the restarts' instability are recorded. INSPIRE keeps the
        latent space of its first restart.
    n_steps : int
        INSPIRE's training steps (a fixed number, as the reference).
    variant : {"auto", "gat", "lgcn"}
        INSPIRE's encoder: graph attention over whole sections (auto: up to 50,000 cells in
        all) or an MLP on ``[X, ÂX]`` with minibatches (larger data).
    rad_cutoff, rad_coef : float, optional
        INSPIRE's neighbour radius for every section, or INSPIRE's own rule (``rad_coef`` x
        the smallest distance between two cells of the first section; the reference uses
        1.5). Default: each section's own radius, the one that gives its median cell 6
        neighbours (:mod:`napari_spatial_nmf.core.neighbourhoods`): a Visium spot's 6
        surrounding spots, and 5-8 cells on single-cell data, where INSPIRE's rule leaves most
        cells alone. Each section's radius, mean degree and isolated share are recorded, and
        a degenerate graph (under 3 neighbours per cell, or most cells alone) warns.
    batch_size : int
        Cells per section and step (LGCN).
    coef_recon, coef_geom : float
        INSPIRE's loss weights (1.0, 0.02).
    lengthscale : float, optional
        Joint NNMF's kernel lengthscale for every section (default: NNMF's rule, the mean
        distance to the 14th neighbour, computed for each section on its own).
    max_iter, tol : int, float
        Joint NNMF's iterations at most and its stopping tolerance on the relative change
        of the divergence (a fit that stops at ``max_iter`` warns, scikit-learn's
        ``ConvergenceWarning``).
    fit_gamma : bool
        Joint NNMF: fit the per-section gene scaling (INSPIRE always does).
    random_state : int
        Seed (of the first restart); runs on the CPU repeat exactly.
    key_added : str
        Results: ``obsm[f"X_{key}"]`` (proportions, (n, K) float32, rows sum to 1),
        ``obsm[f"X_{key}_latent"]`` (INSPIRE's Z, (n, 32)), ``obs[f"{key}_factor"]`` (argmax),
        ``varm[f"{key}_programs"]`` ((G, K), columns sum to 1), ``obsm["spatial_layout"]``
        (sections side by side, for display), with ``genes="union"``
        ``layers[f"{key}_imputed"]`` and ``uns[key]["panels"]``, and ``uns[key]`` (method,
        parameters, versions, seed, sections, γ, loss or divergence trace, QC report,
        ``graph``, ``diagnostics``, ``restarts``).

    Returns
    -------
    anndata.AnnData
        A new AnnData: every section's kept cells x the model's genes (counts in ``X``; a
        gene a section did not measure has no entries), ``obs["section"]`` (categorical, in
        the sections' order) and the sections' obs columns. ``integrate`` returns it too.

    Warns
    -----
    UserWarning
        A degenerate neighbour graph (naming the section and the fix); cells dropped by QC;
        factors used by one section only, sections that barely mix
        (:func:`napari_spatial_nmf.core.diagnostics.integration_warnings`).

    Raises
    ------
    ValueError
        Fewer than 2 sections, no shared genes or fewer than K (with each section's count),
        coordinates of different dimensionality or units, non-count values with
        ``counts="raw"``, negative or NaN values, a missing ``obsm[spatial_key]``, an empty or
        too small section (under 15 cells), duplicate section names, a section key with NaN,
        ``genes="union"`` with INSPIRE, a request that would not fit in memory.
    ImportError
        ``method="inspire"`` without PyTorch (the message names the extra).

    Notes
    -----
    INSPIRE: Zhao et al. 2026 Nat Genet (jiazhao97/INSPIRE@12b7516). Joint NNMF: INSPIRE's
    Poisson NMF decoder x_ig ~ Poisson(l_i (β_i B)_g e^{γ_sg}) fitted with NNMF's updates and
    kernel smoothing (Laursen et al. 2026), per section.
    """
    n_restarts = check_int(n_restarts, "n_restarts", minimum=1)
    opts = {"n_steps": n_steps, "variant": variant, "rad_cutoff": rad_cutoff, "rad_coef": rad_coef,
            "batch_size": batch_size, "coef_recon": coef_recon, "coef_geom": coef_geom, "lengthscale": lengthscale,
            "max_iter": max_iter, "tol": tol, "fit_gamma": fit_gamma}
    sec, graph, params, opts = prepare(sections, n_factors, method=method, section_key=section_key,
                                       section_names=section_names, layer=layer, spatial_key=spatial_key,
                                       counts=counts, genes=genes, n_hvgs=n_hvgs, min_genes=min_genes,
                                       min_cells=min_cells, random_state=random_state, key_added=key_added, **opts)
    K = params["n_factors"]
    params["n_restarts"] = n_restarts
    per_fit = opts["n_steps"] if method == "inspire" else opts["max_iter"]
    total = per_fit * n_restarts
    yield Progress(0, total, f"{len(sec.names)} sections, {sum(sec.sizes):,} cells, {len(sec.genes):,} genes "
                   f"({len(sec.shared):,} shared)" + (f", {n_restarts} restarts" if n_restarts > 1 else ""))
    fits, records, latent = [], [], None
    opts = dict(opts, warn=n_restarts == 1)  # several fits: one warning for all of them (below)
    for r in range(n_restarts):
        fit = yield from relay(fit_one(sec, graph, method, K, params["random_state"] + r, opts),
                               lambda p, o=r * per_fit, r=r: _restart_progress(p, o, total, r, n_restarts))
        fits.append(fit[:3])
        records.append(fit[3])
        if latent is None:
            latent = fit[4]
    if n_restarts > 1:
        warn_unconverged({K: records}, opts["max_iter"], opts["tol"], stacklevel=3)
    return finish(sec, graph, fits, records, latent, params, key_added)


def warn_unconverged(records: dict, max_iter: int, tol: float, stacklevel: int = 2) -> None:
    """One ``ConvergenceWarning`` for the joint NNMF fits (``{K: [record, ...]}``) that ``max_iter`` ended."""
    from sklearn.exceptions import ConvergenceWarning

    hit = {k: sum(r.get("stop_reason") == "max_iter" for r in recs) for k, recs in records.items()}
    n, total = sum(hit.values()), sum(len(recs) for recs in records.values())
    if n:
        where = ", ".join(f"K={k}: {v}" for k, v in hit.items() if v) if len(records) > 1 else ""
        warnings.warn(f"Joint NNMF stopped at max_iter={max_iter} before the tolerance {tol:g} was met in {n} of "
                      f"{total} fits{f' ({where})' if where else ''}; raise max_iter (or tol) if the factors still "
                      "change.", ConvergenceWarning, stacklevel=stacklevel + 1)


def prepare(sections, n_factors, *, method, section_key, section_names, layer, spatial_key, counts, genes, n_hvgs,
            min_genes, min_cells, random_state, key_added, n_steps, variant, rad_cutoff, rad_coef, batch_size,
            coef_recon, coef_geom, lengthscale, max_iter, tol, fit_gamma):
    """Every check of an integration, the prepared sections and their graphs, the parameters and
    the fitting options: all before any training (shared by :func:`iter_integrate` and
    :func:`iter_integrate_stability`).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}.")
    ks = [n_factors] if not isinstance(n_factors, (list, tuple, range)) else list(n_factors)
    ks = [check_int(k, "n_factors", minimum=1) for k in ks]
    K = max(ks)
    n_steps = check_int(n_steps, "n_steps", minimum=1)
    if variant not in ("auto", *_insp.VARIANTS):
        raise ValueError(f"variant must be 'auto', 'gat' or 'lgcn'; got {variant!r}.")
    if genes == "union" and method == "inspire":
        raise ValueError("genes='union' (panels that differ) is fitted by joint NNMF only: INSPIRE's encoder needs one "
                         "feature space for every section. Use method='joint_nnmf', or genes='shared'.")
    random_state = check_int(random_state, "random_state", minimum=0)
    check_int(min_genes, "min_genes", minimum=0)
    check_int(min_cells, "min_cells", minimum=0)
    check_int(batch_size, "batch_size", minimum=1)
    max_iter = check_int(max_iter, "max_iter", minimum=1)
    tol = float(tol) if isinstance(tol, (int, float, np.floating)) and not isinstance(tol, bool) else tol
    if not isinstance(tol, float) or not np.isfinite(tol) or tol < 0:
        raise ValueError(f"tol must be a finite number >= 0; got {tol!r}.")
    if rad_coef is not None:
        rad_coef = check_positive(rad_coef, "rad_coef")
    for name, value in (("coef_recon", coef_recon), ("coef_geom", coef_geom)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                or not np.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0; got {value!r}.")
    if not isinstance(key_added, str) or not key_added:
        raise ValueError(f"key_added must be a non-empty name; got {key_added!r}.")
    if method == "inspire":
        _insp.torch_module()
    adatas, names = section_inputs(sections, section_key, section_names)
    sec = prepare_sections(adatas, names, layer=layer, spatial_key=spatial_key, n_hvgs=n_hvgs, min_genes=min_genes,
                           min_cells=min_cells, counts=counts, genes=genes, features=method == "inspire",
                           hvg="section" if method == "inspire" else "pooled")
    G, n_shared = len(sec.genes), len(sec.shared)
    if n_shared < K:
        per = ", ".join(f"{n}: {v}" for n, v in sec.report["hvgs"].items())
        raise ValueError(f"K = {K} is more than the {n_shared} genes the sections share (genes per section: {per}); "
                         f"the alignment rests on them. Choose K <= {n_shared}, or more genes (n_hvgs=None).")
    if rad_cutoff is not None:
        rad_cutoff = check_positive(rad_cutoff, "rad_cutoff")
    if lengthscale is not None:
        lengthscale = check_positive(lengthscale, "lengthscale")
    graph = _graph(sec, method, rad_cutoff, rad_coef, lengthscale)
    if variant == "auto":
        variant = "gat" if sum(sec.sizes) <= 50_000 else "lgcn"
    from ..core.sections import section_unit

    params = {"method": method, "n_factors": K, "section_key": section_key, "layer": layer, "spatial_key": spatial_key,
              "counts": counts, "genes": genes, "n_hvgs": n_hvgs, "min_genes": min_genes, "min_cells": min_cells,
              "random_state": int(random_state), "spatial_unit": section_unit(adatas, names)}
    if method == "inspire":
        params.update(n_steps=n_steps, variant=variant, rad_cutoff=rad_cutoff, rad_coef=rad_coef,
                      batch_size=int(batch_size), coef_recon=float(coef_recon), coef_geom=float(coef_geom),
                      source="Zhao et al. 2026 Nat Genet; jiazhao97/INSPIRE@12b7516")
        check_memory(_insp.estimate_memory(sec.sizes, G, variant, 12, batch_size),
                     f"INSPIRE ({variant}) on {sum(sec.sizes):,} cells x {G:,} genes",
                     "Use variant='lgcn' (minibatches) or fewer genes (n_hvgs).")
    else:
        params.update(lengthscale=lengthscale, max_iter=max_iter, tol=tol, fit_gamma=bool(fit_gamma),
                      source="joint NNMF (this package), NNMF: Laursen et al. 2026")
    opts = {"n_steps": n_steps, "variant": variant, "batch_size": batch_size, "coef_recon": coef_recon,
            "coef_geom": coef_geom, "max_iter": max_iter, "tol": tol, "fit_gamma": fit_gamma}
    return sec, graph, params, opts


def fit_one(sec, graph, method, K, seed, opts):
    """One fit (generator): returns ``(proportions, programs (K, G), gamma, record, latent or None)``."""
    if method == "inspire":
        res = yield from _insp.iter_train(sec, K, opts["n_steps"], variant=opts["variant"],
                                          radii=[g.scale for g in graph], batch_size=opts["batch_size"],
                                          coef_recon=opts["coef_recon"], coef_geom=opts["coef_geom"],
                                          random_state=seed)
        return (np.concatenate(res.proportions), res.programs, res.gamma, {"losses": res.losses},
                np.concatenate(res.latent))
    props, programs, gamma, record = yield from _joint(sec, K, [g.scale for g in graph], opts["max_iter"],
                                                       opts["tol"], opts["fit_gamma"], seed,
                                                       opts.get("warn", True))
    return props, programs, gamma, record, None


def finish(sec, graph, fits, records, latent, params, key_added) -> ad.AnnData:
    """The consensus of the fits, assembled into the result AnnData with its diagnostics."""
    from ..core.consensus import consensus

    cons = consensus(fits)
    record = dict(records[0])
    record["graph"] = pd.DataFrame([g.as_dict() for g in graph])
    n = len(fits)
    if n > 1:
        record["restarts"] = {"n": n, "seeds": [params["random_state"] + r for r in range(n)],
                              "instability": cons.instability,
                              "program_similarity": pd.DataFrame(cons.similarity,
                                                                 columns=factor_names(cons.programs.shape[0]))}
    out = _assemble(sec, cons.proportions, cons.programs, cons.gamma, latent, key_added, params, record)
    diagnose(out, key_added)
    return out


def _restart_progress(p: Progress, offset: int, total: int, r: int, n: int) -> Progress:
    msg = f"restart {r + 1}/{n}: {p.message}" if n > 1 else p.message
    return Progress(offset + p.step, total, msg, p.data)


def diagnose(adata: ad.AnnData, key: str = "integration", *, domain_key: str | None = None,
             basis: str | None = None, warn: bool = True) -> dict:
    """Label-free diagnostics of an integration (:mod:`napari_spatial_nmf.core.diagnostics`),
    stored in ``uns[key]["diagnostics"]``, with the warnings they call for.

    Parameters
    ----------
    adata : anndata.AnnData
        The result of :func:`integrate`.
    key : str
        The result.
    domain_key : str, optional
        ``obs`` column of domains (adds the shared-domain count).
    basis : str, optional
        ``obsm`` key of the mixing embedding (default: the latent space, else the factors
        standardised per section, as :func:`cluster_domains` clusters them).
    warn : bool
        Emit the warnings.

    Returns
    -------
    dict
        ``factor_usage`` (sections x factors), ``section_specific`` ({factor: section}),
        ``mixing`` (0 apart ... 1 mixed), ``shared_domains`` (shared, all), ``panel_sizes``
        ({section: genes measured}, a ``genes="union"`` run), ``warnings``.
    """
    import warnings as _w

    from ..core import diagnostics as dg
    from ..core.domains import standardise

    sections = adata.obs["section"].astype(str).to_numpy()
    P = np.asarray(adata.obsm[f"X_{key}"], dtype=np.float64)
    names = list(adata.uns[key]["factor_names"])
    usage = dg.factor_usage(P, sections)
    usage.columns = names
    sizes = adata.obs["section"].astype(str).value_counts().to_dict()
    spec = dg.section_specific(usage.set_axis(range(len(names)), axis=1), sizes)
    emb = np.asarray(adata.obsm[basis]) if basis else (
        np.asarray(adata.obsm[f"X_{key}_latent"]) if f"X_{key}_latent" in adata.obsm else standardise(P, sections))
    diag = {"factor_usage": usage, "section_specific": {names[k]: s for k, s in spec.items()},
            "mixing": dg.mixing_score(emb, sections)}
    if domain_key is not None and domain_key in adata.obs:
        diag["shared_domains"] = dg.shared_domains(adata.obs[domain_key].to_numpy(), sections)
    panels = adata.uns[key].get("panels")  # genes x sections, a union-of-panels run
    if panels is not None:
        diag["panel_sizes"] = {str(c): int(np.asarray(panels[c]).sum()) for c in panels.columns}
    diag["warnings"] = dg.integration_warnings(diag)
    adata.uns[key]["diagnostics"] = diag
    if warn:
        for m in diag["warnings"]:
            _w.warn(m, UserWarning, stacklevel=3)
    return diag


def _graph(sec, method, rad_cutoff, rad_coef, lengthscale):
    """Each section's neighbourhood scale from its own distances (or the one given), with its
    degree statistics; degenerate graphs warn at the call (before any training).
    """
    from ..core import neighbourhoods as nb
    from ..core import nnmf as _nn

    stats = []
    for name, C in zip(sec.names, sec.coords):
        if method == "inspire":
            if rad_cutoff is not None:
                r, rule = rad_cutoff, "rad_cutoff"
            elif rad_coef is not None:
                r = rad_coef * _insp.min_distance(sec.coords[0])
                rule = f"INSPIRE's rule: {rad_coef:g} x the smallest distance in {sec.names[0]!r}"
            else:
                r, rule = nb.data_radius(C), f"the median cell's {nb.TARGET_DEGREE} nearest neighbours"
            stats.append(nb.GraphStats(name, r, *nb.degree_stats(C, r), rule))
        else:
            ls = lengthscale if lengthscale is not None else _nn.resolve_lengthscale(C, None)
            rule = "lengthscale" if lengthscale is not None else "mean distance to the 14th neighbour"
            _nn.check_kernel_memory(C, ls, 0.1, None)
            stats.append(nb.GraphStats(name, ls, *nb.kernel_degree_stats(C, ls), rule))
    what = "neighbour radius" if method == "inspire" else "kernel lengthscale"
    fix = ("Leave rad_cutoff and rad_coef unset (each section's radius then comes from its own distances) or pass a "
           "rad_cutoff that gives each cell several neighbours." if method == "inspire" else
           "Leave lengthscale unset (each section's comes from its own distances) or pass a larger one.")
    nb.warn_if_degenerate(stats, what, fix, stacklevel=5)
    return stats


def _joint(sec, K, lengthscales, max_iter, tol, fit_gamma, random_state, warn=True):
    """One joint NNMF fit; returns (proportions, programs (K, G), gamma, record)."""
    from ..core import joint_nnmf as _jn
    from ..core import nnmf as _nn

    X = sp.vstack([c.astype(np.float64) for c in sec.counts]).tocsr()
    X = _nn.normalize_cells(X)
    kernels = [_nn.spatial_kernel(C, ls, 0.1) for C, ls in zip(sec.coords, lengthscales)]  # never across sections
    S = sp.block_diag([k.S for k in kernels], format="csr")
    mean_neighbors = float(np.average([k.mean_neighbors for k in kernels], weights=sec.sizes))
    bounds = list(zip(np.cumsum([0, *sec.sizes[:-1]]), np.cumsum(sec.sizes)))
    init = None
    if sec.measured is not None and not sec.measured.all():
        # panels that differ: first the genes every section measured (where the sections can meet),
        # then every gene from that start; fitted from random starts on the union at once, a small
        # panel's cells settle on factor combinations the other sections do not use
        both = np.flatnonzero(sec.measured.all(axis=0))
        Xb = X[:, both].tocsr()
        Xb.data *= np.repeat(len(both) / np.maximum(np.asarray(Xb.sum(axis=1)).ravel(), 1e-12), np.diff(Xb.indptr))
        first = yield from _jn.iter_fit_joint(Xb, bounds, K, S,
                                              max_iter=max_iter, tol=tol, fit_gamma=fit_gamma,
                                              random_state=random_state, warn=False)
        Ht = np.full((X.shape[1], K), float(first.signatures.mean()))
        Ht[both] = first.signatures.T
        init = (first.weights, Ht)
    res = yield from _jn.iter_fit_joint(X, bounds, K, S, max_iter=max_iter, tol=tol, fit_gamma=fit_gamma,
                                        random_state=random_state, measured=sec.measured, warn=warn, init=init)
    with np.errstate(invalid="ignore", divide="ignore"):
        props = (res.weights / res.weights.sum(axis=1, keepdims=True)).astype(np.float32)
    record = {"gkl": res.gkl, "gkl_trace": res.trace, "n_iter": res.n_iter, "stop_reason": res.stop_reason,
              "lengthscale": [float(v) for v in lengthscales], "mean_neighbors": mean_neighbors,
              "cell_scale": np.asarray(res.weights.sum(axis=1), dtype=np.float32)}
    return props, res.signatures.astype(np.float32), res.gamma.astype(np.float32), record


def imputed_expression(sec, props, programs, gamma, cell_scale) -> np.ndarray:
    """Every section's expected expression of every model gene from the programs: (n, G)
    float32, on each cell's own normalised scale (the model's normalisation: each cell's
    measured genes sum to their number). Each cell is described by its own weights on the
    programs, refitted from its measured genes without the spatial smoothing
    (:func:`napari_spatial_nmf.core.joint_nnmf.cell_weights`), so an imputed gene follows
    the cell, not only its neighbourhood; a gene a section did not measure takes the scaling
    of the gene's reference section (the first that measured it).
    """
    from ..core import joint_nnmf as _jn
    from ..core import nnmf as _nn

    panels = sec.panels
    ref = panels.argmax(axis=0)
    g = np.nan_to_num(np.asarray(gamma, dtype=np.float64), nan=-np.inf)
    c = np.where(panels, np.exp(g), 0.0)
    X = _nn.normalize_cells(sp.vstack([m.astype(np.float64) for m in sec.counts]).tocsr())
    bounds = list(zip(np.cumsum([0, *sec.sizes[:-1]]), np.cumsum(sec.sizes)))
    W0 = props.astype(np.float64) * (np.asarray(cell_scale, dtype=np.float64)[:, None] if cell_scale is not None
                                     else np.asarray(X.sum(axis=1)))
    W = _jn.cell_weights(X, bounds, programs.T.astype(np.float64), c, W0)
    g = np.nan_to_num(np.asarray(gamma, dtype=np.float64))
    out = []
    for s, (a, b) in enumerate(bounds):
        scale = np.exp(np.where(panels[s], g[s], g[ref, np.arange(len(ref))]))
        out.append((W[a:b] @ (programs.astype(np.float64) * scale[None, :])).astype(np.float32))
    return np.concatenate(out)


def _assemble(sec, props, programs, gamma, latent, key, params, record) -> ad.AnnData:
    obs = pd.concat(sec.obs)
    for c in obs.columns:  # columns missing in some sections become object; keep them as text
        if obs[c].dtype == object:
            obs[c] = obs[c].astype(str).where(obs[c].notna(), None)
    obs["section"] = pd.Categorical(np.repeat(sec.names, sec.sizes), categories=sec.names)
    obs["library_size"] = np.concatenate(sec.library)
    out = ad.AnnData(sp.vstack(sec.counts).tocsr(), obs=obs, var=pd.DataFrame(index=pd.Index(sec.genes, name="gene")))
    out.obsm["spatial"] = np.concatenate([c[:, :2] if c.shape[1] == 2 else c for c in sec.coords])
    out.obsm["spatial_layout"] = layout_side_by_side(sec.coords)
    if params.get("spatial_unit"):
        out.uns["spatial_unit"] = params["spatial_unit"]
    names = factor_names(programs.shape[0])
    obsm = {f"X_{key}": props}
    if latent is not None:
        obsm[f"X_{key}_latent"] = latent
    layers = {}
    cell_scale = record.pop("cell_scale", None)
    if sec.measured is not None:  # panels that differ: which section measured what, and the imputation
        record["panels"] = pd.DataFrame(sec.panels.T, index=pd.Index(sec.genes, name="gene"), columns=sec.names)
        layers[f"{key}_imputed"] = imputed_expression(sec, props, programs, gamma, cell_scale)
        out.var["n_sections_measured"] = sec.panels.sum(axis=0)
    qc = {k: v for k, v in sec.report.items() if k not in ("n_shared_genes", "n_genes")}
    rec = {"factor_names": names, "sections": list(sec.names), "gamma": gamma, "genes": list(sec.genes),
           "qc": qc | {"n_shared_genes": len(sec.shared), "n_genes": len(sec.genes)}, **record}
    return store_result(out, key, params["method"], params, record=rec, obsm=obsm, layers=layers,
                        varm={f"{key}_programs": programs.T.copy()},
                        obs={f"{key}_factor": pd.Categorical(np.asarray(names)[props.argmax(axis=1)],
                                                             categories=names)})


integrate = blocking(iter_integrate, "integrate")
