"""Static figures of principal patterns (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np

from .core.grid import grid_of, to_volume


def _figure(n_panels: int, panel_size=(2.6, 2.2), ncols: int = 6):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ncols = min(ncols, n_panels)
    nrows = int(np.ceil(n_panels / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size[0] * ncols, panel_size[1] * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    return fig, axes.ravel()


def _save(fig, path, title: str) -> Path:
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _boundaries(labels2d: np.ndarray) -> np.ndarray:
    b = np.zeros(labels2d.shape, dtype=bool)
    b[1:, :] |= labels2d[1:, :] != labels2d[:-1, :]
    b[:, 1:] |= labels2d[:, 1:] != labels2d[:, :-1]
    return b


def plot_patterns(adata: ad.AnnData, path, *, key: str = "nmf", annotation: np.ndarray | None = None,
                  ontology=None, outline_depth: int = 4, region_table=None, title: str = "") -> Path:
    """Save a PNG with one panel per principal pattern of a volume or image AnnData.

    3-D grids show the coronal (axis-0) slice where the pattern has most mass, with atlas
    region outlines when ``annotation`` is given; 2-D grids show the image itself. With a
    region table (from :func:`napari_spatial_nmf.tl.region_correlation`), each panel's title
    names the best-matching structure.
    """
    grid = grid_of(adata)
    if annotation is not None and ontology is not None:
        annotation = ontology.rollup(annotation, outline_depth)
    vols = to_volume(adata, np.asarray(adata.obsm[f"X_{key}"]))
    names = list(adata.uns[key]["pattern_names"])
    fig, axes = _figure(len(names), panel_size=(2.6, 1.6) if len(grid.shape) == 2 else (2.6, 2.2))
    for ax, vol, name in zip(axes, vols, names):
        if vol.ndim == 3:
            z = int(np.nanargmax(np.nansum(vol, axis=(1, 2))))
            img = vol[z]
            sub = f" (AP {z * grid.voxel_size[0] / 1000:.1f} mm)"
        else:
            img, z, sub = vol, None, ""
        ax.imshow(np.ma.masked_invalid(img), cmap="magma", vmin=0, vmax=1, interpolation="nearest")
        if annotation is not None and z is not None:
            rgba = np.zeros((*img.shape, 4))
            rgba[_boundaries(annotation[z])] = (0.55, 0.95, 1.0, 0.45)
            ax.imshow(rgba, interpolation="nearest")
        label = name + sub
        if region_table is not None:
            best = region_table[region_table["pattern"] == name].head(1)
            if len(best):
                label += f"\n{best['acronym'].iloc[0]} r={best['r'].iloc[0]:.2f}"
        ax.set_title(label, fontsize=8)
    return _save(fig, path, title)


def plot_cell_patterns(adata: ad.AnnData, path, *, key: str = "nmf", title: str = "") -> Path:
    """Save a PNG with one scatter panel per pattern: cells coloured by their weight."""
    xy = np.asarray(adata.obsm["spatial"])[:, :2]
    W = np.asarray(adata.obsm[f"X_{key}"])
    names = list(adata.uns[key]["pattern_names"])
    fig, axes = _figure(len(names), panel_size=(2.2, 2.8))
    for ax, w, name in zip(axes, W.T, names):
        ax.scatter(xy[:, 0], xy[:, 1], c=w, s=1.5, cmap="viridis", vmin=0, vmax=max(float(w.max()), 1e-12),
                   linewidths=0)
        ax.set_aspect("equal")
        ax.invert_yaxis()
        ax.set_title(name, fontsize=8)
    return _save(fig, path, title)


def plot_instability(table, path, *, title: str = "") -> Path:
    """Save instability vs K with the standard-deviation bound as error bars."""
    fig, axes = _figure(1, panel_size=(5.0, 3.2))
    ax = axes[0]
    ax.set_axis_on()
    ax.errorbar(table["k"], table["instability"], yerr=table["sd"], marker="o", ms=4, capsize=2, lw=1)
    best = int(table.loc[table["instability"].idxmin(), "k"])
    ax.axvline(best, color="tab:red", ls=":", lw=1, label=f"lowest: K = {best}")
    ax.set_xlabel("K (number of principal patterns)")
    ax.set_ylabel("instability")
    ax.legend(fontsize=8)
    return _save(fig, path, title)


def structure_score_matrix(table, *, max_columns: int = 30, order=None):
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
    """
    import pandas as pd

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


