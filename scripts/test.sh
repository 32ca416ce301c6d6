#!/usr/bin/env bash
# The project's test command (README "Quick start"; .ci/run calls it).
# Runs on a machine with Go 1.26 and no GPU; installs what else it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
echo "== go vet"
go vet ./...
echo "== default build has no CUDA dependency"
if go list -deps ./... | grep -q '^gorgonia.org/cu'; then
  echo "default build imports gorgonia.org/cu"; exit 1
fi
echo "== systemd units"
scripts/verify-systemd.sh
echo "== go test -race"
log=$(mktemp)
set +e
go test -race -count=1 -timeout 12m ./... 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
ok=$(grep -cE '^ok ' "$log" || true)
fail=$(grep -cE '^FAIL[[:space:]]+github' "$log" || true)
rm -f "$log"
echo "packages: $ok passed, $fail failed"
exit "$status"
