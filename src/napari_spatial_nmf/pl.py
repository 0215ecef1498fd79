"""Static figures of principal patterns, cell weights and read-outs (matplotlib, scanpy style).

Figures are built with :class:`matplotlib.figure.Figure`, never pyplot, so calling these
from napari or a server never switches the process's matplotlib backend. Every function
follows scanpy's conventions: ``ax`` draws into an existing Axes (single-panel plots),
``save`` writes the figure to a path, ``show=True`` displays it through pyplot (only
then is pyplot imported). They return the Axes (single panel) or the Figure.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .core.grid import grid_of, to_volume

DPI = 150
HIGHLIGHT = (1.0, 0.85, 0.0)


def _need(adata: ad.AnnData, field: str, key: str, tool: str) -> None:
    """A clear KeyError for a missing result or column (which tool makes it, what there is)."""
    where = getattr(adata, field)
    if key not in where:
        raise KeyError(f"No {field}[{key!r}] in the AnnData (it has {list(where.keys())}): run {tool} first, or "
                       "pass the key it was stored under.")


def _coords(adata: ad.AnnData, basis: str) -> np.ndarray:
    """The first two coordinate columns of ``obsm[basis]``, refusing missing or all-NaN ones."""
    _need(adata, "obsm", basis, "a reader that sets coordinates (io.read_cells)")
    xy = np.asarray(adata.obsm[basis], dtype=np.float64)[:, :2]
    if not np.isfinite(xy).any():
        raise ValueError(f"obsm[{basis!r}] holds no finite coordinates (all NaN or infinite): nothing to draw.")
    return xy


def _figure(size, show: bool | None) -> Figure:
    if show:
        import matplotlib.pyplot as plt

        return plt.figure(figsize=size)
    return Figure(figsize=size)


def _finish(fig: Figure, ret, *, save, show, title: str | None = None):
    if title:
        fig.suptitle(title, fontsize=11)
    if save is not None:
        fig.savefig(Path(save), dpi=DPI, bbox_inches="tight")
    if show:
        import matplotlib.pyplot as plt

        plt.show()
    return ret


def _grid_axes(n: int, ncols: int, panel, show):
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig = _figure((panel[0] * ncols, panel[1] * nrows), show)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_axis_off()
    return fig, axes[:n]


def _scalebar(ax, length_px: float, label: str) -> None:
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    ax.add_artist(AnchoredSizeBar(ax.transData, length_px, label, "lower right", frameon=False, color="white",
                                  size_vertical=max(length_px / 25, 0.3), fontproperties={"size": 7}))


def _nice_length(span_um: float) -> float:
    """A round scale-bar length (µm) near a fifth of the span."""
    target = span_um / 5
    mag = 10 ** np.floor(np.log10(target))
    return float(min((1, 2, 5, 10), key=lambda m: abs(m * mag - target)) * mag)


def _structure_slice(annotation, ontology, acronym: str) -> tuple[int, np.ndarray]:
    """The axis-0 plane where a structure (with its descendants) has most voxels, and its mask."""
    mask = np.isin(annotation, ontology.descendants(acronym))
    return int(mask.sum(axis=(1, 2)).argmax()), mask


def patterns(adata: ad.AnnData, key: str = "nmf", *, annotation: np.ndarray | None = None, ontology=None,
             region_table: pd.DataFrame | None = None, outline_depth: int = 4, ncols: int = 4,
             title: str | None = None, show: bool | None = None, save=None) -> Figure:
    """One panel per principal pattern of a volume or image AnnData.

    3-D grids show one coronal (axis-0) plane: where the pattern's best-matching structure
    (from ``region_table``, :func:`napari_spatial_nmf.tl.region_correlation`) has most
    voxels, outlined in yellow, or else where the pattern has most mass; thin lines are the
    atlas boundaries at ``outline_depth``. 2-D grids show the image. Each panel has a colour
    bar (patterns are scaled to a maximum of 1) and, on grids with a physical size
    (``uns["spatial_unit"]`` µm), a scale bar.

    Parameters
    ----------
    adata : anndata.AnnData
        A volume AnnData with the NMF result ``key``.
    key : str
        The NMF result.
    annotation : numpy.ndarray of int, optional
        Atlas labels on the grid, for outlines.
    ontology : Ontology, optional
        With ``annotation``.
    region_table : pandas.DataFrame, optional
        Names each panel's best structure (and picks the plane that shows it).
    outline_depth : int
        Ontology depth of the boundary lines (4: e.g. STR, HPF).
    ncols : int
        Panels per row.
    title : str, optional
        Figure title.
    show : bool, optional
        Display through pyplot.
    save : str or Path, optional
        Write the figure (PNG, PDF, SVG by extension).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from skimage.segmentation import find_boundaries

    grid = grid_of(adata)
    _need(adata, "obsm", f"X_{key}", "tl.nmf")
    _need(adata, "uns", key, "tl.nmf")
    vols = to_volume(adata, np.asarray(adata.obsm[f"X_{key}"]))
    names = list(adata.uns[key]["pattern_names"])
    coarse = ontology.rollup(annotation, outline_depth) if annotation is not None and ontology is not None else None
    three_d = len(grid.shape) == 3
    physical = str(adata.uns.get("spatial_unit", "µm")) in ("µm", "um", "micrometer")
    fig, axes = _grid_axes(len(names), ncols, (3.4, 2.9) if three_d else (3.4, 2.0), show)
    for ax, vol, name in zip(axes, vols, names):
        best, mask = None, None
        if region_table is not None:
            rows = region_table[region_table["pattern"] == name]
            best = rows.iloc[0] if len(rows) else None
        if three_d:
            if best is not None and annotation is not None:
                z, mask = _structure_slice(annotation, ontology, best["acronym"])
            else:
                z = int(np.nanargmax(np.nansum(vol, axis=(1, 2))))
            img = vol[z]
            sub = f"{grid.axes[0]} {z * grid.voxel_size[0] / 1000:.1f} mm"
        else:
            img, z, sub = vol, None, ""
        ax.set_facecolor((0.18, 0.18, 0.2))  # outside the mask: dark grey, so the white scale bar shows
        im = ax.imshow(np.ma.masked_invalid(img), cmap="magma", vmin=0, vmax=1, interpolation="nearest")
        if coarse is not None and z is not None:
            ax.contour(find_boundaries(coarse[z], mode="inner"), levels=[0.5], colors=[(0.6, 0.9, 1.0)],
                       linewidths=0.4, alpha=0.6)
        if mask is not None:
            ax.contour(mask[z], levels=[0.5], colors=[HIGHLIGHT], linewidths=1.2)
        label = f"{name}  ({sub})" if sub else name
        if best is not None:
            label += f"\n{best['acronym']} ({best['name'][:28]}), r = {best['r']:.2f}"
        ax.set_title(label, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, shrink=0.8, label="pattern (max 1)" if ax is axes[0] else None)
        if physical:  # a scale bar only where the grid has a physical size (not on the BDGP pixel template)
            vs = grid.voxel_size[-1]
            length = _nice_length(img.shape[1] * vs)
            _scalebar(ax, length / vs, f"{length / 1000:g} mm" if length >= 1000 else f"{length:g} µm")
    return _finish(fig, fig, save=save, show=show, title=title)


