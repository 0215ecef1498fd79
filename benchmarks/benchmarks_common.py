"""What every benchmark script shares: the machine record, the command line (``--quick``,
``--out``), writing results, and loaders of real data from the package's samples.

Every script runs the reference and ours in one run. ``--quick`` runs the same code on tiny
sizes in seconds (CI runs every script that way, ``tests/test_benchmarks.py``, so an API
change that breaks one fails CI); its results go to a temporary folder unless ``--out`` is
given, never over the committed ``benchmarks/results/*.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SHARED = HERE.parent.parent / "shared" / "data"


def machine() -> dict:
    """The CPU (model, instruction sets that matter for the kernels), cores, memory and the BLAS."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "amx_tile") if f in flags]
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        mem_gb = float("nan")
    blas = []
    try:
        from threadpoolctl import threadpool_info

        blas = [{k: i.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
                for i in threadpool_info() if i.get("user_api") == "blas"]
    except ImportError:
        pass
    return {"cpu": model, "instruction_sets": isa, "avx512": "avx512f" in flags, "cores": os.cpu_count(),
            "memory_gb": round(mem_gb, 1), "python": platform.python_version(), "numpy": np.__version__,
            "blas": blas, "platform": platform.platform()}


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with ``--quick`` (tiny sizes, seconds) and ``--out`` (the JSON file)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="tiny sizes, a few seconds: checks that the script runs (CI); results go to a temporary "
                         "folder unless --out is given")
    ap.add_argument("--out", type=Path, help="where to write the JSON results (default benchmarks/results/<name>.json)")
    return ap


def out_path(args, name: str) -> Path:
    """``--out``, else the committed results file (a full run) or a temporary file (``--quick``)."""
    if args.out is not None:
        return Path(args.out)
    if getattr(args, "quick", False):
        return Path(tempfile.mkdtemp(prefix="nsn-bench-")) / f"{name}.json"
    return RESULTS / f"{name}.json"


def write(args, name: str, result: dict) -> Path:
    """Write ``result`` with the machine record and the mode; returns the path."""
    path = out_path(args, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "quick": bool(getattr(args, "quick", False)), "machine": machine(),
               "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), **result}
    path.write_text(json.dumps(payload, indent=2, default=_jsonable))
    print(f"results: {path}", flush=True)
    return path


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def shared(folder: str) -> Path:
    """A folder of the project's shared datasets, or a clear SystemExit naming it."""
    path = SHARED / folder
    if not path.is_dir():
        raise SystemExit(f"This benchmark needs the shared dataset folder {path} (beside the repository in the "
                         "project's CI).")
    return path


def mean_sd(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def bdgp_matrix() -> np.ndarray:
    """The BDGP matrix of Wu et al. 2016: 405 embryo pixels x 1,640 images, float64, in the
    original table's pixel order (the template's pixels in column-major order)."""
    from napari_spatial_nmf import datasets

    s = datasets.bdgp()
    T = ~np.isnan(s.data[0])
    rc = np.argwhere(T.T)[:, ::-1]
    return s.data[:, rc[:, 0], rc[:, 1]].T.astype(np.float64)
