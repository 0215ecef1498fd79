"""Gene stacks from ``.npz``, ``.nrrd`` and ``.tif`` files, and the BDGP embryo images."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from ._types import Stack

STACK_KEYS = ("stack", "images", "energy", "data", "X", "volumes")
NAME_KEYS = ("genes", "gene_names", "names", "image_names")
TEMPLATE_GLOB = "*emplate*.csv"


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an .npz, never unpickling (clear errors for foreign or pickled files)."""
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path.name} is not a valid .npz file (an .npz is a zip of .npy arrays; this file is "
                         "not a zip). Save arrays with numpy.savez.")
    from ._guards import check_npz

    check_npz(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise ValueError(f"{path.name} holds pickled objects (e.g. an array of strings saved with dtype "
                             "object), which are never loaded (allow_pickle=False): save plain arrays "
                             "(numpy.str_ names, numeric data).") from None
        raise ValueError(f"{path.name} is not a valid .npz file: {exc}") from None
    except (OSError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise ValueError(f"{path.name} is not a valid .npz file ({type(exc).__name__}: {exc}).") from None


def _npz_stack(path: Path, files: dict, missing_value):
    if "table" in files and files["table"].ndim == 2 and "image_names" in files:  # a BDGP pixels x images table
        template = _find_template(path)
        names = [str(n) for n in files["image_names"]]
        return bdgp_stack(files["table"], template, names), names, (1.0, 1.0), missing_value, ("DV", "AP")
    key = next((k for k in STACK_KEYS if k in files), None)
    if key is None:
        big = [k for k, v in files.items() if v.ndim >= 3 and v.dtype.kind in "fiu"]
        if len(big) != 1:
            raise ValueError(f"{path.name}: cannot tell which array is the stack (arrays: {list(files)}); name it "
                             f"one of {list(STACK_KEYS)}, shape (genes, *grid).")
        key = big[0]
    data = files[key]
    names = None
    nk = next((k for k in NAME_KEYS if k in files), None)
    if nk is not None:
        names = [str(n) for n in np.atleast_1d(files[nk])]
        if len(names) != len(data):
            raise ValueError(f"{path.name}: '{nk}' has {len(names)} names but the stack '{key}' has {len(data)} "
                             "volumes; give one name per volume.")
    voxel = files.get("voxel_size_um")
    if missing_value is None and "missing_value" in files:
        missing_value = float(files["missing_value"])
    return data, names, voxel, missing_value, None


def _find_template(path: Path) -> np.ndarray:
    found = sorted(path.parent.glob(TEMPLATE_GLOB))
    if not found:
        raise ValueError(f"{path.name} is a BDGP pixel table; its embryo template ({TEMPLATE_GLOB}) must lie next "
                         "to it.")
    return _read_template(found[0])


def _read_template(path) -> np.ndarray:
    try:
        template = pd.read_csv(path, index_col=0).to_numpy()
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise ValueError(f"Could not read the embryo template {path}: {exc}") from None
    if not np.isin(template, (0, 1)).all():
        raise ValueError(f"{Path(path).name} is not a binary (0/1) template.")
    return template


def _nrrd_stack(path: Path):
    import nrrd

    from ._guards import check_nrrd

    check_nrrd(path)
    try:
        data, header = nrrd.read(str(path))
    except Exception as exc:  # pynrrd raises NRRDError and others on malformed files  # noqa: BLE001
        raise ValueError(f"{path.name} is not a readable NRRD file: {exc}") from None
    dirs = header.get("space directions")
    voxel = None
    if dirs is not None:
        voxel = [np.linalg.norm(d) for d in dirs if d is not None and not np.isnan(np.asarray(d, float)).any()] or None
    return (data[None] if data.ndim == 3 else data), voxel


def _tif_stack(path: Path):
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            data = tf.asarray()
            axes = tf.series[0].axes
    except Exception as exc:  # tifffile raises several types on bad files  # noqa: BLE001
        raise ValueError(f"{path.name} is not a readable TIFF file: {exc}") from None
    volume = data.ndim == 3 and axes == "ZYX"
    return data[None] if data.ndim == 2 or volume else data


def read_image_stack(path, *, missing_value: float | None = None) -> Stack:
    """Read a gene stack from ``.npz``, ``.nrrd`` or ``.tif``/``.tiff``.

    * ``.npz`` (read without pickle): the array under ``stack``, ``images``, ``energy``,
      ``data``, ``X`` or ``volumes`` (else the only array of 3+ dimensions), shape
      (n_genes, *grid); names under ``genes``/``gene_names``/``names``/``image_names`` (one
      per volume); optional ``voxel_size_um`` (one value, or one per grid axis) and
      ``missing_value``. A BDGP pixel table (``table``, pixels x images, with
      ``image_names``) is placed into images with the embryo template next to it.
    * ``.nrrd``: a 3-D volume (one gene, named after the file) or a 4-D stack (genes
      first); voxel size from ``space directions``.
    * ``.tif``: a 2-D image (one gene), a 3-D stack of images (or a volume when the
      file's axes say ``ZYX``), or a 4-D stack of volumes.

    Parameters
    ----------
    path : str or Path
        The file.
    missing_value : float, optional
        A missing-data code to turn into NaN (overrides one stored in the file).

    Returns
    -------
    Stack
        ``data`` float32 (n_genes, *grid), NaN = missing.

    Raises
    ------
    FileNotFoundError
        A missing file.
    ValueError
        An unreadable or foreign file, pickled content, names or voxel sizes that do not
        match the stack, a non-numeric stack.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No such file: {path}")
    suffix = path.suffix.lower()
    voxel, names, axes, meta = None, None, None, {"source": str(path)}
    if suffix == ".npz":
        data, names, voxel, missing_value, axes = _npz_stack(path, _load_npz(path), missing_value)
    elif suffix == ".nrrd":
        data, voxel = _nrrd_stack(path)
    elif suffix in (".tif", ".tiff"):
        data = _tif_stack(path)
    else:
        raise ValueError(f"Unsupported image stack format {suffix!r}: use .npz, .nrrd or .tif.")
    if data.ndim not in (3, 4):
        raise ValueError(f"{path.name}: expected (genes, rows, cols) or (genes, z, y, x); got shape {data.shape}.")
    if data.dtype.kind not in "fiu":
        raise ValueError(f"{path.name}: the stack must be numeric; got dtype {data.dtype}.")
    data = data.astype(np.float32)
    if missing_value is not None:
        data[data == missing_value] = np.nan
        meta["missing_value"] = missing_value
    names = names or ([path.name.split(".")[0]] if len(data) == 1 else [f"gene_{i}" for i in range(len(data))])
    ndim = data.ndim - 1
    v = np.atleast_1d(np.asarray(voxel if voxel is not None else 1.0, dtype=float))
    if v.size not in (1, ndim):
        raise ValueError(f"{path.name}: voxel_size_um has {v.size} values for a {ndim}-D grid; give one value or "
                         f"one per grid axis ({ndim}).")
    return Stack(data, names, tuple(np.broadcast_to(v, (ndim,))), axes=axes or (), meta=meta)


def bdgp_stack(table: np.ndarray, template: np.ndarray, names) -> np.ndarray:
    """Place a (pixels x images) table into images using the embryo template.

    Pixel row k is the k-th True of ``template`` in column-major (R) order, as the staNMF
    authors' ``imageBatchDisplay`` fills it. Pixels outside the embryo are NaN.

    Returns
    -------
    numpy.ndarray, float32, (n_images, *template.shape)

    Raises
    ------
    ValueError
        A table whose pixel count does not match the template.
    """
    template = np.asarray(template).astype(bool)
    n_pix = int(template.sum())
    if table.shape[0] != n_pix:
        raise ValueError(f"The table has {table.shape[0]} pixel rows but the template has {n_pix} "
                         "embryo pixels; use the template that belongs to this table.")
    rc = np.argwhere(template.T)[:, ::-1]
    out = np.full((table.shape[1], *template.shape), np.nan, dtype=np.float32)
    out[:, rc[:, 0], rc[:, 1]] = np.asarray(table, dtype=np.float32).T
    return out


def read_bdgp(table_path, template_path=None) -> Stack:
    """Read the BDGP Drosophila embryo ISH table used by staNMF (Wu et al. 2016 PNAS).

    Parameters
    ----------
    table_path : str or Path
        ``pixels x images`` csv (optionally ``.gz``), first column the pixel row names,
        header the image names (e.g. ``WuExampleExpression.csv``).
    template_path : str or Path, optional
        The 16 x 32 binary embryo template csv (first column row names). Default: a file
        matching ``*emplate*.csv`` next to the table.

    Returns
    -------
    Stack
        ``data`` float32 (n_images, 16, 32), NaN outside the embryo; names from the header.

    Raises
    ------
    FileNotFoundError, ValueError
        No template, unreadable files, NaN or negative intensities.
    """
    table_path = Path(table_path)
    if template_path is None:
        found = sorted(table_path.parent.glob(TEMPLATE_GLOB))
        if not found:
            raise FileNotFoundError(f"No embryo template ({TEMPLATE_GLOB}) next to {table_path.name}; "
                                    "pass template_path.")
        template_path = found[0]
    try:
        table = pd.read_csv(table_path, index_col=0)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise ValueError(f"Could not read the BDGP table {table_path}: {exc}") from None
    template = _read_template(template_path)
    values = table.to_numpy(dtype=np.float64)
    if np.isnan(values).any() or (values < 0).any():
        raise ValueError(f"{table_path.name} has NaN or negative intensities; BDGP values lie in [0, 1].")
    names = [str(c) for c in table.columns]
    return Stack(bdgp_stack(values, template, names), names, (1.0, 1.0), axes=("DV", "AP"),
                 meta={"source": str(table_path), "format": "bdgp", "template": str(template_path),
                       "unit": "pixel"})
