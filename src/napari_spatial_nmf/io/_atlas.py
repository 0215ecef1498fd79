"""Atlases: an annotation NRRD with its ontology, or a BrainGlobe atlas (brainglobe-atlasapi)."""

from __future__ import annotations

import os
import threading
from collections.abc import Generator
from pathlib import Path

import numpy as np

from ..core._progress import Progress
from ..core.ontology import Ontology
from ._types import Atlas

ONTOLOGY_GLOBS = ("structure_tree*.csv", "structure_tree*.csv.gz", "*ontology*.csv", "*ontology*.csv.gz",
                  "structures.json", "*ontology*.json", "*structure_graph*.json")
BRAINGLOBE_PREFIX = "brainglobe:"
_AXIS_NAMES = {"a": "AP", "p": "AP", "s": "DV", "i": "DV", "r": "ML", "l": "ML"}


def find_ontology(folder) -> Path | None:
    """An ontology file in ``folder`` (Allen ``structure_tree*.csv``, ``structures.json``...), or None."""
    for pat in ONTOLOGY_GLOBS:
        hits = sorted(Path(folder).glob(pat))
        if hits:
            return hits[0]
    return None


def _checked_labels(ann: np.ndarray, source: str) -> np.ndarray:
    """The annotation as uint32, refusing ids that do not fit (they would wrap silently)."""
    if ann.dtype.kind not in "iu":
        raise ValueError(f"{source} holds {ann.dtype} values; an annotation holds integer structure ids.")
    lo, hi = (int(ann.min()), int(ann.max())) if ann.size else (0, 0)
    if lo < 0 or hi > np.iinfo(np.uint32).max:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{source} has structure id {bad}, outside 0 … 2^32 − 1 (4,294,967,295). Ids that large "
                         "would wrap around when stored as labels; renumber the annotation.")
    return ann.astype(np.uint32)


def read_atlas(annotation_path, ontology_path=None) -> Atlas:
    """Read an atlas: an annotation volume (``.nrrd``) with its ontology, or a BrainGlobe atlas.

    Parameters
    ----------
    annotation_path : str or Path
        Integer NRRD of structure ids (e.g. Allen CCFv3 ``annotation_25.nrrd``), axis
        order as stored (Allen: AP, DV, ML); or ``"brainglobe:<atlas name>"`` for an atlas
        in the local BrainGlobe folder (:func:`read_brainglobe_atlas`).
    ontology_path : str or Path, optional
        Allen structure csv or a json ontology (see :meth:`Ontology.read`). Default: an
        ontology file found next to the annotation (:func:`find_ontology`); None if none.

    Returns
    -------
    Atlas
        ``annotation`` uint32, voxel size in µm from ``space directions``.

    Raises
    ------
    FileNotFoundError
        Missing files.
    ValueError
        Unreadable files, a non-integer annotation, ids that do not fit in 32 bits, labels
        missing from the ontology, an ontology whose parents do not resolve.
    """
    if str(annotation_path).startswith(BRAINGLOBE_PREFIX):
        return read_brainglobe_atlas(str(annotation_path)[len(BRAINGLOBE_PREFIX):])
    import nrrd

    annotation_path = Path(annotation_path)
    if not annotation_path.exists():
        raise FileNotFoundError(f"No such file: {annotation_path}")
    from ._guards import check_nrrd

    check_nrrd(annotation_path)
    try:
        ann, header = nrrd.read(str(annotation_path))
    except Exception as exc:  # pynrrd raises NRRDError and others  # noqa: BLE001
        raise ValueError(f"{annotation_path.name} is not a readable NRRD file: {exc}") from None
    ann = _checked_labels(ann, annotation_path.name)
    dirs = header.get("space directions")
    voxel = tuple(float(np.linalg.norm(d)) for d in dirs) if dirs is not None else (1.0,) * ann.ndim
    origin = tuple(float(v) for v in header.get("space origin", np.zeros(ann.ndim)))
    if ontology_path is None:
        ontology_path = find_ontology(annotation_path.parent)
    onto = Ontology.read(ontology_path) if ontology_path is not None else None
    if onto is not None:
        onto.check_labels(ann)
    axes = ("AP", "DV", "ML") if "left-posterior-superior" in str(header.get("space", "")) else ()
    return Atlas(ann, onto, voxel, origin, axes, name=annotation_path.name)