def _robust_limits(values: np.ndarray) -> tuple[float, float]:
    """0 to the 99th percentile: a few bright cells must not darken the rest."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return 0.0, 1.0
    hi = float(np.percentile(v, 99))
    return 0.0, hi if hi > 0 else float(v.max()) or 1.0


def cell_patterns(adata: ad.AnnData, key: str = "nmf", *, basis: str = "spatial", names: list[str] | None = None,
                  proportions: bool | None = None, ncols: int = 4, point_size: float = 2.0, title: str | None = None,
                  show: bool | None = None, save=None) -> Figure:
    """One scatter panel per pattern / signature: cells coloured by their weight.

    Colour limits run from 0 to each panel's 99th percentile (so a few bright cells do not
    darken the rest), with a colour bar per panel and the coordinates' unit on the axes.

    Parameters
    ----------
    adata : anndata.AnnData
        Cells with ``obsm[f"X_{key}"]`` and ``obsm[basis]``.
    key : str
        The result (NMF ``X_nmf`` or NNMF ``X_nnmf`` ...).
    basis : str
        Coordinates in ``obsm`` (x, y[, z]; the first two are drawn).
    names : list of str, optional
        Panel names (default: the result's pattern or signature names).
    proportions : bool, optional
        Show each cell's share of its total (default: True for NNMF results).
    ncols, point_size : int, float
        Layout and marker size.
    title : str, optional
        Figure title.
    show, save
        As :func:`patterns`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    _need(adata, "obsm", f"X_{key}", "tl.nmf, tl.nnmf or tl.integrate")
    xy = _coords(adata, basis)
    W = np.asarray(adata.obsm[f"X_{key}"], dtype=np.float64)
    rec = adata.uns.get(key, {})
    names = names or list(rec.get("pattern_names", rec.get("signature_names", [f"{key} {i + 1}"
                                                                                for i in range(W.shape[1])])))
    if proportions is None:
        proportions = "signature_names" in rec
    if proportions:
        with np.errstate(invalid="ignore", divide="ignore"):
            W = W / W.sum(axis=1, keepdims=True)
    span = np.ptp(xy, axis=0)
    aspect = float(span[1] / span[0]) if span[0] > 0 else 1.0
    fig, axes = _grid_axes(len(names), ncols, (3.2, 0.6 + 2.6 * min(max(aspect, 0.4), 2.0)), show)
    unit = adata.uns.get("spatial_unit", "coordinate units")
    from matplotlib.ticker import MaxNLocator

    cols = max(1, min(ncols, len(names)))
    for i, (ax, w, name) in enumerate(zip(axes, W.T, names)):
        lo, hi = _robust_limits(w)
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=w, s=point_size, cmap="magma", vmin=lo, vmax=hi, linewidths=0)
        ax.set_facecolor("black")
        ax.set_aspect("equal")
        ax.invert_yaxis()
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=6, labelleft=i % cols == 0)  # y values once per row: room for the colour bars
        cb = fig.colorbar(sc, ax=ax, shrink=0.8)
        cb.ax.yaxis.set_major_locator(MaxNLocator(4))
        cb.ax.tick_params(labelsize=6)
        if ax is axes[0]:  # one label: beside the others it would overlap the next panel's ticks
            cb.set_label("share of cell" if proportions else "weight", fontsize=7)
    axes[0].set_xlabel(f"x ({unit})", fontsize=7)
    axes[0].set_ylabel(f"y ({unit})", fontsize=7)
    return _finish(fig, fig, save=save, show=show, title=title)


