# Shared set-up, sourced by demo.sh and test.sh: Debian packages for Qt/OpenGL under Xvfb,
# then a virtual environment in .venv with the package installed (editable).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1

APT_PACKAGES="xvfb xauth libgl1 libegl1 libopengl0 libgl1-mesa-dri libglx-mesa0 libdbus-1-3 libfontconfig1
 libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0
 libxcb-randr0 libxcb-shape0 libxcb-xfixes0 libxcb-xkb1"

say() { printf '\n==> %s\n' "$*"; }

install_debian_packages() {
  command -v apt-get >/dev/null || { echo "no apt-get: install Xvfb, Mesa and the xcb libraries yourself"; return 0; }
  local missing=()
  for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  say "Installing Debian packages for a virtual display: ${missing[*]}"
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

pip_install() {  # pip, showing one line per package it collects or installs
  .venv/bin/pip install "$@" 2>&1 | grep -E --line-buffered "^(Collecting|Installing collected|Successfully installed|ERROR)" \
    | sed -u 's/^/    /' || true
  .venv/bin/pip check >/dev/null 2>&1 || true
}

make_venv() {  # $1: the extras to install, e.g. "all" or "testing"
  if [ ! -x .venv/bin/python ]; then
    say "Creating the virtual environment .venv (first run: installing takes about 2-4 minutes)"
    python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip >/dev/null
  fi
  if [[ "$1" == *testing* || "$1" == *integration* ]] && ! .venv/bin/python -c "import torch" 2>/dev/null; then
    say "Installing PyTorch (CPU build) for the INSPIRE integration"
    pip_install "torch==2.13.0"
  fi
  say "Installing napari-spatial-nmf[$1] and its dependencies into .venv"
  pip_install -e ".[$1]"
  .venv/bin/python -c "import napari_spatial_nmf" || { echo "the installation failed (see above)"; exit 1; }
}
