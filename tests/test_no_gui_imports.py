"""The compute core, tools, readers and the headless pipeline never import napari or Qt."""

import subprocess
import sys
import textwrap


def test_core_runs_with_napari_and_qt_blocked():
    code = textwrap.dedent("""
        import sys
        for name in ("napari", "qtpy", "magicgui", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy"):
            sys.modules[name] = None  # any import of these now fails
        import numpy as np
        import napari_spatial_nmf as nsn
        from napari_spatial_nmf import cli, core, datasets, io, pipeline, pl, results, tl
        stack, atlas = datasets.allen_200um()
        df = core.region_correlation(stack.data[0], atlas.annotation, atlas.ontology)
        print(df.iloc[0]["acronym"])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "STR"