def category_colors(categories, adata: ad.AnnData | None = None, key: str | None = None) -> dict:
    """Colours for categories: ``adata.uns[f"{key}_colors"]`` if present (scanpy's
    convention), else matplotlib's tab10 / tab20 (cycled beyond 20).
    """
    import matplotlib

    cats = [str(c) for c in categories]
    stored = None if adata is None or key is None else adata.uns.get(f"{key}_colors")
    if stored is not None and len(stored) >= len(cats):
        return dict(zip(cats, [str(c) for c in stored]))
    pal = matplotlib.colormaps["tab10" if len(cats) <= 10 else "tab20"].colors
    return {c: matplotlib.colors.to_hex(pal[i % len(pal)]) for i, c in enumerate(cats)}


def match_colors(adata: ad.AnnData, key: str, reference: str) -> dict:
    """Give the categories of ``obs[key]`` (e.g. domains) the colours of the ``obs[reference]``
    categories (e.g. expert layers) they overlap most, so the two panels of a comparison read
    alike: a one-to-one matching of the contingency table (``scipy.optimize.linear_sum_assignment``);
    unmatched categories get colours the reference does not use. Writes
    ``uns[f"{key}_colors"]`` (scanpy's convention) and returns ``{category: colour}``.
    """
    import matplotlib
    from scipy.optimize import linear_sum_assignment

    col, ref = adata.obs[key], adata.obs[reference]
    cats = list(col.cat.categories) if isinstance(col.dtype, pd.CategoricalDtype) else sorted(col.dropna().unique())
    rcats = list(ref.cat.categories) if isinstance(ref.dtype, pd.CategoricalDtype) else sorted(ref.dropna().unique())
    rcolors = category_colors(rcats, adata, reference)
    table = pd.crosstab(col.astype(str), ref.astype(str)).reindex(index=[str(c) for c in cats],
                                                                   columns=[str(c) for c in rcats], fill_value=0)
    rows, cols = linear_sum_assignment(-table.to_numpy())
    out = {str(cats[r]): rcolors[str(rcats[c])] for r, c in zip(rows, cols) if table.iat[r, c] > 0}
    used = set(out.values()) | set(rcolors.values())
    spare = [matplotlib.colors.to_hex(c) for name in ("tab20", "tab20b", "Set3")
             for c in matplotlib.colormaps[name].colors]
    spare = [c for c in spare if c not in used]
    for c in cats:
        if str(c) not in out:
            out[str(c)] = spare.pop(0) if spare else "#808080"
    adata.uns[f"{key}_colors"] = [out[str(c)] for c in cats]
    return out


