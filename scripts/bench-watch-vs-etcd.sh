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
# puts/s to WATCHERS watchers, then put throughput with and without WATCHERS idle watchers
# and one that never reads.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
RATE=${RATE:-1000}
WATCHERS=${WATCHERS:-100}
ROUNDS=${ROUNDS:-3}
ASPEN_TOPOLOGY=${ASPEN_TOPOLOGY:-plain}

if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null || ! command -v protoc >/dev/null; then
  echo "installing etcd-server, etcd-client and protobuf-compiler (Debian packages)..." >&2
  apt-get update -qq
  apt-get install -y -qq etcd-server etcd-client protobuf-compiler >/dev/null
fi
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

CLUSTER=""
ENDPOINTS=""
for i in 1 2 3; do
  CLUSTER+="${CLUSTER:+,}e$i=http://127.0.0.1:2380$i"
  ENDPOINTS+="${ENDPOINTS:+,}http://127.0.0.1:2379$i"
done
for i in 1 2 3; do
  etcd --name "e$i" --data-dir "$WORK/etcd-$i" \
    --listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
    --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
    --initial-cluster "$CLUSTER" --initial-cluster-state new --initial-cluster-token aspen-bench \
    --logger zap --log-level error >"$WORK/etcd-$i.log" 2>&1 &
  PIDS+=($!)
done
for _ in $(seq 1 100); do
  etcdctl --endpoints "$ENDPOINTS" endpoint health >/dev/null 2>&1 && break
  sleep 0.2
done
etcdctl --endpoints "$ENDPOINTS" endpoint health >/dev/null
# Aim the etcd client at the leader, as the Aspen client is aimed at its leader (node 1).
ETCD_LEADER=$(ETCDCTL_API=3 etcdctl --endpoints "$ENDPOINTS" endpoint status -w json | python3 -c '
import json, sys
for s in json.load(sys.stdin):
    if s["Status"]["header"]["member_id"] == s["Status"]["leader"]:
        print(s["Endpoint"])')

if [ "$ASPEN_TOPOLOGY" = dev ]; then
  # Node 1 of cluster us-1: `aspen dev` puts it at the router's port + 31.
  ASPEN_NODE=127.0.0.1:17101
  "$BIN" dev --data-dir "$WORK/aspen" --http 127.0.0.1:17070 >"$WORK/aspen.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 150); do
    curl -fs "http://$ASPEN_NODE/readyz" >/dev/null 2>&1 && break
    sleep 0.2
  done
  curl -fs "http://$ASPEN_NODE/readyz" >/dev/null
else
  ASPEN_NODE=127.0.0.1:18101
  source scripts/lib/plain-cluster.sh
  start_plain_cluster "$WORK/aspen"
fi

echo "etcd $(etcd --version | head -1 | awk '{print $3}') leader at $ETCD_LEADER; aspen ($ASPEN_TOPOLOGY) node 1 at http://$ASPEN_NODE" >&2
for round in $(seq "$ROUNDS"); do
  order="aspen etcd"
  [ $((round % 2)) = 0 ] && order="etcd aspen"
  for target in $order; do
    endpoint="http://$ASPEN_NODE"
    [ "$target" = etcd ] && endpoint="$ETCD_LEADER"
    "$BIN" bench-watch --target "$target" --endpoint "$endpoint" --mode latency \
      --watchers "$WATCHERS" --rate "$RATE" --duration "$DURATION" --json
  done
done
for target in aspen etcd; do
  endpoint="http://$ASPEN_NODE"
  [ "$target" = etcd ] && endpoint="$ETCD_LEADER"
  "$BIN" bench-watch --target "$target" --endpoint "$endpoint" --mode throughput \
    --watchers "$WATCHERS" --stalled 1 --duration "$DURATION" --json
done
