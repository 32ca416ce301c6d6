#!/usr/bin/env bash
# build-ptx.sh — compile every CUDA kernel of the project to PTX for compute_80 and
# compute_90 (JIT-compiled by the driver at load). Runs where nvcc is: on the GPU machine.
# The PTX is committed beside its .cu source; each .cu names this command in its header.
#
# Usage: scripts/build-ptx.sh [outdir]   (default: beside each source)
#        also prints ptxas's register/spill report for sm_90.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
nvcc=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
out=${1:-}
for cu in "$repo"/internal/cuda/*.cu "$repo"/attn/gpu/*.cu; do
  [[ -f $cu ]] || continue
  base=${cu%.cu}
  dir=${out:-$(dirname "$cu")}
  mkdir -p "$dir"
  for arch in 80 90; do
    ptx="$dir/$(basename "$base")_sm$arch.ptx"
    (cd "$(dirname "$cu")" && "$nvcc" -ptx -arch=compute_$arch -O3 -o "$ptx" "$(basename "$cu")")
  done
  ptxas=$(dirname "$nvcc")/ptxas
  [[ -x $ptxas ]] && "$ptxas" -arch=sm_90 -v "$dir/$(basename "$base")_sm90.ptx" -o /dev/null 2>&1 | grep -E "Used|spill" || true
done
"$nvcc" --version | tail -2
