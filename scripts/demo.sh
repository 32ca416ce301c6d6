#!/usr/bin/env bash
# Quick start: build flashmemd and flashmemctl, start the daemon on its
# embedded defaults (no configuration, no GPU) with a temporary socket, data
# directory and a free metrics port, show its status, run the
# synthetic-decoder demo through the socket, stop the daemon and remove
# everything it made. Arguments go to `flashmemctl demo` (e.g. --tokens 32768).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/flashmem-demo.XXXXXX")
pid=
cleanup() {
  if [ -n "$pid" ]; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# go-nvml's cgo code uses NVML calls that newer headers mark deprecated; the
# warnings say nothing about this build, so they are switched off.
export CGO_CFLAGS="${CGO_CFLAGS:--O2 -g} -Wno-deprecated-declarations"
echo "== building flashmemd and flashmemctl into bin/ (a cold build takes a few minutes)"
n=0
tty=0; [ -t 1 ] && tty=1
set +e
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || true)
go build -v -ldflags "-X github.com/flashmemory/flashmemory/internal/buildinfo.Commit=$commit" \
  -o bin/ ./cmd/flashmemd ./cmd/flashmemctl 2>&1 | tee "$tmp/build.log" | while IFS= read -r line; do
  case "$line" in
    *" "*|*:*) continue ;; # not a package path: an error, shown below if the build fails
  esac
  n=$((n + 1))
  if [ $tty = 1 ]; then
    printf '\r\033[K   %4d packages compiled: %s' "$n" "$line"
  elif [ $((n % 50)) = 0 ]; then
    echo "   $n packages compiled"
  fi
done
rc=${PIPESTATUS[0]}
set -e
[ $tty = 1 ] && printf '\r\033[K'
if [ "$rc" != 0 ]; then
  echo "build failed:"
  grep -v '^[^ :]*$' "$tmp/build.log" || cat "$tmp/build.log"
  exit "$rc"
fi
echo "   built bin/flashmemd and bin/flashmemctl: $(bin/flashmemd --version)"

# A free loopback port for /metrics: the first of 19464.. that nothing answers on.
port=19464
while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done

sock="$tmp/flashmemd.sock"
bin/flashmemd --socket "$sock" --data-dir "$tmp/data" --metrics "127.0.0.1:$port" >"$tmp/flashmemd.log" 2>&1 &
pid=$!
if ! bin/flashmemctl --socket "$sock" wait --for 60s >/dev/null; then
  echo "flashmemd did not start:"
  cat "$tmp/flashmemd.log"
  exit 1
fi
echo "== flashmemd is serving on $sock (embedded defaults; metrics on http://127.0.0.1:$port/metrics)"
bin/flashmemctl --socket "$sock" status
echo
echo "== flashmemctl demo: a synthetic decoder session through the socket"
bin/flashmemctl --socket "$sock" demo "$@"
echo
echo "== daemon after the demo"
bin/flashmemctl --socket "$sock" status
kill -TERM "$pid"
wait "$pid" || true
pid=
echo
echo "== flashmemd log"
cat "$tmp/flashmemd.log"
echo
echo "(the socket, data directory and log under $tmp are removed now)"
