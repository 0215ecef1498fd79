"""Several sections (or datasets) prepared for integration, as INSPIRE prepares them.

Per section (INSPIRE ``utils.preprocess``, jiazhao97/INSPIRE@12b7516; methods-digest §3.2):
drop mitochondrial genes (``mt-`` / ``MT-``), drop cells and genes below the QC thresholds,
pick highly variable genes with scanpy's ``highly_variable_genes(flavor="seurat_v3")`` on
the raw counts; the shared features are the intersection of the sections' HVGs (sorted).
Each section keeps its raw counts of the shared genes (the Poisson model's data), its
library size over those genes, and ``normalize_total(1e4)`` + ``log1p`` of the shared genes
(the encoders' input). Every check runs before anything is computed.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

MIN_SECTION_CELLS = 15  # a neighbourhood (NNMF's default lengthscale is the distance to the 14th neighbour)
PANEL_LOSS = 0.25  # genes="shared" warns when a section loses more than this share of its panel


@dataclass
class Sections:
    """Sections restricted to their shared genes.

    Attributes
    ----------
    names : list of str
        One per section, in the given order (the adversarial chain's order).
    genes : list of str
        The model's genes (G): the shared genes, or with ``genes="union"`` every selected gene
        of any section (``measured`` says which section measured which).
    counts : list of scipy.sparse.csr_matrix, float32, (n_s, G)
        Counts of those genes (a gene the section did not measure has no entries).
    lognorm : list of numpy.ndarray, float32, (n_s, G), or empty
        ``log1p(normalize_total(1e4))`` of the shared genes (INSPIRE's encoder input; only
        when asked for).
    library : list of numpy.ndarray, float32, (n_s,)
        Library sizes: the sum of each cell's shared-gene counts.
    coords : list of numpy.ndarray, float64, (n_s, 2 or 3)
        Cell coordinates as given.
    obs : list of pandas.DataFrame
        The kept cells' obs (index made unique per section).
    report : dict
        Cells and genes dropped per section, HVGs per section, how counts were obtained.
    measured : numpy.ndarray of bool, (n_sections, G), optional
        Which section measured which gene (None: all of them).
    """

    names: list[str]
    genes: list[str]
    counts: list
    lognorm: list
    library: list
    coords: list
    obs: list
    report: dict = field(default_factory=dict)
    measured: np.ndarray | None = None

    @property
    def panels(self) -> np.ndarray:
        """(sections x genes) bool: which section measured which gene (all True for shared genes)."""
        if self.measured is None:
            return np.ones((len(self.names), len(self.genes)), dtype=bool)
        return self.measured

    @property
    def shared(self) -> list[str]:
        """The genes every section measured."""
        return [g for g, m in zip(self.genes, self.panels.all(axis=0)) if m]

    @property
    def sizes(self) -> list[int]:
        """Cells per section."""
        return [c.shape[0] for c in self.counts]


def split_sections(adata: ad.AnnData, section_key: str) -> tuple[list[ad.AnnData], list[str]]:
    """One AnnData with a section column -> one AnnData per section (views).

    Sections come in the column's category order when it is categorical (the order the
    user set, e.g. serial sections from first to last), else in order of appearance.

    Raises
    ------
    KeyError
        No such column.
    ValueError
        Missing section labels; different values that read the same (``1`` and ``"1"``).
    """
    if section_key not in adata.obs:
        raise KeyError(f"section_key {section_key!r} is not a column of obs (columns: {list(adata.obs.columns)}).")
    col = adata.obs[section_key]
    if col.isna().any():
        raise ValueError(f"obs[{section_key!r}] has {int(col.isna().sum())} cells without a section; give every cell "
                         "its section or drop them.")
    if isinstance(col.dtype, pd.CategoricalDtype):
        present = np.unique(col.cat.codes.to_numpy())
        codes = np.searchsorted(present, col.cat.codes.to_numpy())
        values = list(col.cat.categories[present])
    else:
        codes, uniques = pd.factorize(col.to_numpy(dtype=object))
        values = list(uniques)
    names = [str(v) for v in values]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        same = [repr(v) for v in values if str(v) in clash]
        raise ValueError(f"obs[{section_key!r}] holds different values that read the same ({', '.join(same)}), so they "
                         "cannot name sections: make the column one type, e.g. adata.obs[key] = "
                         "adata.obs[key].astype(str) if they are one section, or rename them if they are not.")
    return [adata[codes == i] for i in range(len(values))], names


def _matrix(a: ad.AnnData, layer: str | None):
    X = a.X if layer is None else a.layers[layer]
    return sp.csr_matrix(X) if not sp.issparse(X) else X.tocsr()


COUNTS = ("raw", "recover", "pseudo")


def check_sections(adatas, names, *, layer: str | None, spatial_key: str, counts: str = "raw") -> None:
    """Refuse what cannot be integrated, naming the section and the fix (no computation).

    Raises
    ------
    TypeError, KeyError, ValueError
        Fewer than 2 sections, duplicate or empty names, an empty section, a missing layer
        or ``obsm[spatial_key]``, coordinates of different dimensionality, NaN, negative or
        non-count values.
    """
    if len(adatas) < 2:
        raise ValueError(f"Integration needs at least 2 sections; got {len(adatas)}. Give a list of AnnData "
                         "(one per section) or one AnnData with section_key=.")
    if len(names) != len(adatas):
        raise ValueError(f"{len(names)} section names for {len(adatas)} sections.")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"Section names must be unique; {dup} repeat. Pass section_names=[...].")
    if counts not in COUNTS:
        raise ValueError(f"counts must be one of {COUNTS}; got {counts!r}.")
    dims, not_counts = set(), []
    for a, n in zip(adatas, names):
        if not isinstance(a, ad.AnnData):
            raise TypeError(f"Section {n!r} is a {type(a).__name__}, not an AnnData.")
        if a.n_obs == 0 or a.n_vars == 0:
            raise ValueError(f"Section {n!r} is empty ({a.n_obs} cells x {a.n_vars} genes).")
        if layer is not None and layer not in a.layers:
            raise KeyError(f"Section {n!r} has no layer {layer!r} (layers: {list(a.layers)}).")
        if spatial_key not in a.obsm:
            raise KeyError(f"Section {n!r} has no obsm[{spatial_key!r}] with cell coordinates (obsm: {list(a.obsm)}).")
        C = np.asarray(a.obsm[spatial_key], dtype=np.float64)
        if C.ndim != 2 or C.shape[1] not in (2, 3) or not np.isfinite(C).all():
            raise ValueError(f"Section {n!r}: obsm[{spatial_key!r}] must be finite (n_cells, 2 or 3) coordinates; "
                             f"got shape {C.shape}{'' if np.isfinite(C).all() else ' with NaN/inf'}.")
        dims.add(C.shape[1])
        data = _matrix(a, layer).data
        if not np.isfinite(data).all():
            raise ValueError(f"Section {n!r} has NaN or infinite values; integration models raw counts.")
        if (data < 0).any():
            raise ValueError(f"Section {n!r} has negative values (min {data.min():g}): pass raw counts, not scaled "
                             "or log-transformed data.")
        sample = data[: 200_000]
        if sample.size and np.mean(sample != np.round(sample)) > 0.01:
            not_counts.append(f"{n!r} ({np.mean(sample != np.round(sample)):.0%} non-integer)")
    if not_counts and counts == "raw":
        raise ValueError(f"Sections {', '.join(not_counts)} do not hold counts; the model is Poisson on counts. Pass "
                         "them (layer=...) if you have them. Otherwise: counts='recover' for log1p(normalize_total) "
                         "data (each cell's counts recovered as expm1(X) over its smallest non-zero value, as "
                         "scanpy's normalisation leaves them), or counts='pseudo' to use the un-logged values as "
                         "pseudo-counts.")
    if len(dims) > 1:
        raise ValueError(f"The sections' coordinates have different dimensions ({sorted(dims)}): give all sections "
                         "2-D (x, y) or all 3-D (x, y, z) coordinates.")
    section_unit(adatas, names)


UM_NAMES = {"µm", "um", "μm", "micrometer", "micrometre", "micron", "microns"}


def _unit_name(unit) -> str | None:
    if unit is None:
        return None
    u = str(unit).strip()
    return "µm" if u.lower() in UM_NAMES or u in UM_NAMES else u


def section_unit(adatas, names) -> str | None:
    """The coordinates' unit shared by all sections (``uns["spatial_unit"]``; µm spellings are one).

    Raises
    ------
    ValueError
        Sections in different units, or some with a unit and some without: stacking or
        integrating them would mix scales silently (a mm section beside a µm one).
    """
    units = {n: _unit_name(a.uns.get("spatial_unit")) for a, n in zip(adatas, names)}
    found = set(units.values())
    if len(found) <= 1:
        return found.pop() if found else None
    said = ", ".join(f"{n}: {u or 'not given'}" for n, u in units.items())
    raise ValueError(f"The sections' coordinates are in different units ({said}; uns['spatial_unit']). Convert them "
                     "to one unit first (e.g. multiply a section's obsm['spatial'] by 1000 to go from mm to µm) and "
                     "set "
                     "uns['spatial_unit'] on every section.")


def to_counts(X, mode: str, logged: bool | None = None) -> tuple[sp.csr_matrix, dict]:
    """Counts from normalised values.

    ``"recover"``: for ``log1p(normalize_total(counts))`` (or ``normalize_total`` without the
    log): each cell's values un-logged and divided by its smallest non-zero one (a cell's
    smallest count is almost always 1), rounded; the share of values that were within 0.01
    of an integer is reported. ``"pseudo"``: the un-logged values themselves (non-integer
    pseudo-counts; the Poisson likelihood is then the KL divergence of KL-NMF).
    ``logged``: whether ``X`` is log1p-transformed (default: when its largest value is
    below 20, as log1p of normalised counts is).

    Returns
    -------
    (csr_matrix float32, dict) : the counts and a report.

    Raises
    ------
    ValueError
        ``"recover"`` on values that are not scaled counts (under 90 % near-integers).
    """
    X = sp.csr_matrix(X, dtype=np.float64)
    if logged is None:
        logged = bool(X.data.size) and float(X.data.max()) < 20
    V = X.copy()
    if logged:
        V.data = np.expm1(V.data)
    report = {"mode": mode, "logged": bool(logged)}
    if mode == "pseudo":
        V.eliminate_zeros()
        return V.astype(np.float32), report
    mins = np.full(V.shape[0], np.inf)
    nnz = np.diff(V.indptr)
    if V.data.size:
        rows = np.repeat(np.arange(V.shape[0]), nnz)
        np.minimum.at(mins, rows, V.data)
        scaled = V.data / mins[rows]
        share = float(np.mean(np.abs(scaled - np.round(scaled)) < 0.01))
        V.data = np.round(scaled)
    else:
        share = 1.0
    report["integer_share"] = share
    if share < 0.9:
        raise ValueError(f"Only {share:.0%} of the values are scaled integers: these are not normalised counts, so "
                         "counts cannot be recovered. Use counts='pseudo'.")
    V.eliminate_zeros()
    return V.astype(np.float32), report


def is_counts(X) -> bool:
    """True when (at most 1 % of a sample of) the non-zero values are not integers."""
    data = (X.data if sp.issparse(X) else np.asarray(X).ravel())[:200_000]
    return not data.size or bool(np.mean(data != np.round(data)) <= 0.01)


def suggest_counts(adata: ad.AnnData, layer: str | None = None, n_cells: int = 2000) -> str:
    """Which ``counts`` option suits these values: ``"raw"`` for counts, ``"recover"`` for
    normalised counts (``log1p(normalize_total)`` or ``normalize_total``), else ``"pseudo"``.
    Judged on the first ``n_cells`` cells (the docks' default choice; the fit checks again).
    """
    X = sp.csr_matrix(_matrix(adata[: min(n_cells, adata.n_obs)], layer), dtype=np.float64)
    if not X.data.size or np.mean(X.data != np.round(X.data)) <= 0.01:
        return "raw"
    if (X.data < 0).any():
        return "raw"  # scaled data: the fit refuses it with the reason
    try:
        to_counts(X, "recover", logged=True if "log1p" in adata.uns else None)
    except ValueError:
        return "pseudo"
    return "recover"


def prepare_sections(adatas, names, *, layer: str | None = None, spatial_key: str = "spatial",
                     n_hvgs: int | None = 3000, min_genes: int = 1, min_cells: int = 1,
                     target_sum: float = 1e4, counts: str = "raw", genes: str = "shared",
                     features: bool = True, hvg: str = "section") -> Sections:
    """QC, HVGs, the model's genes, counts, library sizes and log-normalised features of each section.

    Parameters
    ----------
    adatas : list of anndata.AnnData
        One per section, counts in ``X`` (or ``layers[layer]``), coordinates in
        ``obsm[spatial_key]``. Not modified.
    names : list of str
        Section names.
    layer : str, optional
        Counts from this layer.
    spatial_key : str
        Coordinates' key.
    n_hvgs : int or None
        Highly variable genes (seurat_v3): per section, or ranked over the sections together
        (``hvg``); None keeps all genes.
    min_genes, min_cells : int
        INSPIRE's QC: cells with fewer genes, genes in fewer cells are dropped per section
        (reported, with a warning when any cell is dropped).
    target_sum : float
        Total of each cell after ``normalize_total`` (INSPIRE: 1e4).
    counts : {"raw", "recover", "pseudo"}
        The values are counts; or normalised values turned into counts (:func:`to_counts`).
    genes : {"shared", "union"}
        The model's genes: those every section selected (INSPIRE's intersection), or every
        gene some section selected (a panel's missing genes are then masked per section).
    features : bool
        Compute the log-normalised features of the shared genes (INSPIRE's encoder input).
    hvg : {"section", "pooled"}
        With ``genes="shared"``: ``n_hvgs`` per section, intersected (INSPIRE's rule; the
        intersection shrinks with every section: 536 of 3,000 on the four DLPFC sections), or
        ``n_hvgs`` of the genes all sections share, ranked over the sections together (scanpy's
        seurat_v3 with the sections as batches: genes variable in most sections first).

    Returns
    -------
    Sections

    Raises
    ------
    ValueError
        No shared genes (the message gives each section's count), and the checks of
        :func:`check_sections`.
    """
    import scanpy as sc

    if n_hvgs is not None and (isinstance(n_hvgs, bool) or not isinstance(n_hvgs, (int, np.integer)) or n_hvgs < 1):
        raise ValueError(f"n_hvgs must be a positive number of genes, or None for every shared gene; got "
                         f"{n_hvgs!r}.")
    if genes not in ("shared", "union"):
        raise ValueError(f"genes must be 'shared' or 'union'; got {genes!r}.")
    if hvg not in ("section", "pooled"):
        raise ValueError(f"hvg must be 'section' or 'pooled'; got {hvg!r}.")
    pooled = hvg == "pooled" and genes == "shared"
    check_sections(adatas, names, layer=layer, spatial_key=spatial_key, counts=counts)
    kept, hvgs = [], []
    report = {"cells_dropped": {}, "genes_dropped": {}, "hvgs": {}, "counts": {}, "genes": genes}
    for a, n in zip(adatas, names):
        X = _matrix(a, layer)
        if counts != "raw" and is_counts(X):  # a section that holds counts keeps them (inputs may mix)
            report["counts"][n] = {"mode": "raw", "note": "already counts"}
        elif counts != "raw":
            X, report["counts"][n] = to_counts(X, counts, logged=True if "log1p" in a.uns else None)
        b = ad.AnnData(X.astype(np.float32), obs=a.obs.copy(), var=pd.DataFrame(index=a.var_names))
        b.obsm["spatial"] = np.asarray(a.obsm[spatial_key], dtype=np.float64)
        b.var_names_make_unique()
        b = b[:, ~b.var_names.str.startswith(("mt-", "MT-"))]
        n0, g0 = b.shape
        cells = sc.pp.filter_cells(b, min_genes=min_genes, inplace=False)[0]
        b = b[cells]
        keep_genes = sc.pp.filter_genes(b, min_cells=min_cells, inplace=False)[0]
        b = b[:, keep_genes].copy()
        report["cells_dropped"][n], report["genes_dropped"][n] = int(n0 - b.n_obs), int(g0 - b.n_vars)
        if b.n_obs < MIN_SECTION_CELLS:
            raise ValueError(f"Section {n!r} keeps {b.n_obs} cells after QC (min_genes={min_genes}); a section "
                             f"needs at least {MIN_SECTION_CELLS} cells to have neighbourhoods. Lower the threshold, "
                             "merge it with its neighbour or drop it.")
        if pooled or n_hvgs is None or n_hvgs >= b.n_vars:
            h = list(b.var_names)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sc.pp.highly_variable_genes(b, flavor="seurat_v3", n_top_genes=int(n_hvgs))
            h = list(b.var_names[b.var["highly_variable"].to_numpy()])
        report["hvgs"][n] = len(h)
        kept.append(b)
        hvgs.append(set(h))
    shared = sorted(set.intersection(*hvgs))
    if pooled and n_hvgs is not None and 0 < n_hvgs < len(shared):
        both = ad.concat([b[:, shared] for b in kept], label="_section", keys=list(names), index_unique="-")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sc.pp.highly_variable_genes(both, flavor="seurat_v3", n_top_genes=int(n_hvgs), batch_key="_section")
        shared = sorted(both.var_names[both.var["highly_variable"].to_numpy()])
    if pooled:  # one selection for all sections
        report["hvgs"] = {n: len(shared) for n in names}
    report["hvg"] = "pooled" if pooled else "section"
    if not shared:
        counts_ = ", ".join(f"{n}: {len(h)}" for n, h in zip(names, hvgs))
        raise ValueError(f"The sections share no {'highly variable ' if n_hvgs else ''}genes ({counts_}; shared: 0). "
                         "Check that they use the same gene identifiers"
                         + (", or pass n_hvgs=None to use every gene they have in common." if n_hvgs else "."))
    if genes == "shared":
        panels = [set(b.var_names) for b in kept]
        common = set.intersection(*panels)
        lost = {n: len(p - common) / len(p) for n, p in zip(names, panels)}
        worst = max(lost, key=lost.get)
        if lost[worst] > PANEL_LOSS:
            warnings.warn(f"The sections' gene panels differ: {len(common)} genes are in every panel, and section "
                          f"{worst!r} loses {lost[worst]:.0%} of its {len(panels[names.index(worst)])} genes (the ones "
                          "no other section measured). genes='union' keeps every panel's genes (each section's "
                          "unmeasured ones are imputed).", UserWarning, stacklevel=4)
    model_genes = shared if genes == "shared" else sorted(set.union(*hvgs))
    # a section measured a model gene if the gene passed its QC (selected there or not: its counts are data)
    panel_sets = [set(b.var_names) for b in kept]
    measured = np.array([[g in p for g in model_genes] for p in panel_sets],
                        dtype=bool).reshape(len(kept), len(model_genes))
    pos = {g: j for j, g in enumerate(model_genes)}
    out_counts, lognorm, library, coords, obs = [], [], [], [], []
    for b, n, m in zip(kept, names, measured):
        own = [g for g in model_genes if m[pos[g]]]
        sub = b[:, own].X.tocsr().astype(np.float32)
        cols = np.array([pos[g] for g in own], dtype=np.int64)
        c = sp.csr_matrix((sub.data, cols[sub.indices], sub.indptr), shape=(sub.shape[0], len(model_genes)))
        lib = np.asarray(c.sum(axis=1)).ravel()
        keep = lib > 0
        if not keep.all():
            report["cells_dropped"][n] += int((~keep).sum())
            b, c, lib = b[keep], c[keep], lib[keep]
        if features:
            total = np.asarray(b.X.sum(axis=1)).ravel()
            norm = sp.diags((target_sum / np.maximum(total, 1e-12)).astype(np.float32)) @ b[:, shared].X
            lognorm.append(np.log1p(norm.toarray()).astype(np.float32))
        out_counts.append(c)
        library.append(lib.astype(np.float32))
        coords.append(np.asarray(b.obsm["spatial"], dtype=np.float64))
        o = b.obs.copy()
        o.index = [f"{i}-{n}" for i in o.index]
        obs.append(o)
    dropped = {n: v for n, v in report["cells_dropped"].items() if v}
    if dropped:
        warnings.warn(f"Cells left out by QC (fewer than {min_genes} genes, or no counts in the model's genes): "
                      + ", ".join(f"{n}: {v}" for n, v in dropped.items())
                      + ". They are not in the result; lower min_genes to keep them.", UserWarning, stacklevel=4)
    report["n_shared_genes"] = int(measured.all(axis=0).sum()) if genes == "union" else len(shared)
    report["n_genes"] = len(model_genes)
    return Sections(list(names), list(model_genes), out_counts, lognorm, library, coords, obs, report,
                    None if genes == "shared" else measured)
