#!/usr/bin/env bash
# Writes every config of the compose project before anything starts: DESIGN's topology,
# region us (clusters us-1 and us-2) and region eu (eu-1), three nodes each and one router
# per region, federation both ways.
#
# Each node's identity is made in its own data volume with `aspen keygen` (run in the
# image, as the image's user), which prints the endpoint id; each cluster's federation
# secret with `aspen federation keygen`, in a volume of its own that the cluster's three
# nodes mount read-only; each router's identity in its own volume. From those ids it writes the TOML files under
# DIR/config, a tool identity DIR/tools.key (listed in every node's kv_clients, for
# `aspen e2e` and other tools run from this host), and DIR/.env, which docker compose
# reads. Secrets stay in the volumes (and tools.key, readable by you only); the config
# files hold only public ids and addresses.
#
# Running it again keeps every identity and secret and rewrites the same configs, so it
# is safe after `docker compose down` (volumes kept). After `down -v` it makes new ones.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: deploy/compose/configure.sh [options]
  --dir DIR        where to write config/, tools.key and .env (default: this directory,
                   so `docker compose up` here finds them)
  --project NAME   compose project name, the prefix of every volume (default: aspen)
  --image IMAGE    the aspen image (default: aspen:local; deploy/image.sh builds it)
  --net A.B        first two octets of the three /24 networks A.B.0 (the link between
                   regions), A.B.1 (region us), A.B.2 (region eu) (default: 10.203)
  --us-port PORT   loopback port of region us's router (default: 7070)
  --eu-port PORT   loopback port of region eu's router (default: 7071)
EOF
}

here="$(cd "$(dirname "$0")" && pwd)"
dir="$here"
project=aspen
image=aspen:local
net=10.203
us_port=7070
eu_port=7071
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --image) image="$2"; shift 2 ;;
    --net) net="$2"; shift 2 ;;
    --us-port) us_port="$2"; shift 2 ;;
    --eu-port) eu_port="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "configure.sh: unknown argument $1" >&2; usage >&2; exit 1 ;;
  esac
done

if ! [[ "$net" =~ ^[0-9]{1,3}\.[0-9]{1,3}$ ]]; then
  echo "configure.sh: --net must be two octets such as 10.203, not $net" >&2
  exit 1
fi
if ! [[ "$project" =~ ^[a-z0-9][a-z0-9_-]*$ ]]; then
  echo "configure.sh: --project must be lowercase letters, digits, - and _, not $project" >&2
  exit 1
fi
if ! docker image inspect "$image" >/dev/null 2>&1; then
  echo "configure.sh: no image $image; build it first (deploy/README.md: deploy/image.sh)" >&2
  exit 1
fi
mkdir -p "$dir/config"
dir="$(cd "$dir" && pwd)"

# The topology. Each cluster: its region, the third octet of its region's network, and
# the base of its nodes' last octet (node n is base + n on its region's network and on
# the link between regions, so every address is unique on the shared link).
clusters=(us-1 us-2 eu-1)
declare -A region=([us-1]=us [us-2]=us [eu-1]=eu)
declare -A region_octet=([us]=1 [eu]=2)
declare -A base=([us-1]=10 [us-2]=20 [eu-1]=30)
declare -A route=([us-1]="" [us-2]="svc-b/" [eu-1]="eu/")
regions=(us eu)
nodes=(1 2 3)
# Ports inside the containers: every container has its own addresses.
http_port=7070
iroh_port=7401
# The image's user (deploy/image.sh and deploy/Dockerfile create /var/lib/aspen for it).
uid=10001

# A volume of this project, labelled as docker compose labels its own, so that `docker
# compose up` uses it and `docker compose down -v` removes it.
volume() {
  local name="$1"
  if ! docker volume inspect "${project}_$name" >/dev/null 2>&1; then
    docker volume create \
      --label "com.docker.compose.project=$project" \
      --label "com.docker.compose.volume=$name" \
      "${project}_$name" >/dev/null
  fi
  echo "${project}_$name"
}

# Runs aspen in the image with volume $1 at /var/lib/aspen, no network.
in_volume() {
  local vol="$1"
  shift
  docker run --rm --network none --user "$uid:$uid" -v "$vol:/var/lib/aspen" "$image" "$@"
}

addr() { # cluster node network-octet
  echo "$net.$3.$((base[$1] + $2))"
}

echo "identities (aspen keygen in each node's volume):"
declare -A id
for c in "${clusters[@]}"; do
  for n in "${nodes[@]}"; do
    vol=$(volume "$c-node-$n")
    id[$c-$n]=$(in_volume "$vol" keygen --out /var/lib/aspen/iroh.key 2>/dev/null)
    echo "  $c node $n: ${id[$c-$n]}"
  done
done
for r in "${regions[@]}"; do
  vol=$(volume "router-$r")
  id[router-$r]=$(in_volume "$vol" keygen --out /var/lib/aspen/router.key 2>/dev/null)
  echo "  router $r: ${id[router-$r]}"
done
if [ ! -f "$dir/tools.key" ]; then
  docker run --rm --network none --user "$(id -u):$(id -g)" -v "$dir:/out" "$image" \
    keygen --out /out/tools.key >/dev/null 2>&1
fi
# The key is written in hex; its endpoint id is printed again (the file is kept).
id[tools]=$(docker run --rm --network none --user "$(id -u):$(id -g)" -v "$dir:/out" \
  "$image" keygen --out /out/tools.key 2>/dev/null)
