#!/usr/bin/env bash
# Benchmarks watches of Aspen against etcd's on this machine with one harness
# (`aspen bench-watch`), in the same run, alternating the order: a 3-member etcd cluster
# (Debian's etcd-server) and a 3-node Aspen cluster (three `aspen node` processes, at
# node 1, its leader, directly), both on loopback, both fsyncing every commit. With
# ASPEN_TOPOLOGY=dev the Aspen side is us-1 of `aspen dev` instead (three clusters and
# federation in one process).
#
# Usage: scripts/bench-watch-vs-etcd.sh
#   (env: DURATION=10 RATE=1000 WATCHERS=100 ROUNDS=3 ASPEN_TOPOLOGY=plain|dev BIN=...)
# Prints each run's JSON line: delivery latency (write acknowledged -> watcher) at RATE
# puts/s to WATCHERS watchers, twice per system: writers and watchers sharing one
# connection (Aspen over HTTP/2, etcd over its gRPC connection), and each watcher on a
# connection of its own (Aspen over HTTP/1.1); then put throughput with and without
# WATCHERS idle watchers and one that never reads.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
RATE=${RATE:-1000}
WATCHERS=${WATCHERS:-100}
ROUNDS=${ROUNDS:-3}
ASPEN_TOPOLOGY=${ASPEN_TOPOLOGY:-plain}

source scripts/lib/etcd-cluster.sh
source scripts/lib/ready.sh
need_etcd
if [ -z "${BIN:-}" ]; then
  cargo build --release --features etcd
  BIN=target/release/aspen
fi

WORK=$(mktemp -d /tmp/aspen-vs-etcd.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

start_etcd_cluster "$WORK/etcd"

if [ "$ASPEN_TOPOLOGY" = dev ]; then
  # Node 1 of cluster us-1: `aspen dev` puts it at the router's port + 31.
  ASPEN_NODE=127.0.0.1:17101
  "$BIN" dev --data-dir "$WORK/aspen" --http 127.0.0.1:17070 >"$WORK/aspen.log" 2>&1 &
  PIDS+=($!)
  wait_ready "http://$ASPEN_NODE/readyz"
else
  ASPEN_NODE=127.0.0.1:18101
  source scripts/lib/plain-cluster.sh
  start_plain_cluster "$WORK/aspen"
fi

echo "etcd $(etcd --version | head -1 | awk '{print $3}') leader at $ETCD_LEADER; aspen ($ASPEN_TOPOLOGY) node 1 at http://$ASPEN_NODE" >&2
# Each system's latency is measured twice a round: watchers sharing one connection with
# the writers (as watchers in one process do), and each watcher with its own (as separate
# services have).
for round in $(seq "$ROUNDS"); do
  order="aspen etcd aspen-own etcd-own"
  [ $((round % 2)) = 0 ] && order="etcd-own aspen-own etcd aspen"
  for run in $order; do
    target=${run%-own}
    endpoint="http://$ASPEN_NODE"
    [ "$target" = etcd ] && endpoint="$ETCD_LEADER"
    shape=(--connection-per-watcher)
    if [ "$run" = "$target" ]; then
      shape=()
      [ "$target" = aspen ] && shape=(--http2)
    fi
    "$BIN" bench-watch --target "$target" --endpoint "$endpoint" --mode latency \
      --watchers "$WATCHERS" --rate "$RATE" --duration "$DURATION" "${shape[@]}" --json
  done
done
for target in aspen etcd; do
  endpoint="http://$ASPEN_NODE"
  [ "$target" = etcd ] && endpoint="$ETCD_LEADER"
  "$BIN" bench-watch --target "$target" --endpoint "$endpoint" --mode throughput \
    --watchers "$WATCHERS" --stalled 1 --duration "$DURATION" --json
done
