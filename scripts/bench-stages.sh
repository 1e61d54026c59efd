#!/usr/bin/env bash
# Where a lone put's time goes: one client putting to node 1 (the leader) of a plain
# 3-node cluster for DURATION seconds, ROUNDS times; for each round, the mean of every
# write stage (`aspen_write_stage_seconds`, cluster-node/src/stages.rs) on node 1 and on
# node 2 (a follower) over that round, from their /metrics before and after, and the
# client's ops/s and p50 from `aspen bench`. Times in ms.
#
# Usage: scripts/bench-stages.sh    (env: BIN=target/release/aspen DURATION=8 ROUNDS=3)
set -euo pipefail
cd "$(dirname "$0")/.."
# The cluster, its start and its cleanup are bench-plain-cluster.sh's: this script runs
# again inside it.
if [ -z "${ASPEN_STAGES_CLUSTER:-}" ]; then
  ASPEN_STAGES_CLUSTER=1 exec scripts/bench-plain-cluster.sh "$0"
fi
DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-3}
WORK=$(mktemp -d /tmp/aspen-stages.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

scrape() { # node id, file
  curl -fs "http://127.0.0.1:1810$1/metrics" | grep '^aspen_write_stage_seconds_\(sum\|count\)' >"$2"
}
echo "round | client ops/s | client p50 | node 1: propose log_queue log_write append_entries apply | node 2: append_serve log_queue log_write apply"
for round in $(seq "$ROUNDS"); do
  scrape 1 "$WORK/before-1"
  scrape 2 "$WORK/before-2"
  "$BIN" bench --endpoint "$ASPEN_ENDPOINT" --op put --clients 1 \
    --duration "$DURATION" --json >"$WORK/bench.json"
  scrape 1 "$WORK/after-1"
  scrape 2 "$WORK/after-2"
  python3 - "$WORK" "$round" <<'PY'
import json, re, sys
work, round_ = sys.argv[1], sys.argv[2]
def load(path):
    seen = {}
    for line in open(path):
        m = re.match(r'aspen_write_stage_seconds_(sum|count)\{stage="(\w+)"\} (\S+)', line)
        if m:
            seen[(m.group(2), m.group(1))] = float(m.group(3))
    return seen
def means(node, stages):
    before, after = load(f"{work}/before-{node}"), load(f"{work}/after-{node}")
    out = []
    for stage in stages:
        n = after.get((stage, "count"), 0) - before.get((stage, "count"), 0)
        s = after.get((stage, "sum"), 0) - before.get((stage, "sum"), 0)
        out.append(f"{s / n * 1000:.3f}" if n else "-")
    return " ".join(out)
bench = json.load(open(f"{work}/bench.json"))
print(f"{round_} | {bench.get('ops_per_sec', 0):.0f} | {bench.get('p50_ms', 0):.2f} | "
      + means(1, ["propose", "log_queue", "log_write", "append_entries", "apply"]) + " | "
      + means(2, ["append_serve", "log_queue", "log_write", "apply"]))
PY
done
