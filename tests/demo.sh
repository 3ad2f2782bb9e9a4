#!/usr/bin/env bash
# The main job: installs what is missing, builds, starts pkcs11-proxy-server against a
# throwaway SoftHSM2 token, and signs and verifies through the shim, printing each step.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/install-deps.sh
cargo build --release --workspace --bins --lib -q
exec target/release/demo "$@"
