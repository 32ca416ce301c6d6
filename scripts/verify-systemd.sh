#!/usr/bin/env bash
# Checks the systemd units and the sysusers file with systemd's own tools.
# systemd-analyze verify exits 0 on unknown keys, so any diagnostic is a failure.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
if ! command -v systemd-analyze >/dev/null || ! command -v systemd-sysusers >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
  else
    echo "verify-systemd: systemd-analyze missing and cannot install it" >&2; exit 1
  fi
fi
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cp "$top/systemd/flashmemd.service" "$top/systemd/flashmemd.socket" "$work/"
# verify checks that ExecStart exists; point it at a stand-in binary.
printf '#!/bin/sh\nexit 0\n' > "$work/flashmemd"; chmod +x "$work/flashmemd"
sed -i "s#/usr/bin/flashmemd#$work/flashmemd#" "$work/flashmemd.service"
out=$(cd "$work" && SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --man=no ./flashmemd.socket ./flashmemd.service 2>&1) || { echo "$out"; exit 1; }
# Diagnostics about the host's own units are not ours.
ours=$(printf '%s\n' "$out" | grep -E 'flashmemd\.(service|socket)' || true)
if [ -n "$ours" ]; then echo "$ours"; echo "verify-systemd: FAIL"; exit 1; fi
# sysusers: create the user into an empty root and check it appeared.
mkdir -p "$work/root/etc"
systemd-sysusers --root="$work/root" "$top/systemd/flashmemd.sysusers.conf"
grep -q '^flashmemd:' "$work/root/etc/passwd" || { echo "verify-systemd: sysusers made no flashmemd user"; exit 1; }
grep -q '^flashmemd:' "$work/root/etc/group" || { echo "verify-systemd: sysusers made no flashmemd group"; exit 1; }
echo "verify-systemd: ok (flashmemd.service, flashmemd.socket, flashmemd.sysusers.conf)"
