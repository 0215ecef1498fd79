"""Fetch Allen Mouse Brain Atlas ISH expression-energy grids: by gene, or the whole set.

By gene: gene symbols -> the Allen API's SectionDataSets of the adult mouse ISH product in a
plane (``api/v2/data/query.json``, as allensdk's ``GridDataApi`` asks) -> each experiment's
energy grid (``grid_data/download/<id>?include=energy``) -> the package's Allen reader. The
whole set: the 4,345 coronal experiments of the osNMF / staNMF papers in one float16 array
(IBL's public mirror, the files ``iblatlas.genomics.agea.load()`` reads).

The download layer is pooch (a per-user cache, retries, files moved into place only when
complete) with a requests-based downloader that resumes an interrupted file from where it
stopped (HTTP ``Range``), checks sizes, reports bytes and can be cancelled between chunks.
A file in the cache is always whole and checked; a partial download is kept only as a hidden
``.part`` file that is never read as data. Nothing here imports napari.

Addresses can be redirected (mirrors, tests): ``NAPARI_SPATIAL_NMF_ALLEN_API``,
``NAPARI_SPATIAL_NMF_AGEA_MIRROR``; the cache folder: ``NAPARI_SPATIAL_NMF_CACHE``.
"""

from __future__ import annotations

import difflib
import errno
import hashlib
import json
import os
import threading
import time
import warnings
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd

from ..core._memory import check_memory, fmt_bytes
from ..core._progress import Progress
from ._types import Stack

ALLEN_API = "https://api.brain-map.org"
AGEA_MIRROR = "https://ibl-brain-wide-map-public.s3.amazonaws.com/atlas"
PLANES = ("coronal", "sagittal")
GRID_SHAPE = (67, 41, 58)  # AP, DV, ML on the 200 µm grid
MAX_WORKERS = 4  # parallel downloads: polite to the Allen servers
CHUNK = 1 << 16
EXPERIMENT_RULES = ("all", "one")


class DownloadCancelledError(Exception):
    """The user cancelled; partial files stay as ``.part`` for a later resume, never as data."""


def cache_dir(cache=None) -> Path:
    """The download cache: ``cache``, else ``NAPARI_SPATIAL_NMF_CACHE``, else the per-user cache
    folder pooch chooses (``~/.cache/napari-spatial-nmf`` on Linux).
    """
    if cache is not None:
        return Path(cache).expanduser()
    env = os.environ.get("NAPARI_SPATIAL_NMF_CACHE")
    if env:
        return Path(env).expanduser()
    import pooch

    return Path(pooch.os_cache("napari-spatial-nmf"))


