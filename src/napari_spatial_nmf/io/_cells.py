"""Cell point clouds: AnnData ``.h5ad`` files and SpatialData zarr stores."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np

SPATIALDATA_KEY = "spatialdata"  # uns record of where a table came from, for writing back


def read_h5ad(path) -> ad.AnnData:
    """``anndata.read_h5ad`` with clear errors.

    Raises
    ------
    FileNotFoundError
        A missing file.
    ValueError
        A file that is not an AnnData.
    napari_spatial_nmf.core._memory.MemoryLimitError
        A file whose declared datasets would not fit in memory (checked from its headers
        before anything is read).
    """
    from ._guards import check_h5ad

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No such file: {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not an .h5ad file (a SpatialData store is a folder with a 'tables' "
                         "group; give the .h5ad file or the store).")
    check_h5ad(path)
    try:
        return ad.read_h5ad(path)
    except Exception as exc:  # h5py / anndata raise many types for foreign files  # noqa: BLE001
        raise ValueError(f"{path.name} is not an AnnData .h5ad file ({type(exc).__name__}: {exc}).") from None


def check_cells(adata: ad.AnnData, *, spatial_key: str = "spatial", source: str = "The AnnData") -> None:
    """Raise ValueError unless ``adata.obsm[spatial_key]`` is (n_obs, 2|3) finite coordinates."""
    if spatial_key not in adata.obsm:
        raise ValueError(
            f"{source} has no obsm[{spatial_key!r}] with cell coordinates (it has "
            f"{list(adata.obsm)}). Store x, y[, z] there: adata.obsm['spatial'] = coords."
        )
    xy = np.asarray(adata.obsm[spatial_key])
    if xy.ndim != 2 or xy.shape[0] != adata.n_obs or xy.shape[1] not in (2, 3):
        raise ValueError(f"obsm[{spatial_key!r}] must have shape (n_cells, 2 or 3); got {xy.shape}.")
    if not np.isfinite(xy.astype(float)).all():
        raise ValueError(f"obsm[{spatial_key!r}] holds NaN or infinite coordinates.")


def read_cells(path, *, spatial_key: str = "spatial", **spatialdata_kwargs) -> ad.AnnData:
    """Read a cell point cloud: an ``.h5ad`` with coordinates in ``obsm[spatial_key]``, or a
    SpatialData ``.zarr`` store (:func:`read_spatialdata`).

    Parameters
    ----------
    path : str or Path
        The file or store.
    spatial_key : str
        Key of the (n_cells, 2 or 3) coordinates, (x, y[, z]); their unit is
        ``uns["spatial_unit"]`` when the file says.
    **spatialdata_kwargs
        Passed to :func:`read_spatialdata` for a zarr store.

    Returns
    -------
    anndata.AnnData

    Raises
    ------
    FileNotFoundError, ValueError
        Not an AnnData file; no or malformed coordinates.
    """
    path = Path(path)
    if is_spatialdata(path):
        return read_spatialdata(path, **spatialdata_kwargs)
    adata = read_h5ad(path)
    check_cells(adata, spatial_key=spatial_key, source=path.name)
    return adata


def is_spatialdata(path) -> bool:
    """True for a SpatialData zarr store (a folder with a ``tables`` group and zarr metadata)."""
    p = Path(path)
    return p.is_dir() and (p / "tables").is_dir() and any((p / n).exists() for n in ("zarr.json", ".zgroup"))


def _spatialdata():
    try:
        import spatialdata
    except ImportError:
        raise ImportError("Reading SpatialData stores needs spatialdata: "
                          "pip install 'napari-spatial-nmf[spatialdata]'.") from None
    return spatialdata


def read_spatialdata(path, *, table: str | None = None, coordinate_system: str = "global",
                     unit: str | None = None) -> ad.AnnData:
    """A SpatialData table as a cell AnnData: counts, obs, and each cell's centroid.

    The table's annotated element (shapes such as Xenium ``cell_circles`` or Visium spots,
    points, or labels) gives every cell's centroid in ``coordinate_system``
    (``spatialdata.get_centroids``), matched to the table's rows through its
    ``instance_key``; they become ``obsm["spatial"]`` (x, y[, z]). Nothing is converted by
    hand and the store is not changed.

    Parameters
    ----------
    path : str or Path
        A SpatialData ``.zarr`` store (spatialdata-io writes Xenium, MERSCOPE, Visium HD,
        CosMx data as these).
    table : str, optional
        Which table (default: the only one, or the one named "table" as spatialdata-io
        writes it).
    coordinate_system : str
        The coordinate system of the centroids.
    unit : str, optional
        The unit of that coordinate system (e.g. "µm"), stored as ``uns["spatial_unit"]``.

    Returns
    -------
    anndata.AnnData
        A copy of the table with ``obsm["spatial"]`` and ``uns["spatialdata"]`` (store, table,
        region, keys, coordinate system) for :func:`write_spatialdata`.

    Raises
    ------
    ImportError
        spatialdata is not installed (the ``spatialdata`` extra).
    ValueError
        No table, several tables and none chosen, a table that annotates several regions,
        cells without a centroid.
    """
    sd = _spatialdata()
    path = Path(path)
    sdata = sd.read_zarr(path)
    names = list(sdata.tables)
    if not names:
        raise ValueError(f"The SpatialData store {path.name} has no table of cells.")
    if table is None:
        if len(names) > 1 and "table" in names:
            names = ["table"]
        if len(names) > 1:
            raise ValueError(f"The SpatialData store {path.name} has several tables {names}: choose one with table=.")
        table = names[0]
    if table not in sdata.tables:
        raise ValueError(f"No table {table!r} in {path.name}; it has {names}.")
    tab = sdata.tables[table]
    attrs = tab.uns.get("spatialdata_attrs", {})
    region, region_key, instance_key = attrs.get("region"), attrs.get("region_key"), attrs.get("instance_key")
    regions = [region] if isinstance(region, str) else list(np.atleast_1d(region))
    if len(regions) != 1:
        raise ValueError(f"Table {table!r} annotates several regions {regions}; read one region at a time "
                         "(subset the table first).")
    element = sdata[regions[0]]
    centroids = sd.get_centroids(element, coordinate_system=coordinate_system)
    centroids = centroids.compute() if hasattr(centroids, "compute") else centroids
    ids = tab.obs[instance_key].to_numpy()
    missing = ~np.isin(ids, centroids.index.to_numpy())
    if missing.any():
        raise ValueError(f"{int(missing.sum())} cells of table {table!r} have no centroid in {regions[0]!r}.")
    out = tab.copy()
    cols = [c for c in ("x", "y", "z") if c in centroids.columns]
    out.obsm["spatial"] = centroids.loc[ids, cols].to_numpy(dtype=np.float64)
    out.uns[SPATIALDATA_KEY] = {"path": str(path), "table": table, "region": regions[0], "region_key": region_key,
                                "instance_key": instance_key, "coordinate_system": coordinate_system}
    out.uns.pop("spatialdata_attrs", None)
    if unit is not None:
        out.uns["spatial_unit"] = unit
    return out


def write_spatialdata(adata: ad.AnnData, path=None, *, table: str = "napari_spatial_nmf",
                      overwrite: bool = False) -> Path:
    """Write an AnnData with results back into its SpatialData store as a new table.

    The table annotates the same region as the one :func:`read_spatialdata` read (from
    ``uns["spatialdata"]``), so napari-spatialdata and the scverse tools see the results
    next to the original data.

    Parameters
    ----------
    adata : anndata.AnnData
        Read with :func:`read_spatialdata` (and then given results by a tool).
    path : str or Path, optional
        The store (default: the one it was read from).
    table : str
        The new table's name.
    overwrite : bool
        Replace a table of that name.

    Returns
    -------
    pathlib.Path
        The store.

    Raises
    ------
    ValueError
        The AnnData did not come from a SpatialData store; the table exists and
        ``overwrite`` is False.
    """
    sd = _spatialdata()
    from spatialdata.models import TableModel

    meta = adata.uns.get(SPATIALDATA_KEY)
    if not meta:
        raise ValueError("This AnnData was not read from a SpatialData store (no uns['spatialdata']); read it with "
                         "napari_spatial_nmf.io.read_spatialdata first.")
    path = Path(path or meta["path"])
    sdata = sd.read_zarr(path)
    if table in sdata.tables and not overwrite:
        raise ValueError(f"{path.name} already has a table {table!r}: pass overwrite=True or another name.")
    out = adata.copy()
    out.uns.pop(SPATIALDATA_KEY, None)
    out = TableModel.parse(out, region=meta["region"], region_key=meta["region_key"],
                           instance_key=meta["instance_key"], overwrite_metadata=True)
    if table in sdata.tables:
        sdata.delete_element_from_disk(table)
    sdata.tables[table] = out
    sdata.write_element(table)
    return path
