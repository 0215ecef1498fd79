#!/usr/bin/env bash
# Install the test dependencies (Debian packages for Xvfb/Mesa, a venv) and run the tests.
# Tests that need the project's shared datasets (../shared/data) are skipped, naming the folder,
# when it is absent; .ci/run requires it.
source "$(dirname "$0")/_setup.sh"
install_debian_packages
command -v Xvfb >/dev/null || { echo "Xvfb is missing: napari's tests need a virtual X display"; exit 1; }
make_venv testing
say "Checking the npe2 manifest and the code style (ruff)"
.venv/bin/npe2 validate --imports napari_spatial_nmf
.venv/bin/ruff check src tests benchmarks docs
say "Running the tests under a virtual display"
export QT_QPA_PLATFORM=xcb QT_API=pyqt6 PYTEST_QT_API=pyqt6   # never 'offscreen': napari needs OpenGL
unset DISPLAY || true                                         # pytest-xvfb starts its own Xvfb
set +e
.venv/bin/python -m pytest -p no:cacheprovider -q --durations=25 "$@"
rc=$?
set -e
[ $rc -eq 5 ] && { echo "pytest collected no tests"; exit 1; }
exit $rc
