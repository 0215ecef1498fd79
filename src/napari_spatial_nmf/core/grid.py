"""Voxel volumes as AnnData: observations are the in-mask voxels of a regular grid.

The data model of the whole package (see ``docs/data-model.md``): an AnnData with
observations x genes and ``obsm["spatial"]`` in µm. For a volume, the observations are
the voxels inside a mask, in C order; ``obs["voxel"]`` holds each voxel's flat index into
the grid and ``uns["grid"]`` keeps the grid (shape, voxel size, origin, axis names), so any
per-voxel vector maps back to a volume (:func:`to_volume`) and a volume maps to a vector.

``obsm["spatial"]`` follows the scverse convention (x, y[, z]): x is the last array axis,
y the one before, z the first of a 3-D grid. Coordinates are voxel *centres*:
``origin + index * voxel_size``. Reversing the columns gives napari's (z, y, x) world
coordinates of an image layer with ``scale=voxel_size`` and ``translate=origin``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
from anndata.utils import make_index_unique


@dataclass(frozen=True)
class Grid:
    """A regular voxel grid with a mask of the voxels that are observations.

    Attributes
    ----------
    shape : tuple of int
        Array shape of one volume, e.g. (67, 41, 58) for the Allen 200 µm grid.
    voxel_size : tuple of float
        Voxel size along each array axis, in µm.
    origin : tuple of float
        Position of voxel (0, ..., 0) along each axis, in µm.
    axes : tuple of str
        Axis names, e.g. ("AP", "DV", "ML").
    voxel : numpy.ndarray of int64, shape (n_obs,)
        Flat (C-order) index of each observation's voxel.
    """

    shape: tuple[int, ...]
    voxel_size: tuple[float, ...]
    origin: tuple[float, ...]
    axes: tuple[str, ...]
    voxel: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        """Boolean volume, True at the voxels that are observations."""
        m = np.zeros(int(np.prod(self.shape)), dtype=bool)
        m[self.voxel] = True
        return m.reshape(self.shape)

    def to_uns(self) -> dict:
        """The grid as stored in ``adata.uns["grid"]`` (``voxel`` lives in ``obs``)."""
        return {
            "shape": np.asarray(self.shape, dtype=np.int64),
            "voxel_size_um": np.asarray(self.voxel_size, dtype=np.float64),
            "origin_um": np.asarray(self.origin, dtype=np.float64),
            "axes": np.asarray(self.axes, dtype=str),
        }


def _per_axis(value, ndim: int, name: str) -> tuple[float, ...]:
    arr = np.broadcast_to(np.asarray(value, dtype=np.float64), (ndim,))
    if name == "voxel_size" and not (arr > 0).all():
        raise ValueError(f"voxel_size must be positive (µm); got {tuple(arr)}.")
    return tuple(float(v) for v in arr)


def volumes_to_anndata(
    stack: np.ndarray,
    genes: Sequence[str] | None = None,
    *,
    voxel_size: float | Sequence[float] = 1.0,
    origin: float | Sequence[float] = 0.0,
    axes: Sequence[str] | None = None,
    mask: np.ndarray | None = None,
    missing_value: float | None = None,
    unit: str = "µm",
) -> ad.AnnData:
    """Turn a gene stack of volumes (or images) into an AnnData of in-mask voxels.

    Parameters
    ----------
    stack : numpy.ndarray, shape (n_genes, *grid_shape)
        One volume (3-D) or image (2-D) per gene; float. NaN marks missing values.
    genes : sequence of str, optional
        Gene (or image) names, length n_genes. Default ``gene_0``, ``gene_1``, ...
    voxel_size, origin : float or sequence of float
        Voxel size and position of voxel 0 along each grid axis, in µm.
    axes : sequence of str, optional
        Axis names (default ``("z", "y", "x")`` trimmed to the grid's dimension).
    mask : numpy.ndarray of bool, shape grid_shape, optional
        Voxels to keep as observations (for the Allen grids, the brain: annotation > 0).
        Default: every voxel where at least one gene has data (not NaN).
    missing_value : float, optional
        A code for missing data (Allen: -1). Voxels equal to it become NaN; they are never
        treated as expression.
    unit : str
        The unit of ``voxel_size`` and ``origin`` (``uns["spatial_unit"]``): µm for the
        atlases, "pixel" for images without a physical size (the BDGP embryo template).

    Returns
    -------
    anndata.AnnData
        ``X`` float32 (n_voxels_in_mask, n_genes) with NaN where data are missing;
        ``obs["voxel"]`` flat voxel index; ``obsm["spatial"]`` voxel centres in µm (x, y[, z]);
        ``uns["grid"]`` the grid.

    Raises
    ------
    ValueError
        If the stack is not 3-D or 4-D, the names or the mask do not match it, or the mask
        is empty.
    """
    stack = np.asarray(stack)
    if stack.ndim not in (3, 4):
        raise ValueError(
            "stack must have shape (n_genes, rows, cols) or (n_genes, planes, rows, cols); "
            f"got shape {stack.shape}. For a single gene, add a leading axis: stack[None]."
        )
    n_genes, shape = stack.shape[0], stack.shape[1:]
    ndim = len(shape)
    genes = [f"gene_{i}" for i in range(n_genes)] if genes is None else [str(g) for g in genes]
    if len(genes) != n_genes:
        raise ValueError(f"{len(genes)} gene names were given for a stack of {n_genes} volumes.")
    data = stack.astype(np.float32, copy=True)
    if missing_value is not None:
        data[data == missing_value] = np.nan
    given = mask is not None
    if mask is None:
        mask = ~np.isnan(data).all(axis=0)
        if not mask.any():
            raise ValueError("Every voxel of every volume is missing (NaN"
                             + (f" or the missing code {missing_value:g}" if missing_value is not None else "")
                             + "): there is no data to analyse. Check the files (and the missing-value code).")
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise ValueError(
            f"The mask has shape {mask.shape} but the volumes have shape {shape}: they must be on "
            "the same grid (for Allen 200 µm data use the CCF annotation resampled to the ISH grid)."
        )
    mask = mask.astype(bool)
    if given and not mask.any():
        raise ValueError("The mask is empty: no voxel is selected. Choose a mask with labels > 0.")
    voxel = np.flatnonzero(mask.ravel()).astype(np.int64)
    X = data.reshape(n_genes, -1)[:, voxel].T.copy()
    vs = _per_axis(voxel_size, ndim, "voxel_size")
    org = _per_axis(origin, ndim, "origin")
    axes = tuple(axes) if axes is not None else ("z", "y", "x")[-ndim:]
    if len(axes) != ndim:
        raise ValueError(f"{len(axes)} axis names were given for a {ndim}-D grid.")
    grid = Grid(tuple(int(s) for s in shape), vs, org, axes, voxel)
    adata = ad.AnnData(
        X=X,
        obs=pd.DataFrame({"voxel": voxel}, index=[f"v{v}" for v in voxel]),
        var=pd.DataFrame(index=make_index_unique(pd.Index(genes, name="gene"))),
    )
    adata.obsm["spatial"] = voxel_coordinates(grid)
    adata.uns["grid"] = grid.to_uns()
    adata.uns["spatial_unit"] = unit
    return adata


def voxel_coordinates(grid: Grid) -> np.ndarray:
    """Voxel centres in µm, (n_obs, ndim), columns (x, y[, z]) as scverse expects."""
    idx = np.stack(np.unravel_index(grid.voxel, grid.shape), axis=1).astype(np.float64)
    xyz = idx * np.asarray(grid.voxel_size) + np.asarray(grid.origin)
    return xyz[:, ::-1].copy()


def grid_of(adata: ad.AnnData) -> Grid:
    """Read the :class:`Grid` of a volume AnnData made by :func:`volumes_to_anndata`.

    Raises
    ------
    ValueError
        If ``adata`` has no ``uns["grid"]`` / ``obs["voxel"]`` (it is not a volume, e.g. a
        cell point cloud).
    """
    if "grid" not in adata.uns or "voxel" not in adata.obs:
        raise ValueError(
            "This AnnData is not a voxel volume (no uns['grid'] / obs['voxel']); build it with "
            "napari_spatial_nmf.core.volumes_to_anndata or read it with the package's readers."
        )
    g = adata.uns["grid"]
    missing = [k for k in ("shape", "voxel_size_um", "origin_um", "axes") if not hasattr(g, "keys") or k not in g]
    if missing:
        raise ValueError(f"This AnnData's uns['grid'] lacks {missing}: it was not written by napari-spatial-nmf or "
                         "was edited. Rebuild it with napari_spatial_nmf.core.volumes_to_anndata.")
    try:
        grid = Grid(
            shape=tuple(int(s) for s in np.asarray(g["shape"]).ravel()),
            voxel_size=tuple(float(v) for v in np.asarray(g["voxel_size_um"]).ravel()),
            origin=tuple(float(v) for v in np.asarray(g["origin_um"]).ravel()),
            axes=tuple(str(a) for a in np.asarray(g["axes"]).ravel()),
            voxel=np.asarray(adata.obs["voxel"], dtype=np.int64),
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"This AnnData's uns['grid'] or obs['voxel'] is malformed ({exc}).") from None
    n = int(np.prod(grid.shape))
    if not (len(grid.voxel_size) == len(grid.origin) == len(grid.shape)) or (
            len(grid.voxel) and (grid.voxel.min() < 0 or grid.voxel.max() >= n)):
        raise ValueError(f"This AnnData's grid is inconsistent: shape {grid.shape}, voxel size {grid.voxel_size}, "
                         f"origin {grid.origin}, voxel indices up to {int(grid.voxel.max()) if len(grid.voxel) else 0}"
                         ".")
    return grid


def to_volume(adata: ad.AnnData, values: np.ndarray, fill: float = np.nan) -> np.ndarray:
    """Map per-observation values back onto the grid.

    Parameters
    ----------
    adata : anndata.AnnData
        A volume AnnData (see :func:`volumes_to_anndata`).
    values : numpy.ndarray, shape (n_obs,) or (n_obs, k)
        One value (or k values) per in-mask voxel.
    fill : float
        Value outside the mask (default NaN).

    Returns
    -------
    numpy.ndarray, float32, shape grid_shape or (k, *grid_shape)
    """
    grid = grid_of(adata)
    values = np.asarray(values)
    if values.shape[0] != grid.voxel.size:
        raise ValueError(f"values has {values.shape[0]} rows but the AnnData has {grid.voxel.size} voxels.")
    squeeze = values.ndim == 1
    v2 = values.reshape(values.shape[0], -1)
    out = np.full((v2.shape[1], int(np.prod(grid.shape))), fill, dtype=np.float32)
    out[:, grid.voxel] = v2.T
    out = out.reshape((v2.shape[1], *grid.shape))
    return out[0] if squeeze else out