echo "  tools ($dir/tools.key): ${id[tools]}"

echo "federation secrets (aspen federation keygen, in one volume per cluster its nodes share):"
declare -A namespace author
for c in "${clusters[@]}"; do
  ids_file="$dir/config/$c.federation-ids"
  # Ids written for a volume since deleted (`down -v`) name a secret that is gone.
  docker volume inspect "${project}_$c-federation" >/dev/null 2>&1 || rm -f "$ids_file"
  vol=$(volume "$c-federation")
  if [ ! -f "$ids_file" ]; then
    in_volume "$vol" federation keygen --out /var/lib/aspen/federation.key \
      | grep -E '^(namespace|author) = ' >"$ids_file.tmp"
    mv "$ids_file.tmp" "$ids_file"
  fi
  namespace[$c]=$(sed -n 's/^namespace = "\(.*\)"$/\1/p' "$ids_file")
  author[$c]=$(sed -n 's/^author = "\(.*\)"$/\1/p' "$ids_file")
  echo "  $c: namespace ${namespace[$c]}"
done

kv_clients="[\"${id[router-us]}\", \"${id[router-eu]}\", \"${id[tools]}\"]"

# [[clusters]] tables of a router config, or [[peers]], as seen from region $1: members of
# a cluster of that region at their region-network address, others at their link address.
node_list() { # viewer-region cluster
  local r="$1" c="$2" octet
  if [ "${region[$c]}" = "$r" ]; then octet=${region_octet[$r]}; else octet=0; fi
  for n in "${nodes[@]}"; do
    printf '[[clusters.nodes]]\nnode_id = %s\nendpoint_id = "%s"\naddrs = ["%s:%s"]\n\n' \
      "$n" "${id[$c-$n]}" "$(addr "$c" "$n" "$octet")" "$iroh_port"
  done
}

write_node() { # cluster node
  local c="$1" n="$2" r="${region[$1]}" file="$dir/config/$1-node-$2.toml"
  {
    echo "# Node $n of cluster $c (region $r). Written by deploy/compose/configure.sh."
    echo "node_id = $n"
    echo "cluster = \"$c\""
    echo "data_dir = \"/var/lib/aspen\""
    echo "http_addr = \"0.0.0.0:$http_port\""
    echo "iroh_bind_addr = \"0.0.0.0:$iroh_port\""
    echo "relay = \"disabled\""
    echo "# Both routers, and the tool identity in tools.key."
    echo "kv_clients = $kv_clients"
    echo
    echo "[federation]"
    echo "region = \"$r\""
    echo "secret_file = \"/etc/aspen/federation/federation.key\""
    echo
    for other in "${regions[@]}"; do
      [ "$other" = "$r" ] && continue
      echo "[[federation.export]]"
      echo "region = \"$other\""
      echo "readers = ["
      for oc in "${clusters[@]}"; do
        [ "${region[$oc]}" = "$other" ] || continue
        for on in "${nodes[@]}"; do echo "  \"${id[$oc-$on]}\","; done
      done
      echo "]"
      echo
    done
    for oc in "${clusters[@]}"; do
      [ "${region[$oc]}" = "$r" ] && continue
      echo "[[federation.import]]"
      echo "cluster = \"$oc\""
      echo "region = \"${region[$oc]}\""
      echo "namespace = \"${namespace[$oc]}\""
      echo "author = \"${author[$oc]}\""
      echo "nodes = ["
      for on in "${nodes[@]}"; do
        echo "  { endpoint_id = \"${id[$oc-$on]}\", addrs = [\"$(addr "$oc" "$on" 0):$iroh_port\"] },"
      done
      echo "]"
      echo
    done
    for p in "${nodes[@]}"; do
      [ "$p" = "$n" ] && continue
      echo "[[peers]]"
      echo "node_id = $p"
      echo "endpoint_id = \"${id[$c-$p]}\""
      echo "addrs = [\"$(addr "$c" "$p" "${region_octet[$r]}"):$iroh_port\"]"
      echo
    done
  } >"$file"
}

write_router() { # region
  local r="$1" file="$dir/config/router-$1.toml"
  {
    echo "# Router of region $r. Written by deploy/compose/configure.sh."
    echo "region = \"$r\""
    echo "http_addr = \"0.0.0.0:$http_port\""
    echo "iroh_bind_addr = \"0.0.0.0:$iroh_port\""
    echo "secret_key_file = \"/var/lib/aspen/router.key\""
    echo "relay = \"disabled\""
    echo
    for c in "${clusters[@]}"; do
      printf '[[clusters]]\nname = "%s"\nregion = "%s"\n\n' "$c" "${region[$c]}"
      node_list "$r" "$c"
    done
    for c in "${clusters[@]}"; do
      printf '[[routes]]\nprefix = "%s"\ncluster = "%s"\n\n' "${route[$c]}" "$c"
    done
  } >"$file"
}

for c in "${clusters[@]}"; do
  for n in "${nodes[@]}"; do write_node "$c" "$n"; done
done
for r in "${regions[@]}"; do write_router "$r"; done

cat >"$dir/.env" <<EOF
# Written by deploy/compose/configure.sh; docker compose reads it.
COMPOSE_PROJECT_NAME=$project
ASPEN_IMAGE=$image
ASPEN_NET=$net
ASPEN_US_PORT=$us_port
ASPEN_EU_PORT=$eu_port
EOF
echo "wrote $dir/config/*.toml and $dir/.env; start with: docker compose up -d (in $dir)"
