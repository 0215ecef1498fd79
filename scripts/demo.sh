#!/usr/bin/env bash
# Install napari-spatial-nmf and run the main job on the shipped samples.
# With a display: napari opens with the Allen sample loaded and the docks ready.
# Without one: the same job runs headless and writes results to ./nsnmf-demo/.
source "$(dirname "$0")/_setup.sh"
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then install_debian_packages; fi
make_venv all
say "Running the demo (napari-spatial-nmf demo $*)"
exec .venv/bin/napari-spatial-nmf demo "$@"
