"""Memory estimates checked before large allocations, so a request that cannot fit is
refused at once with its estimate instead of failing (or being killed) part-way.
"""

from __future__ import annotations

import os


class MemoryLimitError(ValueError):
    """A request whose estimated memory exceeds the limit (a ValueError, raised before any work)."""


def available_bytes() -> int:
    """Memory available to this process now (``MemAvailable`` of /proc/meminfo, else total RAM)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8 * 2**30


def memory_limit() -> int:
    """The limit in bytes: ``NAPARI_SPATIAL_NMF_MEMORY_LIMIT`` (bytes, or with a K/M/G
    suffix) if set, else 80 % of the memory available now.
    """
    env = os.environ.get("NAPARI_SPATIAL_NMF_MEMORY_LIMIT", "").strip()
    if env:
        units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
        mult = units.get(env[-1].upper(), 1)
        return int(float(env[:-1] if mult > 1 else env) * mult)
    return int(0.8 * available_bytes())


def fmt_bytes(n: float) -> str:
    """Human-readable size (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def check_memory(nbytes: float, what: str, fix: str) -> None:
    """Raise :class:`MemoryLimitError` if ``nbytes`` exceeds :func:`memory_limit`.

    Parameters
    ----------
    nbytes : float
        Estimated peak bytes of the request.
    what : str
        What would be allocated, e.g. "the spatial kernel (1.2e9 neighbour pairs)".
    fix : str
        What the user can change, e.g. "choose a smaller lengthscale".
    """
    limit = memory_limit()
    if nbytes > limit:
        raise MemoryLimitError(f"{what[0].upper()}{what[1:]} would need about {fmt_bytes(nbytes)}, more than the "
                               f"{fmt_bytes(limit)} this machine can give now (limit: 80 % of available memory, "
                               f"or NAPARI_SPATIAL_NMF_MEMORY_LIMIT). {fix}")
