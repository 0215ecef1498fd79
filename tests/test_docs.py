"""The documentation runs as written: every ```python block of the README and docs/, and the
API page is current."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def _pages_with_code():
    return [p for p in PAGES if BLOCK.search(p.read_text())]


@pytest.mark.parametrize("page", _pages_with_code(), ids=lambda p: p.name)
def test_code_blocks_run(page, tmp_path):
    """The page's python blocks, in order, in one fresh interpreter (working folder: a temporary one).
    Downloads go to the local stand-in of the Allen API and IBL's mirror (tests/allen_server.py)."""
    import os

    from allen_server import AllenStandIn
    from test_fetch import _whole_set

    code = "\n\n".join(BLOCK.findall(page.read_text()))
    with AllenStandIn() as server:
        _whole_set(server)
        env = {**os.environ, "NAPARI_SPATIAL_NMF_ALLEN_API": server.url,
               "NAPARI_SPATIAL_NMF_AGEA_MIRROR": server.url + "/atlas", "NAPARI_SPATIAL_NMF_CACHE": str(tmp_path / "c")}
        out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                             env=env)
    assert out.returncode == 0, f"{page.name}:\n{out.stderr[-3000:]}"


def test_api_page_is_current():
    out = subprocess.run([sys.executable, str(ROOT / "docs" / "make_api.py"), "--check"], capture_output=True)
    assert out.returncode == 0, "docs/api.md is out of date: run python docs/make_api.py"


def test_command_line_examples_run(tmp_path):
    """The ```bash examples of docs/cli.md, as a newcomer types them, on the shipped samples."""
    text = (ROOT / "docs" / "cli.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.DOTALL)
    assert blocks, "docs/cli.md has no runnable examples"
    bindir = Path(sys.executable).parent
    env = {**__import__("os").environ, "PATH": f"{bindir}:{__import__('os').environ.get('PATH', '')}",
           "PYTHONWARNINGS": "ignore"}
    for block in blocks:
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, capture_output=True, text=True,
                             env=env, timeout=900)
        assert out.returncode == 0, f"{block}\n{out.stderr[-3000:]}"
    for folder in ("allen-nmf", "osmfish-stability", "osmfish-nnmf", "stahl-integrated"):
        assert (tmp_path / folder / "summary.json").exists(), folder