def brainglobe_folder(folder=None) -> Path:
    """The BrainGlobe atlas folder: ``folder``, else brainglobe-atlasapi's configured one."""
    if folder is not None:
        return Path(folder)
    from brainglobe_atlasapi import config

    return Path(config.read_config()["default_dirs"]["brainglobe_dir"])


def local_brainglobe_atlases(folder=None) -> list[str]:
    """Names of the BrainGlobe atlases present in the local folder (no network)."""
    root = brainglobe_folder(folder) / "brainglobe-atlasapi" / "atlases"
    return sorted({p.parent.parent.name for p in root.glob("*/*/manifest.json")})


def read_brainglobe_atlas(atlas_name: str, *, brainglobe_dir=None, version: str | None = None) -> Atlas:
    """Read an atlas from the local BrainGlobe folder through brainglobe-atlasapi, offline.

    Parameters
    ----------
    atlas_name : str
        E.g. ``"allen_mouse_25um"`` (as ``brainglobe install -a`` names it).
    brainglobe_dir : str or Path, optional
        The folder that holds ``brainglobe-atlasapi/atlases/...`` (default: the one in
        brainglobe-atlasapi's configuration, usually ``~/.brainglobe``).
    version : str, optional
        A version present locally (default: the newest present).

    Returns
    -------
    Atlas
        The annotation (uint32), an :class:`Ontology` from the atlas's structures (ids,
        acronyms, names, colours, tree), the voxel size in µm and axis names from the
        atlas orientation (BrainGlobe's ``asr``: AP, DV, ML).

    Raises
    ------
    ImportError
        brainglobe-atlasapi is not installed (``pip install napari-spatial-nmf[brainglobe]``).
    FileNotFoundError
        The atlas is not in the local folder (the message lists those that are); nothing
        is downloaded.
    """
    try:
        from brainglobe_atlasapi import BrainGlobeAtlas
    except ImportError:
        raise ImportError("Reading BrainGlobe atlases needs brainglobe-atlasapi: "
                          "pip install 'napari-spatial-nmf[brainglobe]'.") from None
    folder = brainglobe_folder(brainglobe_dir)
    present = local_brainglobe_atlases(folder)
    if atlas_name not in present:
        raise FileNotFoundError(f"No BrainGlobe atlas {atlas_name!r} in {folder} (present: {present or 'none'}). "
                                f"Download it once: `napari-spatial-nmf fetch --brainglobe {atlas_name}` (or "
                                "io.download_brainglobe_atlas), or pass brainglobe_dir=.")
    bg = BrainGlobeAtlas(atlas_name, version=version, brainglobe_dir=folder, check_latest=False)
    onto = Ontology.from_json([{k: s[k] for k in ("id", "acronym", "name", "structure_id_path", "rgb_triplet")}
                               for s in bg.structures_list])
    ann = _checked_labels(np.asarray(bg.annotation), f"BrainGlobe atlas {atlas_name}")
    onto.check_labels(ann)
    orientation = str(bg.metadata.get("orientation", "asr"))
    axes = tuple(_AXIS_NAMES.get(c, c) for c in orientation) if len(orientation) == ann.ndim else ()
    return Atlas(ann, onto, tuple(float(r) for r in bg.resolution), axes=axes, name=f"{BRAINGLOBE_PREFIX}{atlas_name}")


_DOWNLOAD_LOCK = threading.Lock()


