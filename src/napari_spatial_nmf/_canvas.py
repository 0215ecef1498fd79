"""What the canvas says by itself: a scale bar in the data's unit, a colour bar for the active
continuous layer, a legend for categorical colours, and the atlas structure under the cursor
whatever layer is active (napari shows only the active layer's value).

:func:`install` is idempotent and called wherever our layers reach a viewer: the sample
menu, the reader, and every dock. Only napari's public API is used (``viewer.scale_bar``,
``layer.colorbar`` / ``face_colorbar``, ``viewer.canvas.overlays`` with
:class:`napari.components.overlays.TextOverlay`, ``viewer.events.status``). GUI-side only:
the compute core never imports this.
"""

from __future__ import annotations

import weakref

import numpy as np

LEGEND_PREFIX = "napari_spatial_nmf_legend_"
LEGEND_POSITION = "top_right"
MAX_LEGEND_ENTRIES = 30
_INSTALLED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def install(viewer) -> CanvasHelper | None:
    """Attach the helper to ``viewer`` once (later calls return the same one)."""
    if viewer is None:
        return None
    helper = _INSTALLED.get(viewer)
    if helper is None:
        helper = CanvasHelper(viewer)
        _INSTALLED[viewer] = helper
    helper.refresh()
    return helper


def install_on_current_viewer() -> None:
    """For the sample menu and the reader, which get no viewer: the one napari is adding to."""
    try:
        import napari

        viewer = napari.current_viewer()
    except Exception:  # noqa: BLE001 - no Qt viewer (headless use of the reader)
        return
    if viewer is not None:
        install(viewer)


def when_added(name: str, callback) -> None:
    """Call ``callback(viewer, layer)`` once, when a layer named ``name`` is added to the current
    viewer (a sample contribution returns data only; this is how it sets up the view).
    """
    try:
        import napari

        viewer = napari.current_viewer()
    except Exception:  # noqa: BLE001
        return
    if viewer is None:
        return

    def on_inserted(event):
        layer = event.value
        if layer.name == name or layer.name.startswith(f"{name} ["):
            viewer.layers.events.inserted.disconnect(on_inserted)
            from qtpy.QtCore import QTimer

            QTimer.singleShot(0, lambda: callback(viewer, layer))

    viewer.layers.events.inserted.connect(on_inserted)


def scale_bar(viewer):
    """The viewer's scale bar overlay (napari 0.9 moved it to ``viewer.canvas.overlays``)."""
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)
    if overlays is not None and "scale_bar" in overlays:
        return overlays["scale_bar"]
    return viewer.scale_bar


def is_atlas(layer) -> bool:
    """Our atlas Labels layers carry their ontology in ``metadata``."""
    return type(layer).__name__ == "Labels" and layer.metadata.get("ontology") is not None


def _legend_of(layer) -> dict | None:
    legend = layer.metadata.get("legend") if hasattr(layer, "metadata") else None
    return legend if isinstance(legend, dict) and legend.get("colors") else None


def _is_continuous(layer) -> bool:
    """An image with a colour map, or points coloured by a number through a colour map."""
    kind = type(layer).__name__
    if kind == "Image":
        return not layer.rgb
    if kind == "Points":
        return _legend_of(layer) is None and str(layer.face_color_mode) == "colormap"
    return False