def domains(adata: ad.AnnData, key: str = "nnmf_domain", *, basis: str = "spatial", groupby: str | None = None,
            point_size: float = 3.0, ax=None, title: str | None = None, show: bool | None = None, save=None):
    """Cells coloured by a categorical column (NNMF domains, expert regions), with a legend.

    Parameters
    ----------
    adata : anndata.AnnData
        Cells with ``obs[key]`` categorical and ``obsm[basis]``.
    key : str
        The column.
    basis : str
        Coordinates in ``obsm``.
    groupby : str, optional
        One panel per value of this column (e.g. the section), side by side.
    point_size : float
        Marker size.
    ax : matplotlib.axes.Axes, optional
        Draw here (without ``groupby``).
    title : str, optional
        Title.
    show, save
        As :func:`patterns`.

    Returns
    -------
    matplotlib.axes.Axes or matplotlib.figure.Figure
    """
    from matplotlib.lines import Line2D

    _need(adata, "obs", key, "tl.nnmf or tl.cluster_domains")
    if groupby is not None:
        _need(adata, "obs", groupby, "a reader")
    col = adata.obs[key]
    cats = list(col.cat.categories) if isinstance(col.dtype, pd.CategoricalDtype) else sorted(col.dropna().unique())
    colors = category_colors(cats, adata, key)
    groups = [None] if groupby is None else list(pd.unique(adata.obs[groupby]))
    if ax is None:
        fig, axes = _grid_axes(len(groups), len(groups), (3.4, 3.4), show)
    else:
        fig, axes = ax.figure, [ax]
    xy = _coords(adata, basis)
    for a, g in zip(axes, groups):
        sel = np.ones(adata.n_obs, bool) if g is None else (adata.obs[groupby] == g).to_numpy()
        c = [colors.get(str(v), "#808080") if pd.notna(v) else "#808080" for v in col[sel]]
        a.scatter(xy[sel, 0], xy[sel, 1], c=c, s=point_size, linewidths=0)
        a.set_aspect("equal")
        a.invert_yaxis()
        a.set_xticks([])
        a.set_yticks([])
        a.set_title(str(g) if g is not None else (title or key), fontsize=8)
    handles = [Line2D([], [], ls="", marker="o", color=colors[str(c)], label=str(c)) for c in cats]
    axes[-1].legend(handles=handles, fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
                    title=key, title_fontsize=7)
    return _finish(fig, axes[0] if ax is not None else fig, save=save, show=show,
                   title=title if groupby is not None else None)


def instability(table: pd.DataFrame, *, ax=None, title: str | None = None, show: bool | None = None, save=None):
    """Instability vs K with the standard-deviation bound as error bars; the lowest is marked.

    Parameters
    ----------
    table : pandas.DataFrame
        ``k, instability, sd`` (``uns["stability"]["table"]``); with a ``chosen`` column that K
        is marked instead of the lowest, and K with ``n_section_specific`` > 0 are crossed
        (``uns["integration_stability"]["table"]``).
    ax : matplotlib.axes.Axes, optional
        Draw here.
    title : str, optional
        Title.
    show, save
        As :func:`patterns`.

    Returns
    -------
    matplotlib.axes.Axes
    """
    fig = ax.figure if ax is not None else _figure((5.0, 3.2), show)
    ax = ax if ax is not None else fig.add_subplot(111)
    ks = table["k"].to_numpy()
    ax.errorbar(ks, table["instability"], yerr=table["sd"], marker="o", ms=4, capsize=2, lw=1)
    if "n_section_specific" in table and (table["n_section_specific"] > 0).any():
        bad = table[table["n_section_specific"] > 0]
        ax.plot(bad["k"], bad["instability"], "x", color="0.35", ms=8, mew=1.5,
                label="has section-specific factors")
    if "chosen" in table and table["chosen"].any():
        best = int(table.loc[table["chosen"].astype(bool), "k"].iloc[0])
        ax.axvline(best, color="tab:red", ls=":", lw=1, label=f"chosen: K = {best}")
    else:
        best = int(table.loc[table["instability"].idxmin(), "k"])
        ax.axvline(best, color="tab:red", ls=":", lw=1, label=f"lowest: K = {best}")
    what = "spatial factors" if "n_section_specific" in table else "principal patterns"
    ax.set_xlabel(f"K (number of {what})")
    ax.set_ylabel("instability")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return _finish(fig, ax, save=save, show=show)


