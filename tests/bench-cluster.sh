#!/usr/bin/env bash
# Benchmark at a cluster's latency: the vendor library directly, and through the proxy over
# TCP and over TLS, each client reaching the server through a link that holds every segment
# DELAY_US microseconds each way (`delay-link`: this kernel has no netem; the link's own
# round trip, its cost beyond 2 x DELAY_US included, is measured on the same link by `rtt`).
# Prints a Markdown table per operation and thread count: ops/s and p50/p99 latency, and the
# latency the proxy adds per operation counted in round trips of the link.
#   usage: tests/bench-cluster.sh [DELAY_US] [SECONDS_PER_RUN] [OPS...]
#          (default 250 us each way, a 0.5 ms round trip; 3 s; fabric-endorse fabric random)
#   also:  tests/bench.sh --cluster [DELAY_US] [SECONDS_PER_RUN] [OPS...]
set -euo pipefail
cd "$(dirname "$0")/.."
delay=${1:-250}
secs=${2:-3}
shift 2 || shift $# || true
ops=("$@")
[ ${#ops[@]} -gt 0 ] || ops=(fabric-endorse fabric random)
threads=(1 8)

cargo build --release --workspace --bins --lib -q
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$work/tokens" > "$work/softhsm2.conf"
export SOFTHSM2_CONF="$work/softhsm2.conf"
softhsm2-util --init-token --free --label bench --pin 1234 --so-pin 5678 >/dev/null

# A throwaway PKI: one CA for the server's certificate (for 127.0.0.1) and the client's.
(
  cd "$work"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj /CN=bench-ca -keyout ca-key.pem -out ca.pem 2>/dev/null
  for who in server client; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$who" \
      -keyout "$who-key.pem" -out "$who.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\n' > "$who.ext"
    openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 1 \
      -extfile "$who.ext" -out "$who.pem" 2>/dev/null
  done
)

target/release/pkcs11-proxy-server --module /usr/lib/softhsm/libsofthsm2.so \
  --listen tcp://127.0.0.1:0 --listen tls://127.0.0.1:0 \
  --tls-cert "$work/server.pem" --tls-key "$work/server-key.pem" --tls-client-ca "$work/ca.pem" \
  --metrics-listen 127.0.0.1:0 2> "$work/server.log" &
pids+=($!)
for _ in $(seq 100); do grep -q "listening on" "$work/server.log" && break; sleep 0.1; done
tcp=$(grep -o 'tcp://[^ ]*' "$work/server.log" | head -1)
tls=$(grep -o 'tls://[^ ]*' "$work/server.log" | head -1)
metrics=$(grep -o 'http://[^ ]*/metrics' "$work/server.log" | head -1)

start_link() { # NAME TARGET: a delayed link to TARGET; its address in $link_address
  local out="$work/link.$1"
  target/release/delay-link --to "$2" --delay-us "$delay" > "$out" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do grep -q "listening on" "$out" && break; sleep 0.05; done
  link_address=$(grep -o 'tcp://[^ ]*' "$out")
}
start_link tcp "$tcp"
tcp_link=$link_address
start_link tls "tcp://${tls#tls://}"
tls_link="tls://${link_address#tcp://}"

requests() { # the server's requests so far, every function
  python3 -c 'import sys, urllib.request
text = urllib.request.urlopen(sys.argv[1]).read().decode()
print(int(sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith("pkcs11_proxy_calls_total{"))))' "$metrics"
}

run() { # mode op threads
  local module=target/release/libpkcs11_shim.so socket=""
  case $1 in
    direct) module=/usr/lib/softhsm/libsofthsm2.so ;;
    tcp) socket=$tcp_link ;;
    tls) socket=$tls_link ;;
  esac
  PKCS11_PROXY_SOCKET=$socket PKCS11_PROXY_TLS_CA="$work/ca.pem" \
    PKCS11_PROXY_TLS_CERT="$work/client.pem" PKCS11_PROXY_TLS_KEY="$work/client-key.pem" \
    target/release/p11bench --module "$module" --pin 1234 \
    --token-label bench --op "$2" --threads "$3" --seconds "$secs" --json | tail -1
}

results="$work/results.jsonl"
for op in "${ops[@]}"; do
  for t in "${threads[@]}"; do
    for mode in direct tcp tls; do
      before=$(requests)
      line=$(run $mode "$op" "$t")
      after=$(requests)
      printf '{"mode":"%s","requests":%s,%s\n' "$mode" "$((after - before))" "${line#\{}" >> "$results"
    done
  done
done

python3 - "$results" "$delay" <<'PY'
import json, sys, os
rows = [json.loads(l) for l in open(sys.argv[1])]
delay = int(sys.argv[2])
r = json.loads(os.popen(f"target/release/rtt --delay-us {delay}").read())
link = r["delayed_us"]
print(f"Link: {delay} us each way; its measured round trip (64-byte ping-pong through `delay-link`, "
      f"`target/release/rtt --delay-us {delay}`) {link} us; raw loopback TCP {r['tcp_us']} us.")
print()
print("| op | threads | direct ops/s | direct p50/p99 us | TCP ops/s | TCP p50/p99 us | TLS ops/s | TLS p50/p99 us | added p50, in link round trips TCP/TLS | requests/op |")
print("|---|---|---|---|---|---|---|---|---|---|")
by = {}
for x in rows: by.setdefault((x["op"], x["threads"]), {})[x["mode"]] = x
for (op, t), m in by.items():
    d, tc, tl = m["direct"], m["tcp"], m["tls"]
    cell = lambda x: f'{x["ops_per_sec"]:.0f}'
    lat = lambda x: f'{x["p50_us"]:.0f}/{x["p99_us"]:.0f}'
    added = lambda x: (x["p50_us"] - d["p50_us"]) / link
    errs = sum(x["errors"] for x in (d, tc, tl))
    note = f" ({errs} errors)" if errs else ""
    rt = tc["requests"] / max(tc["ops"], 1)
    print(f'| {op} | {t} | {cell(d)} | {lat(d)} | {cell(tc)} | {lat(tc)} | {cell(tl)} | {lat(tl)} | {added(tc):.2f} / {added(tl):.2f}{note} | {rt:.2f} |')
PY
