#!/usr/bin/env bash
# Installs what the demo and the test suite need on a fresh Debian machine (run as root, or
# with sudo available). Packages already present are left alone.
set -euo pipefail
packages=(softhsm2 opensc gnutls-bin libp11-kit-dev gcc libc6-dev pkg-config golang golang-github-miekg-pkcs11-dev libengine-pkcs11-openssl openssl libnss3 libnss3-tools shellcheck systemd musl-tools binutils)
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
if ! command -v cargo >/dev/null; then
  echo "cargo is missing: install the Rust toolchain (https://rustup.rs) first" >&2
  exit 1
fi
