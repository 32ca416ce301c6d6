#!/usr/bin/env bash
# gpu-test.sh — what runs on the GPU machine: rebuild the kernels' PTX with the machine's
# nvcc, run every cuda-tagged test binary from .gpu/ (built here by scripts/build-cuda.sh)
# against that PTX, run the Go and PyTorch benchmarks in the same session, and print the
# table, then the end-to-end daemon benchmark (scripts/gpu-e2e.sh). Results go to $OUT (or
# /tmp/flashmem-gpu): log.txt, ptx.tar, torch.json, recall_pm.json, scorer.json, scorebatch.json, e2e/,
# table.txt.
#
# Usage (on the GPU machine, repo root): scripts/gpu-test.sh [quick]
#   quick: tests only, no benchmarks.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
out=${OUT:-/tmp/flashmem-gpu}
mkdir -p "$out"
log=$out/log.txt
: >"$log"
say() { echo "$*" | tee -a "$log"; }
nvidia-smi --query-gpu=index,name,driver_version,memory.total,memory.used --format=csv 2>&1 | tee -a "$log"
date -u | tee -a "$log"

ptx=/tmp/flashmem-ptx
if command -v nvcc >/dev/null || [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export PATH=$PATH:/usr/local/cuda/bin
  scripts/build-ptx.sh "$ptx" 2>&1 | tee -a "$log" && export FLASHMEM_PTX_DIR=$ptx
  tar -C "$ptx" -cf "$out/ptx.tar" . 2>>"$log"
else
  say "no nvcc: testing the embedded PTX"
fi

status=0
run() { # run <pkgdir> <binary> [args...]: test binaries run in their package directory
  local dir=$1 bin=$2
  shift 2
  say "== $bin $*"
  (cd "$dir" && "$repo/.gpu/$bin" -test.count=1 -test.timeout=${TEST_TIMEOUT:-150s} "$@") >>"$log" 2>&1
  local rc=$?
  [[ $rc -eq 0 ]] || status=1
  say "== $bin exit $rc"
}
export FLASHMEM_TORCH_TEST=1 FLASHMEM_EXPECT_GPU=1
for pair in internal/cuda:internal_cuda.test internal/gpuinfo:internal_gpuinfo.test attn/gpu:attn_gpu.test indexer/gpuscore:indexer_gpuscore.test; do
  dir=${pair%%:*} bin=${pair##*:}
  [[ -x .gpu/$bin ]] && run "$dir" "$bin" -test.v
done
# tiers: only the GPU backend's tests (the rest of the package runs in CI). The suite's
# ReadersRaceWriter starves the writer on the GPU backend (tiers.Region admits new readers
# while a writer waits; GPU reads take tens of microseconds), so it is skipped here.
[[ -x .gpu/tiers.test ]] && run tiers tiers.test -test.v -test.run 'CUDA' -test.skip 'CUDARegionSuite/.*/ReadersRaceWriter'
# daemon: sessions with reserves on every GPU, page bytes checked on the GPU side (and, with
# FLASHMEM_TORCH_TEST, through the torch example in a second process).
[[ -x .gpu/daemon.test ]] && run daemon daemon.test -test.v -test.run 'GPU'
grep -E "^(--- FAIL|FAIL|ok|PASS)|^=== RUN|^    --- FAIL" "$log" | grep -c "^--- FAIL\|^    --- FAIL" | sed 's/^/failed tests: /' | tee -a "$log"
grep -E "^\s*(--- FAIL|--- SKIP)|‖Δ‖|relative error|device [0-9]+:" "$log" | head -60

if [[ ${1:-} != quick ]]; then
  export FLASHMEM_BENCH=1
  python3 scripts/bench_torch.py "$out/torch.json" >>"$log" 2>&1 || { say "torch bench failed"; status=1; }
  # Recall: the page-major reserve against the per-layer one and a contiguous copy (same
  # run); RECALL_ALL=1 also runs TestRecallBench (every method compared in earlier sessions).
  FLASHMEM_BENCH_OUT=$out/recall_pm.json run internal/cuda internal_cuda.test -test.run '^TestRecallPageMajorBench$' -test.v
  [[ ${RECALL_ALL:-0} == 1 ]] &&
    FLASHMEM_BENCH_OUT=$out/recall.json run internal/cuda internal_cuda.test -test.run '^TestRecallBench$' -test.v
  # SWEEP=1: the recall sweeps behind Recall's choices (engine streams and attributes,
  # engines + kernel, mirror alignment, mirror window; docs/benchmarks.md, fourth session).
  [[ ${SWEEP:-0} == 1 ]] &&
    FLASHMEM_SWEEP=1 run internal/cuda internal_cuda.test -test.run '^TestRecall(Sweep|Window)$' -test.v
  FLASHMEM_BENCH_OUT=$out/scorer.json run attn/gpu attn_gpu.test -test.run '^TestScorerBench$' -test.v
  # Whole ScoreBatch cycles, published model: one GPU cycle per batch (indexer/gpuscore),
  # the CPU model at 131,072 chunks, and torch.json's published forward of the same run.
  [[ -x .gpu/indexer_gpuscore.test ]] &&
    FLASHMEM_BENCH_OUT=$out/scorebatch.json run indexer/gpuscore indexer_gpuscore.test -test.run '^TestScoreBatchBench$' -test.v
  rj=$out/recall.json
  [[ -f $rj ]] || rj=- # TestRecallBench runs only with RECALL_ALL=1
  python3 scripts/gpu_table.py "$out/torch.json" "$rj" "$out/scorer.json" "$out/scorebatch.json" | tee "$out/table.txt"
  sed -n '/^Recall into a page-major reserve/,/^---/p' "$log" | grep -v '^---' | tee -a "$out/table.txt"
  [[ ${SWEEP:-0} == 1 ]] && sed -n '/^Recall \(sweep\|by mirror window\)/,/^---/p' "$log" | grep -v '^---' | tee -a "$out/table.txt"
  # End to end: 16 × 512K-token sessions through the CUDA daemon (scripts/gpu-e2e.sh).
  if [[ -x .gpu/flashmemd && -x .gpu/flashmemctl ]]; then
    OUT=$out/e2e scripts/gpu-e2e.sh >>"$log" 2>&1 || { say "gpu-e2e failed"; status=1; }
    [[ -f $out/e2e/table.txt ]] && tee -a "$out/table.txt" <"$out/e2e/table.txt"
  fi
fi
# The reference decoder (issue 12): PyTorch over a CUDA reserve, 128K tokens, 1,024 steps.
if [[ -x .gpu/flashmemd ]] && python3 -c 'import torch' 2>/dev/null; then
  OUT=$out/decode clients/gpu-decode.sh >>"$log" 2>&1 || { say "gpu-decode failed"; status=1; }
  grep -A8 '^reference decoder' "$log" | tail -9
fi
say "gpu-test status $status"
exit $status