def structure_score_matrix(table, *, max_columns: int = 30, order=None) -> pd.DataFrame:
    """Pattern × structure scores for the bubble chart, from a single-structure table.

    ``table`` has the columns of :func:`napari_spatial_nmf.core.atlas_stats.region_combinations`
    (rows with ``size == 1``). All structures are kept when there are at most
    ``max_columns``; otherwise the union of every pattern's best structures, taking the
    top 1, 2, … of each pattern while the union stays within ``max_columns``. Columns follow
    ``order`` (structure ids, e.g. the ontology's own order, as the paper's Fig. 2), else
    ids ascending.

    Returns
    -------
    pandas.DataFrame
        (patterns, structures) scores; NaN where a structure was not scored.

    Raises
    ------
    ValueError
        No single-structure rows.
    """
    single = table[table["size"] == 1]
    if single.empty:
        raise ValueError("The table has no single-structure rows (size == 1).")
    ids = single["ids"].map(lambda v: int(str(v).split(",")[0]))
    M = pd.pivot_table(single.assign(_id=ids), index="pattern", columns="_id", values="score", aggfunc="first")
    M = M.reindex(index=list(dict.fromkeys(single["pattern"])))
    acr = dict(zip(ids, single["structures"]))
    if M.shape[1] > max_columns:
        keep: list = []
        ranked = {p: M.loc[p].dropna().sort_values(ascending=False).index.tolist() for p in M.index}
        for depth in range(1, M.shape[1] + 1):
            cand = list(dict.fromkeys(keep + [s for p in M.index for s in ranked[p][:depth]]))
            if len(cand) > max_columns:
                break
            keep = cand
        M = M[keep]
    rank = {int(i): r for r, i in enumerate(order)} if order is not None else {}
    M = M[sorted(M.columns, key=lambda c: (rank.get(int(c), len(rank)), c))]
    M.columns = [acr[c] for c in M.columns]
    return M


def _bubble_area(v):
    return 20 + 380 * np.abs(v)


