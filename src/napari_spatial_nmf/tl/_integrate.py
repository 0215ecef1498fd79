"""Integrate several sections or datasets into shared spatial factors and gene programs.

Two methods, one API: ``method="inspire"`` is the INSPIRE model (Zhao et al. 2026 Nat Genet;
:mod:`napari_spatial_nmf.core.inspire`, PyTorch, the ``integration`` extra);
``method="joint_nnmf"`` is joint neighbourhood NMF with a per-section gene scaling
(:mod:`napari_spatial_nmf.core.joint_nnmf`, CPU, no deep learning). Both fit the shared
genes (INSPIRE's HVG intersection), keep every section's cells in one new AnnData, and
store: proportions of the K spatial factors per cell (``obsm[f"X_{key}"]``), the gene
programs (``varm[f"{key}_programs"]``, each summing to 1 over the genes), the per-section
gene scaling γ, the argmax factor, and the record in ``uns[key]``.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..core import inspire as _insp
from ..core._memory import check_memory
from ..core._progress import Progress
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
    n_factors: int = 10,
    *,
    method: str = "inspire",
    section_key: str | None = None,
    section_names: Sequence[str] | None = None,
    layer: str | None = None,
    spatial_key: str = "spatial",
    n_hvgs: int | None = 3000,
    min_genes: int = 1,
    min_cells: int = 1,
    n_steps: int = 2000,
    variant: str = "auto",
    rad_cutoff: float | None = None,
    rad_coef: float = 1.5,
    batch_size: int = 1024,
    coef_recon: float = 1.0,
    coef_geom: float = 0.02,
    lengthscale: float | None = None,
    max_iter: int = 1000,
    fit_gamma: bool = True,
    random_state: int = 1234,
    key_added: str = "integration",
) -> Generator[Progress, None, ad.AnnData]:
    """Integrate sections into shared spatial factors and gene programs (INSPIRE or joint NNMF).

    Parameters
    ----------
    sections : list of anndata.AnnData, or anndata.AnnData
        One AnnData per section (raw counts in ``X`` or ``layers[layer]``, coordinates in
        ``obsm[spatial_key]``), or one AnnData with a section column ``section_key``. The
        order of the list is the order of INSPIRE's adversarial chain. Never modified.
    n_factors : int
        K, the number of spatial factors (at most the number of shared genes).
    method : {"inspire", "joint_nnmf"}
        INSPIRE (graph attention or LGCN encoder, adversarial alignment, Poisson NMF
        decoder; needs PyTorch) or joint neighbourhood NMF with per-section gene scaling
        (CPU; no latent space).
    section_key : str, optional
        The section column (one AnnData), or where to read each AnnData's name.
    section_names : sequence of str, optional
        Names of the sections of a list (default: each AnnData's single value of
        ``obs[section_key]`` (or ``obs["section"]``), else "section i").
    layer : str, optional
        Counts from this layer.
    spatial_key : str
        Coordinates' key in ``obsm``; their unit is ``uns["spatial_unit"]`` (kept).
    n_hvgs : int or None
        Highly variable genes per section (scanpy seurat_v3); the model uses their
        intersection. None: every gene the sections share.
    min_genes, min_cells : int
        INSPIRE's per-section QC thresholds.
    n_steps : int
        INSPIRE training steps (a fixed number, as the reference).
    variant : {"auto", "gat", "lgcn"}
        INSPIRE's encoder: graph attention over whole sections (auto: up to 50,000 cells in
        all) or an MLP on ``[X, ÂX]`` with minibatches (larger data).
    rad_cutoff, rad_coef : float
        INSPIRE's neighbour radius, or its factor on the smallest cell distance (1.5).
    batch_size : int
        Cells per section and step (LGCN).
    coef_recon, coef_geom : float
        INSPIRE's loss weights (1.0, 0.02).
    lengthscale : float, optional
        Joint NNMF's kernel lengthscale (default: NNMF's, within each section).
    max_iter : int
        Joint NNMF's iterations at most.
    fit_gamma : bool
        Joint NNMF: fit the per-section gene scaling (INSPIRE always does).
    random_state : int
        Seed (INSPIRE's default 1234); runs on the CPU repeat exactly.
    key_added : str
        Results: ``obsm[f"X_{key}"]`` (proportions, (n, K) float32, rows sum to 1),
        ``obsm[f"X_{key}_latent"]`` (INSPIRE's Z, (n, 32)), ``obs[f"{key}_factor"]`` (argmax),
        ``varm[f"{key}_programs"]`` ((G, K), columns sum to 1), ``obsm["spatial_layout"]``
        (sections side by side, for display) and ``uns[key]`` (method, parameters,
        versions, seed, sections, γ (n_sections x G), loss trace, QC report).

    Returns
    -------
    anndata.AnnData
        A new AnnData: every section's kept cells x the shared genes (raw counts in ``X``),
        ``obs["section"]`` (categorical, in the given order) and the sections' obs columns.
        ``integrate`` returns it too.

    Raises
    ------
    ValueError
        Fewer than 2 sections, no shared genes (with each section's count), coordinates of
        different dimensionality, non-count, negative or NaN values, a missing
        ``obsm[spatial_key]``, K larger than the shared genes, an empty section, duplicate
        section names, a section key with NaN, a request that would not fit in memory.
    ImportError
        ``method="inspire"`` without PyTorch (the message names the extra).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}.")
    K = check_int(n_factors, "n_factors", minimum=1)
    n_steps = check_int(n_steps, "n_steps", minimum=1)
    if variant not in ("auto", *_insp.VARIANTS):
        raise ValueError(f"variant must be 'auto', 'gat' or 'lgcn'; got {variant!r}.")
    random_state = check_int(random_state, "random_state", minimum=0)
    check_int(min_genes, "min_genes", minimum=0)
    check_int(min_cells, "min_cells", minimum=0)
    check_int(batch_size, "batch_size", minimum=1)
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
                           min_cells=min_cells)
    G = len(sec.genes)
    if K > G:
        raise ValueError(f"n_factors = {K} is more than the {G} genes the sections share; choose K <= {G}.")
    if rad_cutoff is not None:
        rad_cutoff = check_positive(rad_cutoff, "rad_cutoff")
    if variant == "auto":
        variant = "gat" if sum(sec.sizes) <= 50_000 else "lgcn"
    unit = next((a.uns["spatial_unit"] for a in adatas if "spatial_unit" in a.uns), None)
    params = {"method": method, "n_factors": K, "section_key": section_key, "layer": layer, "spatial_key": spatial_key,
              "n_hvgs": n_hvgs, "min_genes": min_genes, "min_cells": min_cells, "random_state": int(random_state),
              "spatial_unit": unit}
    if method == "inspire":
        params.update(n_steps=n_steps, variant=variant, rad_cutoff=rad_cutoff, rad_coef=float(rad_coef),
                      batch_size=int(batch_size), coef_recon=float(coef_recon), coef_geom=float(coef_geom),
                      source="Zhao et al. 2026 Nat Genet; jiazhao97/INSPIRE@12b7516")
        check_memory(_insp.estimate_memory(sec.sizes, G, variant, 12, batch_size),
                     f"INSPIRE ({variant}) on {sum(sec.sizes):,} cells x {G:,} genes",
                     "Use variant='lgcn' (minibatches) or fewer genes (n_hvgs).")
    else:
        params.update(lengthscale=lengthscale, max_iter=check_int(max_iter, "max_iter", minimum=1),
                      fit_gamma=bool(fit_gamma), source="joint NNMF (this package), NNMF: Laursen et al. 2026")
    total = n_steps if method == "inspire" else max_iter
    yield Progress(0, total, f"{len(names)} sections, {sum(sec.sizes):,} cells, {G:,} shared genes")
    if method == "inspire":
        res = yield from _insp.iter_train(sec, K, n_steps, variant=variant, rad_cutoff=rad_cutoff, rad_coef=rad_coef,
                                          batch_size=batch_size, coef_recon=coef_recon, coef_geom=coef_geom,
                                          random_state=random_state)
        props, programs, gamma, latent = np.concatenate(res.proportions), res.programs, res.gamma, \
            np.concatenate(res.latent)
        record = {"losses": res.losses}
    else:
        props, programs, gamma, record = yield from _joint(sec, K, lengthscale, max_iter, fit_gamma, random_state)
        latent = None
    return _assemble(sec, props, programs, gamma, latent, key_added, params, record)


def _joint(sec, K, lengthscale, max_iter, fit_gamma, random_state):
    from ..core import joint_nnmf as _jn
    from ..core import nnmf as _nn

    X = sp.vstack([c.astype(np.float64) for c in sec.counts]).tocsr()
    X = _nn.normalize_cells(X)
    C = np.concatenate(sec.coords)
    groups = np.repeat(np.arange(len(sec.names)), sec.sizes)
    ls = _nn.default_lengthscale(C, groups) if lengthscale is None else check_positive(lengthscale, "lengthscale")
    _nn.check_kernel_memory(C, ls, 0.1, groups)
    kernel = _nn.spatial_kernel(C, ls, 0.1, groups)
    bounds = list(zip(np.cumsum([0, *sec.sizes[:-1]]), np.cumsum(sec.sizes)))
    res = yield from _jn.iter_fit_joint(X, bounds, K, kernel.S, max_iter=max_iter, fit_gamma=fit_gamma,
                                        random_state=random_state)
    with np.errstate(invalid="ignore", divide="ignore"):
        props = (res.weights / res.weights.sum(axis=1, keepdims=True)).astype(np.float32)
    record = {"gkl": res.gkl, "gkl_trace": res.trace, "n_iter": res.n_iter, "stop_reason": res.stop_reason,
              "lengthscale": ls, "mean_neighbors": kernel.mean_neighbors}
    return props, res.signatures.astype(np.float32), res.gamma.astype(np.float32), record


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
    rec = {"factor_names": names, "sections": list(sec.names), "gamma": gamma, "genes": list(sec.genes),
           "qc": {k: v for k, v in sec.report.items() if k != "n_shared_genes"} | {"n_shared_genes": len(sec.genes)},
           **record}
    return store_result(out, key, params["method"], params, record=rec, obsm=obsm,
                        varm={f"{key}_programs": programs.T.copy()},
                        obs={f"{key}_factor": pd.Categorical(np.asarray(names)[props.argmax(axis=1)],
                                                             categories=names)})


integrate = blocking(iter_integrate, "integrate")
