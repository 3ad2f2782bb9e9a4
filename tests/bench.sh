#!/usr/bin/env bash
# Benchmark: the vendor library directly vs through the proxy over TCP and a Unix socket, for
# 1, 8 and 64 threads and every p11bench operation, on a throwaway SoftHSM2 token. Prints a
# Markdown table (ops/s, p50/p99 latency, proxy/direct ratio, round trips per operation as
# the server counted its requests, CPU of the client process per operation) and the raw
# loopback round trip of this machine for reference.
#   usage: tests/bench.sh [SECONDS_PER_RUN] [OPS...]     (default 3 s, all ops)
#   or:    tests/bench.sh --cluster [DELAY_US] [SECONDS_PER_RUN] [OPS...]
#          the same at a cluster's latency, over TCP and TLS (tests/bench-cluster.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = --cluster ]; then
  shift
  exec bash tests/bench-cluster.sh "$@"
fi
secs=${1:-3}
shift || true
ops=("$@")
[ ${#ops[@]} -gt 0 ] || ops=(random digest-sha256 find-object sign-ecdsa-p256 fabric fabric-endorse get-attributes)
threads=(1 8 64)

cargo build --release --workspace --bins --lib -q
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$work/tokens" > "$work/softhsm2.conf"
export SOFTHSM2_CONF="$work/softhsm2.conf"
softhsm2-util --init-token --free --label bench --pin 1234 --so-pin 5678 >/dev/null

target/release/pkcs11-proxy-server --module /usr/lib/softhsm/libsofthsm2.so \
  --listen tcp://127.0.0.1:0 --listen "unix://$work/proxy.sock" --metrics-listen 127.0.0.1:0 \
  2> "$work/server.log" &
server=$!
for _ in $(seq 100); do grep -q "listening on" "$work/server.log" && break; sleep 0.1; done
tcp=$(grep -o 'tcp://[^ ]*' "$work/server.log" | head -1)
metrics=$(grep -o 'http://[^ ]*/metrics' "$work/server.log" | head -1)

requests() { # the server's requests so far, every function
  python3 -c 'import sys, urllib.request
text = urllib.request.urlopen(sys.argv[1]).read().decode()
print(int(sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith("pkcs11_proxy_calls_total{"))))' "$metrics"
}
unix="unix://$work/proxy.sock"

run() { # mode op threads
  local module=/usr/lib/softhsm/libsofthsm2.so socket=""
  case $1 in
    tcp) module=target/release/libpkcs11_shim.so socket=$tcp ;;
    unix) module=target/release/libpkcs11_shim.so socket=$unix ;;
  esac
  PKCS11_PROXY_SOCKET=$socket target/release/p11bench --module "$module" --pin 1234 \
    --token-label bench --op "$2" --threads "$3" --seconds "$secs" --json | tail -1
}

results="$work/results.jsonl"
for op in "${ops[@]}"; do
  for t in "${threads[@]}"; do
    for mode in direct tcp unix; do
      before=$(requests)
      line=$(run $mode "$op" "$t")
      after=$(requests)
      printf '{"mode":"%s","requests":%s,%s\n' "$mode" "$((after - before))" "${line#\{}" >> "$results"
    done
  done
done

python3 - "$results" <<'PY'
import json, sys, os
rows = [json.loads(l) for l in open(sys.argv[1])]

r = json.loads(os.popen("target/release/rtt").read())
print(f"Raw loopback round trip (64-byte ping-pong, `target/release/rtt`): TCP {r['tcp_us']} us, Unix {r['unix_us']} us")
print()
print("| op | threads | direct ops/s | direct p50/p99 us | TCP ops/s | TCP p50/p99 us | Unix ops/s | Unix p50/p99 us | TCP/direct | Unix/direct | round trips/op | client CPU us/op direct/TCP |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
key = lambda r: (r["op"], r["threads"])
by = {}
for r in rows: by.setdefault(key(r), {})[r["mode"]] = r
for (op, t), m in by.items():
    d, tc, ux = m["direct"], m["tcp"], m["unix"]
    cell = lambda r: f'{r["ops_per_sec"]:.0f}'
    lat = lambda r: f'{r["p50_us"]:.0f}/{r["p99_us"]:.0f}'
    errs = sum(r["errors"] for r in (d, tc, ux))
    note = f" ({errs} errors)" if errs else ""
    # Requests the server served during the run (set-up included), per timed operation.
    rt = tc["requests"] / max(tc["ops"], 1)
    cpu = f'{d["cpu_us_per_op"]:.0f}/{tc["cpu_us_per_op"]:.0f}'
    print(f'| {op} | {t} | {cell(d)} | {lat(d)} | {cell(tc)} | {lat(tc)} | {cell(ux)} | {lat(ux)} | {tc["ops_per_sec"]/d["ops_per_sec"]:.2f} | {ux["ops_per_sec"]/d["ops_per_sec"]:.2f}{note} | {rt:.2f} | {cpu} |')
PY
