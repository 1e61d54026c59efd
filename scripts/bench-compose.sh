#!/usr/bin/env bash
# Measures the compose deployment (deploy/compose: 9 node containers, 2 routers, on this
# one host) against `aspen dev` (the same topology in one process), in one run:
#
# 1. Time from `docker compose up -d` to ready (both routers see every cluster with a
#    leader, `aspen e2e wait-ready`): UPS times for a new project (volumes empty, the init
#    jobs initialize the clusters) and UPS times for a resumed one (`down`, then `up`).
# 2. put and linearizable get with CLIENTS clients through region us's router, compose
#    and dev alternating which goes first, RUNS rounds. Only one of the two runs at a
#    time: the other is frozen (`docker compose pause`, SIGSTOP for dev), so they never
#    share the CPU; after a thaw the bench waits until the routers see every leader again.
#    Compose is measured twice per round: through the published port (127.0.0.1, docker's
#    port proxy in between, as apps on the host reach it) and at the router container's
#    own address (no proxy).
#
# Both use the same binary (BIN; the image is made from it with deploy/image.sh). Prints
# a table of medians and the compose/dev ratios.
#
# Usage: scripts/bench-compose.sh
#   env: BIN (default: the static release binary deploy/image.sh builds), RUNS=4,
#        DURATION=10, CLIENTS=64, VALUE_SIZE=256, UPS=3
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# shellcheck source=deploy/lib.sh
. deploy/lib.sh

RUNS=${RUNS:-4}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-64}
VALUE_SIZE=${VALUE_SIZE:-256}
UPS=${UPS:-3}
BIN=${BIN:-${CARGO_TARGET_DIR:-$root/target}/x86_64-unknown-linux-gnu/release/aspen}
if [ ! -x "$BIN" ]; then
  echo "no $BIN: build it with deploy/image.sh (the static release binary), or set BIN" >&2
  exit 1
fi
find_compose

