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
echo "== C client (clients/c: -Wall -Wextra -Werror, then ASan/UBSan)"
make -s -C clients/c test test-asan
echo "== python client (clients/python: /usr/bin/python3 with Debian's python3-pytest)"
py=/usr/bin/python3
if ! $py -m pytest --version >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq python3-pytest >/dev/null
fi
set +e
$py -m pytest -q -p no:cacheprovider clients/python
rc=$?
set -e
# pytest exits 5 when it collected no tests: that is a failure here, not a pass.
[[ $rc -eq 5 ]] && { echo "pytest collected no tests in clients/python"; exit 1; }
[[ $rc -eq 0 ]] || exit "$rc"
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
