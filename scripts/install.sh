#!/usr/bin/env bash
# Installs plm and everything it needs on a fresh Debian machine (CPU only, no internet except
# the package registries). Usage: scripts/install.sh [--test]
#   --test  also installs the test dependencies and headless Chromium (for the browser tests)
set -euo pipefail
cd "$(dirname "$0")/.."
with_test=0
[ "${1:-}" = "--test" ] && with_test=1

SUDO=""
[ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo"
if command -v apt-get >/dev/null; then
  # fonts: the glyphs benchmark (plm.data.glyphs.FONT_PACKAGES); fontconfig lists them;
  # wesnoth-1.16-data: the sprites benchmark (plm.data.sprites.SPRITE_PACKAGES)
  pkgs="dataset-fashion-mnist fontconfig fonts-noto-core fonts-urw-base35 fonts-texgyre fonts-cmu fonts-dejavu-core
        fonts-dejavu-extra fonts-freefont-ttf fonts-roboto-unhinted fonts-lato fonts-open-sans fonts-linuxlibertine
        fonts-crosextra-carlito fonts-crosextra-caladea fonts-inter fonts-hack fonts-liberation2
        wesnoth-1.16-data"
  [ $with_test -eq 1 ] && pkgs="$pkgs chromium"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq || echo "install.sh: apt-get update failed; continuing" >&2
  # shellcheck disable=SC2086
  $SUDO apt-get install -y -qq --no-install-recommends $pkgs >/dev/null \
    || echo "install.sh: could not install $pkgs (the demo needs the fonts; without Fashion-MNIST and fonts it falls back to scikit-learn digits)" >&2
fi

PY="${PYTHON:-python3}"
# torch first, pinned: anything asking for an unpinned torch would otherwise pull CUDA wheels.
"$PY" -m pip install -q --disable-pip-version-check torch==2.13.0
if [ $with_test -eq 1 ]; then
  "$PY" -m pip install -q --disable-pip-version-check -e ".[test]"
else
  "$PY" -m pip install -q --disable-pip-version-check -e ".[faiss]"
fi
# compile the PL model's CPU kernels now (about 13 s on 2 cores, cached next to the module), not
# in the first training run
"$PY" -c "from plm.manifold import kernels; kernels.warm_up()" \
  || echo "install.sh: the PL model's kernels did not compile now; they compile on first use" >&2