def _writable(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise PermissionError(f"The download cache {folder} cannot be written ({exc.strerror or exc}). Choose another "
                              "folder with cache=... or the NAPARI_SPATIAL_NMF_CACHE environment variable.") from None
    return folder


def allen_api() -> str:
    return os.environ.get("NAPARI_SPATIAL_NMF_ALLEN_API", ALLEN_API).rstrip("/")


def agea_mirror() -> str:
    return os.environ.get("NAPARI_SPATIAL_NMF_AGEA_MIRROR", AGEA_MIRROR).rstrip("/")


# ---------------------------------------------------------------------- the experiment index

def experiment_index() -> pd.DataFrame:
    """Allen's index of adult mouse ISH experiments (shipped; 26,061 rows, 4,345 coronal):
    ``gene, plane, section_data_set_id, entrez_id``. Serves offline look-up and name
    completion; the API is asked first when fetching.
    """
    from ..datasets import DATA

    return pd.read_csv(DATA / "allen_ish_experiments.csv.gz", dtype={"gene": str, "plane": str})


def gene_names() -> list[str]:
    """Every gene symbol of the index, sorted (for completion in the dock)."""
    return sorted(set(experiment_index()["gene"].str.rstrip("*")))


def check_genes(genes: Sequence[str], plane: str) -> list[str]:
    """Check gene symbols against the index before any download.

    Raises
    ------
    TypeError
        Not a sequence of strings.
    ValueError
        Empty, an unknown plane, or symbols the atlas does not know (with the closest
        matches: ``Pdyn`` for ``pdyn``, ``Gad2`` for ``Gad22``).
    """
    if isinstance(genes, str):
        genes = [genes]
    if not isinstance(genes, Sequence) or not all(isinstance(g, str) and g.strip() for g in genes):
        raise TypeError(f"genes must be a list of gene symbols (strings); got {genes!r}.")
    if not genes:
        raise ValueError("Give at least one gene symbol (e.g. ['Pdyn', 'Nrp1']).")
    if plane not in PLANES:
        raise ValueError(f"plane must be 'coronal' or 'sagittal'; got {plane!r}.")
    known = set(gene_names())
    lower = {g.lower(): g for g in known}
    out, unknown = [], {}
    for g in (s.strip() for s in genes):
        if g in known:
            out.append(g)
        elif g.lower() in lower:
            unknown[g] = [lower[g.lower()]]
        else:
            unknown[g] = difflib.get_close_matches(g, known, n=3, cutoff=0.75)
    if unknown:
        said = "; ".join(f"{g} (did you mean {', '.join(m)}?)" if m else f"{g} (no close match)"
                         for g, m in unknown.items())
        raise ValueError(f"The Allen Mouse Brain Atlas has no ISH experiment for: {said}. Gene symbols are "
                         "case-sensitive mouse symbols (e.g. Pdyn, Gad2).")
    return list(dict.fromkeys(out))


# ---------------------------------------------------------------------- downloads

class Downloader:
    """A pooch downloader (``downloader(url, output_file, pooch)``) on requests: resumes from a
    ``.part`` file with HTTP ``Range``, checks the size the server announced, reports bytes to
    ``on_bytes`` and stops between chunks when ``cancel`` is set.
    """

    def __init__(self, cancel: threading.Event, on_bytes: Callable[[int], None] | None = None,
                 expected_size: int | None = None, timeout: float = 30.0):
        self.cancel = cancel
        self.on_bytes = on_bytes
        self.expected_size = expected_size
        self.timeout = timeout

    def __call__(self, url: str, output_file, pooch_obj, check_only: bool = False):
        import requests

        if check_only:
            return True
        part = Path(pooch_obj.path) / f".{hashlib.sha1(url.encode()).hexdigest()[:16]}.part"
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        with requests.get(url, stream=True, timeout=self.timeout, headers=headers) as r:
            if r.status_code == 416:  # the part is already whole
                r.close()
            else:
                r.raise_for_status()
                if have and r.status_code != 206:  # no resume: start over
                    have = 0
                total = r.headers.get("Content-Length")
                total = have + int(total) if total is not None else None
                try:
                    with open(part, "ab" if have else "wb") as f:
                        for chunk in r.iter_content(CHUNK):
                            if self.cancel.is_set():
                                raise DownloadCancelledError(url)
                            f.write(chunk)
                            if self.on_bytes is not None:
                                self.on_bytes(len(chunk))
                except OSError as exc:
                    if exc.errno == errno.ENOSPC:
                        part.unlink(missing_ok=True)  # nothing half-written stays in the cache
                    raise
                size = part.stat().st_size
                if total is not None and size != total:
                    raise OSError(errno.EIO, f"{url} ended after {size:,} of {total:,} bytes (connection dropped)")
        size = part.stat().st_size
        if self.expected_size is not None and size != self.expected_size:
            part.unlink(missing_ok=True)
            raise ValueError(f"{url} has {size:,} bytes where {self.expected_size:,} were expected: the server's file "
                             "is not what it should be. It was not kept.")
        if isinstance(output_file, (str, os.PathLike)):
            os.replace(part, output_file)
        else:
            output_file.write(part.read_bytes())
            part.unlink()
        return None


def _retrieve(url: str, fname: str, folder: Path, downloader: Downloader, retries: int = 3) -> Path:
    """A file of the cache (downloaded once, resumed after an interruption, retried on errors)."""
    import pooch
    import requests

    target = folder / fname
    if target.exists():
        return target
    registry = pooch.create(path=folder, base_url="", registry={fname: None}, urls={fname: url},
                            retry_if_failed=0)
    for attempt in range(retries + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return Path(registry.fetch(fname, downloader=downloader))
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else None
            if code is not None and 400 <= code < 500:
                raise FileNotFoundError(f"{url} is not on the server (HTTP {code}).") from None
            if attempt == retries:
                raise ConnectionError(f"{url} failed {retries + 1} times ({exc}).") from None
        except (requests.ConnectionError, requests.Timeout, OSError) as exc:
            if isinstance(exc, OSError) and getattr(exc, "errno", None) == errno.ENOSPC:
                raise
            if attempt == retries:
                raise ConnectionError(f"Cannot download {url} ({exc}). Check the connection; the files already in "
                                      f"the cache ({folder}) are used without it, and an interrupted file resumes "
                                      "where it stopped.") from None
        time.sleep(min(2.0 ** attempt, 8.0) * 0.25)
    raise AssertionError("unreachable")  # pragma: no cover


def _api_json(url: str, cache_file: Path, cancel: threading.Event) -> dict:
    """A JSON answer of the Allen API (kept in the cache: an offline rerun needs no network)."""
    import requests

    if cache_file.exists():
        return json.loads(cache_file.read_text())
    if cancel.is_set():
        raise DownloadCancelledError(url)
    try:
        r = requests.get(url, timeout=30)
        r.raise_for_status()
        payload = r.json()
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise ConnectionError(f"Cannot reach the Allen API ({exc.__class__.__name__}).") from None
    except (requests.HTTPError, ValueError) as exc:
        raise ValueError(f"The Allen API answered {url} with something it does not document ({exc}).") from None
    if not isinstance(payload, dict) or "msg" not in payload or not isinstance(payload["msg"], list) \
            or payload.get("success") is False:
        raise ValueError(f"The Allen API's answer to {url} is not what it documents (a JSON object with success "
                         f"and a msg list); got {str(payload)[:200]}.")
    tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, cache_file)
    return payload


def experiments_url(gene: str, plane: str) -> str:
    """The SectionDataSets of ``gene`` in ``plane`` (adult mouse ISH; allensdk's GridDataApi query)."""
    criteria = (f"model::SectionDataSet,rma::criteria,[failed$eqfalse],products[abbreviation$eq'Mouse'],"
                f"plane_of_section[name$eq'{plane}'],genes[acronym$eq'{gene}']")
    return f"{allen_api()}/api/v2/data/query.json?criteria={quote(criteria, safe=':,[]$')}"


def grid_url(section_data_set_id: int) -> str:
    return f"{allen_api()}/grid_data/download/{int(section_data_set_id)}?include=energy"


def resolve_experiments(genes: Sequence[str], plane: str, folder: Path, cancel: threading.Event,
                        offline: bool = False) -> tuple[dict[str, list[int]], str]:
    """Each gene's SectionDataSet ids: from the API (cached), or the shipped index when the API
    cannot be reached or ``offline``; returns the ids and where they came from.
    """
    index = experiment_index()
    index = index[index["plane"] == plane]
    by_index = {g: sorted(int(i) for i in index.loc[index["gene"].str.rstrip("*") == g, "section_data_set_id"])
                for g in genes}
    if offline:
        return by_index, "the shipped experiment index"
    out = {}
    try:
        for g in genes:
            payload = _api_json(experiments_url(g, plane), folder / "api" / f"{g}_{plane}.json", cancel)
            out[g] = sorted(int(row["id"]) for row in payload["msg"] if not row.get("failed", False))
    except ConnectionError as exc:
        warnings.warn(f"{exc} The shipped experiment index is used to find the experiments.", UserWarning,
                      stacklevel=3)
        return by_index, "the shipped experiment index (the API could not be reached)"
    return out, "the Allen API"


def _check_grid(path: Path) -> None:
    from ._allen import _read_allen_zip

    _read_allen_zip(path)  # header, declared size, CRC: raises ValueError on a damaged file


def iter_fetch_allen(genes: Sequence[str], *, plane: str = "coronal", experiments: str = "all", cache=None,
                     offline: bool = False, max_workers: int = MAX_WORKERS
                     ) -> Generator[Progress, None, Stack]:
    """Fetch Allen ISH expression-energy grids by gene symbol (200 µm grid), as a gene stack.

    Parameters
    ----------
    genes : sequence of str
        Mouse gene symbols (case-sensitive, e.g. ``["Pdyn", "Nrp1"]``); checked against
        Allen's experiment index before anything is downloaded (unknown symbols are refused
        with the closest matches).
    plane : {"coronal", "sagittal"}
        Plane of section of the experiments (osNMF used the 4,345 coronal ones).
    experiments : {"all", "one"}
        A gene with several experiments in the plane: every one (volumes named ``Gene`` and
        ``Gene (id)``), or one: the experiment with the most measured voxels (fewest Allen
        ``-1``), ties to the lower id.
    cache : str or Path, optional
        Download cache (default :func:`cache_dir`).
    offline : bool
        Never use the network: experiments from the shipped index, grids from the cache.
    max_workers : int
        Parallel downloads (default 4, polite to the Allen servers).

    Yields
    ------
    Progress
        Files and megabytes so far; Cancel stops between chunks (a partial file stays as a
        hidden ``.part`` and resumes next time).

    Returns
    -------
    Stack
        ``data`` float32 (n_experiments, 67, 41, 58) = (AP, DV, ML), Allen's -1 as NaN, 200 µm;
        ``meta``: ``section_data_set_ids``, ``missing`` ({gene: reason} for genes without an
        experiment in the plane or whose grid is not on the server), ``source``, ``cache``.

    Raises
    ------
    ValueError, TypeError
        Unknown genes, planes or rules; no gene with an experiment; a damaged grid (deleted
        from the cache, so a rerun downloads it again).
    PermissionError
        A cache folder that cannot be written.
    ConnectionError
        The network failed and the files are not in the cache (the message names the cache).

    Notes
    -----
    Allen Mouse Brain Atlas, Lein et al. 2007 Nature 445:168; Ng et al. 2009 Nat Neurosci
    12:356. The API queries follow allensdk's ``GridDataApi``.
    """
    genes = check_genes(genes, plane)
    if experiments not in EXPERIMENT_RULES:
        raise ValueError(f"experiments must be 'all' or 'one'; got {experiments!r}.")
    if isinstance(max_workers, bool) or not isinstance(max_workers, int) or not 1 <= max_workers <= 16:
        raise ValueError(f"max_workers must be an integer from 1 to 16; got {max_workers!r}.")
    folder = _writable(cache_dir(cache) / "allen-grids")
    (folder / "api").mkdir(exist_ok=True)
    return _fetch_genes(genes, plane, experiments, folder, offline, max_workers)  # checked at the call


def _fetch_genes(genes, plane, experiments, folder, offline, max_workers) -> Generator[Progress, None, Stack]:
    cancel = threading.Event()
    yield Progress(0, 1, f"finding the experiments of {len(genes)} gene(s) ({plane})")
    try:
        ids, source = resolve_experiments(genes, plane, folder, cancel, offline)
        missing = {g: f"no {plane} ISH experiment in the Allen Mouse Brain Atlas" for g, v in ids.items() if not v}
        todo = [(g, i) for g in genes for i in ids.get(g, [])]
        if not todo:
            raise ValueError(f"None of the genes has a {plane} experiment: {sorted(missing)}. Try the other plane.")
        bytes_done = [0]
        lock = threading.Lock()

        def count(n):
            with lock:
                bytes_done[0] += n

        def one(gene, sid):
            fname = f"{gene}_{plane}_{sid}_energy.zip"
            if offline and not (folder / fname).exists():
                raise ConnectionError(f"{fname} is not in the cache ({folder}) and offline=True.")
            path = _retrieve(grid_url(sid), fname, folder, Downloader(cancel, count))
            try:
                _check_grid(path)
            except ValueError as exc:
                path.unlink(missing_ok=True)
                raise ValueError(f"The grid of {gene} (experiment {sid}) is damaged: {exc} It was removed from the "
                                 "cache; run again to download it anew.") from None
            return gene, sid, path

        done, results = 0, []
        with ThreadPoolExecutor(max_workers=max_workers) as pool:
            futures = {pool.submit(one, g, i): (g, i) for g, i in todo}
            pending = set(futures)
            try:
                while pending:
                    finished, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        gene, sid = futures[fut]
                        try:
                            results.append(fut.result())
                        except FileNotFoundError as exc:
                            missing[f"{gene} ({sid})"] = str(exc)
                        done += 1
                    yield Progress(done, len(todo), f"{done}/{len(todo)} grids ({bytes_done[0] / 2**20:.1f} MB "
                                                    f"downloaded; cache {folder})")
            except GeneratorExit:
                cancel.set()  # downloads stop between chunks; their .part files resume next time
                for fut in pending:
                    fut.cancel()
                raise
            except BaseException:
                cancel.set()
                raise
    finally:
        cancel.set()
    if not results:
        raise ValueError(f"No grid could be downloaded: {missing}.")
    return _stack(results, todo, experiments, plane, missing, source, folder)


def _stack(results, todo, rule, plane, missing, source, folder) -> Stack:
    from ._allen import read_allen_energy

    order = {key: n for n, key in enumerate(todo)}
    results.sort(key=lambda r: order[(r[0], r[1])])
    vols, names, ids = [], [], []
    for gene, sid, path in results:
        stack = read_allen_energy(path)
        vols.append(stack.data[0])
        names.append(gene)
        ids.append(sid)
        spacing = stack.voxel_size
    data = np.stack(vols)
    if rule == "one":
        keep = {}
        for n, gene in enumerate(names):
            measured = int(np.isfinite(data[n]).sum())
            if gene not in keep or measured > keep[gene][1]:
                keep[gene] = (n, measured)
        rows = sorted(n for n, _ in keep.values())
        data, names, ids = data[rows], [names[n] for n in rows], [ids[n] for n in rows]
    counts = {g: names.count(g) for g in names}
    labels = [g if counts[g] == 1 else f"{g} ({sid})" for g, sid in zip(names, ids)]
    return Stack(data, labels, spacing, axes=("AP", "DV", "ML"),
                 meta={"source": f"Allen Mouse Brain Atlas ISH energy, {plane}, fetched ({source})",
                       "format": "allen_energy", "missing_value": -1.0, "section_data_set_ids": ids,
                       "missing": missing, "plane": plane, "experiments": rule, "cache": str(folder)})


# ---------------------------------------------------------------------- the whole set

AGEA_FILES = ("gene-expression.pqt", "gene-expression.bin")
AGEA_GRID = (58, 41, 67)  # IBL's order: ML, DV, AP


def iter_fetch_allen_all(*, cache=None, offline: bool = False) -> Generator[Progress, None, Stack]:
    """The whole adult coronal ISH set (4,345 experiments) in one download, as a gene stack.

    The files of IBL's public mirror that ``iblatlas.genomics.agea.load()`` reads: a parquet
    table of the experiments and one float16 array (experiments x ML x DV x AP, 1.38 GB).
    The array's size is checked against the table's row count, and it is turned into the
    package's order (AP, DV, ML) and missing-value convention (Allen's -1 as NaN), float32
    (about 2.8 GB in memory, checked before it is allocated).

    Parameters
    ----------
    cache : str or Path, optional
        Download cache (default :func:`cache_dir`).
    offline : bool
        Only the cache (no network).

    Yields
    ------
    Progress
        Megabytes downloaded; Cancel stops between chunks (the partial file resumes next time).

    Returns
    -------
    Stack
        ``data`` float32 (n, 67, 41, 58), genes from the table, ``meta["section_data_set_ids"]``.

    Raises
    ------
    ImportError
        pyarrow is missing (the table is parquet): ``pip install pyarrow``.
    ValueError
        A table or array that is not what the mirror documents (columns, size).
    napari_spatial_nmf.core._memory.MemoryLimitError
        Not enough memory for the float32 stack.
    ConnectionError, PermissionError
        As :func:`iter_fetch_allen`.

    Notes
    -----
    Data: Allen Mouse Brain Atlas (Lein et al. 2007; Ng et al. 2009); mirror and format: the
    International Brain Laboratory's iblatlas (``iblatlas/genomics/agea.py``).
    """
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ImportError("The whole-atlas table is a parquet file: pip install pyarrow (or "
                          "'napari-spatial-nmf[allen]').") from None
    folder = _writable(cache_dir(cache) / "allen-agea")
    return _fetch_all(folder, offline)  # checked at the call


def _fetch_all(folder: Path, offline: bool) -> Generator[Progress, None, Stack]:
    cancel = threading.Event()
    done = [0]
    yield Progress(0, 1, f"the whole Allen ISH set from {agea_mirror()} (1.4 GB; cache {folder})")
    try:
        table_path = folder / AGEA_FILES[0]
        if offline and not table_path.exists():
            raise ConnectionError(f"{table_path} is not in the cache and offline=True.")
        table_path = _retrieve(f"{agea_mirror()}/{AGEA_FILES[0]}", AGEA_FILES[0], folder, Downloader(cancel))
        table = pd.read_parquet(table_path)
        n = len(table)
        expected = n * int(np.prod(AGEA_GRID)) * 2
        gene_col = next((c for c in ("gene", "acronym", "gene_symbol") if c in table.columns), None)
        id_col = next((c for c in ("id", "experiment_id", "section_data_set_id") if c in table.columns), None)
        if gene_col is None or n == 0:
            table_path.unlink(missing_ok=True)
            raise ValueError(f"{AGEA_FILES[0]} from the mirror has no gene column (columns {list(table.columns)}) "
                             "or no rows: it is not the table iblatlas documents. It was removed from the cache.")
        check_memory(n * int(np.prod(AGEA_GRID)) * 4, f"the whole ISH set as float32 ({n:,} experiments)",
                     "Fetch genes one by one (iter_fetch_allen) or use a machine with more memory.")
        result: dict = {}

        def get():
            result["path"] = _retrieve(f"{agea_mirror()}/{AGEA_FILES[1]}", AGEA_FILES[1], folder,
                                       Downloader(cancel, lambda b: done.__setitem__(0, done[0] + b), expected))

        bin_path = folder / AGEA_FILES[1]
        if offline and not bin_path.exists():
            raise ConnectionError(f"{bin_path} is not in the cache and offline=True.")
        with ThreadPoolExecutor(max_workers=1) as pool:
            fut = pool.submit(get)
            try:
                while not fut.done():
                    yield Progress(min(done[0], expected), expected,
                                   f"{done[0] / 2**20:,.0f} of {expected / 2**20:,.0f} MB ({AGEA_FILES[1]})")
                    time.sleep(0.25)
            except GeneratorExit:
                cancel.set()
                raise
            fut.result()
        bin_path = result["path"]
        if bin_path.stat().st_size != expected:
            bin_path.unlink(missing_ok=True)
            raise ValueError(f"{AGEA_FILES[1]} has {bin_path.stat().st_size:,} bytes; {n:,} experiments need "
                             f"{expected:,}. It was removed from the cache.")
    finally:
        cancel.set()
    yield Progress(1, 1, "converting to (AP, DV, ML) float32, -1 = no data as NaN")
    raw = np.memmap(bin_path, dtype=np.float16, mode="r", shape=(n, *AGEA_GRID))
    data = np.empty((n, *GRID_SHAPE), dtype=np.float32)
    for s in range(0, n, 256):
        block = np.asarray(raw[s:s + 256], dtype=np.float32).transpose(0, 3, 2, 1)
        block[block < 0] = np.nan
        data[s:s + 256] = block
    del raw
    genes = [str(g) for g in table[gene_col]]
    ids = [int(i) for i in table[id_col]] if id_col else [-1] * n
    counts = {g: genes.count(g) for g in set(genes)}
    labels = [g if counts[g] == 1 else f"{g} ({i})" for g, i in zip(genes, ids)]
    return Stack(data, labels, (200.0, 200.0, 200.0), axes=("AP", "DV", "ML"),
                 meta={"source": f"Allen Mouse Brain Atlas ISH energy, coronal, whole set ({agea_mirror()})",
                       "format": "allen_energy", "missing_value": -1.0, "section_data_set_ids": ids,
                       "cache": str(folder), "size": fmt_bytes(data.nbytes)})


def fetch_allen(genes: Sequence[str], **kwargs) -> Stack:
    """Blocking form of :func:`iter_fetch_allen` (same parameters, same result)."""
    from ..core._progress import drain

    return drain(iter_fetch_allen(genes, **kwargs))


def fetch_allen_all(**kwargs) -> Stack:
    """Blocking form of :func:`iter_fetch_allen_all` (same parameters, same result)."""
    from ..core._progress import drain

    return drain(iter_fetch_allen_all(**kwargs))