def draw_structure_bubbles(ax, matrix, *, score: str = "pearson") -> None:
    """Bubble chart of pattern × structure scores (the osNMF paper's Fig. 2 layout).

    Bubble area ∝ |score|, colour = score (Pearson r: diverging, −1…1; Dice: 0…1); the
    best structure of each pattern has a black outline. ``matrix`` as returned by
    :func:`structure_score_matrix`.
    """
    M = np.asarray(matrix, dtype=np.float64)
    yy, xx = np.mgrid[0:M.shape[0], 0:M.shape[1]]
    ok = np.isfinite(M)
    vmin, cmap = (-1.0, "RdBu_r") if score == "pearson" else (0.0, "viridis")
    sc = ax.scatter(xx[ok], yy[ok], s=20 + 380 * np.abs(M[ok]), c=M[ok], cmap=cmap, vmin=vmin, vmax=1.0,
                    linewidths=0)
    best = np.nanargmax(np.where(ok, M, -np.inf), axis=1)
    ax.scatter(best, np.arange(M.shape[0]), s=20 + 380 * np.abs(M[np.arange(M.shape[0]), best]),
               facecolors="none", edgecolors="black", linewidths=1.2)
    ax.set_xticks(range(M.shape[1]), list(matrix.columns), rotation=90, fontsize=7)
    ax.set_yticks(range(M.shape[0]), list(matrix.index), fontsize=7)
    ax.set_xlim(-0.6, M.shape[1] - 0.4)
    ax.set_ylim(M.shape[0] - 0.4, -0.6)
    ax.figure.colorbar(sc, ax=ax, label="Pearson r" if score == "pearson" else "Dice", shrink=0.8)


def draw_network(ax, G, *, seed: int = 0) -> None:
    """Draw a co-expression network: node size ∝ importance, edge width and colour ∝ r
    (spring layout with a fixed seed, so the same network is drawn the same way)."""
    import matplotlib
    import networkx as nx

    ax.set_axis_off()
    if G.number_of_nodes() == 0:
        return
    pos = nx.spring_layout(G, seed=seed, weight="weight")
    imp = np.array([G.nodes[n].get("importance", 0.5) for n in G.nodes])
    w = np.array([d.get("weight", 0.0) for _, _, d in G.edges(data=True)])
    nx.draw_networkx_edges(G, pos, ax=ax, width=0.5 + 2.5 * np.clip(w, 0, 1), edge_color=w if len(w) else "grey",
                           edge_cmap=matplotlib.colormaps["Greys"], edge_vmin=-0.2, edge_vmax=1.0)
    nx.draw_networkx_nodes(G, pos, ax=ax, node_size=60 + 340 * imp, node_color="tab:orange", linewidths=0)
    nx.draw_networkx_labels(G, pos, ax=ax, font_size=7)


def plot_structure_bubbles(table, path, *, score: str = "pearson", title: str = "", order=None) -> Path:
    """Save the pattern × structure bubble chart (:func:`draw_structure_bubbles`)."""
    M = structure_score_matrix(table, order=order)
    fig, axes = _figure(1, panel_size=(max(4.0, 0.32 * M.shape[1] + 2.0), max(2.2, 0.35 * M.shape[0] + 1.4)))
    axes[0].set_axis_on()
    draw_structure_bubbles(axes[0], M, score=score)
    return _save(fig, path, title)
