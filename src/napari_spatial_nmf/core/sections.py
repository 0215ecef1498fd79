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


@dataclass
class Sections:
    """Sections restricted to their shared genes.

    Attributes
    ----------
    names : list of str
        One per section, in the given order (the adversarial chain's order).
    genes : list of str
        The shared genes (G).
    counts : list of scipy.sparse.csr_matrix, float32, (n_s, G)
        Raw counts of the shared genes.
    lognorm : list of numpy.ndarray, float32, (n_s, G)
        ``log1p(normalize_total(1e4))`` restricted to the shared genes.
    library : list of numpy.ndarray, float32, (n_s,)
        Library sizes: the sum of each cell's shared-gene counts.
    coords : list of numpy.ndarray, float64, (n_s, 2 or 3)
        Cell coordinates as given.
    obs : list of pandas.DataFrame
        The kept cells' obs (index made unique per section).
    report : dict
        Cells and genes dropped per section, HVGs per section.
    """

    names: list[str]
    genes: list[str]
    counts: list
    lognorm: list
    library: list
    coords: list
    obs: list
    report: dict = field(default_factory=dict)

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


def check_sections(adatas, names, *, layer: str | None, spatial_key: str) -> None:
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
    dims = set()
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
            raise ValueError(f"Section {n!r} does not hold counts ({np.mean(sample != np.round(sample)):.0%} of the "
                             "values are not integers): the model is Poisson on raw counts; pass them (layer=...).")
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


def prepare_sections(adatas, names, *, layer: str | None = None, spatial_key: str = "spatial",
                     n_hvgs: int | None = 3000, min_genes: int = 1, min_cells: int = 1,
                     target_sum: float = 1e4) -> Sections:
    """QC, HVGs, shared genes, counts, library sizes and log-normalised features of each section.

    Parameters
    ----------
    adatas : list of anndata.AnnData
        One per section, raw counts in ``X`` (or ``layers[layer]``), coordinates in
        ``obsm[spatial_key]``. Not modified.
    names : list of str
        Section names.
    layer : str, optional
        Counts from this layer.
    spatial_key : str
        Coordinates' key.
    n_hvgs : int or None
        HVGs per section (seurat_v3); None keeps all genes (the shared features are then
        the genes all sections have).
    min_genes, min_cells : int
        INSPIRE's QC: cells with fewer genes, genes in fewer cells are dropped per section.
    target_sum : float
        Total of each cell after ``normalize_total`` (INSPIRE: 1e4).

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
    check_sections(adatas, names, layer=layer, spatial_key=spatial_key)
    kept, hvgs, report = [], [], {"cells_dropped": {}, "genes_dropped": {}, "hvgs": {}}
    for a, n in zip(adatas, names):
        b = ad.AnnData(_matrix(a, layer).astype(np.float32), obs=a.obs.copy(), var=pd.DataFrame(index=a.var_names))
        b.obsm["spatial"] = np.asarray(a.obsm[spatial_key], dtype=np.float64)
        b.var_names_make_unique()
        b = b[:, ~b.var_names.str.startswith(("mt-", "MT-"))]
        n0, g0 = b.shape
        cells = sc.pp.filter_cells(b, min_genes=min_genes, inplace=False)[0]
        b = b[cells]
        genes = sc.pp.filter_genes(b, min_cells=min_cells, inplace=False)[0]
        b = b[:, genes].copy()
        report["cells_dropped"][n], report["genes_dropped"][n] = int(n0 - b.n_obs), int(g0 - b.n_vars)
        if b.n_obs < MIN_SECTION_CELLS:
            raise ValueError(f"Section {n!r} keeps {b.n_obs} cells after QC (min_genes={min_genes}); a section "
                             f"needs at least {MIN_SECTION_CELLS} cells to have neighbourhoods. Lower the threshold, "
                             "merge it with its neighbour or drop it.")
        if n_hvgs is None or n_hvgs >= b.n_vars:
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
    if not shared:
        counts = ", ".join(f"{n}: {len(h)}" for n, h in zip(names, hvgs))
        raise ValueError(f"The sections share no {'highly variable ' if n_hvgs else ''}genes ({counts}; shared: 0). "
                         "Check that they use the same gene identifiers"
                         + (", or pass n_hvgs=None to use every gene they have in common." if n_hvgs else "."))
    counts, lognorm, library, coords, obs = [], [], [], [], []
    for b, n in zip(kept, names):
        c = b[:, shared].X.tocsr().astype(np.float32)
        lib = np.asarray(c.sum(axis=1)).ravel()
        keep = lib > 0
        if not keep.all():
            report["cells_dropped"][n] += int((~keep).sum())
            b, c, lib = b[keep], c[keep], lib[keep]
        total = np.asarray(b.X.sum(axis=1)).ravel()
        norm = sp.diags((target_sum / np.maximum(total, 1e-12)).astype(np.float32)) @ b[:, shared].X
        counts.append(c)
        lognorm.append(np.log1p(norm.toarray()).astype(np.float32))
        library.append(lib.astype(np.float32))
        coords.append(np.asarray(b.obsm["spatial"], dtype=np.float64))
        o = b.obs.copy()
        o.index = [f"{i}-{n}" for i in o.index]
        obs.append(o)
    report["n_shared_genes"] = len(shared)
    return Sections(list(names), shared, counts, lognorm, library, coords, obs, report)
