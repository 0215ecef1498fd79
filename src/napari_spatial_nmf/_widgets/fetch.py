"""Fetch dock: Allen ISH energy grids by gene symbol (with completion), or a BrainGlobe atlas."""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import CheckBox, ComboBox, Container, LineEdit
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QCompleter, QLabel

from .. import io
from .._layers import atlas_layer, stack_layers
from ._base import Dock
from ._runner import JobRunner

if TYPE_CHECKING:
    import napari

HEADER = ("Download Allen Mouse Brain Atlas ISH expression energy (200 µm grid) for the genes you name, once, into a "
          "cache; they open as image layers over the CCFv3 atlas. Gene symbols complete as you type.")


class FetchWidget(Dock):
    """Gene symbols (comma- or space-separated, completed from Allen's experiment index), plane,
    one or all experiments per gene; *Fetch* downloads in a worker with progress and Cancel and
    adds one image layer per experiment (and the 200 µm CCFv3 atlas if asked and not open).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(napari_viewer, HEADER)
        self.genes = LineEdit(label="genes", value="")
        self.genes.native.setPlaceholderText("e.g. Pdyn, Nrp1, Gad2")
        completer = QCompleter(io.gene_names(), self.genes.native)
        completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        completer.setFilterMode(Qt.MatchFlag.MatchStartsWith)
        self.genes.native.setCompleter(completer)
        self.plane = ComboBox(label="plane", choices=["coronal", "sagittal"])
        self.experiments = ComboBox(label="experiments per gene",
                                    choices=[("all", "all"), ("one (most measured voxels)", "one")])
        self.with_atlas = CheckBox(label="open the CCFv3 atlas (200 µm) too", value=True)
        self.form = Container(widgets=[self.genes, self.plane, self.experiments, self.with_atlas])
        self.cache_note = QLabel(f"cache: {io.cache_dir()}")
        self.cache_note.setWordWrap(True)
        self.runner = JobRunner("Fetch")
        self.runner.run_button.clicked.connect(self.run)
        self.atlas_name = LineEdit(label="BrainGlobe atlas", value="")
        self.atlas_name.native.setPlaceholderText("e.g. allen_mouse_100um")
        self.atlas_form = Container(widgets=[self.atlas_name])
        self.atlas_runner = JobRunner("Download atlas")
        self.atlas_runner.run_button.clicked.connect(self.download_atlas)
        for w in (self.form, self.runner, self.cache_note, QLabel("<b>BrainGlobe atlases</b> (brainglobe-atlasapi; "
                                                                  "downloaded once, then read offline)"),
                  self.atlas_form, self.atlas_runner):
            self.add(w)
        self.layout_.addStretch()

    def gene_list(self) -> list[str]:
        """The symbols typed (commas or spaces between them)."""
        return [g for g in str(self.genes.value).replace(",", " ").split() if g]

    def run(self) -> None:
        """Start the download in a worker thread; unknown genes are refused at once with suggestions."""
        if self.runner.running:
            return
        try:
            job = io.iter_fetch_allen(self.gene_list(), plane=self.plane.value, experiments=self.experiments.value)
        except (ValueError, TypeError, PermissionError) as exc:
            self.runner.fail(exc)
            return
        self.runner.start(job, self._add, description="Allen grids")

    def download_atlas(self) -> None:
        """Download the named BrainGlobe atlas in a worker (progress, Cancel); add it as a labels layer."""
        if self.atlas_runner.running:
            return
        name = str(self.atlas_name.value).strip()
        try:
            job = io.iter_download_brainglobe_atlas(name)
        except (ValueError, ImportError, PermissionError) as exc:
            self.atlas_runner.fail(exc)
            return

        def add(atlas):
            data, kwargs, _ = atlas_layer(atlas, name=name)
            self.viewer.add_labels(data, **kwargs)
            self.atlas_runner.status.setText(f"{name}: {atlas.annotation.shape} voxels of "
                                             f"{atlas.voxel_size[0]:g} µm, {len(atlas.ontology.table):,} structures.")

        self.atlas_runner.start(job, add, description=f"BrainGlobe {name}")

    def _add(self, stack) -> None:
        from .. import datasets

        if self.with_atlas.value and not any(lyr.metadata.get("ontology") is not None for lyr in self.viewer.layers):
            _, atlas = datasets.allen_200um()
            data, kwargs, _ = atlas_layer(atlas, name="CCFv3 annotation")
            self.viewer.add_labels(data, **kwargs)
        for data, kwargs, _ in stack_layers(stack):
            self.viewer.add_image(data, **kwargs)
        missing = stack.meta.get("missing", {})
        note = f"; not found: {', '.join(f'{g} ({why})' for g, why in missing.items())}" if missing else ""
        self.runner.status.setText(f"{len(stack.genes)} grid(s) added: {', '.join(stack.genes)}{note}.")
