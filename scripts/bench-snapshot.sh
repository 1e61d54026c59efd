#!/usr/bin/env bash
# Snapshots that scale with the data: on a plain 3-node cluster holding KEYS keys, the
# leader's memory and the get and put latency while it builds snapshots back to back,
# against the same node with no snapshot running, in alternating order each round; then
# a wiped member re-added, which receives the whole snapshot (time and memory of both
# sides).
#
#   BIN=target/release/aspen KEYS=1000000 ROUNDS=3 DURATION=10 scripts/bench-snapshot.sh
#
# Memory is read from /proc: VmRSS before a phase (idle) and VmHWM after it (the peak,
# reset before the phase through clear_refs). Latency is `aspen bench`: READERS clients
# of linearizable gets of the preloaded keys, and one client of puts over the same keys.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/aspen}
KEYS=${KEYS:-1000000}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
READERS=${READERS:-8}
LEADER=http://127.0.0.1:18101
DIR=$(mktemp -d /tmp/aspen-bench-snapshot.XXXXXX)
PIDS=()
cleanup() {
  [ -n "${LOOP_PID:-}" ] && kill "$LOOP_PID" 2>/dev/null || true
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT

# shellcheck source=lib/plain-cluster.sh
source scripts/lib/plain-cluster.sh
# No snapshot but the ones this script asks for: snapshot_every_logs at its maximum, which
# KEYS plus the measured load must stay under.
plain_node_config() {
  cat <<TOML
node_id = $2
cluster = "bench"
data_dir = "$1/node-$2"
http_addr = "127.0.0.1:1810$2"
iroh_bind_addr = "127.0.0.1:1840$2"
relay = "disabled"

[raft]
snapshot_every_logs = 10000000
$3
TOML
}

kib() { awk -v f="$2" '$1 == f":" {print $2}' "/proc/$1/status"; }
reset_peak() { echo 5 >"/proc/$1/clear_refs"; }
mib() { echo $(( $1 / 1024 )); }

# Builds a snapshot now; on a refusal, says why on stderr and fails.
snapshot_now() {
  local out
  if ! out=$(curl -sS --fail-with-body -X POST "$LEADER/v1/cluster/snapshot"); then
    echo "snapshot refused: $out" >&2
    return 1
  fi
  echo "$out"
}

start_plain_cluster "$DIR"
leader_pid=${PIDS[0]}
echo "preloading $KEYS keys of 256 bytes..." >&2
"$BIN" bench --endpoint "$LEADER" --op get --keys "$KEYS" --clients 8 --duration 1 --warmup 0 >/dev/null
first=$(snapshot_now)
echo "first snapshot: $first" >&2

# One measured phase: `with` = snapshots back to back during it, or none. Prints
# "op p99_ms ops_per_sec idle_mib peak_mib snapshots".
phase() {
  local op=$1 with=$2 clients=$READERS extra=(--preloaded) idle peak out builds=0
  [ "$op" = put ] && { clients=1; extra=(); }
  idle=$(kib "$leader_pid" VmRSS)
  reset_peak "$leader_pid"
  if [ "$with" = snap ]; then
    : >"$DIR/builds"
    # Its stderr goes to a file: stopping the loop cuts a request short, which curl
    # reports (exit 23); any other complaint is shown after the phase.
    ( while true; do snapshot_now >/dev/null 2>>"$DIR/loop.err" && echo >>"$DIR/builds"; done ) &
    LOOP_PID=$!
  fi
  out=$("$BIN" bench --endpoint "$LEADER" --op "$op" --keys "$KEYS" --clients "$clients" \
    --duration "$DURATION" --warmup 1 --json "${extra[@]}")
  if [ "$with" = snap ]; then
    kill "$LOOP_PID"; wait "$LOOP_PID" 2>/dev/null || true; LOOP_PID=
    builds=$(wc -l <"$DIR/builds")
    grep -v '^curl: (23)' "$DIR/loop.err" >&2 || true
    rm -f "$DIR/loop.err"
    # Let the build in progress finish before the next phase.
    snapshot_now >/dev/null
  fi
  peak=$(kib "$leader_pid" VmHWM)
  echo "$op $(jq -r '"\(.p99_ms) \(.ops_per_sec|floor)"' <<<"$out") $(mib "$idle") $(mib "$peak") $builds"
}

printf '%-5s %-4s %-5s %9s %9s %9s %9s %9s\n' round op mode p99_ms ops_s idle_MiB peak_MiB snapshots
for round in $(seq "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then order="quiet snap"; else order="snap quiet"; fi
  for op in get put; do
    for mode in $order; do
      read -r o p99 ops idle peak builds <<<"$(phase "$op" "$mode")"
      printf '%-5s %-4s %-5s %9s %9s %9s %9s %9s\n' "$round" "$o" "$mode" "$p99" "$ops" "$idle" "$peak" "$builds"
    done
  done
done

# A wiped member re-added: the leader streams it the whole snapshot.
info=$(curl -fsS "$LEADER/v1/cluster/snapshot" -o /dev/null -D - | tr -d '\r')
bytes=$(awk -F': ' 'tolower($1) == "content-length" {print $2}' <<<"$info")
node3=$(jq -r '.members[] | select(.node_id == 3) | .endpoint_id' < <(curl -fsS "$LEADER/v1/status"))
kill "${PIDS[2]}"; wait "${PIDS[2]}" 2>/dev/null || true
find "$DIR/node-3" -mindepth 1 ! -name iroh.key -delete
"$BIN" cluster remove --endpoint "$LEADER" --node-id 3 >/dev/null
"$BIN" node --config "$DIR/node-3.toml" >"$DIR/node-3.log" 2>&1 &
PIDS[2]=$!
for _ in $(seq 100); do curl -fs http://127.0.0.1:18103/healthz >/dev/null 2>&1 && break; sleep 0.1; done
reset_peak "$leader_pid"
leader_idle=$(kib "$leader_pid" VmRSS)
t0=$(date +%s.%N)
"$BIN" cluster add-learner --endpoint "$LEADER" --node-id 3 --endpoint-id "$node3" --addr 127.0.0.1:18403 >/dev/null
t1=$(date +%s.%N)
echo
echo "transfer of the snapshot (${bytes} bytes) to a wiped member: $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}') s to catch up"
echo "  leader: idle $(mib "$leader_idle") MiB, peak $(mib "$(kib "$leader_pid" VmHWM)") MiB"
echo "  new member: peak $(mib "$(kib "${PIDS[2]}" VmHWM)") MiB, now $(mib "$(kib "${PIDS[2]}" VmRSS)") MiB"
