#!/usr/bin/env bash
# The main job from a fresh clone: `causeseg run` on the default model.
#
# Installs what the build and the first run need when it is missing
# (Debian/Ubuntu, as root; see tests/install-deps.sh), builds causeseg with
# the same features as the test suite (one build serves both), and streams
# the first camera, or the bundled sample images when there is no camera.
# Arguments go to `causeseg run` (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages and the feature set, shared with tests/run.sh so that the
# test suite reuses this build.
source tests/install-deps.sh

exec cargo run --features "$FEATURES" --bin causeseg -- run "$@"
