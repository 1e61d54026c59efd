#!/usr/bin/env bash
# Runs a command against a plain 3-node Aspen cluster: three `aspen node` processes on
# loopback, no federation, no router, nothing else in their processes. For measuring one
# cluster alone (`aspen dev` also runs other clusters and federation in one process).
#
# Usage: scripts/bench-plain-cluster.sh COMMAND...     (env: BIN=target/release/aspen)
# COMMAND runs with ASPEN_ENDPOINT set to node 1, the leader after init; for example
#   scripts/bench-plain-cluster.sh sh -c '$BIN bench --op put --clients 16 --duration 10'
set -euo pipefail
cd "$(dirname "$0")/.."
export BIN=${BIN:-target/release/aspen}
WORK=$(mktemp -d /tmp/aspen-plain.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
source scripts/lib/plain-cluster.sh
start_plain_cluster "$WORK"
ASPEN_ENDPOINT=http://127.0.0.1:18101 "$@"
