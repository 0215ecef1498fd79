"""npe2 reader and writer contributions.

The reader sniffs the content cheaply and returns None for files that are not ours, so
napari can try its other readers: an Allen grid zip (a MetaImage header inside), a folder
of them, a SpatialData store, an atlas or gene-stack NRRD, an .npz gene stack or BDGP
table, a .tif written by this plugin, a BDGP csv with its template, an .h5ad (a result of
``napari-spatial-nmf run`` opens as pattern layers; other AnnData as cells), and a
BrainGlobe atlas's ``manifest.json``.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from . import io
from ._layers import atlas_layer, cells_layer, pattern_layers, stack_layers
from .results import REGISTRY, RESULT_ID

TIF_MARKER = "napari-spatial-nmf"


def _is_label_nrrd(path: Path) -> bool:
    import nrrd

    try:
        header = nrrd.read_header(str(path))
    except Exception:  # noqa: BLE001 - not an NRRD: let other readers try
        return False
    return str(header.get("type", "")).lower() in {
        "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
        "unsigned char", "unsigned short", "unsigned int", "short", "int", "long"}


def _npz_is_stack(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            names = {Path(n).stem for n in zf.namelist()}
    except (zipfile.BadZipFile, OSError):
        return False
    return bool(names & {"stack", "images", "energy", "data", "X", "volumes"}) or {"table", "image_names"} <= names


def _tif_description(path: Path) -> dict | None:
    """The JSON description this plugin writes into its .tif files, or None if it is not one
    (not a TIFF, no description, not JSON, not marked as ours): napari then uses its own reader.
    """
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            desc = tf.pages[0].description or ""
    except Exception:  # noqa: BLE001 - not a readable TIFF: not ours
        return None
    if TIF_MARKER not in desc:
        return None
    try:
        meta = json.loads(desc)
    except ValueError:
        return None
    return meta if isinstance(meta, dict) and meta.get("marker") == TIF_MARKER else None


def _our_tif(path: Path) -> bool:
    return _tif_description(path) is not None


def _numbers(value, n=None) -> list[float] | None:
    if not isinstance(value, list) or not value or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                           for v in value):
        return None
    return [float(v) for v in value] if n is None or len(value) == n else None


def _is_brainglobe_manifest(path: Path) -> bool:
    return path.name == "manifest.json" and len(path.parents) > 3 and path.parents[2].name == "atlases"


def _read_atlas(path):
    p = Path(path)
    if _is_brainglobe_manifest(p):
        atlas = io.read_brainglobe_atlas(p.parents[1].name, brainglobe_dir=p.parents[4])
        return [atlas_layer(atlas, name=p.parents[1].name)]
    return [atlas_layer(io.read_atlas(p), name=p.name.split(".")[0])]


def _read_allen(path):
    return stack_layers(io.read_allen_energy(path))


def _read_stack(path):
    p = Path(path)
    return stack_layers(io.read_image_stack(p), name=p.name.split(".")[0])


def _read_tif(path):
    import tifffile

    p = Path(path)
    meta = _tif_description(p) or {}
    with tifffile.TiffFile(p) as tf:
        data = tf.asarray()
    # only well-formed fields are used: a hand-edited description cannot break the layer
    kwargs = {}
    if isinstance(meta.get("name"), str):
        kwargs["name"] = meta["name"]
    for key in ("scale", "translate"):
        v = _numbers(meta.get(key), data.ndim)
        if v is not None:
            kwargs[key] = v
    limits = _numbers(meta.get("contrast_limits"), 2)
    if limits is not None and limits[1] > limits[0]:
        kwargs["contrast_limits"] = limits
    labels = meta.get("axis_labels")
    if isinstance(labels, list) and len(labels) == data.ndim and all(isinstance(a, str) for a in labels):
        kwargs["axis_labels"] = labels
    extra = meta.get("metadata")
    kwargs["metadata"] = {k: v for k, v in extra.items() if k != RESULT_ID} if isinstance(extra, dict) else {}
    return [(data, kwargs, "image")]


def _read_bdgp(path):
    return stack_layers(io.read_bdgp(path), name="BDGP images")


def _volume_result_keys(adata) -> list[str]:
    """NMF result keys of a volume AnnData (``napari-spatial-nmf run``'s ``result.h5ad``)."""
    if "grid" not in adata.uns or "voxel" not in adata.obs:
        return []
    return [k[2:] for k in adata.obsm if k.startswith("X_") and f"{k[2:]}_coefficients" in adata.varm
            and k[2:] in adata.uns]


def _h5ad_is_ours(path: Path) -> bool:
    """An .h5ad with cell coordinates (``obsm/spatial``) or a volume result (``uns/grid`` and
    ``obs/voxel``), from its HDF5 structure alone; others are left to other readers.
    """
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return "obsm/spatial" in f or ("uns/grid" in f and "obs/voxel" in f)
    except (OSError, ValueError):
        return False


def _read_h5ad(path):
    """A volume NMF result opens as its pattern layers (usable by the atlas-analysis dock);
    any other AnnData as a cell point cloud.
    """
    path = Path(path)
    adata = io.read_h5ad(path)
    keys = _volume_result_keys(adata)
    if keys:
        recorded = adata.uns[keys[0]].get("source_name") if hasattr(adata.uns[keys[0]], "get") else None
        # the name it had in napari; else the file's (a command-line run's result.h5ad: its folder's)
        source = str(recorded) if recorded else (path.parent.name if path.stem == "result" else path.stem)
        return [lt for key in keys for lt in pattern_layers(REGISTRY.add(adata, "nmf", key, source))]
    if "grid" in adata.uns and "voxel" in adata.obs:  # gene volumes saved as voxels x genes: images again
        import numpy as np

        from .core.grid import grid_of, to_volume

        grid = grid_of(adata)
        X = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
        stack = io.Stack(to_volume(adata, np.asarray(X, dtype=np.float32)), [str(g) for g in adata.var_names],
                         grid.voxel_size, origin=grid.origin, axes=grid.axes,
                         meta={"source": str(path), "unit": str(adata.uns.get("spatial_unit", "µm"))})
        return stack_layers(stack, name=path.stem)
    io.check_cells(adata, source=path.name)
    return [cells_layer(adata, name=path.stem)]


def _read_spatialdata(path):
    adata = io.read_spatialdata(path)
    return [cells_layer(adata, name=Path(path).stem)]


def get_reader(path):
    """Return a reader function for ``path``, or None if this plugin does not read it."""
    reader = _reader_for(path)
    if reader is None:
        return None

    def read(p):
        from ._canvas import install_on_current_viewer

        install_on_current_viewer()  # scale bar, colour bar, legend, atlas names under the cursor
        return reader(p)

    return read


def _reader_for(path):
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    name = p.name.lower()
    if p.is_dir():
        if io.is_spatialdata(p):
            return _read_spatialdata
        if any(io.is_allen_zip(z) for z in p.glob("*.zip")):
            return _read_allen
        return None
    if not p.is_file():
        return None
    if name.endswith(".zip"):
        return _read_allen if io.is_allen_zip(p) else None
    if name.endswith(".h5ad"):
        return _read_h5ad if _h5ad_is_ours(p) else None
    if name.endswith(".nrrd"):
        return _read_atlas if _is_label_nrrd(p) else _read_stack
    if name.endswith(".npz"):
        return _read_stack if _npz_is_stack(p) else None
    if name.endswith((".tif", ".tiff")):
        return _read_tif if _our_tif(p) else None
    if name.endswith((".csv", ".csv.gz")) and "emplate" not in name and any(p.parent.glob("*emplate*.csv")):
        return _read_bdgp
    if _is_brainglobe_manifest(p):
        return _read_atlas
    return None


# ---------------------------------------------------------------------- writers

def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except TypeError:
        return None


def write_tif(path: str, data, attributes: dict) -> list[str]:
    """Write an image layer (a pattern, a gene volume) to a .tif with its name, scale and
    metadata in the description, so this plugin reads it back as the same layer.
    """
    import numpy as np
    import tifffile

    meta = {"marker": TIF_MARKER, "name": attributes.get("name"),
            "scale": [float(s) for s in attributes.get("scale", ())],
            "translate": [float(t) for t in attributes.get("translate", ())],
            "axis_labels": list(attributes.get("axis_labels", ())) or None,
            "contrast_limits": [float(c) for c in attributes.get("contrast_limits", (0, 1))],
            "metadata": {k: v for k, v in attributes.get("metadata", {}).items() if _jsonable(v) is not None}}
    tifffile.imwrite(path, np.asarray(data), description=json.dumps(meta), metadata=None)
    return [path]


def _image_anndata(data, attributes: dict):
    """A gene image or volume layer as the package's voxel AnnData (voxels x genes, its grid)."""
    import numpy as np

    from .core.grid import volumes_to_anndata

    data = np.asarray(data, dtype=np.float32)
    meta = attributes.get("metadata", {}) or {}
    genes = meta.get("genes")
    if not (isinstance(genes, list) and len(genes) == data.shape[0] and data.ndim >= 3 and len(genes) > 1):
        data, genes = data[None], [str(meta.get("gene") or attributes.get("name") or "image")]
    ndim = data.ndim - 1
    if ndim not in (2, 3):
        raise ValueError(f"Only 2-D images and 3-D volumes are saved as .h5ad; this layer is {ndim}-D.")
    scale = list(attributes.get("scale", ()))[-ndim:] or [1.0] * ndim
    translate = list(attributes.get("translate", ()))[-ndim:] or [0.0] * ndim
    axes = meta.get("axes") if isinstance(meta.get("axes"), list) and len(meta["axes"]) == ndim else None
    units = attributes.get("units")
    unit = "µm" if units and all(str(u) == "micrometer" for u in units) else "pixel"
    return volumes_to_anndata(data, genes, voxel_size=scale, origin=translate, axes=axes, unit=unit,
                              missing_value=meta.get("missing_value"))


def write_h5ad(path: str, layer_data: list[tuple]) -> list[str]:
    """Write the result behind the chosen layers (pattern images, cell weights, domains) as
    an .h5ad AnnData with all its keys; a plain cell layer writes its AnnData with the
    layer's features as obs columns; a plain gene image or volume writes its voxels x gene
    AnnData (the package's data model, with its grid), which opens again as the image.
    """
    adatas = []
    for data, attributes, kind in layer_data:
        meta = attributes.get("metadata", {})
        if RESULT_ID not in meta and "adata" not in meta and kind == "image":
            adatas.append(_image_anndata(data, attributes))
            continue
        if RESULT_ID in meta:
            adata = REGISTRY.get(meta[RESULT_ID]).adata
        elif "adata" in meta:
            adata = meta["adata"].copy()
            feats = attributes.get("features")
            if feats is not None and len(feats) == adata.n_obs:
                for c in feats.columns:
                    if c not in adata.obs:
                        adata.obs[c] = feats[c].to_numpy()
        else:
            continue
        if not any(a is adata for a in adatas):
            adatas.append(adata)
    if len(adatas) != 1:
        return []  # nothing of ours, or several results: napari reports that nothing was written
    adatas[0].write_h5ad(path, compression="gzip")
    return [path]
