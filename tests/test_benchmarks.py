"""Every benchmark script runs: its quick mode (tiny sizes, seconds) is part of the suite, so an
API change that breaks a script fails CI instead of rotting the tables in docs/benchmarks.md."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# which shared dataset folder(s) (../shared/data/<folder>) a script needs, or None
NEEDS = {
    "cancel_latency.py": None,
    "integration_dlpfc.py": "dlpfc_visium_151673_151676",
    "integration_dlpfc_gmm.py": "dlpfc_visium_151673_151676",
    "integration_domains.py": ("dlpfc_visium_151673_151676", "baristaseq_visp_3slices"),
    "integration_panels.py": ("dlpfc_visium_151673_151676", "baristaseq_visp_3slices", "osmfish_sscortex"),
    "integration_scaling.py": "dlpfc_visium_151673_151676",
    "nnmf_osmfish.py": None,
    "nnmf_scaling.py": None,
    "nnmf_smoothing.py": None,
    "region_combinations.py": None,
    "registration_istbench.py": ("dlpfc_visium_151673_151676", "baristaseq_visp_3slices", "starmap_3d_visual_cortex"),
    "registration_paste.py": None,
    "stability_allen_scale.py": None,
    "stability_bdgp.py": None,
    "wu2016_bdgp.py": None,
}
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name != "benchmarks_common.py")


def test_every_script_is_registered():
    assert sorted(NEEDS) == SCRIPTS, "add the new benchmark to NEEDS (with the shared folder it needs, if any)"


@pytest.mark.parametrize("script", SCRIPTS)
def test_quick_mode_runs(script, tmp_path, request):
    folders = NEEDS.get(script)
    if folders is not None:
        shared = request.getfixturevalue("shared_data")
        for folder in (folders,) if isinstance(folders, str) else folders:
            assert (shared / folder).is_dir(), f"{script} needs {shared / folder}"
    out = tmp_path / "result.json"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), "--quick", "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=BENCHMARKS, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["quick"] is True and result["benchmark"] == script[:-3]
    assert result["machine"]["cpu"] and "instruction_sets" in result["machine"]
