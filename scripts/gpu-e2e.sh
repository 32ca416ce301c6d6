#!/usr/bin/env bash
# gpu-e2e.sh — the end-to-end benchmark of issue 4 on the GPU machine: the cuda-built
# flashmemd (.gpu/flashmemd) with reserves in GPU memory and a pinned host mirror, driven
# over its socket by `flashmemctl sim` (.gpu/flashmemctl): 16 concurrent 512K-token
# sessions of DeepSeek-V4 pages (21 layer rows of 37,440 B), each cycling every 64
# simulated decode steps. Prints the simulator's table (decoder-visible wait per cycle
# p50/p99, pages recalled per cycle, reserve memory against the full KV size) and
# nvidia-smi's view of the GPU; the table, the daemon's log and GPU memory samples go to
# $OUT (or /tmp/flashmem-e2e).
#
# MODEL=lsa (default) opens the sessions with the published-dimension Memory Indexer (random
# weights, hidden 4096, rank 2048, 128 heads, 3 target layers) scored for real through the
# daemon (on the GPU: one whole indexer cycle per CYCLE batch), random index keys and one
# random hidden state per session; the table adds GPU time per scoring batch. MODEL=trace
# replays synthetic selections known in advance (tables checked against them).
#
# Usage (GPU machine, repo root): scripts/gpu-e2e.sh [extra flashmemctl sim flags]
# Defaults are overridable by env: MODEL SESSIONS TOKENS CYCLES CYCLE_TIME RESERVE_SLOTS
# (trace: 256; lsa: the simulator's default, room for two selections) HOST_SHARE (trace: 1,
# lsa: 1.25).
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
out=${OUT:-/tmp/flashmem-e2e}
mkdir -p "$out"
for b in flashmemd flashmemctl; do
  [[ -x .gpu/$b ]] || { echo "gpu-e2e: .gpu/$b missing: run scripts/build-cuda.sh on the build machine" >&2; exit 2; }
done
nvidia-smi --query-gpu=index,name,memory.total,memory.used --format=csv | tee "$out/gpu-before.csv"
date -u
model=${MODEL:-lsa}
# The host mirror spills to SSD before it reaches its budget; at a share of exactly 1 about
# a tenth of the pages sit on SSD, and the LSA model's selection moves ~85 pages per cycle
# per session (random weights and keys: scores shift with the position), more than staging
# can bring back in time. LSA runs with room to spare so that every page stays in host memory.
share=${HOST_SHARE:-}
[[ -z $share ]] && { [[ $model == lsa ]] && share=1.25 || share=1; }
slots=${RESERVE_SLOTS:-}
[[ -z $slots && $model == trace ]] && slots=256
args=(sim --flashmemd .gpu/flashmemd --modes lookahead --dir "$out/run" --model "$model"
  --sessions "${SESSIONS:-16}" --tokens "${TOKENS:-524288}" --layers 21 --cycles "${CYCLES:-32}"
  --cycle-time "${CYCLE_TIME:-100ms}" --host-share "$share" ${slots:+--reserve-slots "$slots"} "$@")
rm -rf "$out/run"
# Sample the GPU's memory while the sessions run (the reserve is allocated at OPEN).
( while sleep 2; do nvidia-smi --query-gpu=index,memory.used --format=csv,noheader; done ) >"$out/gpu-during.csv" 2>&1 &
mon=$!
.gpu/flashmemctl "${args[@]}" 2>"$out/sim.log" | tee "$out/table.txt"
rc=${PIPESTATUS[0]}
kill $mon 2>/dev/null
tail -5 "$out/sim.log"
echo "GPU memory used during the run (MiB, max per GPU):"
awk -F', ' '{gsub(/ MiB/,"",$2); if ($2+0>m[$1]+0) m[$1]=$2+0} END {for (g in m) print "  GPU " g ": " m[g] " MiB"}' "$out/gpu-during.csv"
echo "gpu-e2e status $rc"
exit $rc
