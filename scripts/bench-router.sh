#!/usr/bin/env bash
# Measures what the router costs, in one run on this machine: put and linearizable get
# with 64 clients through the `aspen dev` router and directly to cluster us-1's node 1,
# alternating, RUNS times each; then the aggregate put rate through the router with the
# load on one cluster and spread over both (us-1 and us-2).
#
# Usage: scripts/bench-router.sh        (env: RUNS=4 DURATION=10 CLIENTS=64 VALUE_SIZE=256)
# Prints one table of medians, with router/direct ratios.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-4}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-64}
VALUE_SIZE=${VALUE_SIZE:-256}
ROUTER=127.0.0.1:17070
# Node 1 of cluster us-1: `aspen dev` puts it at the router's port + 31.
NODE=127.0.0.1:17101

cargo build --release
BIN=target/release/aspen
WORK=$(mktemp -d /tmp/aspen-bench-router.XXXXXX)
DEV=""
cleanup() {
  [ -n "$DEV" ] && kill -TERM "$DEV" 2>/dev/null && wait "$DEV" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN" dev --data-dir "$WORK/dev" --http "$ROUTER" >"$WORK/dev.log" 2>&1 &
DEV=$!
for _ in $(seq 1 150); do
  curl -fs "http://$NODE/readyz" >/dev/null 2>&1 && curl -fs "http://$ROUTER/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fs "http://$ROUTER/readyz" >/dev/null

RESULTS="$WORK/results.txt"
bench() { # label endpoint op [extra args...]
  local label=$1 endpoint=$2 op=$3
  shift 3
  echo "  $label $op x$CLIENTS ..." >&2
  printf '%s\t%s\t' "$label" "$op" >>"$RESULTS"
  "$BIN" bench --endpoint "http://$endpoint" --op "$op" --clients "$CLIENTS" \
    --duration "$DURATION" --value-size "$VALUE_SIZE" --json "$@" 2>/dev/null | tr -d '\n' >>"$RESULTS"
  echo >>"$RESULTS"
}
# Odd rounds run direct first and even rounds the router first, so that a machine whose
# speed drifts during the run favours neither path.
for round in $(seq 1 "$RUNS"); do
  for op in put get; do
    if [ $((round % 2)) = 1 ]; then
      bench direct "$NODE" "$op"
      bench router "$ROUTER" "$op"
    else
      bench router "$ROUTER" "$op"
      bench direct "$NODE" "$op"
    fi
  done
  if [ $((round % 2)) = 1 ]; then
    bench router-one-cluster "$ROUTER" put
    bench router-two-clusters "$ROUTER" put --prefix bench/,svc-b/bench/
  else
    bench router-two-clusters "$ROUTER" put --prefix bench/,svc-b/bench/
    bench router-one-cluster "$ROUTER" put
  fi
done

python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    label, op, body = line.rstrip("\n").split("\t", 2)
    rows.setdefault((label, op), []).append(json.loads(body))
def med(label, op, field):
    return statistics.median(r[field] for r in rows[(label, op)])
print("| path | op | ops/s (runs) | median ops/s | median p50 ms | median p99 ms | errors |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for (label, op), rs in rows.items():
    runs = ", ".join(f"{r['ops_per_sec']:.0f}" for r in rs)
    print(f"| {label} | {op} | {runs} | {med(label, op, 'ops_per_sec'):.0f} | "
          f"{med(label, op, 'p50_ms'):.2f} | {med(label, op, 'p99_ms'):.2f} | "
          f"{sum(r['errors'] for r in rs)} |")
print()
for op in ("put", "get"):
    ratio = med("router", op, "ops_per_sec") / med("direct", op, "ops_per_sec")
    extra = med("router", op, "p50_ms") - med("direct", op, "p50_ms")
    print(f"{op}: router/direct ops/s {ratio:.2f}, p50 {extra:+.2f} ms")
spread = med("router-two-clusters", "put", "ops_per_sec") / med("router-one-cluster", "put", "ops_per_sec")
print(f"put through the router, two clusters / one cluster: {spread:.2f}")
PY
