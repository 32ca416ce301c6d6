#!/usr/bin/env bash
# Quick start: build flashmemd and flashmemctl, start the daemon on its
# embedded defaults (no configuration, no GPU), show its status, run the
# synthetic-decoder demo through the socket, list sessions, stop the daemon.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
go build -o bin/ ./cmd/flashmemd ./cmd/flashmemctl
log=$(mktemp)
bin/flashmemd >"$log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 100); do
  grep -q 'msg=serving' "$log" && break
  kill -0 $pid 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.1
done
grep -q 'msg=serving' "$log" || { echo "flashmemd did not start:"; cat "$log"; exit 1; }
sock=$(sed -n 's/.*msg=serving socket=\([^ ]*\).*/\1/p' "$log" | head -1)
echo "== flashmemd is serving on $sock (embedded defaults)"
bin/flashmemctl --socket "$sock" status
echo
echo "== flashmemctl demo: a 128K-token session through the socket"
bin/flashmemctl --socket "$sock" demo "$@"
echo
echo "== daemon after the demo"
bin/flashmemctl --socket "$sock" status
kill -TERM $pid; wait $pid || true
echo
echo "== flashmemd log"
cat "$log"
