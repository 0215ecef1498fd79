"""Writing results safely: one complete set of files or none, never the user's own files.

:class:`OutputFolder` is the output folder of a command-line run; :class:`AtomicPaths`
writes files into an existing folder (the docks' *Save all*). Both write under temporary
names and move the files into place only when everything is written.

Temporary names carry the writing process's id (``.<out>.partial-<pid>-<hex>``); a run
that was killed (``kill -9``, a power cut) leaves one behind, and the next run on the same
folder removes it, since its process no longer exists. An ``--overwrite`` run swaps the
new folder for the old one in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``;
elsewhere two renames, and a run killed between them is repaired by the next run), so the
output folder is always either the old set or the new one.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import re
import shutil
import sys
import uuid
from collections.abc import Iterable
from pathlib import Path

_DEBRIS = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|old)-(?P<pid>\d+)-[0-9a-f]{8}$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return False
    return True


def debris_name(out: Path, kind: str) -> Path:
    """A temporary sibling of ``out`` that names this process (``kind``: partial or old)."""
    return out.with_name(f".{out.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def clean_debris(out: Path) -> list[Path]:
    """Remove what killed runs left beside ``out`` (their process is gone); returns what was removed.

    An ``.old`` folder whose run died between its two renames (so ``out`` is missing) is
    put back as ``out`` instead.
    """
    parent = out.parent
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _DEBRIS.match(p.name)
        if m is None or m["name"] != out.name or _pid_alive(int(m["pid"])):
            continue
        if m["kind"] == "old" and not out.exists() and not out.is_symlink():
            with contextlib.suppress(OSError):
                os.replace(p, out)
                continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        removed.append(p)
    return removed


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False if not supported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def _resolve(path) -> Path:
    return Path(os.path.realpath(Path(path).expanduser().absolute()))


class OutputFolder:
    """One complete set of output files, or none; never a file the run reads or keeps.

    Checked when created (before any computation): ``out`` must not be a file or lie under
    one, must not be a dangling symbolic link, must not hold a path in ``protect`` (the
    input files, the results store: ``--overwrite`` replaces ``out`` as a whole), and must
    be empty or absent unless ``overwrite``. A symbolic link is followed: the files go to
    the folder it points to. Inside the ``with`` block, files go to a temporary sibling
    folder; on success it replaces ``out`` (the old set is removed as a whole), on an error
    or an interruption (Ctrl-C, SIGTERM through the command line) it is deleted and ``out``
    is left as it was.

    Parameters
    ----------
    out : str or Path
        The output folder.
    overwrite : bool
        Replace a non-empty ``out`` as a whole.
    protect : iterable of (path, role)
        Paths the run needs, with what the run does with them (e.g. ``"reads"``,
        ``"keeps its fits in"``), for the refusal message.

    Raises
    ------
    ValueError
        ``out`` is a file, sits under a file, is a dangling link, holds a protected path,
        or holds files and ``overwrite`` is False.
    PermissionError
        The folder that would hold ``out`` is not writable (raised on entering the block,
        still before any computation).
    """

    def __init__(self, out, *, overwrite: bool = False, protect: Iterable[tuple[object, str]] = ()):
        given = Path(out).expanduser()
        if given.is_symlink() and not given.exists():
            raise ValueError(f"The output folder {given} is a symbolic link to {os.readlink(given)}, which does not "
                             "exist: create that folder or choose another --out.")
        self.out = _resolve(given)
        for parent in [self.out, *self.out.parents]:
            if parent.exists() and not parent.is_dir():
                where = "is a file" if parent == self.out else f"lies under {parent}, which is a file"
                raise ValueError(f"The output folder {self.out} {where}: choose a folder path.")
        for path, role in protect:
            if path is None:
                continue
            p = _resolve(path)
            if p == self.out or self.out in p.parents:
                raise ValueError(f"The output folder {self.out} holds {path}, which this run {role}. The output folder "
                                 "is replaced as a whole, so it must not hold anything the run needs: choose an --out "
                                 f"outside it (e.g. {self.out.with_name(self.out.name + '-results')}).")
        clean_debris(self.out)
        if self.out.is_dir() and any(self.out.iterdir()) and not overwrite:
            raise ValueError(f"The output folder {self.out} is not empty. Choose a new folder, or pass --overwrite "
                             "(overwrite=True) to replace its whole contents with this run's files.")
        self.tmp: Path | None = None
        self.files: dict[str, str] = {}

    def __enter__(self) -> OutputFolder:
        parent = self.out.parent
        existing = next(p for p in [parent, *parent.parents] if p.exists())
        if not os.access(existing, os.W_OK):
            raise PermissionError(f"Cannot write the output folder {self.out}: {existing} is not writable. "
                                  "Choose a folder you can write to.")
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.tmp = debris_name(self.out, "partial")
            self.tmp.mkdir()
        except OSError as exc:
            raise PermissionError(f"Cannot write the output folder {self.out} ({exc.strerror}). Choose a folder you "
                                  "can write to.") from None
        return self

    def path(self, name: str, what: str | None = None) -> Path:
        """Where to write ``name`` (relative, may include one subfolder); recorded as ``what``."""
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"Output names are relative file names; got {name!r}.")
        p = self.tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        self.files[what or rel.as_posix()] = rel.as_posix()
        return p

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if not self.out.exists():
            os.replace(self.tmp, self.out)
            return
        if exchange(self.tmp, self.out):  # out now holds the new set, tmp the old one
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = debris_name(self.out, "old")
        os.replace(self.out, old)
        os.replace(self.tmp, self.out)
        shutil.rmtree(old, ignore_errors=True)


class AtomicPaths:
    """For writing into an existing folder: each file goes to a temporary name first and is
    renamed into place by :meth:`commit` (a crash never leaves a half-written file);
    :meth:`discard` removes the temporary files of a failed write.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.pending: list[tuple[Path, Path]] = []

    def __call__(self, name: str, what: str | None = None) -> Path:
        """The temporary path to write ``name`` to."""
        final = self.folder / name
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp{final.suffix}")
        self.pending.append((tmp, final))
        return tmp

    def commit(self) -> None:
        """Move every written file into place."""
        for tmp, final in self.pending:
            os.replace(tmp, final)
        self.pending = []

    def discard(self) -> None:
        """Remove the temporary files written so far."""
        for tmp, _ in self.pending:
            tmp.unlink(missing_ok=True)
        self.pending = []
