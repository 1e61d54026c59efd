#!/usr/bin/env bash
# Benchmarks Aspen against etcd on this machine with one harness (`aspen bench`), one
# system after the other in the same run: a 3-member etcd cluster (Debian's etcd-server)
# and one 3-node cluster of `aspen dev` (us-1, benchmarked at its node 1 directly, not
# through the router), both on loopback, both fsyncing every commit.
#
# Usage: scripts/bench-vs-etcd.sh        (env: DURATION=10 CLIENTS="1 16 64 256"
#                                               OPS="put get cas mixed" VALUE_SIZE=256
#                                               ROUNDS=1 VIA=node TOPOLOGY=dev)
# VIA=router benchmarks Aspen through us's router instead of at node 1. TOPOLOGY=plain
# runs, instead of `aspen dev` (three clusters, two routers and the federation between
# them in one process, on the same cores as etcd), a plain 3-node cluster with one
# `aspen router` process in front (four processes, nothing else): etcd's own shape plus
# the router. With ROUNDS > 1
# every row runs ROUNDS times, the two systems' order alternating from one to the next.
# Prints one table: ops/s, p50 and p99 of each (medians over the rounds), and the ratio
# Aspen/etcd of the median ops/s.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-"1 16 64 256"}
OPS=${OPS:-"put get cas mixed"}
VALUE_SIZE=${VALUE_SIZE:-256}
ROUNDS=${ROUNDS:-1}
VIA=${VIA:-node}
TOPOLOGY=${TOPOLOGY:-dev}
if [ "$TOPOLOGY" = plain ]; then
  ASPEN_HTTP=127.0.0.1:18170
  # Node 1 of the plain cluster, its leader after init.
  ASPEN_NODE=127.0.0.1:18101
else
  ASPEN_HTTP=127.0.0.1:17070
  # Node 1 of cluster us-1: `aspen dev` puts it at the router's port + 31.
  ASPEN_NODE=127.0.0.1:17101
fi

source scripts/lib/etcd-cluster.sh
source scripts/lib/ready.sh
need_etcd
cargo build --release --features etcd
BIN=target/release/aspen

WORK=$(mktemp -d /tmp/aspen-vs-etcd.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

start_etcd_cluster "$WORK/etcd"

if [ "$TOPOLOGY" = plain ]; then
  export BIN
  source scripts/lib/plain-cluster.sh
  plain_router_identity "$WORK/aspen"
  start_plain_cluster "$WORK/aspen/cluster"
  start_plain_router "$WORK/aspen" "$ASPEN_HTTP"
else
  "$BIN" dev --data-dir "$WORK/aspen" --http "$ASPEN_HTTP" >"$WORK/aspen.log" 2>&1 &
  PIDS+=($!)
  # us-1's node 1 serves before `aspen dev` starts its routers: wait for both.
  wait_ready "http://$ASPEN_NODE/readyz"
  wait_ready "http://$ASPEN_HTTP/readyz"
fi

echo "etcd $(etcd --version | head -1 | awk '{print $3}') leader at $ETCD_LEADER; aspen ($TOPOLOGY) node 1 at http://$ASPEN_NODE, router at http://$ASPEN_HTTP" >&2
RESULTS="$WORK/results.json"
ASPEN_ENDPOINT="http://$ASPEN_NODE"
[ "$VIA" = router ] && ASPEN_ENDPOINT="http://$ASPEN_HTTP"
row=0
for round in $(seq 1 "$ROUNDS"); do
  for op in $OPS; do
    for clients in $CLIENTS; do
      order="aspen etcd"
      [ $(( (round + row) % 2 )) = 0 ] && order="etcd aspen"
      row=$((row + 1))
      for target in $order; do
        endpoint="$ASPEN_ENDPOINT"
        [ "$target" = etcd ] && endpoint="$ETCD_LEADER"
        echo "  round $round: $target $op x$clients ..." >&2
        "$BIN" bench --target "$target" --endpoint "$endpoint" --op "$op" --clients "$clients" \
          --duration "$DURATION" --value-size "$VALUE_SIZE" --json 2>/dev/null >>"$RESULTS"
      done
    done
  done
done

python3 - "$RESULTS" <<'PY'
import json, sys
text = open(sys.argv[1]).read()
decoder, i, rows = json.JSONDecoder(), 0, []
while i < len(text):
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text):
        break
    obj, i = decoder.raw_decode(text, i)
    rows.append(obj)
import statistics
groups = {}
for r in rows:
    groups.setdefault((r["target"], r["op"], r["clients"]), []).append(r)
def median_row(rs):
    out = dict(rs[0])
    for field in ("ops_per_sec", "p50_ms", "p99_ms"):
        out[field] = statistics.median(r[field] for r in rs)
    out["errors"] = sum(r["errors"] for r in rs)
    return out
by = {k: median_row(rs) for k, rs in groups.items()}
keys = sorted({(r["op"], r["clients"]) for r in rows}, key=lambda k: (["put", "get", "cas", "mixed"].index(k[0]), k[1]))
print("| op | clients | aspen ops/s | aspen p50 ms | aspen p99 ms | etcd ops/s | etcd p50 ms | etcd p99 ms | aspen/etcd ops/s |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for op, clients in keys:
    a, e = by.get(("aspen", op, clients)), by.get(("etcd", op, clients))
    if not a or not e:
        continue
    ratio = a["ops_per_sec"] / e["ops_per_sec"] if e["ops_per_sec"] else float("inf")
    print(f"| {op} | {clients} | {a['ops_per_sec']:.0f} | {a['p50_ms']:.2f} | {a['p99_ms']:.2f} | "
          f"{e['ops_per_sec']:.0f} | {e['p50_ms']:.2f} | {e['p99_ms']:.2f} | {ratio:.2f} |")
errors = [(k, r["errors"]) for k, r in by.items() if r["errors"]]
if errors:
    print("\nerrors:", errors)
PY
