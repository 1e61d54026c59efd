# Sourced by the benchmark scripts: starts a plain 3-node Aspen cluster, three
# `aspen node` processes on loopback with no federation and no router, and initialises
# it. Needs BIN (the aspen binary) and the caller's PIDS array (the nodes' pids are
# appended, for the caller's cleanup); EXTRA_NODE_TOML, when set, is added to every node's
# config (top-level settings such as kv_clients).
#
#   start_plain_cluster DIR    (node 1, the leader after init, is http://127.0.0.1:18101)

plain_node_config() { # dir, node id, then any [[peers]] text
  cat <<TOML
node_id = $2
cluster = "bench"
data_dir = "$1/node-$2"
http_addr = "127.0.0.1:1810$2"
iroh_bind_addr = "127.0.0.1:1840$2"
relay = "disabled"
${EXTRA_NODE_TOML:-}
$3
TOML
}

start_plain_cluster() {
  local dir=$1 i j peers
  local -A id
  mkdir -p "$dir"
  # Each node's identity first (`aspen keygen` prints its endpoint id), so every config
  # is written before any node starts.
  for i in 1 2 3; do
    id[$i]=$("$BIN" keygen --out "$dir/node-$i/iroh.key" 2>/dev/null)
  done
  for i in 1 2 3; do
    peers=""
    for j in 1 2 3; do
      [ "$i" = "$j" ] && continue
      peers+=$'\n'"[[peers]]"$'\n'"node_id = $j"$'\n'"endpoint_id = \"${id[$j]}\""$'\n'"addrs = [\"127.0.0.1:1840$j\"]"
    done
    plain_node_config "$dir" "$i" "$peers" >"$dir/node-$i.toml"
    "$BIN" node --config "$dir/node-$i.toml" >"$dir/node-$i.log" 2>&1 &
    PIDS+=($!)
  done
  for _ in $(seq 100); do
    curl -fs http://127.0.0.1:18101/healthz >/dev/null 2>&1 && break
    sleep 0.1
  done
  "$BIN" cluster init --endpoint http://127.0.0.1:18101 >/dev/null
  for _ in $(seq 100); do
    curl -fs http://127.0.0.1:18101/readyz >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fs http://127.0.0.1:18101/readyz >/dev/null
}
