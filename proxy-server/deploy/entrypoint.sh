#!/usr/bin/env bash
# Container entrypoint of pkcs11-proxy-server.
#
# With arguments, they are passed to the server as they are. Without, the server is configured
# from the environment, including the old pkcs11-daemon's, so existing deployments switch by
# changing the image:
#   LIBRARY_LOCATION       the vendor PKCS#11 library (old image's name)      [required]
#   PKCS11_DAEMON_SOCKET   the address to listen on (old proxy's name)        [tcp://0.0.0.0:2345]
#   PKCS11_PROXY_CONFIG    a server TOML file (other options)                 [none]
#   METRICS_LISTEN         Prometheus/health address                          [none]
#   PKCS11_PROXY_TLS_CERT, PKCS11_PROXY_TLS_KEY, PKCS11_PROXY_TLS_CLIENT_CA
#                          TLS material for a tls:// PKCS11_DAEMON_SOCKET      [none]
#   PKCS11_PROXY_SERVER    the server binary                [/usr/local/bin/pkcs11-proxy-server]
#   PKCS11_PROXY_HOOKS_DIR start-up hooks                   [/docker-entrypoint.d]
# `healthcheck` as the only argument asks /healthz on METRICS_LISTEN (the image's HEALTHCHECK).
# The old daemon's command line, `pkcs11-daemon LIB -`, is the environment form with
# LIBRARY_LOCATION=LIB.
#
# Start-up hooks (the convention of the official nginx and postgres images): before the
# server starts, every file of the hooks directory runs in name order: `*.envsh` files are
# sourced (they may export variables for the server and later hooks), other executable files
# are run; anything else is skipped with a line saying so. A hook that fails stops the
# container, with its name and exit status in the log.
set -euo pipefail

server=${PKCS11_PROXY_SERVER:-/usr/local/bin/pkcs11-proxy-server}

run_hooks() {
  local dir=${PKCS11_PROXY_HOOKS_DIR:-/docker-entrypoint.d} hook status
  [ -d "$dir" ] || return 0
  local LC_ALL=C
  for hook in "$dir"/*; do
    [ -e "$hook" ] || continue
    case $hook in
      *.envsh)
        echo "pkcs11-proxy-entrypoint: sourcing $hook" >&2
        # shellcheck disable=SC1090
        . "$hook"
        ;;
      *)
        if [ -f "$hook" ] && [ -x "$hook" ]; then
          echo "pkcs11-proxy-entrypoint: running $hook" >&2
          status=0
          "$hook" || status=$?
          if [ "$status" -ne 0 ]; then
            echo "pkcs11-proxy-entrypoint: start-up hook $hook failed (exit status $status): not starting" >&2
            exit 1
          fi
        else
          echo "pkcs11-proxy-entrypoint: ignoring $hook (not an executable file)" >&2
        fi
        ;;
    esac
  done
}

if [ "${1:-}" = healthcheck ]; then
  port=${METRICS_LISTEN##*:}
  exec 3<>"/dev/tcp/127.0.0.1/${port}"
  printf 'GET /healthz HTTP/1.0\r\n\r\n' >&3
  grep -q '200 OK' <&3
  exit 0
fi

if [ "${1:-}" = pkcs11-daemon ]; then
  # The old image's command: pkcs11-daemon LIB [-] (the `-`: stay in the foreground, as this
  # server always does).
  LIBRARY_LOCATION=${2:?usage: pkcs11-daemon LIB [-]}
  set --
fi

run_hooks

if [ "$#" -gt 0 ]; then
  exec "$server" "$@"
fi

args=()
if [ -n "${PKCS11_PROXY_CONFIG:-}" ]; then
  args+=(--config "$PKCS11_PROXY_CONFIG")
fi
if [ -n "${LIBRARY_LOCATION:-}" ]; then
  args+=(--module "$LIBRARY_LOCATION")
elif [ -z "${PKCS11_PROXY_CONFIG:-}" ]; then
  echo "pkcs11-proxy-entrypoint: set LIBRARY_LOCATION to the vendor PKCS#11 library" >&2
  exit 2
fi
socket=${PKCS11_DAEMON_SOCKET:-tcp://0.0.0.0:2345}
args+=(--listen "$socket")
case $socket in
  tcp://127.*|tcp://localhost:*|tcp://\[::1\]:*) ;;
  tcp://*)
    # The old daemon listened in clear on the network; keep that working, and say so.
    echo "pkcs11-proxy-entrypoint: $socket is plain TCP off loopback (as the old daemon): use tls:// to encrypt" >&2
    args+=(--allow-plaintext)
    ;;
esac
if [ -n "${PKCS11_PROXY_TLS_CERT:-}" ]; then
  args+=(--tls-cert "$PKCS11_PROXY_TLS_CERT" --tls-key "${PKCS11_PROXY_TLS_KEY:?}" \
    --tls-client-ca "${PKCS11_PROXY_TLS_CLIENT_CA:?}")
fi
if [ -n "${METRICS_LISTEN:-}" ]; then
  args+=(--metrics-listen "$METRICS_LISTEN")
fi
exec "$server" "${args[@]}"
