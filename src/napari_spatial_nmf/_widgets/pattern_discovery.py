"""Pattern discovery dock: NMF of gene images, a gene stack or a cell point cloud."""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import ComboBox, Container, Select, SpinBox

from .. import tl
from ._base import Dock, is_deleted
from ._inputs import (
    MISSING_CHOICES,
    add_result_layers,
    build_input,
    input_layer_choices,
    mask_layer_choices,
    n_genes_of,
    preselect,
)
from ._runner import JobRunner

if TYPE_CHECKING:
    import napari

HEADER = ("Factorize gene images (one layer per gene, or a gene stack) or a cell point cloud into K principal "
          "patterns (NMF). Patterns become new layers; the inputs are never changed.")


class PatternDiscoveryWidget(Dock):
    """Find principal patterns by NMF and add them as new layers.

    Input: image layers (each a gene volume, or a gene stack whose ``metadata["genes"]``
    names axis 0), or one Points layer backed by an AnnData. The mask defaults to an atlas
    (voxels with a structure), and K to at most the number of genes. Output: one Image
    layer per pattern, or a Points layer of cell weights, registered as a result for the
    other docks.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(napari_viewer, HEADER)
        self.result = None
        self.inputs = Select(label="input", choices=lambda _w: input_layer_choices(self.viewer), allow_multiple=True)
        self.mask = ComboBox(label="mask", choices=lambda _w: mask_layer_choices(self.viewer), nullable=True)
        self.n_components = SpinBox(label="K (patterns)", min=1, max=500, value=8)
        self.seed = SpinBox(label="random state", min=0, max=2**31 - 1, value=0)
        self.max_iter = SpinBox(label="max iterations", min=1, max=100_000, value=200)
        self.missing = ComboBox(label="missing values", choices=list(MISSING_CHOICES))
        self.form = Container(widgets=[self.inputs, self.mask, self.n_components, self.seed, self.max_iter,
                                       self.missing])
        self.inputs.native.setMaximumHeight(110)
        self.inputs.changed.connect(self._fit_k_to_inputs)
        self.runner = JobRunner("Find patterns")
        self.runner.run_button.clicked.connect(self.run)
        self.add(self.form)
        self.add(self.runner)
        self.layout_.addStretch()
        self.reset_choices()
        self._preselect()

    def _preselect(self) -> None:
        """Start from what is open: all gene images (or the one cell layer) and the atlas."""
        preselect(self.inputs, self.mask)
        self._fit_k_to_inputs()

    def _fit_k_to_inputs(self, _value=None) -> None:
        n = n_genes_of(list(self.inputs.value))
        if n:
            self.n_components.max = n
            self.n_components.value = min(self.n_components.value, n)

    def reset_choices(self, _event=None) -> None:
        """Refresh the layer choices (napari calls this when layers change)."""
        super().reset_choices()
        if hasattr(self, "n_components") and not is_deleted(self):
            self._preselect()

    def run(self) -> None:
        """Start NMF in a worker thread (the *Find patterns* button); bad input is refused at once."""
        if self.runner.running:
            return
        k = int(self.n_components.value)
        inputs = list(self.inputs.value)
        try:
            adata, source, is_points, prepare = build_input(inputs, self.mask.value,
                                                            MISSING_CHOICES[self.missing.value], k)
        except (ValueError, TypeError, KeyError) as exc:
            self.runner.fail(exc)
            return
        kwargs = {"random_state": int(self.seed.value), "max_iter": int(self.max_iter.value)}

        def job():
            layer, missing = yield from prepare()
            return (yield from tl.iter_nmf(adata, k, layer=layer, missing=missing, **kwargs))

        def done(res):
            self.result = add_result_layers(self.viewer, res, source, is_points, inputs)
            rec = res.uns["nmf"]
            self.runner.status.setText(f"{k} patterns from {res.n_vars} genes x {res.n_obs:,} "
                                       f"{'cells' if is_points else 'voxels'}; relative error "
                                       f"{rec['relative_error']:.3f} after {rec['n_iter']} iterations "
                                       f"({'converged' if rec['converged'] else 'stopped at max iterations'}).")

        self.runner.start(job(), done, description="NMF")
