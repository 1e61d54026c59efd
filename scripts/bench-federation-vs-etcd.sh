#!/usr/bin/env bash
# Replication lag between regions, Aspen against etcd, in one run on this machine:
# Aspen's federation (`aspen bench-federation --phase lag`: DESIGN's topology in one
# process, writes through region us's router, reads of eu's replica through eu's router)
# and etcd's own cross-cluster replication, `etcdctl make-mirror`, from a 3-member etcd
# cluster to a 1-member one (Debian's etcd-server and etcd-client). Both under the same
# paced write rate, alternating Aspen and etcd, RUNS times each.
#
# Usage: scripts/bench-federation-vs-etcd.sh   (env: RUNS=3 RATE=1000 DURATION=30)
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
RATE=${RATE:-1000}
DURATION=${DURATION:-30}

if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null || ! command -v protoc >/dev/null; then
  echo "installing etcd-server, etcd-client and protobuf-compiler (Debian packages)..." >&2
  apt-get update -qq
  apt-get install -y -qq etcd-server etcd-client protobuf-compiler >/dev/null
fi
cargo build --release --features etcd
BIN=target/release/aspen

WORK=$(mktemp -d /tmp/aspen-fed-vs-etcd.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

start_etcd() { # name client-port peer-port cluster
  etcd --name "$1" --data-dir "$WORK/etcd-$1" \
    --listen-client-urls "http://127.0.0.1:$2" --advertise-client-urls "http://127.0.0.1:$2" \
    --listen-peer-urls "http://127.0.0.1:$3" --initial-advertise-peer-urls "http://127.0.0.1:$3" \
    --initial-cluster "$4" --initial-cluster-state new --initial-cluster-token "tok-${4%%=*}" \
    --logger zap --log-level error >"$WORK/etcd-$1.log" 2>&1 &
  PIDS+=($!)
}
SOURCE_CLUSTER=""
SOURCE=""
for i in 1 2 3; do
  SOURCE_CLUSTER+="${SOURCE_CLUSTER:+,}s$i=http://127.0.0.1:2380$i"
  SOURCE+="${SOURCE:+,}http://127.0.0.1:2379$i"
done
for i in 1 2 3; do start_etcd "s$i" "2379$i" "2380$i" "$SOURCE_CLUSTER"; done
MIRROR=http://127.0.0.1:24791
start_etcd m1 24791 24801 "m1=http://127.0.0.1:24801"
for endpoints in "$SOURCE" "$MIRROR"; do
  for _ in $(seq 1 100); do
    ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint health >/dev/null 2>&1 && break
    sleep 0.2
  done
  ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint health >/dev/null
done
ETCDCTL_API=3 etcdctl --endpoints "$SOURCE" make-mirror "$MIRROR" >"$WORK/mirror.log" 2>&1 &
PIDS+=($!)
echo "etcd $(etcd --version | head -1 | awk '{print $3}'): source $SOURCE, mirror $MIRROR (make-mirror)" >&2

aspen() {
  echo "== run $1: aspen"
  "$BIN" bench-federation --phase lag --rate "$RATE" --duration "$DURATION" 2>/dev/null | grep '^lag'
}
etcd_mirror() {
  echo "== run $1: etcd"
  "$BIN" bench-federation --phase lag --rate "$RATE" --duration "$DURATION" \
    --etcd-source "$SOURCE" --etcd-mirror "$MIRROR" 2>/dev/null | grep '^lag'
}
# Alternate which goes first, so neither always runs on a warmer (or busier) machine.
for run in $(seq 1 "$RUNS"); do
  if [ $((run % 2)) = 1 ]; then aspen "$run"; etcd_mirror "$run"; else etcd_mirror "$run"; aspen "$run"; fi
done
