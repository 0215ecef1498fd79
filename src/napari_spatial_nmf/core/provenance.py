"""What every result carries: its parameters, seed and the versions that produced it."""

from __future__ import annotations

import datetime as _dt
from importlib.metadata import PackageNotFoundError, version


def versions() -> dict[str, str]:
    """Versions of the packages that shape a result (missing ones are left out)."""
    out = {}
    for pkg in ("napari-spatial-nmf", "numpy", "scipy", "scikit-learn", "anndata", "pandas"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def provenance(method: str, params: dict) -> dict:
    """A ``uns``-ready record: method, parameters (None becomes "None"), versions, UTC time."""
    clean = {k: ("None" if v is None else v) for k, v in params.items()}
    return {
        "method": method,
        "params": clean,
        "versions": versions(),
        "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