def structure_bubbles(matrix: pd.DataFrame, *, score: str = "pearson", ax=None, title: str | None = None,
                      show: bool | None = None, save=None):
    """Bubble chart of pattern × structure scores (the osNMF paper's Fig. 2 layout).

    Bubble area ∝ |score| (a size legend gives the scale), colour = score (Pearson r:
    diverging, −1…1; Dice: 0…1); the best structure of each pattern has a black ring.

    Parameters
    ----------
    matrix : pandas.DataFrame
        :func:`structure_score_matrix` output.
    score : {"pearson", "dice"}
        What the values are.
    ax : matplotlib.axes.Axes, optional
        Draw here.
    title : str, optional
        Title.
    show, save
        As :func:`patterns`.

    Returns
    -------
    matplotlib.axes.Axes
    """
    M = np.asarray(matrix, dtype=np.float64)
    if ax is None:
        fig = _figure((max(4.5, 0.32 * M.shape[1] + 3.0), max(2.4, 0.35 * M.shape[0] + 1.6)), show)
        ax = fig.add_subplot(111)
    fig = ax.figure
    yy, xx = np.mgrid[0:M.shape[0], 0:M.shape[1]]
    ok = np.isfinite(M)
    vmin, cmap = (-1.0, "RdBu_r") if score == "pearson" else (0.0, "viridis")
    sc = ax.scatter(xx[ok], yy[ok], s=_bubble_area(M[ok]), c=M[ok], cmap=cmap, vmin=vmin, vmax=1.0, linewidths=0)
    best = np.nanargmax(np.where(ok, M, -np.inf), axis=1)
    ax.scatter(best, np.arange(M.shape[0]), s=_bubble_area(M[np.arange(M.shape[0]), best]),
               facecolors="none", edgecolors="black", linewidths=1.2)
    ax.set_xticks(range(M.shape[1]), list(matrix.columns), rotation=90, fontsize=7)
    ax.set_yticks(range(M.shape[0]), list(matrix.index), fontsize=7)
    ax.set_xlim(-0.6, M.shape[1] - 0.4)
    ax.set_ylim(M.shape[0] - 0.4, -0.6)
    label = "Pearson r" if score == "pearson" else "Dice"
    fig.colorbar(sc, ax=ax, label=label, shrink=0.8)
    sym = "r" if score == "pearson" else "Dice"
    sizes = [ax.scatter([], [], s=_bubble_area(v), color="grey", linewidths=0, label=f"|{sym}| = {v:g}")
             for v in (0.25, 0.5, 1.0)]
    ax.legend(handles=sizes, fontsize=6, loc="upper left", bbox_to_anchor=(1.25, 1.0), frameon=False,
              labelspacing=1.4, borderpad=1.0, title="bubble area", title_fontsize=6)
    if title:
        ax.set_title(title, fontsize=9)
    return _finish(fig, ax, save=save, show=show)


def network(G, *, ax=None, random_state: int = 0, title: str | None = None, show: bool | None = None, save=None):
    """Draw a co-expression network: node size ∝ importance, edge width and grey ∝ r.

    A Kamada-Kawai layout (deterministic; labels kept apart better than a spring layout),
    labels offset beside the nodes with a white halo, edges drawn first.

    Parameters
    ----------
    G : networkx.Graph
        From :func:`napari_spatial_nmf.tl.coexpression_networks`.
    ax : matplotlib.axes.Axes, optional
        Draw here.
    random_state : int
        Seed of the fallback spring layout (graphs with several components).
    title : str, optional
        Title.
    show, save
        As :func:`patterns`.

    Returns
    -------
    matplotlib.axes.Axes
    """
    import matplotlib
    import matplotlib.patheffects as pe
    import networkx as nx

    fig = ax.figure if ax is not None else _figure((4.5, 4.0), show)
    ax = ax if ax is not None else fig.add_subplot(111)
    ax.set_axis_off()
    if G.number_of_nodes() == 0:
        ax.text(0.5, 0.5, "no network", ha="center", va="center", transform=ax.transAxes)
        return _finish(fig, ax, save=save, show=show)
    pos = (nx.kamada_kawai_layout(G) if nx.is_connected(G) else
           nx.spring_layout(G, seed=random_state, k=1.5 / np.sqrt(G.number_of_nodes())))
    imp = np.array([G.nodes[n].get("importance", 0.5) for n in G.nodes])
    w = np.array([d.get("weight", 0.0) for _, _, d in G.edges(data=True)])
    nx.draw_networkx_edges(G, pos, ax=ax, width=0.8 + 2.5 * np.clip(w, 0, 1), edge_color=w if len(w) else "grey",
                           edge_cmap=matplotlib.colormaps["Greys"], edge_vmin=-0.3, edge_vmax=1.0, alpha=0.9)
    nx.draw_networkx_nodes(G, pos, ax=ax, node_size=60 + 340 * imp, node_color="tab:orange", linewidths=0)
    xy = np.array(list(pos.values()))
    centre = xy.mean(axis=0)
    for n, p in pos.items():
        d = np.asarray(p) - centre
        d = d / (np.linalg.norm(d) or 1)
        t = ax.annotate(str(n), p, xytext=(8 * d[0], 8 * d[1]), textcoords="offset points", fontsize=7,
                        ha="left" if d[0] >= 0 else "right", va="center")
        t.set_path_effects([pe.withStroke(linewidth=2.5, foreground="white")])
    ax.margins(0.18)
    if title:
        ax.set_title(title, fontsize=8)
    return _finish(fig, ax, save=save, show=show)