project="aspen-bench-$$"
image="aspen-bench:$$"
WORK=$(mktemp -d /tmp/aspen-bench-compose.XXXXXX)
DEV=""
compose() {
  "${compose_cmd[@]}" -f deploy/compose/docker-compose.yml --project-directory "$WORK" \
    -p "$project" "$@"
}
cleanup() {
  if [ -n "$DEV" ]; then
    kill -CONT "$DEV" 2>/dev/null || true
    kill -TERM "$DEV" 2>/dev/null || true
    wait "$DEV" 2>/dev/null || true
  fi
  if [ -f "$WORK/.env" ]; then
    compose unpause >/dev/null 2>&1 || true
    compose down -v -t 5 >/dev/null 2>&1 || true
  fi
  docker volume ls -q --filter "label=com.docker.compose.project=$project" |
    xargs -r docker volume rm >/dev/null 2>&1 || true
  docker image rm "$image" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

deploy/image.sh --binary "$BIN" --tag "$image" --no-configure >&2
net=$(pick_net)
us_port=$(pick_port)
eu_port=$(pick_port)
COMPOSE_US="127.0.0.1:$us_port"
COMPOSE_EU="127.0.0.1:$eu_port"
# The routers' own addresses on their region networks (deploy/compose/docker-compose.yml).
COMPOSE_US_IP="$net.1.2:7070"
COMPOSE_EU_IP="$net.2.3:7070"
configure() {
  deploy/compose/configure.sh --dir "$WORK" --project "$project" --image "$image" \
    --net "$net" --us-port "$us_port" --eu-port "$eu_port" >/dev/null
}
ready() { # us eu
  "$BIN" e2e wait-ready --endpoint "http://$1" --endpoint "http://$2" --timeout 120 >/dev/null
}
now_ms() { echo $(($(date +%s%N) / 1000000)); }

RESULTS="$WORK/results.txt"
UPTIMES="$WORK/up.txt"
up_timed() { # label
  local t0
  t0=$(now_ms)
  compose up -d >/dev/null 2>&1
  ready "$COMPOSE_US" "$COMPOSE_EU"
  echo "$1 $(($(now_ms) - t0))" >>"$UPTIMES"
  echo "  $1 up to ready: $(($(now_ms) - t0)) ms" >&2
}
for i in $(seq 1 "$UPS"); do
  configure
  up_timed new
  compose down -t 10 >/dev/null 2>&1
  up_timed resumed
  if [ "$i" -lt "$UPS" ]; then
    compose down -v -t 10 >/dev/null 2>&1
  fi
done

dev_port=$(pick_port)
DEV_US="127.0.0.1:$dev_port"
DEV_EU="127.0.0.1:$((dev_port + 1))"
"$BIN" dev --data-dir "$WORK/dev" --http "$DEV_US" >"$WORK/dev.log" 2>&1 &
DEV=$!
ready "$DEV_US" "$DEV_EU"
kill -STOP "$DEV"
compose pause >/dev/null 2>&1

bench() { # label us eu op
  local label=$1 us=$2 eu=$3 op=$4
  ready "$us" "$eu"
  echo "  $label $op x$CLIENTS ..." >&2
  {
    printf '%s\t%s\t' "$label" "$op"
    "$BIN" bench --endpoint "http://$us" --op "$op" --clients "$CLIENTS" \
      --duration "$DURATION" --value-size "$VALUE_SIZE" --json 2>/dev/null | tr -d '\n'
    echo
  } >>"$RESULTS"
}
run_compose() {
  compose unpause >/dev/null 2>&1
  for op in put get; do bench compose "$COMPOSE_US" "$COMPOSE_EU" "$op"; done
  for op in put get; do bench compose-ip "$COMPOSE_US_IP" "$COMPOSE_EU_IP" "$op"; done
  compose pause >/dev/null 2>&1
}
run_dev() {
  kill -CONT "$DEV"
  for op in put get; do bench dev "$DEV_US" "$DEV_EU" "$op"; done
  kill -STOP "$DEV"
}
# Odd rounds run compose first, even rounds dev first, so that a machine whose speed
# drifts during the run favours neither.
for round in $(seq 1 "$RUNS"); do
  if [ $((round % 2)) = 1 ]; then
    run_compose
    run_dev
  else
    run_dev
    run_compose
  fi
done

python3 - "$RESULTS" "$UPTIMES" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    label, op, body = line.rstrip("\n").split("\t", 2)
    rows.setdefault((label, op), []).append(json.loads(body))
def med(label, op, field):
    return statistics.median(r[field] for r in rows[(label, op)])
print("| path | op | ops/s (runs) | median ops/s | median p50 ms | median p99 ms | errors |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for (label, op), rs in sorted(rows.items()):
    runs = ", ".join(f"{r['ops_per_sec']:.0f}" for r in rs)
    print(f"| {label} | {op} | {runs} | {med(label, op, 'ops_per_sec'):.0f} | "
          f"{med(label, op, 'p50_ms'):.2f} | {med(label, op, 'p99_ms'):.2f} | "
          f"{sum(r['errors'] for r in rs)} |")
print()
for label in ("compose", "compose-ip"):
    for op in ("put", "get"):
        ratio = med(label, op, "ops_per_sec") / med("dev", op, "ops_per_sec")
        extra = med(label, op, "p50_ms") - med("dev", op, "p50_ms")
        print(f"{op}: {label}/dev ops/s {ratio:.2f}, p50 {extra:+.2f} ms")
ups = {}
for line in open(sys.argv[2]):
    label, ms = line.split()
    ups.setdefault(label, []).append(int(ms) / 1000)
for label, secs in ups.items():
    runs = ", ".join(f"{s:.1f}" for s in secs)
    print(f"up to ready, {label} project: {runs} s (median {statistics.median(secs):.1f} s)")
PY
