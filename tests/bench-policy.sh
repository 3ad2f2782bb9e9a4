#!/usr/bin/env bash
# The policy's cost (issue 26): the same server and shim over a Unix socket with no policy,
# with a policy of 100 identities and 1,000 object patterns (the benchmark's own identity,
# by its uid, is the last of them), and with that policy and `--audit all`; fabric and
# fabric-endorse at 1 and 8 threads, the three alternating, three rounds. Prints each run,
# then the means against no policy.
#   usage: tests/bench-policy.sh [SECONDS_PER_RUN]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-3}
cargo build --release --workspace --bins --lib -q
work=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$work/tokens" > "$work/softhsm2.conf"
export SOFTHSM2_CONF="$work/softhsm2.conf"
softhsm2-util --init-token --free --label bench --pin 1234 --so-pin 5678 >/dev/null
python3 - "$work/policy.toml" "$(id -u)" <<'PY'
import sys
path, uid = sys.argv[1], int(sys.argv[2])
out = []
for i in range(99):
    patterns = ", ".join(f'"org{i}-key{j}*"' for j in range(10))
    out.append(f'[[identity]]\nname = "node{i}"\nuid = {100000 + i}\nobject_labels = [{patterns}]\n')
patterns = ", ".join(f'"bench-{j}*"' for j in range(10))
out.append(f'[[identity]]\nname = "bench"\nuid = {uid}\nrole = "enroller"\nobject_labels = [{patterns}]\n')
open(path, "w").write("\n".join(out))
PY
start() {
  rm -f "$work/p.sock"
  target/release/pkcs11-proxy-server --module /usr/lib/softhsm/libsofthsm2.so \
    --listen "unix://$work/p.sock" "$@" 2> "$work/server.log" &
  pid=$!
  for _ in $(seq 100); do grep -q "listening on" "$work/server.log" && break; sleep 0.1; done
}
results="$work/results.txt"
for round in 1 2 3; do
  for mode in none policy audit; do
    case $mode in
      none) start ;;
      policy) start --policy "$work/policy.toml" ;;
      audit) start --policy "$work/policy.toml" --audit-log "$work/audit.jsonl" --audit all ;;
    esac
    for op in fabric fabric-endorse; do
      for t in 1 8; do
        line=$(PKCS11_PROXY_SOCKET="unix://$work/p.sock" target/release/p11bench \
          --module target/release/libpkcs11_shim.so --pin 1234 --token-label bench \
          --op "$op" --threads "$t" --seconds "$secs" --json | tail -1)
        echo "$round $mode $op $t $line" | tee -a "$results"
      done
    done
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  done
done
python3 - "$results" <<'PY'
import json, sys, collections
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    _, mode, op, t, js = line.split(" ", 4)
    runs[(op, int(t), mode)].append(json.loads(js))
print()
print("| op | threads | no policy ops/s | policy ops/s | policy + --audit all ops/s |")
print("|---|---|---|---|---|")
for op in ("fabric", "fabric-endorse"):
    for t in (1, 8):
        mean = lambda m: sum(r["ops_per_sec"] for r in runs[(op, t, m)]) / len(runs[(op, t, m)])
        base = mean("none")
        cell = lambda m: f'{mean(m):.0f} ({(mean(m) / base - 1) * 100:+.1f} %)'
        print(f"| {op} | {t} | {base:.0f} | {cell('policy')} | {cell('audit')} |")
PY