def iter_download_brainglobe_atlas(atlas_name: str, *, brainglobe_dir=None, version: str | None = None
                                   ) -> Generator[Progress, None, Atlas]:
    """Download a BrainGlobe atlas through brainglobe-atlasapi (its S3 store), with progress and
    Cancel, then read it as :func:`read_brainglobe_atlas` does; an atlas already present is read
    without the network.

    Parameters
    ----------
    atlas_name : str
        A BrainGlobe atlas name, e.g. ``"allen_mouse_100um"``.
    brainglobe_dir : str or Path, optional
        The BrainGlobe folder (default: brainglobe-atlasapi's configured one).
    version : str, optional
        A version (default: the newest).

    Yields
    ------
    Progress
        Bytes received (brainglobe-atlasapi's fsspec transfer callbacks, reported here);
        Cancel stops at the next chunk, and brainglobe-atlasapi then removes the incomplete
        atlas's manifest, so a half-downloaded atlas is never read.

    Returns
    -------
    Atlas

    Raises
    ------
    ImportError
        brainglobe-atlasapi is missing (the ``brainglobe`` extra).
    PermissionError
        The BrainGlobe folder cannot be written.
    ConnectionError
        BrainGlobe's atlas store cannot be reached (the message names the folder, where atlases
        downloaded once stay usable offline).
    ValueError
        An atlas name the store does not have.
    """
    try:
        import brainglobe_atlasapi  # noqa: F401
    except ImportError:
        raise ImportError("Downloading BrainGlobe atlases needs brainglobe-atlasapi: "
                          "pip install 'napari-spatial-nmf[brainglobe]'.") from None
    if not isinstance(atlas_name, str) or not atlas_name.strip():
        raise ValueError(f"atlas_name must be a BrainGlobe atlas name such as 'allen_mouse_100um'; got {atlas_name!r}.")
    folder = brainglobe_folder(brainglobe_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise PermissionError(f"The BrainGlobe folder {folder} cannot be written ({exc.strerror or exc}); pass "
                              "brainglobe_dir=.") from None
    return _download_brainglobe(atlas_name, folder, version)


def _download_brainglobe(atlas_name, folder, version):
    from brainglobe_atlasapi import bg_atlas
    from fsspec.callbacks import Callback

    if atlas_name in local_brainglobe_atlases(folder):
        yield Progress(1, 1, f"{atlas_name} is already in {folder}")
        return read_brainglobe_atlas(atlas_name, brainglobe_dir=folder, version=version)
    state = {"bytes": 0, "files": 0}
    cancel = threading.Event()

    class Report(Callback):  # stands in for brainglobe-atlasapi's TqdmCallback: counts, and stops on Cancel
        def __init__(self, *args, **kwargs):
            super().__init__()

        def relative_update(self, inc=1):
            if cancel.is_set():
                raise KeyboardInterrupt("download cancelled")
            state["bytes"] += int(inc or 0)

        def branched(self, path_1, path_2, **kwargs):
            state["files"] += 1
            return Report()

    errors: list[BaseException] = []

    from brainglobe_atlasapi import core

    def work():
        try:
            with _DOWNLOAD_LOCK:
                previous = bg_atlas.TqdmCallback, core.TqdmCallback
                bg_atlas.TqdmCallback = core.TqdmCallback = Report
                try:
                    bg = bg_atlas.BrainGlobeAtlas(atlas_name, version=version, brainglobe_dir=folder,
                                                  check_latest=False)
                    _ = bg.annotation  # its chunks are fetched on first use: now, with progress
                finally:
                    bg_atlas.TqdmCallback, core.TqdmCallback = previous
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's side
            errors.append(exc)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            yield Progress(0, 1, f"{atlas_name}: {state['bytes'] / 2**20:.1f} MB, {state['files']} files "
                                 f"(into {folder})")
            thread.join(0.25)
    except GeneratorExit:
        cancel.set()
        thread.join(30)
        raise
    if errors:
        exc = errors[0]
        if isinstance(exc, ConnectionError) or "connect" in type(exc).__name__.lower():
            raise ConnectionError(f"Cannot reach BrainGlobe's atlas store to download {atlas_name} ({exc}). Atlases "
                                  f"downloaded once stay in {folder} and are read offline.") from None
        if isinstance(exc, (ValueError, FileNotFoundError)):
            raise ValueError(f"BrainGlobe has no atlas {atlas_name!r} ({exc}). `brainglobe list` names them.") from None
        raise exc
    yield Progress(1, 1, f"{atlas_name}: {state['bytes'] / 2**20:.1f} MB downloaded")
    return read_brainglobe_atlas(atlas_name, brainglobe_dir=folder, version=version)


def download_brainglobe_atlas(atlas_name: str, **kwargs) -> Atlas:
    """Blocking form of :func:`iter_download_brainglobe_atlas` (same parameters, same result)."""
    from ..core._progress import drain

    return drain(iter_download_brainglobe_atlas(atlas_name, **kwargs))
