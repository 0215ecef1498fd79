"""What every result carries: its parameters, seed and the versions that produced it."""

from __future__ import annotations

import contextlib
import datetime as _dt
from importlib.metadata import PackageNotFoundError, version

PACKAGES = ("napari-spatial-nmf", "numpy", "scipy", "scikit-learn", "anndata", "pandas", "numba", "scanpy", "torch")


def versions() -> dict[str, str]:
    """Versions of the packages that shape a result (missing ones are left out)."""
    out = {}
    for pkg in PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def provenance(method: str, params: dict) -> dict:
    """A ``uns``-ready record: method, parameters (None left out: h5ad cannot store it), versions, UTC time."""
    clean = {k: v for k, v in params.items() if v is not None}  # None is stored as absent
    return {
        "method": method,
        "params": clean,
        "versions": versions(),
        "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
