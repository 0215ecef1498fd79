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
