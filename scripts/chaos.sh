#!/usr/bin/env bash
# Cluster chaos run (issue #10): three real flashmemd processes on loopback,
# ROUNDS rounds (default 50) of SIGKILL of a random node (the Raft leader
# half the time), landing 0-300 ms into the work of two clients at once, one
# on each survivor: resume (an ownership move), append and persist at
# durability cluster, or (one turn in four) delete the session and create a
# replacement; and restarts (every fifth victim stays down long enough to
# need a snapshot install). Checks that every acknowledged PERSIST stays
# resumable byte-identical, that acknowledged deletes stay deleted on every
# node, that the catalog history (persist, resume, delete) is linearizable
# (porcupine), and prints leader failover p50/p99 and how many restarts
# caught up by snapshot.
# Bounded: at most 15 s per round. CI runs the same test with 5 rounds
# (go test ./cmd/flashmemd -run TestClusterChaos).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
rounds="${1:-${ROUNDS:-50}}"
FLASHMEM_CHAOS_ROUNDS="$rounds" go test -count=1 -timeout 20m -run 'TestClusterChaos$' -v ./cmd/flashmemd/ 2>&1 |
  grep -E '^(=== RUN|--- |ok|FAIL|PASS)|chaos_test.go' 
