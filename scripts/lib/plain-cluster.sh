# Sourced by the benchmark scripts: starts a plain 3-node Aspen cluster, three
# `aspen node` processes on loopback with no federation and no router, and initialises
# it. Needs BIN (the aspen binary) and the caller's PIDS array (the nodes' pids are
# appended, for the caller's cleanup); EXTRA_NODE_TOML, when set, is added to every node's
# config (top-level settings such as kv_clients).
#
#   start_plain_cluster DIR    (node 1, the leader after init, is http://127.0.0.1:18101)
#
# With a router in front (an `aspen router` process, every key routed to the cluster):
#
#   plain_router_identity DIR    before start_plain_cluster: the router's key, and every
#                                node's kv_clients naming it (sets EXTRA_NODE_TOML)
#   start_plain_router DIR ADDR  after it: the router serving HTTP at ADDR, ready

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

plain_router_identity() {
  mkdir -p "$1"
  local id
  id=$("$BIN" keygen --out "$1/router.key" 2>/dev/null)
  export EXTRA_NODE_TOML="kv_clients = [\"$id\"]"
}

start_plain_router() {
  local dir=$1 addr=$2 i
  {
    cat <<TOML
region = "bench"
http_addr = "$addr"
secret_key_file = "$dir/router.key"
relay = "disabled"

[[clusters]]
name = "bench"
region = "bench"
TOML
    for i in 1 2 3; do
      printf '[[clusters.nodes]]\nnode_id = %s\nendpoint_id = "%s"\naddrs = ["127.0.0.1:1840%s"]\n' \
        "$i" "$("$BIN" keygen --out "$dir/cluster/node-$i/iroh.key" 2>/dev/null)" "$i"
    done
    printf '\n[[routes]]\nprefix = ""\ncluster = "bench"\n'
  } >"$dir/router.toml"
  "$BIN" router --config "$dir/router.toml" >"$dir/router.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do
    curl -fs "http://$addr/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fs "http://$addr/readyz" >/dev/null
}
