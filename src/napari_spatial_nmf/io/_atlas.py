"""Atlases: an annotation NRRD with its ontology, or a BrainGlobe atlas (brainglobe-atlasapi)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

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
                                f"Download it once with `brainglobe install -a {atlas_name}` on a machine with "
                                "internet, or pass brainglobe_dir=.")
    bg = BrainGlobeAtlas(atlas_name, version=version, brainglobe_dir=folder, check_latest=False)
    onto = Ontology.from_json([{k: s[k] for k in ("id", "acronym", "name", "structure_id_path", "rgb_triplet")}
                               for s in bg.structures_list])
    ann = _checked_labels(np.asarray(bg.annotation), f"BrainGlobe atlas {atlas_name}")
    onto.check_labels(ann)
    orientation = str(bg.metadata.get("orientation", "asr"))
    axes = tuple(_AXIS_NAMES.get(c, c) for c in orientation) if len(orientation) == ann.ndim else ()
    return Atlas(ann, onto, tuple(float(r) for r in bg.resolution), axes=axes, name=f"{BRAINGLOBE_PREFIX}{atlas_name}")
