#!/usr/bin/env bash
# Checks the unit files as systemd reads them, in a scratch root (so neither the binary
# nor the units need installing): `systemd-analyze verify` must print nothing (it exits 0
# on unknown keys and bad values, printing a warning, so any output fails the check);
# `systemd-analyze security --offline` must rate each unit's exposure at 2.0 or below;
# `systemd-sysusers` must accept the user definition.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
units=(aspen-node.service aspen-router.service)

if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "verify.sh: systemd-analyze is missing (Debian: apt-get install systemd)" >&2
  exit 1
fi
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/local/bin" "$root/bin" "$root/etc/systemd/system" "$root/usr/lib/systemd" \
  "$root/etc/sysusers.d"
# Stand-ins for the executables the units name: verify checks that they exist.
cp "$(type -P true)" "$root/usr/local/bin/aspen"
cp "$(type -P kill)" "$root/bin/kill"
# The system's own units (sysinit.target and the rest the units depend on).
cp -r /lib/systemd/system "$root/usr/lib/systemd/system"
for u in "${units[@]}"; do cp "$here/$u" "$root/etc/systemd/system/"; done
cp "$here/aspen.sysusers.conf" "$root/etc/sysusers.d/aspen.conf"

status=0
out="$(systemd-analyze verify --root="$root" "${units[@]}" 2>&1)" || status=1
if [ -n "$out" ] || [ "$status" -ne 0 ]; then
  echo "verify.sh: systemd-analyze verify complained:" >&2
  echo "$out" >&2
  exit 1
fi
echo "systemd-analyze verify: ${units[*]}: no complaints"
for u in "${units[@]}"; do
  if ! out="$(systemd-analyze security --offline=true --root="$root" --threshold=20 "$u" 2>&1)"; then
    echo "$out" | tail -3 >&2
    echo "verify.sh: $u is exposed above 2.0" >&2
    exit 1
  fi
  echo "systemd-analyze security: $(echo "$out" | grep 'Overall exposure' | sed 's/^→ //')"
done
if command -v systemd-sysusers >/dev/null 2>&1; then
  systemd-sysusers --root="$root" >/dev/null 2>&1
  grep -q '^aspen:' "$root/etc/passwd"
  echo "systemd-sysusers: aspen.sysusers.conf creates user $(grep '^aspen:' "$root/etc/passwd" | cut -d: -f1,3,6,7)"
fi
