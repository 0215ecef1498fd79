"""npe2 reader contributions: sniff cheaply, return None for files we do not read."""

from __future__ import annotations

from pathlib import Path

from . import io
from ._layers import atlas_layer, cells_layer, pattern_layers, stack_layer


def _is_label_nrrd(path: Path) -> bool:
    import nrrd

    try:
        header = nrrd.read_header(str(path))
    except Exception:  # not an NRRD: let other readers try  # noqa: BLE001
        return False
    return str(header.get("type", "")).lower() in {
        "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
        "unsigned char", "unsigned short", "unsigned int", "short", "int", "long"}


def _read_atlas(path):
    atlas = io.read_atlas(path)
    return [atlas_layer(atlas, name=Path(path).name.split(".")[0])]


def _read_allen(path):
    stack = io.read_allen_energy(path)
    return [stack_layer(stack)]


def _read_stack(path):
    return [stack_layer(io.read_image_stack(path))]


def _read_bdgp(path):
    return [stack_layer(io.read_bdgp(path), name="BDGP images")]


def _volume_result_keys(adata) -> list[str]:
    """NMF result keys of a volume AnnData (``napari-spatial-nmf run``'s ``result.h5ad``)."""
    if "grid" not in adata.uns or "voxel" not in adata.obs:
        return []
    return [k[2:] for k in adata.obsm if k.startswith("X_") and f"{k[2:]}_coefficients" in adata.varm
            and k[2:] in adata.uns]


def _read_h5ad(path):
    """A volume NMF result opens as its pattern layers (usable by the atlas-analysis dock);
    any other AnnData as a cell point cloud."""
    path = Path(path)
    adata = io.read_h5ad(path)
    keys = _volume_result_keys(adata)
    if keys:
        source = path.parent.name if path.stem == "result" else path.stem
        return [lt for key in keys for lt in pattern_layers(adata, key, source=source)]
    io.check_cells(adata, source=path.name)
    return [cells_layer(adata, name=path.stem)]


def get_reader(path):
    """Return a reader function for ``path``, or None if this plugin does not read it."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    name = p.name.lower()
    if p.is_dir():
        if any(p.glob("*.zip")):
            return _read_allen
        return None
    if name.endswith(".zip"):
        return _read_allen
    if name.endswith(".h5ad"):
        return _read_h5ad
    if name.endswith(".nrrd"):
        return _read_atlas if _is_label_nrrd(p) else _read_stack
    if name.endswith((".npz", ".tif", ".tiff")):
        return _read_stack
    if name.endswith((".csv", ".csv.gz")) and "emplate" not in name and any(p.parent.glob("*emplate*.csv")):
        return _read_bdgp
    return None
