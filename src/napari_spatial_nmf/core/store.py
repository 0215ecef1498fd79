"""The results store of a stability sweep: every finished (K, replicate) fit, on disk.

Checksummed records, per-process temporary names, a lock for one writer at a time, clear
errors that name the file and the remedy (``docs/stability.md``, ``docs/refusals.md``).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import warnings
import zipfile
from pathlib import Path

import numpy as np

STORE_FORMAT = "napari-spatial-nmf stability store v2"


def fingerprint(X: np.ndarray) -> str:
    """sha1 of the data (shape, dtype and bytes): a store only resumes on the same matrix."""
    h = hashlib.sha1(str((X.shape, str(X.dtype))).encode())
    h.update(np.ascontiguousarray(X).tobytes())
    return h.hexdigest()


class StoreError(ValueError):
    """A results store that cannot be used as it is (the message names the file and the remedy)."""


class StabilityStore:
    """A folder that keeps every finished (K, replicate) fit of a sweep.

    Layout (documented in ``docs/stability.md``)::

        store/manifest.json          format, fit parameters (not the K range), data fingerprint
        store/.lock                  held while a sweep writes (one writer at a time)
        store/k015/r0000.npz         dictionary (n_obs x K, float32), objective, n_iter, sha256

    Every record carries a sha256 of its contents: a record that is damaged or altered is
    reported (a warning naming the file) and fitted again. Files are written under
    per-process temporary names and renamed, so a killed sweep never leaves a half-written
    fit and two processes never share a temporary file; a second sweep on a store that is
    being written is refused. The K range is not part of the manifest, so a store made for
    K 3..5 resumes a sweep of K 3..6 with the finished fits.

    Raises
    ------
    StoreError
        The path is a file, the manifest is unreadable, the store holds a sweep of other
        data or parameters, or another process is writing to it.
    """

    def __init__(self, path, params: dict, data_fingerprint: str):
        self._lock = None
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"The results store {self.path} is a file, not a folder: choose a folder path.")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"Cannot create the results store {self.path}: {exc.strerror}. Choose a writable "
                             "folder.") from None
        self._lock = self._take_lock()
        self._remove_stale_temporaries()
        manifest = {"format": STORE_FORMAT, "params": params, "data": data_fingerprint}
        mpath = self.path / "manifest.json"
        if mpath.exists():
            try:
                old = json.loads(mpath.read_text())
                if not isinstance(old, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, OSError) as exc:
                self.close()
                raise StoreError(f"The store's manifest {mpath} is damaged ({exc}). Delete {mpath} (the finished "
                                 "fits are then recomputed) or choose another folder.") from None
            if old.get("format") != STORE_FORMAT:
                self.close()
                raise StoreError(f"{self.path} holds a store of another format ({old.get('format')!r}); choose "
                                 "another folder, or delete this one to start over.")
            if old.get("data") != data_fingerprint or old.get("params") != params:
                diff = {k: (old.get("params", {}).get(k), v) for k, v in params.items()
                        if old.get("params", {}).get(k) != v}
                self.close()
                raise StoreError(
                    f"The results store {self.path} holds a sweep of other data or parameters "
                    f"({'data differ' if old.get('data') != data_fingerprint else diff}). "
                    "Choose another folder, or delete this one to start over.")
        else:
            self._atomic_write(mpath, json.dumps(manifest, indent=2).encode())

    def _take_lock(self):
        import fcntl

        f = open(self.path / ".lock", "a+")  # noqa: SIM115 - held for the store's lifetime
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise StoreError(f"Another sweep is writing to the results store {self.path} now. Wait for it to "
                             "finish (it keeps every fit; run yours afterwards to reuse them) or choose another "
                             "folder.") from None
        return f

    def _remove_stale_temporaries(self) -> None:
        """Temporary files of a killed sweep (the lock is ours, so no other writer exists)."""
        for tmp in [*self.path.glob(".*.tmp"), *self.path.glob("k*/.*.tmp.npz")]:
            tmp.unlink(missing_ok=True)

    def close(self) -> None:
        """Release the store's lock (also done when the sweep ends or the object is collected)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    __del__ = close

    @staticmethod
    def _atomic_write(path: Path, payload: bytes) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            tmp.write_bytes(payload)
            os.replace(tmp, path)
        except BaseException:  # a full disk, an interruption: no half-written file stays behind
            tmp.unlink(missing_ok=True)
            raise

    def _file(self, k: int, b: int) -> Path:
        return self.path / f"k{k:03d}" / f"r{b:04d}.npz"

    @staticmethod
    def _checksum(dictionary: np.ndarray, objective: float, n_iter: int) -> str:
        h = hashlib.sha256(np.ascontiguousarray(dictionary, dtype=np.float32).tobytes())
        h.update(np.float64(objective).tobytes())
        h.update(np.int64(n_iter).tobytes())
        return h.hexdigest()

    def has(self, k: int, b: int) -> bool:
        """True if the record of replicate ``b`` at K = ``k`` exists (it is checked on loading)."""
        return self._file(k, b).exists()

    def save(self, k: int, b: int, dictionary: np.ndarray, objective: float, n_iter: int) -> None:
        """Write one finished fit with its checksum (under a temporary name, then renamed)."""
        f = self._file(k, b)
        f.parent.mkdir(exist_ok=True)
        d = dictionary.astype(np.float32)
        tmp = f.with_name(f".{f.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.npz")
        try:
            np.savez(tmp, dictionary=d, objective=np.float64(objective), n_iter=np.int64(n_iter),
                     sha256=np.array(self._checksum(d, objective, n_iter)))
            os.replace(tmp, f)
        except BaseException:  # a full disk, an interruption: no half-written record stays behind
            tmp.unlink(missing_ok=True)
            raise

    def save_extra(self, k: int, b: int, name: str, array: np.ndarray) -> None:
        """Keep another array of a record (e.g. an integration's gene scaling), written atomically."""
        import io

        buf = io.BytesIO()
        np.save(buf, np.asarray(array), allow_pickle=False)
        f = self._file(k, b).with_name(f"r{b:04d}.{name}.npy")
        f.parent.mkdir(exist_ok=True)
        self._atomic_write(f, buf.getvalue())

    def load_extra(self, k: int, b: int, name: str) -> np.ndarray | None:
        """An array kept by :meth:`save_extra`, or None if it is missing or unreadable."""
        f = self._file(k, b).with_name(f"r{b:04d}.{name}.npy")
        try:
            return np.load(f, allow_pickle=False)
        except (OSError, ValueError):
            return None

    def load(self, k: int, b: int, n_obs: int) -> np.ndarray | None:
        """The record's dictionary, or None (with a warning naming the file) when it is
        damaged, altered or of the wrong shape: the caller fits it again.
        """
        f = self._file(k, b)
        try:
            with np.load(f, allow_pickle=False) as z:
                d, obj, it, digest = z["dictionary"], float(z["objective"]), int(z["n_iter"]), str(z["sha256"])
            problem = None
            if d.shape != (n_obs, k):
                problem = f"its dictionary has shape {d.shape}, expected {(n_obs, k)}"
            elif digest != self._checksum(d, obj, it):
                problem = "its checksum does not match its contents (it was altered or damaged)"
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            problem = f"it cannot be read ({type(exc).__name__}: {exc})"
        if problem is None:
            return d
        warnings.warn(f"Results store record {f} is not usable: {problem}. It is fitted again.", UserWarning,
                      stacklevel=4)
        f.unlink(missing_ok=True)
        return None
