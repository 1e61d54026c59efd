# Sourced by the benchmark scripts that measure etcd beside Aspen.
#
#   need_etcd                 installs etcd-server, etcd-client and protobuf-compiler
#                             (Debian packages) when one is missing
#   start_etcd_cluster DIR    starts a 3-member etcd cluster on loopback (clients at
#                             127.0.0.1:23791..23793), waits until it is healthy, and sets
#                             ETCD_LEADER to its leader's client URL. Appends the members'
#                             pids to the caller's PIDS array, for the caller's cleanup.

need_etcd() {
  if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null || ! command -v protoc >/dev/null; then
    echo "installing etcd-server, etcd-client and protobuf-compiler (Debian packages)..." >&2
    apt-get update -qq
    apt-get install -y -qq etcd-server etcd-client protobuf-compiler >/dev/null
  fi
}

start_etcd_cluster() {
  local dir=$1 i cluster="" endpoints=""
  mkdir -p "$dir"
  for i in 1 2 3; do
    cluster+="${cluster:+,}e$i=http://127.0.0.1:2380$i"
    endpoints+="${endpoints:+,}http://127.0.0.1:2379$i"
  done
  for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$dir/etcd-$i" \
      --listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
      --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token aspen-bench \
      --logger zap --log-level error >"$dir/etcd-$i.log" 2>&1 &
    PIDS+=($!)
  done
  for _ in $(seq 1 100); do
    etcdctl --endpoints "$endpoints" endpoint health >/dev/null 2>&1 && break
    sleep 0.2
  done
  etcdctl --endpoints "$endpoints" endpoint health >/dev/null
  # The leader, so the etcd client is aimed at it as the Aspen client is at its leader.
  ETCD_LEADER=$(ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint status -w json | python3 -c '
import json, sys
for s in json.load(sys.stdin):
    if s["Status"]["header"]["member_id"] == s["Status"]["leader"]:
        print(s["Endpoint"])')
}
