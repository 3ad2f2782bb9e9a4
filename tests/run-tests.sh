#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds the shim and the server (release),
# builds the x86_64 release artifacts, then runs every unit and end-to-end test against a
# real SoftHSM2.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/install-deps.sh
cargo build --release --workspace --all-targets
# The x86_64 release artifacts (glibc 2.17 and musl shims, the glibc 2.17 server), which
# tests/tests/dist.rs loads into glibc and musl processes.
bash .ci/dist x86_64
cargo test --release --workspace
