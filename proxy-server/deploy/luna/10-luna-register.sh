#!/usr/bin/env bash
# Start-up hook of the Luna image (runs from /docker-entrypoint.d before the server starts):
# registers the network HSM with the Luna client the way the IBM Blockchain Platform guide's
# entrypoint does, with the same variables and the same /configs layout (its ConfigMap
# `gemalto-config`):
#   HSM_ADDRESS      the HSM's address; unset: nothing is registered (a client configured
#                    in the image or a volume already)
#   CLIENT_ADDRESS   this client's name on the HSM (its certificate's)           [required]
#   LICENSE          `accept`: you accept the Luna client's licence              [required]
#   /configs/server.pem   the HSM's server certificate
#   /configs/cert.pem, /configs/key.pem   this client's certificate and key, registered on
#                    the HSM already
# The client's writable state (its configuration and certificates) lives in volumes, so that
# the root filesystem stays read-only and the user non-root:
#   LUNA_CLIENT_DIR           the client's installation          [/usr/safenet/lunaclient]
#   ChrystokiConfigurationPath  where Chrystoki.conf is kept (writable)  [/var/lib/luna]
#   LUNA_CONFIGS              the guide's /configs                [/configs]
#   LUNA_VTL                  the vtl tool                        [$LUNA_CLIENT_DIR/bin/64/vtl]
set -euo pipefail

if [ -z "${HSM_ADDRESS:-}" ]; then
  echo "10-luna-register: HSM_ADDRESS is not set: no HSM registered at start" >&2
  exit 0
fi
if [ "${LICENSE:-}" != accept ]; then
  echo "10-luna-register: set LICENSE=accept to accept the Luna client's licence" >&2
  exit 3
fi
: "${CLIENT_ADDRESS:?10-luna-register: CLIENT_ADDRESS must be set with HSM_ADDRESS}"
luna=${LUNA_CLIENT_DIR:-/usr/safenet/lunaclient}
configs=${LUNA_CONFIGS:-/configs}
vtl=${LUNA_VTL:-$luna/bin/64/vtl}
conf_dir=${ChrystokiConfigurationPath:-/var/lib/luna}
for f in server.pem cert.pem key.pem; do
  if [ ! -r "$configs/$f" ]; then
    echo "10-luna-register: $configs/$f is missing (the gemalto-config ConfigMap)" >&2
    exit 4
  fi
done
# The configuration vtl edits, in the writable volume (first start: the image's template).
mkdir -p "$conf_dir" "$luna/cert/server" "$luna/cert/client"
if [ ! -e "$conf_dir/Chrystoki.conf" ] && [ -e "$luna/Chrystoki.conf" ]; then
  cp "$luna/Chrystoki.conf" "$conf_dir/Chrystoki.conf"
fi
export ChrystokiConfigurationPath=$conf_dir
"$vtl" addServer -n "$HSM_ADDRESS" -c "$configs/server.pem"
"$vtl" createcert -n "$CLIENT_ADDRESS"
cp "$configs/cert.pem" "$luna/cert/client/$CLIENT_ADDRESS.pem"
cp "$configs/key.pem" "$luna/cert/client/${CLIENT_ADDRESS}Key.pem"
"$vtl" verify
echo "10-luna-register: HSM $HSM_ADDRESS registered for client $CLIENT_ADDRESS" >&2
