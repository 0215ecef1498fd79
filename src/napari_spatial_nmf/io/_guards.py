"""Size checks made from a file's header, before its data are read.

A small file can declare a huge array (a gzip NRRD of 800³ zeros, an ``.npz`` whose header
says 4 TB, an ``.h5ad`` whose matrix would take 40 GB). Each reader calls one of these
first, so such a file is refused at once, with the declared size and the limit, instead of
exhausting memory part-way (``docs/refusals.md``).
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from ..core._memory import check_memory, fmt_bytes

MAX_RATIO = 1000  # declared bytes per stored byte above which a compressed file is refused as a bomb
MIN_BOMB_BYTES = 256 * 2**20  # ... when it would unpack to more than this

_NRRD_TYPES = {"int8": 1, "uint8": 1, "signed char": 1, "unsigned char": 1, "uchar": 1, "int16": 2, "uint16": 2,
               "short": 2, "ushort": 2, "unsigned short": 2, "int32": 4, "uint32": 4, "int": 4, "uint": 4,
               "unsigned int": 4, "int64": 8, "uint64": 8, "long long": 8, "float": 4, "double": 8, "float32": 4,
               "float64": 8}


def check_declared(nbytes: int, stored: int, source: str, what: str) -> None:
    """Refuse a file whose declared content would not fit in memory, or that expands from
    ``stored`` bytes more than :data:`MAX_RATIO`-fold into more than 256 MiB.

    Raises
    ------
    napari_spatial_nmf.core._memory.MemoryLimitError
        The declared size exceeds the memory limit.
    ValueError
        A decompression bomb.
    """
    if nbytes > MIN_BOMB_BYTES and nbytes > MAX_RATIO * max(stored, 1):
        raise ValueError(f"{source} declares {what} of {fmt_bytes(nbytes)} in a file of {fmt_bytes(stored)} (over "
                         f"{MAX_RATIO}:1): it is damaged or a decompression bomb, and is not read.")
    check_memory(nbytes, f"reading {source} ({what} of {fmt_bytes(nbytes)} declared in its header)",
                 "Read a smaller or coarser file, or crop it first.")


def check_nrrd(path: Path) -> dict:
    """The NRRD header of ``path``, after checking the size it declares.

    Raises
    ------
    ValueError
        Not an NRRD, or a header whose sizes and type cannot be read; a decompression bomb.
    napari_spatial_nmf.core._memory.MemoryLimitError
        The declared volume does not fit in memory.
    """
    import nrrd

    path = Path(path)
    try:
        header = nrrd.read_header(str(path))
        sizes = [int(v) for v in header["sizes"]]
    except Exception as exc:  # pynrrd raises NRRDError, KeyError, ValueError on malformed headers  # noqa: BLE001
        raise ValueError(f"{path.name} is not a readable NRRD file: {exc}") from None
    itemsize = _NRRD_TYPES.get(str(header.get("type", "")).lower().strip(), 8)
    if any(v < 0 for v in sizes):
        raise ValueError(f"{path.name}: its header declares negative sizes {sizes}.")
    nbytes = math.prod(sizes) * itemsize  # Python integers: no overflow whatever the header says
    check_declared(nbytes, path.stat().st_size, path.name, f"a {' x '.join(map(str, sizes))} volume")
    return header


def check_npz(path: Path) -> None:
    """Check every array an ``.npz`` declares (from each member's ``.npy`` header).

    Raises
    ------
    ValueError
        A member whose header cannot be read, pickled members, a decompression bomb.
    napari_spatial_nmf.core._memory.MemoryLimitError
        The arrays together do not fit in memory.
    """
    path = Path(path)
    total = 0
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shape, _fortran, dtype = read(f, max_header_size=10_000)
                if dtype.hasobject:
                    raise ValueError(f"{path.name} holds pickled objects in {info.filename} (e.g. an array of strings "
                                     "saved with dtype object), which are never loaded (allow_pickle=False): save "
                                     "plain arrays (numpy.str_ names, numeric data).")
                total += math.prod(int(s) for s in shape) * dtype.itemsize
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as exc:
        raise ValueError(f"{path.name} is not a valid .npz file ({type(exc).__name__}: {exc}).") from None
    except ValueError as exc:
        if "pickled" in str(exc):
            raise
        raise ValueError(f"{path.name} is not a valid .npz file ({exc}).") from None
    check_declared(total, path.stat().st_size, path.name, "arrays")


def h5ad_declared_bytes(path: Path) -> int:
    """The bytes an ``.h5ad`` would take in memory once read: the sum of its datasets' sizes
    (shape x item size), read from the HDF5 headers without reading data.

    Raises
    ------
    ValueError
        Not an HDF5 file.
    """
    import h5py

    total = 0

    def visit(_name, obj):
        nonlocal total
        if isinstance(obj, h5py.Dataset):
            itemsize = obj.dtype.itemsize if obj.dtype.kind not in "OSU" else 8
            total += math.prod(int(s) for s in obj.shape) * itemsize

    try:
        with h5py.File(path, "r") as f:
            f.visititems(visit)
    except OSError as exc:
        raise ValueError(f"{Path(path).name} is not an AnnData .h5ad file (not HDF5: {exc}).") from None
    return total


def check_h5ad(path: Path) -> None:
    """Refuse an ``.h5ad`` whose declared datasets would not fit in memory (before reading it).

    Raises
    ------
    napari_spatial_nmf.core._memory.MemoryLimitError
        The declared datasets exceed the memory limit.
    ValueError
        Not an HDF5 file; a decompression bomb.
    """
    path = Path(path)
    check_declared(h5ad_declared_bytes(path), path.stat().st_size, path.name, "datasets")
