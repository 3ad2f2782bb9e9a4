#!/usr/bin/env bash
# Runs the frame-decoder fuzzer for a given time (default 60 s), starting from the seed corpus
# (real frames) and adding what it finds to it. Needs cargo-fuzz (`cargo install cargo-fuzz`);
# on a stable toolchain RUSTC_BOOTSTRAP=1 lets it use the sanitizer flags it needs.
# CI does not fuzz: `cargo test -p pkcs11-proxy-protocol` replays the corpus.
#   usage: protocol/fuzz/run.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
RUSTC_BOOTSTRAP=1 cargo fuzz run frame_decoder fuzz/corpus/frame_decoder -- \
  -max_total_time="$seconds" -rss_limit_mb=1024 -max_len=65536
