#!/usr/bin/env bash
# gpu-decode.sh — the reference decoder on the GPU machine: the cuda-built flashmemd
# (.gpu/flashmemd, from scripts/build-cuda.sh) serving a CUDA reserve, and
# clients/python/examples/decode.py importing it into PyTorch and decoding over it:
# a 128K-token DeepSeek-V4-shaped session (21 layer rows of 37,440 B per page), >= 1,000
# decode steps, every step's gather checked bit for bit against the decoder's own copy, and
# the decode step timed against attention over the full KV. The result is one JSON line
# ($OUT/decode.json) and a table; the daemon's log goes to $OUT/flashmemd.log.
#
# Usage (GPU machine, repo root): clients/gpu-decode.sh
# Env: TOKENS (131072) STEPS (1024) DEVICE (0) KMAX (64) HEADS (64) LAYERS (21), DECODE_ARGS
# (more decode.py flags, e.g. --page-major)
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
out=${OUT:-/tmp/flashmem-decode}
mkdir -p "$out"
[[ -x .gpu/flashmemd ]] || { echo "gpu-decode: .gpu/flashmemd missing: run scripts/build-cuda.sh on the build machine" >&2; exit 2; }
work=$(mktemp -d)
# An LSA model with random weights of DeepSeek-V4's query size (hidden 4096: 8 KiB queries).
cat >"$work/flashmemd.toml" <<'TOML'
log_level = "info"
[indexer]
default_model = "v4"
[[indexer.random]]
name = "v4"
seed = 7
hidden = 4096
rank = 1024
heads = 64
head_dim = 128
target_layers = 3
TOML
.gpu/flashmemd --config "$work/flashmemd.toml" --socket "$work/fm.sock" --data-dir "$work/data" \
  --metrics off >"$out/flashmemd.log" 2>&1 &
pid=$!
for _ in $(seq 600); do grep -q 'msg=serving' "$out/flashmemd.log" 2>/dev/null && break; sleep 0.1; done
nvidia-smi --query-gpu=index,name,memory.used --format=csv,noheader
PYTHONUNBUFFERED=1 python3 clients/python/examples/decode.py --socket "$work/fm.sock" --device "${DEVICE:-0}" \
  --tokens "${TOKENS:-131072}" --steps "${STEPS:-1024}" --kmax "${KMAX:-64}" --heads "${HEADS:-64}" \
  --layers "${LAYERS:-21}" --require-cuda --json "$out/decode.json" ${DECODE_ARGS:-}
rc=$?
kill "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
grep -E 'level=(WARN|ERROR)' "$out/flashmemd.log" | tail -5
if [[ -f $out/decode.json ]]; then
  python3 - "$out/decode.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print("reference decoder, %s, torch %s, reserve kind %d (1 = CUDA VMM)%s" % (r["device"], r["torch"], r["reserve_kind"],
      ", page-major" if r.get("page_major") else ""))
print("session: %d prompt tokens (%d chunks), %d decode steps in %d cycles, %d layers x %d heads"
      % (r["prompt_tokens"], r["prompt_chunks"], r["decode_steps"], r["cycles"], r["layers"], r["heads"]))
print("gather + attention checked bit-exact against the own copy: %d of %d steps" % (r["checks_bit_exact"], r["decode_steps"]))
print("entries attended per step: %.0f of %d (kmax %d pages)" % (r["entries_attended_mean"], r["entries_full_final"], r["kmax_pages"]))
print("decode step (gather from reserve + attention + tail write): p50 %.3f ms, mean %.3f ms"
      % (r["decode_step_ms_p50"], r["decode_step_ms_mean"]))
print("attention over the full KV: p50 %.3f ms, mean %.3f ms -> %.1fx" % (r["full_attention_ms_p50"], r["full_attention_ms_mean"], r["speedup_p50"]))
print("CYCLE round trip p50 %.0f us (recall wait %d us, scoring %d us); prefill %.1f s"
      % (r["cycle_rtt_us_p50"], r["cycle_wait_us_p50"], r["cycle_score_us_p50"], r["prefill_s"]))
PY
fi
rm -rf "$work"
echo "gpu-decode status $rc"
exit $rc