class CanvasHelper:
    """One viewer's scale bar, colour bar, legend and atlas hover (see the module docstring)."""

    def __init__(self, viewer):
        self._viewer = weakref.ref(viewer)
        self._colorbar_layer = None
        self._legend_layer = None
        self._in_status = False
        viewer.layers.events.inserted.connect(self.refresh)
        viewer.layers.events.removed.connect(self.refresh)
        viewer.layers.selection.events.active.connect(self.refresh)
        viewer.events.status.connect(self._on_status)
        self._watched: weakref.WeakSet = weakref.WeakSet()

    @property
    def viewer(self):
        return self._viewer()

    # ------------------------------------------------------------------ legend, colour bar, scale bar
    def refresh(self, _event=None) -> None:
        """Re-derive the canvas decorations from the layers (called on every layer change)."""
        viewer = self.viewer
        if viewer is None:
            return
        for layer in viewer.layers:
            if layer not in self._watched:
                layer.events.visible.connect(self.refresh)
                self._watched.add(layer)
        self._scale_bar(viewer)
        self._colorbar(viewer)
        self._legend(viewer)

    def _scale_bar(self, viewer) -> None:
        physical = [lyr for lyr in viewer.layers if any(str(u) not in ("pixel", "") for u in lyr.units)]
        bar = scale_bar(viewer)
        if physical and not bar.visible:
            bar.visible = True

    def _colorbar(self, viewer) -> None:
        active = viewer.layers.selection.active
        target = active if active is not None and _is_continuous(active) else None
        old = self._colorbar_layer() if self._colorbar_layer is not None else None
        if old is not None and old is not target and old in viewer.layers:
            bar = old.colorbar if type(old).__name__ == "Image" else old.face_colorbar
            bar.visible = False
        if target is not None:
            bar = target.colorbar if type(target).__name__ == "Image" else target.face_colorbar
            bar.visible = True
            self._colorbar_layer = weakref.ref(target)
        else:
            self._colorbar_layer = None

    def _legend(self, viewer) -> None:
        """The legend of the active layer, else of the top visible layer that has categories."""
        from napari.components.overlays import TextOverlay

        active = viewer.layers.selection.active
        candidates = ([active] if active is not None else []) + list(viewer.layers)[::-1]
        layer = next((lyr for lyr in candidates if lyr is not None and lyr.visible and _legend_of(lyr)), None)
        overlays = viewer.canvas.overlays
        for key in [k for k in overlays if str(k).startswith(LEGEND_PREFIX)]:
            del overlays[key]
        self._legend_layer = None if layer is None else weakref.ref(layer)
        if layer is None:
            return
        legend = _legend_of(layer)
        with_tiling = getattr(viewer.canvas, "overlay_tiling", None)
        if with_tiling is not None:
            with_tiling.top_right = "vertical"
        items = list(legend["colors"].items())
        shown = items[:MAX_LEGEND_ENTRIES]
        overlays[f"{LEGEND_PREFIX}title"] = TextOverlay(text=str(legend.get("title", "")), position=LEGEND_POSITION,
                                                        visible=True, font_size=10, box=True)
        for i, (name, color) in enumerate(shown):
            overlays[f"{LEGEND_PREFIX}{i:03d}"] = TextOverlay(text=f"■ {name}", color=color, position=LEGEND_POSITION,
                                                              visible=True, font_size=9, box=True)
        if len(items) > len(shown):
            overlays[f"{LEGEND_PREFIX}more"] = TextOverlay(text=f"… and {len(items) - len(shown)} more",
                                                           position=LEGEND_POSITION, visible=True, font_size=9,
                                                           box=True)

    def legend_entries(self) -> list[str]:
        """The legend lines on the canvas now (for tests and screenshots)."""
        viewer = self.viewer
        return [viewer.canvas.overlays[k].text for k in viewer.canvas.overlays
                if str(k).startswith(LEGEND_PREFIX)] if viewer is not None else []

    # ------------------------------------------------------------------ atlas under the cursor
    def structure_at_cursor(self) -> str | None:
        """"acronym (name)" of the atlas structure under the cursor, from any atlas layer shown."""
        viewer = self.viewer
        if viewer is None:
            return None
        for layer in list(viewer.layers)[::-1]:
            if not (is_atlas(layer) and layer.visible):
                continue
            try:
                value = layer.get_value(viewer.cursor.position, view_direction=viewer.cursor._view_direction,
                                        dims_displayed=list(viewer.dims.displayed), world=True)
            except (IndexError, ValueError, TypeError):
                continue
            if value is None or (isinstance(value, (float, np.floating)) and np.isnan(value)) or int(value) == 0:
                continue
            onto = layer.metadata["ontology"]
            try:
                row = onto.table.loc[int(value)]
            except KeyError:
                return f"structure {int(value)}"
            return f"{row['acronym']} ({row['name']})"
        return None

    def _on_status(self, event=None) -> None:
        viewer = self.viewer
        if viewer is None or self._in_status:
            return
        active = viewer.layers.selection.active
        if active is None or is_atlas(active):
            return
        text = self.structure_at_cursor()
        if text is None:
            return
        suffix = f"  ·  atlas: {text}"
        status = viewer.status
        self._in_status = True
        try:
            if isinstance(status, dict):
                coords = str(status.get("coordinates", ""))
                if suffix not in coords:
                    viewer.status = {**status, "coordinates": coords + suffix}
            elif isinstance(status, str) and suffix not in status:
                viewer.status = status + suffix
        finally:
            self._in_status = False
