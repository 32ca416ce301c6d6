#!/usr/bin/env bash
# Durability drivers for issue #9, against the real flashmemd binary:
#   kill   - kill -9 loop (KILL_CYCLES, default 200): sessions refusing appends,
#            acknowledged pages lost or wrong, restart p50/max, data dir vs live data
#   damage - flip, truncate and delete every kind of file in a data dir
#   disk   - full disk: 64 MiB tmpfs, 512 MiB tmpfs with ballast (needs root to mount)
#   campaign - an independent fault driver (cmd/flashmemd/campaign_test.go): kill -9
#            at random moments of APPEND/CYCLE/PERSIST/DELETE/EVICT and of start-up,
#            indexer state checked by CYCLE page tables, fsck every 4 kills, then
#            flips/truncations of every record kind and every other file
#            (CAMPAIGN_CYCLES, default 40; CAMPAIGN_SEED to repeat a run)
#   all    - kill, damage and disk (default)
# Each step is bounded in time (go test -timeout). Prints the go test summary lines.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
cycles=${KILL_CYCLES:-200}
run() { go test -count=1 -v -timeout "$1" -run "$2" ./cmd/flashmemd/ 2>&1 | grep -E '^(=== RUN|--- |    --- |ok|FAIL|KILL9-LOOP)|durability_test.go' ; }
case $what in
kill|all)   FLASHMEM_KILL_CYCLES=$cycles run 40m 'TestKill9ResumeAppend|TestKill9Loop' ;;&
damage|all) FLASHMEM_DURABILITY_FULL=1 run 15m 'TestDamagedDataDir' ;;&
disk|all)   run 10m 'TestFullDisk' ;;
campaign)   FLASHMEM_CAMPAIGN_CYCLES=${CAMPAIGN_CYCLES:-40} FLASHMEM_CAMPAIGN_SEED=${CAMPAIGN_SEED:-} FLASHMEM_CAMPAIGN_DAMAGE=full \
              go test -count=1 -v -timeout 25m -run 'TestFaultCampaign' ./cmd/flashmemd/ 2>&1 | grep -E '^(--- |    --- FAIL|ok|FAIL|CAMPAIGN)|campaign_test.go' ;;
kill|damage|disk) ;;
*) echo "usage: $0 [kill|damage|disk|campaign|all]" >&2; exit 2 ;;
esac
