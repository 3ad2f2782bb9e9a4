#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds the shim and the server (release),
# then runs every unit and end-to-end test against a real SoftHSM2.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/install-deps.sh
cargo build --release --workspace --all-targets
cargo test --release --workspace
