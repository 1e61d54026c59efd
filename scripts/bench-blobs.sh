#!/usr/bin/env bash
# Measures values kept as blobs through a router, in one run on this machine: PUT and
# GET ?raw of SIZES (default 256 MiB and 1 GiB) with curl through an `aspen router`
# process in front of a plain 3-node cluster (four processes), and the same directly at
# node 1 (node-put, node-get), RUNS times each in alternating order; and this machine's own limits on the same bytes in the same run: a
# plain file copy (cp, then sync) and a BLAKE3 hash (b3sum, installed with cargo if
# missing). Reports MB/s medians and each process's peak RSS above its idle RSS
# (VmHWM - VmRSS at start, from /proc), which includes every earlier run; and for each
# put, how long node 1 took to import it and to have a majority hold it, and the CPU time
# the four processes spent on it (with the cores that kept busy on average).
#
# Usage: scripts/bench-blobs.sh     (env: RUNS=3 SIZES="268435456 1073741824" BIN=(built))
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
SIZES=${SIZES:-"268435456 1073741824"}
ROUTER=127.0.0.1:18170
# Node 1 of the plain cluster (its leader after init), for the same requests without the
# router.
NODE=127.0.0.1:18101

if [ -z "${BIN:-}" ]; then
  cargo build --release
  BIN=target/release/aspen
fi
export BIN
command -v b3sum >/dev/null 2>&1 || cargo install b3sum --locked
WORK=$(mktemp -d /tmp/aspen-bench-blobs.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# The router's identity first: every node lists it in kv_clients.
source scripts/lib/plain-cluster.sh
plain_router_identity "$WORK"
start_plain_cluster "$WORK/cluster"
start_plain_router "$WORK" "$ROUTER"

declare -A IDLE
for pid in "${PIDS[@]}"; do
  IDLE[$pid]=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
done

RESULTS="$WORK/results.tsv"
# Where each put's time went on node 1, which takes them all (its leader): the seconds
# its blob_import and blob_hold stages grew by (cluster-node/src/stages.rs).
STAGES="$WORK/stages.txt"
stage_sum() {
  curl -fsS "http://$NODE/metrics" |
    awk -v s="$1" 'index($0, "aspen_write_stage_seconds_sum{stage=\"" s "\"}") == 1 {print $2}'
}
declare -A LAST=([blob_import]=$(stage_sum blob_import) [blob_hold]=$(stage_sum blob_hold))
nanos() { # command...: its wall time in nanoseconds
  local start
  start=$(date +%s%N)
  "$@" >/dev/null
  echo $(($(date +%s%N) - start))
}
copy_and_sync() { cp "$1" "$2" && sync "$2"; }
# CPU seconds (user + system, in clock ticks) the four processes have used so far: a put's
# share of them, over its wall time, says how many of the machine's cores it kept busy.
TICK=$(getconf CLK_TCK)
cpu_ticks() {
  local total=0 pid
  for pid in "${PIDS[@]}"; do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  echo "$total"
}
# Fresh random bytes for every put: a store keeps identical content once, so a put of
# bytes the cluster already holds skips the copy to the other members and measures
# nothing but the upload. Written back before the timed command starts, so that it does
# not compete with that writeback.
fresh_value() {
  head -c "$size" /dev/urandom >"$WORK/value"
  sync "$WORK/value"
}
for size in $SIZES; do
  fresh_value
  for round in $(seq 1 "$RUNS"); do
    key="bench/$size/$round"
    order="put get node-put node-get copy hash"
    [ $((round % 2)) = 0 ] && order="hash copy node-put node-get put get"
    for op in $order; do
      ticks=$(cpu_ticks)
      case $op in
      put) fresh_value
        t=$(nanos curl -fsS -T "$WORK/value" "http://$ROUTER/v1/kv/$key") ;;
      get) t=$(nanos curl -fsS -o "$WORK/read" "http://$ROUTER/v1/kv/$key?raw")
        cmp -s "$WORK/value" "$WORK/read" || { echo "GET returned other bytes" >&2; exit 1; } ;;
      node-put) fresh_value
        t=$(nanos curl -fsS -T "$WORK/value" "http://$NODE/v1/kv/$key/node") ;;
      node-get) t=$(nanos curl -fsS -o "$WORK/read" "http://$NODE/v1/kv/$key/node?raw")
        cmp -s "$WORK/value" "$WORK/read" || { echo "GET returned other bytes" >&2; exit 1; } ;;
      copy) t=$(nanos copy_and_sync "$WORK/value" "$WORK/copy") ;;
      hash) t=$(nanos b3sum "$WORK/value") ;;
      esac
      printf '%s\t%s\t%s\n' "$size" "$op" "$t" >>"$RESULTS"
      if [ "$op" = put ] || [ "$op" = node-put ]; then
        echo "$size $op cpu $(($(cpu_ticks) - ticks)) $t" >>"$STAGES"
        for stage in blob_import blob_hold; do
          now=$(stage_sum "$stage")
          echo "$size $op $stage $now ${LAST[$stage]}" >>"$STAGES"
          LAST[$stage]=$now
        done
      fi
    done
    rm -f "$WORK/read" "$WORK/copy"
  done
done

echo "| size | op | MB/s (runs) | median MB/s |"
echo "| --- | --- | --- | --- |"
python3 - "$RESULTS" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    size, op, t = line.split()
    rows.setdefault((int(size), op), []).append(int(size) / (int(t) / 1e9) / 1e6)
for (size, op), rates in rows.items():
    runs = ", ".join(f"{r:.0f}" for r in rates)
    print(f"| {size >> 20} MiB | {op} | {runs} | {statistics.median(rates):.0f} |")
PY
echo
echo "| size | op | import s (runs) | hold s (runs) | CPU s of the four processes (cores busy) |"
echo "| --- | --- | --- | --- | --- |"
python3 - "$STAGES" "$TICK" <<'PY'
import sys
rows = {}
tick = int(sys.argv[2])
for line in open(sys.argv[1]):
    size, op, stage, now, before = line.split()
    if stage == "cpu":
        cpu, wall = int(now) / tick, int(before) / 1e9
        cell = f"{cpu:.1f} ({cpu / wall:.2f})"
    else:
        cell = f"{float(now) - float(before):.2f}"
    rows.setdefault((int(size), op), {}).setdefault(stage, []).append(cell)
for (size, op), stages in rows.items():
    cells = [", ".join(stages[s]) for s in ("blob_import", "blob_hold", "cpu")]
    print(f"| {size >> 20} MiB | {op} | {cells[0]} | {cells[1]} | {cells[2]} |")
PY
echo
echo "| process | idle RSS MiB | peak RSS MiB | peak above idle MiB |"
echo "| --- | --- | --- | --- |"
names=("node 1" "node 2" "node 3" "router")
for i in "${!PIDS[@]}"; do
  pid=${PIDS[$i]}
  peak=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  idle=${IDLE[$pid]}
  printf '| %s | %d | %d | %d |\n' "${names[$i]}" $((idle / 1024)) $((peak / 1024)) $(((peak - idle) / 1024))
done
