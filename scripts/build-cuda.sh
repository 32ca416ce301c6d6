#!/usr/bin/env bash
# build-cuda.sh — build the cuda-tagged binaries on a machine without CUDA (headers and the
# libcuda link stub from scripts/cuda-headers.sh) into .gpu/, ready to be carried to the GPU
# machine, which has the driver but no Go toolchain.
#
# Usage: scripts/build-cuda.sh [pkg ...]
#   default packages: every package of ours that has cuda-tagged code or GPU tests.
# Output: .gpu/<name>.test per package (go test -c -tags cuda), .gpu/flashmemd when
# cmd/flashmemd exists, .gpu/flashmemctl (default build), and a copy of ../shared/testdata/indexer_golden.safetensors under
# .gpu/testdata/ (../shared does not travel to the GPU machine).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
root=$("$repo/scripts/cuda-headers.sh")
export CGO_ENABLED=1
export CGO_CFLAGS="-I$root/usr/include ${CGO_CFLAGS:-}"
export CGO_LDFLAGS="-L$root/usr/lib/x86_64-linux-gnu/stubs ${CGO_LDFLAGS:-}"

pkgs=("$@")
if [[ ${#pkgs[@]} -eq 0 ]]; then
  for p in internal/cuda internal/gpuinfo attn/gpu indexer/gpuscore tiers daemon; do
    [[ -d $p ]] && pkgs+=("./$p")
  done
fi
mkdir -p .gpu/testdata
for p in "${pkgs[@]}"; do
  name=$(echo "${p#./}" | tr / _)
  echo "build-cuda: $p -> .gpu/$name.test" >&2
  go test -c -tags cuda -ldflags="-s -w" -o ".gpu/$name.test" "$p"
done
if [[ -d cmd/flashmemd ]]; then
  echo "build-cuda: cmd/flashmemd -> .gpu/flashmemd" >&2
  # The daemon may be mid-edit by its owners; a failed build is reported, not fatal.
  go build -tags cuda -ldflags="-s -w" -o .gpu/flashmemd ./cmd/flashmemd ||
    echo "build-cuda: cmd/flashmemd did not build; .gpu/flashmemd not updated" >&2
fi
# flashmemctl has no CUDA code: the default build, to drive the daemon there (sim, status).
echo "build-cuda: cmd/flashmemctl -> .gpu/flashmemctl" >&2
go build -ldflags="-s -w" -o .gpu/flashmemctl ./cmd/flashmemctl
golden=$repo/../shared/testdata/indexer_golden.safetensors
[[ -f $golden ]] && cp -f "$golden" .gpu/testdata/
ls -l .gpu >&2
# The device tool carries at most 64 MiB: one compressed archive of .gpu/ (unpack there
# with `tar -xzf .gpu.tgz`).
tar -czf .gpu.tgz .gpu
ls -l .gpu.tgz >&2
