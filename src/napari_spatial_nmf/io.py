"""Readers for ISH volumes, image stacks, atlases and cell point clouds (no napari).

Every reader checks its input and raises a ``ValueError`` (or ``FileNotFoundError``) that
says what is wrong; none unpickles anything. Volumes come back as a :class:`Stack`
(genes x grid, float32, NaN = missing) that :meth:`Stack.to_anndata` turns into the
package's data model; atlases as an :class:`Atlas`; cells as an AnnData.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from .core.grid import volumes_to_anndata
from .core.ontology import Ontology

ALLEN_MISSING = -1.0
_MET_TYPES = {
    "MET_FLOAT": "f4", "MET_DOUBLE": "f8", "MET_UINT": "u4", "MET_INT": "i4",
    "MET_USHORT": "u2", "MET_SHORT": "i2", "MET_UCHAR": "u1", "MET_CHAR": "i1",
}


@dataclass
class Stack:
    """A stack of gene volumes (or images) on one grid.

    Attributes
    ----------
    data : numpy.ndarray, float32, shape (n_genes, *grid_shape)
        NaN marks missing values (e.g. Allen's -1 code).
    genes : list of str
        One name per volume.
    voxel_size : tuple of float
        µm per voxel along each grid axis.
    origin : tuple of float
        µm position of voxel 0.
    axes : tuple of str
        Grid axis names, e.g. ("AP", "DV", "ML").
    meta : dict
        Source details (paths, Allen SectionDataSet ids, missing code).
    """

    data: np.ndarray
    genes: list[str]
    voxel_size: tuple[float, ...]
    origin: tuple[float, ...] = ()
    axes: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        ndim = self.data.ndim - 1
        self.origin = tuple(self.origin) or (0.0,) * ndim
        self.axes = tuple(self.axes) or ("z", "y", "x")[-ndim:]
        self.voxel_size = tuple(float(v) for v in self.voxel_size)

    def to_anndata(self, mask: np.ndarray | None = None) -> ad.AnnData:
        """The stack as the package's AnnData (in-mask voxels x genes); see
        :func:`napari_spatial_nmf.core.volumes_to_anndata`."""
        adata = volumes_to_anndata(self.data, self.genes, voxel_size=self.voxel_size,
                                   origin=self.origin, axes=self.axes, mask=mask)
        adata.uns["source"] = {k: v for k, v in self.meta.items() if isinstance(v, (str, int, float))}
        return adata


@dataclass
class Atlas:
    """An annotation volume with its structure ontology.

    Attributes
    ----------
    annotation : numpy.ndarray of uint32, shape grid_shape
        Structure id per voxel; 0 = outside the brain.
    ontology : Ontology or None
    voxel_size : tuple of float
        µm per voxel.
    origin : tuple of float
    axes : tuple of str
    """

    annotation: np.ndarray
    ontology: Ontology | None
    voxel_size: tuple[float, ...]
    origin: tuple[float, ...] = ()
    axes: tuple[str, ...] = ()

    def __post_init__(self):
        self.origin = tuple(self.origin) or (0.0,) * self.annotation.ndim
        self.axes = tuple(self.axes) or ("z", "y", "x")[-self.annotation.ndim:]

    @property
    def mask(self) -> np.ndarray:
        """The brain: voxels with a structure id."""
        return self.annotation > 0


# ---------------------------------------------------------------- Allen energy grids
def _parse_mhd(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def _mhd_array(header: dict[str, str], raw: bytes, source: str) -> tuple[np.ndarray, tuple[float, ...]]:
    """Decode a MetaImage volume; returns the array in (x, y, z) = (AP, DV, ML) order."""
    try:
        dims = [int(v) for v in header["DimSize"].split()]
        etype = header["ElementType"]
    except KeyError as exc:
        raise ValueError(f"{source}: the .mhd header lacks {exc}; it is not a MetaImage file.") from None
    if etype not in _MET_TYPES:
        raise ValueError(f"{source}: unsupported MetaImage ElementType {etype}.")
    endian = ">" if header.get("BinaryDataByteOrderMSB", "False").lower() == "true" else "<"
    dtype = np.dtype(endian + _MET_TYPES[etype])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{source}: the raw data has {len(raw)} bytes but the header's DimSize {dims} x "
            f"{etype} needs {expected}; the file is truncated or does not belong to this header."
        )
    arr = np.frombuffer(raw, dtype=dtype).reshape(dims[::-1]).transpose()  # x fastest -> (x, y, z)
    spacing = tuple(float(v) for v in header.get("ElementSpacing", " ".join(["1"] * len(dims))).split())
    return np.ascontiguousarray(arr.astype(dtype.newbyteorder("="))), spacing


def _gene_symbol(name: str, xml: str | None) -> tuple[str, int | None]:
    """Gene symbol and SectionDataSet id from an Allen zip's name / data_set.xml."""
    ds_id = None
    if xml:
        m = re.search(r"<section-data-set>.*?<id>(\d+)</id>", xml, re.DOTALL)
        ds_id = int(m.group(1)) if m else None
    stem = Path(name).stem
    token = stem.split("_")[0]
    if token and not token.isdigit():
        return token, ds_id
    if xml:  # image paths look like .../production9/Pdyn_05-2716_21613/zoomify/...
        m = re.search(r"/production\d+/([A-Za-z0-9.\-]+?)_[^/]*?/", xml)
        if m:
            return m.group(1), ds_id
    return (f"SectionDataSet_{ds_id}" if ds_id else stem), ds_id


def _is_label_grid(path: Path) -> bool:
    """True for an Allen zip holding an integer label grid (e.g. gridAnnotation), not expression."""
    try:
        with zipfile.ZipFile(path) as zf:
            mhd = [n for n in zf.namelist() if n.endswith(".mhd")]
            header = _parse_mhd(zf.read(mhd[0]).decode("ascii", "replace")) if mhd else {}
    except zipfile.BadZipFile:
        return False
    return _MET_TYPES.get(header.get("ElementType", ""), "f4")[0] in "iu"


def _read_allen_zip(path: Path) -> tuple[np.ndarray, tuple[float, ...], str, int | None]:
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ValueError(f"{path.name} is not a zip file (an Allen grid download is a zip).") from None
    with zf:
        names = zf.namelist()
        mhd = [n for n in names if n.endswith(".mhd")]
        if not mhd:
            raise ValueError(f"{path.name} holds no .mhd header; an Allen energy zip has energy.mhd + energy.raw.")
        header = _parse_mhd(zf.read(mhd[0]).decode("ascii", "replace"))
        raw_name = header.get("ElementDataFile", "")
        raw_name = next((n for n in names if Path(n).name == raw_name), None)
        if raw_name is None:
            raise ValueError(f"{path.name}: the raw file named in {mhd[0]} is not in the zip.")
        arr, spacing = _mhd_array(header, zf.read(raw_name), path.name)
        xml = zf.read("data_set.xml").decode("utf-8", "replace") if "data_set.xml" in names else None
    gene, ds_id = _gene_symbol(path.name, xml)
    return arr, spacing, gene, ds_id


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
    FileNotFoundError, ValueError
        Missing path, a zip that is not an Allen grid, grids of different shapes.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No such file or folder: {path}")
    skipped = []
    if path.is_dir():
        files = sorted(path.glob("*.zip"))
        skipped = [f.name for f in files if _is_label_grid(f)]
        files = [f for f in files if f.name not in skipped]
        if not files:
            raise ValueError(f"The folder {path} holds no Allen grid zips (*.zip).")
    else:
        files = [path]
    vols, genes, ids, spacing = [], [], [], None
    for f in files:
        if f.suffix.lower() == ".mhd":
            header = _parse_mhd(f.read_text())
            raw = f.with_name(header.get("ElementDataFile", f.stem + ".raw"))
            if not raw.exists():
                raise ValueError(f"{f.name}: its raw file {raw.name} is missing.")
            arr, sp_ = _mhd_array(header, raw.read_bytes(), f.name)
            gene, ds_id = f.parent.name, None
        else:
            arr, sp_, gene, ds_id = _read_allen_zip(f)
        if vols and arr.shape != vols[0].shape:
            raise ValueError(f"{f.name} has grid shape {arr.shape}, the others {vols[0].shape}; "
                             "read grids of one resolution together.")
        vols.append(arr.astype(np.float32))
        genes.append(gene)
        ids.append(ds_id if ds_id is not None else -1)
        spacing = sp_
    if experiment_index is not None:
        idx = pd.read_csv(experiment_index)
        lut = dict(zip(idx["Section_Data_ID"], idx["acronym"]))
        genes = [lut.get(i, g) if g.startswith("SectionDataSet_") else g for g, i in zip(genes, ids)]
    data = np.stack(vols)
    data[data == ALLEN_MISSING] = np.nan
    n_bad = int((data < 0).sum())
    if n_bad:
        raise ValueError(f"{n_bad} voxels are negative but not Allen's -1 missing code; "
                         "these are not expression-energy grids.")
    return Stack(data, genes, spacing, axes=("AP", "DV", "ML"),
                 meta={"source": str(path), "format": "allen_energy", "missing_value": ALLEN_MISSING,
                       "section_data_set_ids": ids, "skipped_label_grids": skipped})


# ---------------------------------------------------------------- generic image stacks
_STACK_KEYS = ("stack", "images", "energy", "data", "X", "volumes")
_NAME_KEYS = ("genes", "gene_names", "names", "image_names")


def read_image_stack(path, *, missing_value: float | None = None) -> Stack:
    """Read a gene stack from ``.npz``, ``.nrrd`` or ``.tif``/``.tiff``.

    * ``.npz`` (read without pickle): the array under ``stack``, ``images``, ``energy``,
      ``data``, ``X`` or ``volumes`` (else the only array of 3+ dimensions), shape
      (n_genes, *grid); names under ``genes``/``gene_names``/``names``/``image_names``;
      optional ``voxel_size_um`` and ``missing_value``.
    * ``.nrrd``: a 3-D volume (one gene, named after the file) or a 4-D stack (genes
      first); voxel size from ``space directions``.
    * ``.tif``: a 2-D image (one gene), a 3-D stack of images (or a volume when the
      file's axes say ``ZYX``), or a 4-D stack of volumes.

    Parameters
    ----------
    path : str or Path
    missing_value : float, optional
        A missing-data code to turn into NaN (overrides one stored in the file).

    Returns
    -------
    Stack

    Raises
    ------
    FileNotFoundError, ValueError
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No such file: {path}")
    suffix = path.suffix.lower()
    voxel, names, meta = None, None, {"source": str(path)}
    if suffix == ".npz":
        try:
            z = np.load(path, allow_pickle=False)
            files = {k: z[k] for k in z.files}
        except ValueError as exc:
            raise ValueError(f"{path.name} holds pickled objects, which are never loaded "
                             f"(allow_pickle=False): save plain arrays. ({exc})") from None
        except (OSError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{path.name} is not a valid .npz file: {exc}") from None
        key = next((k for k in _STACK_KEYS if k in files), None)
        if key is None:
            big = [k for k, v in files.items() if v.ndim >= 3 and v.dtype.kind in "fiu"]
            if len(big) != 1:
                raise ValueError(f"{path.name}: cannot tell which array is the stack (arrays: "
                                 f"{list(files)}); name it 'stack'.")
            key = big[0]
        data = files[key]
        nk = next((k for k in _NAME_KEYS if k in files and len(files[k]) == len(data)), None)
        names = [str(n) for n in files[nk]] if nk else None
        if "voxel_size_um" in files:
            voxel = files["voxel_size_um"]
        if missing_value is None and "missing_value" in files:
            missing_value = float(files["missing_value"])
    elif suffix == ".nrrd":
        import nrrd

        try:
            data, header = nrrd.read(str(path))
        except Exception as exc:  # pynrrd raises NRRDError and others on malformed files
            raise ValueError(f"{path.name} is not a readable NRRD file: {exc}") from None
        dirs = header.get("space directions")
        if dirs is not None:
            spatial = [np.linalg.norm(d) for d in dirs if d is not None and not np.isnan(np.asarray(d, float)).any()]
            voxel = spatial or None
        if data.ndim == 3:
            data = data[None]
    elif suffix in (".tif", ".tiff"):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tf:
                data = tf.asarray()
                axes = tf.series[0].axes
        except Exception as exc:  # tifffile raises several types on bad files
            raise ValueError(f"{path.name} is not a readable TIFF file: {exc}") from None
        if data.ndim == 2 or (data.ndim == 3 and "Z" in axes and axes.index("Z") == 0 and len(axes) == 3
                              and "C" not in axes and "Q" not in axes and "I" not in axes):
            data = data[None]
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
    voxel = tuple(np.broadcast_to(np.asarray(voxel if voxel is not None else 1.0, float), (ndim,)))
    return Stack(data, names, voxel, meta=meta)


# ---------------------------------------------------------------- BDGP embryo images
def bdgp_stack(table: np.ndarray, template: np.ndarray, names) -> np.ndarray:
    """Place a (pixels x images) table into images using the embryo template.

    Pixel row k is the k-th True of ``template`` in column-major (R) order, as the staNMF
    authors' ``imageBatchDisplay`` fills it. Pixels outside the embryo are NaN.
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
    """
    table_path = Path(table_path)
    if template_path is None:
        found = sorted(table_path.parent.glob("*emplate*.csv"))
        if not found:
            raise FileNotFoundError(f"No embryo template (*emplate*.csv) next to {table_path.name}; pass template_path.")
        template_path = found[0]
    try:
        table = pd.read_csv(table_path, index_col=0)
        template = pd.read_csv(template_path, index_col=0).to_numpy()
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise ValueError(f"Could not read the BDGP table/template: {exc}") from None
    if not np.isin(template, (0, 1)).all():
        raise ValueError(f"{Path(template_path).name} is not a binary (0/1) template.")
    values = table.to_numpy(dtype=np.float64)
    if np.isnan(values).any() or (values < 0).any():
        raise ValueError(f"{table_path.name} has NaN or negative intensities; BDGP values lie in [0, 1].")
    names = [str(c) for c in table.columns]
    return Stack(bdgp_stack(values, template, names), names, (1.0, 1.0), axes=("DV", "AP"),
                 meta={"source": str(table_path), "format": "bdgp", "template": str(template_path)})


# ---------------------------------------------------------------- atlases
_ONTOLOGY_GLOBS = ("structure_tree*.csv", "structure_tree*.csv.gz", "*ontology*.csv", "*ontology*.csv.gz",
                   "structures.json", "*ontology*.json", "*structure_graph*.json")


def find_ontology(folder) -> Path | None:
    """An ontology file in ``folder`` (Allen ``structure_tree*.csv``, ``structures.json``...)."""
    for pat in _ONTOLOGY_GLOBS:
        hits = sorted(Path(folder).glob(pat))
        if hits:
            return hits[0]
    return None


def read_atlas(annotation_path, ontology_path=None) -> Atlas:
    """Read an atlas annotation volume (``.nrrd``) and its structure ontology.

    Parameters
    ----------
    annotation_path : str or Path
        Integer NRRD of structure ids (e.g. Allen CCFv3 ``annotation_25.nrrd``), axis
        order as stored (Allen: AP, DV, ML).
    ontology_path : str or Path, optional
        Allen structure csv or a json ontology (see :meth:`Ontology.read`). Default: an
        ontology file found next to the annotation (:func:`find_ontology`); None if none.

    Returns
    -------
    Atlas

    Raises
    ------
    FileNotFoundError, ValueError
        Unreadable files, a non-integer annotation, labels missing from the ontology, an
        ontology whose parents do not resolve.
    """
    import nrrd

    annotation_path = Path(annotation_path)
    if not annotation_path.exists():
        raise FileNotFoundError(f"No such file: {annotation_path}")
    try:
        ann, header = nrrd.read(str(annotation_path))
    except Exception as exc:  # pynrrd raises NRRDError and others
        raise ValueError(f"{annotation_path.name} is not a readable NRRD file: {exc}") from None
    if ann.dtype.kind not in "iu":
        raise ValueError(f"{annotation_path.name} holds {ann.dtype} values; an annotation holds integer structure ids.")
    dirs = header.get("space directions")
    voxel = tuple(float(np.linalg.norm(d)) for d in dirs) if dirs is not None else (1.0,) * ann.ndim
    origin = tuple(float(v) for v in header.get("space origin", np.zeros(ann.ndim)))
    if ontology_path is None:
        ontology_path = find_ontology(annotation_path.parent)
    onto = Ontology.read(ontology_path) if ontology_path is not None else None
    if onto is not None:
        onto.check_labels(ann)
    axes = ("AP", "DV", "ML") if "left-posterior-superior" in str(header.get("space", "")) else ()
    return Atlas(ann.astype(np.uint32), onto, voxel, origin, axes)


# ---------------------------------------------------------------- cells
def read_cells(path, *, spatial_key: str = "spatial") -> ad.AnnData:
    """Read a cell point cloud: an ``.h5ad`` with coordinates in ``obsm[spatial_key]``.

    Parameters
    ----------
    path : str or Path
    spatial_key : str
        Key of the (n_cells, 2 or 3) coordinates, (x, y[, z]) in µm.

    Returns
    -------
    anndata.AnnData

    Raises
    ------
    FileNotFoundError, ValueError
        Not an AnnData file; no or malformed coordinates.
    """
    path = Path(path)
    adata = read_h5ad(path)
    check_cells(adata, spatial_key=spatial_key, source=path.name)
    return adata


def read_h5ad(path) -> ad.AnnData:
    """``anndata.read_h5ad`` with clear errors (FileNotFoundError; ValueError for a file
    that is not an AnnData)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No such file: {path}")
    try:
        return ad.read_h5ad(path)
    except Exception as exc:  # h5py / anndata raise many types for foreign files
        raise ValueError(f"{path.name} is not an AnnData .h5ad file ({type(exc).__name__}: {exc}).") from None


def check_cells(adata: ad.AnnData, *, spatial_key: str = "spatial", source: str = "The AnnData") -> None:
    """Raise ValueError unless ``adata.obsm[spatial_key]`` is (n_obs, 2|3) finite coordinates."""
    if spatial_key not in adata.obsm:
        raise ValueError(
            f"{source} has no obsm[{spatial_key!r}] with cell coordinates (it has "
            f"{list(adata.obsm)}). Store x, y[, z] in µm there: adata.obsm['spatial'] = coords."
        )
    xy = np.asarray(adata.obsm[spatial_key])
    if xy.ndim != 2 or xy.shape[0] != adata.n_obs or xy.shape[1] not in (2, 3):
        raise ValueError(f"obsm[{spatial_key!r}] must have shape (n_cells, 2 or 3); got {xy.shape}.")
    if not np.isfinite(xy.astype(float)).all():
        raise ValueError(f"obsm[{spatial_key!r}] holds NaN or infinite coordinates.")
