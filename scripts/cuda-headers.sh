#!/usr/bin/env bash
# cuda-headers.sh — fetch CUDA's headers and the libcuda link stub for cgo builds on a
# machine without CUDA (see ../shared/GPU.md). Only include/ and the stub library are
# unpacked into .cache/cuda; the 2.8 GB package is never installed. Idempotent: a second run
# with the files present does nothing.
#
# Usage: scripts/cuda-headers.sh [dest]      (dest defaults to <repo>/.cache/cuda)
# Prints the directory to use as CUDA_ROOT (CGO_CFLAGS=-I$CUDA_ROOT/usr/include ...).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$repo/.cache/cuda}
hdr=$dest/usr/include/cuda.h
stub=$dest/usr/lib/x86_64-linux-gnu/stubs/libcuda.so
if [[ -f $hdr && -f $stub ]]; then
  echo "$dest"
  exit 0
fi

# Debian keeps nvidia-cuda-dev in non-free; add that component once if apt cannot see it.
if ! apt-cache policy nvidia-cuda-dev 2>/dev/null | grep -q "Candidate: [0-9]"; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "cuda-headers: nvidia-cuda-dev not visible to apt and not root; add Debian non-free" >&2
    exit 1
  fi
  cat >/etc/apt/sources.list.d/debian-non-free.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: contrib non-free
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt-get update -qq
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download -qq nvidia-cuda-dev >/dev/null)
mkdir -p "$dest"
# The archive is a tar of ./usr/...; extract only the two paths the cgo build needs.
dpkg-deb --fsys-tarfile "$tmp"/nvidia-cuda-dev_*.deb |
  tar -x -C "$dest" ./usr/include ./usr/lib/x86_64-linux-gnu/stubs/libcuda.so
[[ -f $hdr && -f $stub ]] || { echo "cuda-headers: unpack incomplete in $dest" >&2; exit 1; }
echo "$dest"
