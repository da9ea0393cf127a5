#!/usr/bin/env bash
# What building causeseg with every feature needs, shared by the README's two
# commands (examples/quickstart.sh and tests/run.sh) so that both use one
# build. Sourced, not run. Installs missing Debian packages when root, else
# names them and stops:
# - python3-pip: fetching the backbone (and, for the tests, onnxruntime);
# - libclang-dev: nokhwa's bindgen (feature camera);
# - pkg-config + GStreamer dev files and base/good plugins (feature
#   gstreamer; videotestsrc for the tests);
# - whatever the caller lists in EXTRA_APT_PACKAGES (tests/run.sh: chromium,
#   for the headless browser test of the live preview).
# It also sets FEATURES, the one feature set both commands build with
# (feature ros2 needs no Debian package: its DDS is pure Rust).

FEATURES=ort,camera,gstreamer,train,ros2,rten
APT_PACKAGES=(python3-pip libclang-dev pkg-config libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good ${EXTRA_APT_PACKAGES[@]+"${EXTRA_APT_PACKAGES[@]}"})

missing=()
for package in "${APT_PACKAGES[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "causeseg: installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "causeseg: missing Debian packages: ${missing[*]}; run: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi
command -v cargo >/dev/null || { echo "causeseg: cargo not found: install Rust from https://rustup.rs" >&2; exit 1; }
