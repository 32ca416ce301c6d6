#!/usr/bin/env bash
# bench.sh — CYCLE and PING round trips from the Go client (clients/gobench), the C client
# (clients/c/bench_cycle) and the Python package (clients/python/examples/bench_cycle.py),
# against one flashmemd, in one run, interleaved in rounds so drift hits all three alike.
# Prints one JSON line per client and round, then a table of medians and the ratios to Go.
#
# Usage: clients/bench.sh [n=2000] [chunks=8192] [sessions=1] [rounds=3]
# Env: HIDDEN (64) — the daemon's random LSA model's hidden size; queries are 2·HIDDEN bytes
# per target layer (4096: DeepSeek-V4's 8 KiB queries, 24 KiB per CYCLE entry).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export PATH="/usr/local/go/bin:$PATH"
n=${1:-2000} chunks=${2:-8192} sessions=${3:-1} rounds=${4:-3} hidden=${HIDDEN:-64}
py=${PYTHON:-/usr/bin/python3}
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$work"' EXIT
go build -o "$work/flashmemd" ./cmd/flashmemd
go build -o "$work/gobench" ./clients/gobench
make -s -C clients/c bench all
cat >"$work/flashmemd.toml" <<TOML
log_level = "warn"
[gpu]
mode = "off"
[host]
budget_bytes = 1073741824
[indexer]
default_model = "small"
[[indexer.random]]
name = "small"
seed = 7
hidden = $hidden
rank = 32
heads = 4
head_dim = 128
target_layers = 3
TOML
"$work/flashmemd" --config "$work/flashmemd.toml" --socket "$work/fm.sock" --data-dir "$work/data" \
  --metrics off >"$work/log" 2>&1 &
pid=$!
for _ in $(seq 200); do [[ -S $work/fm.sock ]] && break; sleep 0.05; done
out=$work/results.jsonl
for r in $(seq "$rounds"); do
  "$work/gobench" -socket "$work/fm.sock" -n "$n" -chunks "$chunks" -sessions "$sessions" -hidden "$hidden" | tee -a "$out"
  clients/c/build/bench_cycle "$work/fm.sock" "$n" "$chunks" "$sessions" "$hidden" | tee -a "$out"
  "$py" clients/python/examples/bench_cycle.py "$work/fm.sock" "$n" "$chunks" "$sessions" "$hidden" | tee -a "$out"
done
"$py" - "$out" <<'PY'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for r in rows:
    by.setdefault(r["client"], []).append(r)
med = lambda c, k, f: statistics.median(x[k][f] for x in by[c])
print("| client | PING p50 µs | CYCLE p50 µs | CYCLE p99 µs | daemon scoring+wait p50 µs | CYCLE less daemon p50 µs | CYCLE p50 / Go | less daemon / Go |")
print("|---|---|---|---|---|---|---|---|")
for c in ("go", "c", "python"):
    print("| %s | %.1f | %.1f | %.1f | %.1f | %.1f | %.2f× | %.2f× |" % (c, med(c, "ping_us", "p50"), med(c, "cycle_us", "p50"),
          med(c, "cycle_us", "p99"), med(c, "server_us", "p50"), med(c, "overhead_us", "p50"),
          med(c, "cycle_us", "p50") / med("go", "cycle_us", "p50"), med(c, "overhead_us", "p50") / med("go", "overhead_us", "p50")))
r = by["go"][0]
print("(%d sessions per CYCLE, %d chunks each, %d pages in each page table, %d round trips × %d rounds; python CRC: %s; hidden %s)"
      % (r["sessions"], r["chunks"], r["pages_per_entry"], r["n"], len(by["go"]), by["python"][0]["crc"], r.get("hidden")))
PY
