"""Allen Mouse Brain Atlas expression-energy grids (zips of MetaImage ``energy.mhd`` + ``.raw``).

MetaImage is read with SimpleITK; the zip is unpacked into a temporary folder one member
at a time, after its declared size has been checked against what the header needs, so a
damaged or inflated zip is refused before anything large is read.
"""

from __future__ import annotations

import math
import re
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from ..core._memory import check_memory
from ._types import Stack

ALLEN_MISSING = -1.0
INDEX_COLUMNS = ("Section_Data_ID", "acronym")


def _sitk():
    import SimpleITK as sitk

    return sitk


def _image_info(mhd: Path) -> tuple[tuple[int, ...], tuple[float, ...], str, int]:
    """(size (x, y, z), spacing, pixel type, bytes per voxel) from a MetaImage header alone."""
    sitk = _sitk()
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(mhd))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ValueError(f"{mhd.name} is not a readable MetaImage header ({str(exc).splitlines()[0]}).") from None
    ptype = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    bits = int(re.match(r"(\d+)-bit", ptype).group(1)) if re.match(r"(\d+)-bit", ptype) else 8
    return tuple(reader.GetSize()), tuple(reader.GetSpacing()), ptype, bits // 8 * reader.GetNumberOfComponents()


def _read_mhd(mhd: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """The volume in (x, y, z) = (AP, DV, ML) order and its spacing."""
    sitk = _sitk()
    try:
        img = sitk.ReadImage(str(mhd))
    except RuntimeError as exc:
        raise ValueError(f"{mhd.name}: SimpleITK cannot read the volume ({str(exc).splitlines()[0]}).") from None
    return np.ascontiguousarray(sitk.GetArrayFromImage(img).transpose()), tuple(img.GetSpacing())


def _unpack(zf: zipfile.ZipFile, member: str, dest: Path, max_bytes: int, source: str) -> Path:
    """Write one zip member to ``dest``, reading at most ``max_bytes`` (never more)."""
    out = dest / Path(member).name
    try:
        with zf.open(member) as src, open(out, "wb") as f:
            data = src.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise ValueError(f"{source}: {member} holds more data than its header describes; the zip is "
                                 "damaged or not an Allen grid.")
            f.write(data)
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{source} is damaged: {member} fails its check ({exc}). Download the zip again.") from None
    return out


def _zip_header(zf: zipfile.ZipFile, path: Path, tmp: Path) -> tuple[Path, dict, zipfile.ZipInfo]:
    """Unpack the .mhd of an Allen zip and check the raw member's declared size against it."""
    names = zf.namelist()
    mhd = [n for n in names if n.endswith(".mhd")]
    if not mhd:
        raise ValueError(f"{path.name} holds no .mhd header; an Allen energy zip has energy.mhd + energy.raw.")
    info = zf.getinfo(mhd[0])
    if info.file_size > 65536:
        raise ValueError(f"{path.name}: its header {mhd[0]} is {info.file_size} bytes; a MetaImage header is a few "
                         "hundred. The zip is not an Allen grid.")
    header = _unpack(zf, mhd[0], tmp, 65536, path.name)
    fields = dict(line.split("=", 1) for line in header.read_text("ascii", "replace").splitlines() if "=" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    raw_name = next((n for n in names if Path(n).name == fields.get("ElementDataFile", "")), None)
    if raw_name is None:
        raise ValueError(f"{path.name}: the raw file named in {mhd[0]} is not in the zip.")
    return header, fields, zf.getinfo(raw_name)


def _read_allen_zip(path: Path) -> tuple[np.ndarray, tuple[float, ...], str, int | None, str]:
    """(volume (AP, DV, ML), spacing, gene, SectionDataSet id, pixel type) of one Allen zip."""
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ValueError(f"{path.name} is not a zip file (an Allen grid download is a zip).") from None
    with zf, tempfile.TemporaryDirectory(prefix="nsn-allen-") as tmpdir:
        tmp = Path(tmpdir)
        header, _, raw = _zip_header(zf, path, tmp)
        size, _, ptype, nbytes = _image_info(header)
        expected = math.prod(int(v) for v in size) * nbytes  # Python integers: a forged header cannot overflow
        if raw.file_size > 100 * 2**20 and raw.file_size > 100 * max(raw.compress_size, 1):
            raise ValueError(f"{path.name}: {raw.filename} would unpack {raw.compress_size:,} bytes into "
                             f"{raw.file_size:,} (over 100:1); Allen energy grids compress about 2:1. The zip is not "
                             "read (it may be damaged or a decompression bomb).")
        if raw.file_size != expected:
            raise ValueError(f"{path.name}: the raw data has {raw.file_size:,} bytes but the header's size {size} x "
                             f"{ptype} needs {expected:,}; the file is truncated or does not belong to this header.")
        check_memory(4 * expected, f"reading {path.name} ({expected:,} bytes of voxels)", "Read a coarser grid.")
        _unpack(zf, raw.filename, tmp, expected, path.name)
        arr, spacing = _read_mhd(header)
        xml = None
        if "data_set.xml" in zf.namelist():
            xml = _unpack(zf, "data_set.xml", tmp, 50 * 2**20, path.name).read_text("utf-8", "replace")
    gene, ds_id = _gene_symbol(path.name, xml)
    return arr, spacing, gene, ds_id, ptype


def _gene_symbol(name: str, xml: str | None) -> tuple[str, int | None]:
    """Gene symbol and SectionDataSet id from an Allen zip's name / data_set.xml."""
    ds_id, texts = None, []
    if xml:
        try:
            root = ET.fromstring(xml)
        except ET.ParseError:
            root = None
        if root is not None:
            node = root.find("id") if root.tag == "section-data-set" else root.find(".//section-data-set/id")
            ds_id = int(node.text) if node is not None and (node.text or "").strip().isdigit() else None
            texts = [el.text for el in root.iter() if el.text and "/production" in el.text]
    token = Path(name).stem.split("_")[0]
    if token and not token.isdigit():
        return token, ds_id
    for t in texts:  # image paths look like .../production9/Pdyn_05-2716_21613/zoomify/...
        m = re.search(r"/production\d+/([A-Za-z0-9.\-]+?)_[^/]*?/", t)
        if m:
            return m.group(1), ds_id
    return (f"SectionDataSet_{ds_id}" if ds_id else Path(name).stem), ds_id


def is_label_grid(path: Path) -> bool:
    """True for an Allen zip holding an integer label grid (e.g. gridAnnotation), not expression."""
    try:
        with zipfile.ZipFile(path) as zf, tempfile.TemporaryDirectory(prefix="nsn-allen-") as tmpdir:
            header, _, _ = _zip_header(zf, Path(path), Path(tmpdir))
            return "int" in _image_info(header)[2]
    except (zipfile.BadZipFile, ValueError, OSError):
        return False


def is_allen_zip(path: Path) -> bool:
    """True for a zip with a MetaImage header and its raw file (cheap: the header only)."""
    try:
        with zipfile.ZipFile(path) as zf, tempfile.TemporaryDirectory(prefix="nsn-allen-") as tmpdir:
            _zip_header(zf, Path(path), Path(tmpdir))
        return True
    except (zipfile.BadZipFile, ValueError, OSError):
        return False


def _experiment_index(path) -> dict:
    try:
        idx = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise ValueError(f"Could not read the experiment index {path}: {exc}") from None
    missing = [c for c in INDEX_COLUMNS if c not in idx.columns]
    if missing:
        raise ValueError(f"The experiment index {Path(path).name} lacks the column(s) {missing} (it has "
                         f"{list(idx.columns)[:8]}); Allen's index has {list(INDEX_COLUMNS)}.")
    return dict(zip(idx["Section_Data_ID"], idx["acronym"]))


def read_allen_energy(path, *, experiment_index=None) -> Stack:
    """Read Allen Mouse Brain Atlas expression-energy grids into a gene stack.

    Parameters
    ----------
    path : str or Path
        An Allen grid zip (``energy.mhd`` + ``energy.raw`` + ``data_set.xml``), an
        ``energy.mhd`` file, or a folder of such zips (one per ISH experiment).
    experiment_index : str or Path, optional
        A csv with columns ``Section_Data_ID`` and ``acronym`` (Allen's experiment index)
        to name experiments whose zip name carries no gene symbol.

    Returns
    -------
    Stack
        ``data`` float32 (n_genes, AP, DV, ML) with Allen's -1 ("no data") as NaN,
        ``voxel_size`` from ``ElementSpacing`` (200 µm for the 200 µm grids),
        ``axes = ("AP", "DV", "ML")``, ``meta["section_data_set_ids"]``.

    Raises
    ------
    FileNotFoundError
        A missing path.
    ValueError
        A zip that is not an Allen grid, is damaged (bad CRC) or whose raw data do not
        match its header (checked before reading them); grids of different shapes; an
        experiment index without its columns. Every message names the file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No such file or folder: {path}")
    lut = _experiment_index(experiment_index) if experiment_index is not None else {}
    skipped = []
    if path.is_dir():
        files = sorted(path.glob("*.zip"))
        skipped = [f.name for f in files if is_label_grid(f)]
        files = [f for f in files if f.name not in skipped]
        if not files:
            raise ValueError(f"The folder {path} holds no Allen grid zips (*.zip).")
    else:
        files = [path]
    vols, genes, ids, spacing = [], [], [], None
    for f in files:
        if f.suffix.lower() == ".mhd":
            arr, sp_ = _read_mhd(f)
            gene, ds_id, ptype = f.parent.name, None, "32-bit float"
        else:
            arr, sp_, gene, ds_id, ptype = _read_allen_zip(f)
        if "int" in ptype and not path.is_dir():
            raise ValueError(f"{f.name} holds an integer label grid ({ptype}), not expression energy: open it "
                             "as an atlas annotation.")
        if vols and arr.shape != vols[0].shape:
            raise ValueError(f"{f.name} has grid shape {arr.shape}, the others {vols[0].shape}; "
                             "read grids of one resolution together.")
        vols.append(arr.astype(np.float32))
        genes.append(str(lut.get(ds_id, gene)) if gene.startswith("SectionDataSet_") else gene)
        ids.append(ds_id if ds_id is not None else -1)
        spacing = sp_
    data = np.stack(vols)
    data[data == ALLEN_MISSING] = np.nan
    n_bad = int((data < 0).sum())
    if n_bad:
        raise ValueError(f"{n_bad} voxels are negative but not Allen's -1 missing code; "
                         "these are not expression-energy grids.")
    return Stack(data, genes, spacing, axes=("AP", "DV", "ML"),
                 meta={"source": str(path), "format": "allen_energy", "missing_value": ALLEN_MISSING,
                       "section_data_set_ids": ids, "skipped_label_grids": skipped})
