# shellcheck shell=bash
# Shell helpers shared by deploy/e2e.sh and scripts/bench-compose.sh (sourced, not run):
# which compose command this host has, and a network prefix and loopback ports that no one
# else uses, so a test project never collides with a user's deployment or another run.

# Sets compose_cmd to `docker compose` (v2) or `docker-compose` (v1); fails if neither.
# shellcheck disable=SC2034 # compose_cmd is for the script that sources this file
find_compose() {
  if docker compose version >/dev/null 2>&1; then
    compose_cmd=(docker compose)
  elif command -v docker-compose >/dev/null 2>&1; then
    compose_cmd=(docker-compose)
  else
    echo "neither \`docker compose\` nor docker-compose is installed" >&2
    return 1
  fi
}

# Prints a prefix 10.X (for the /24 networks 10.X.0, 10.X.1, 10.X.2) that no Docker
# network and no host route uses.
pick_net() {
  local used candidate
  # shellcheck disable=SC2046 # one argument per network id
  used="$(docker network inspect $(docker network ls -q) \
    --format '{{range .IPAM.Config}}{{.Subnet}} {{end}}' 2>/dev/null; ip -4 route 2>/dev/null || true)"
  for _ in $(seq 1 50); do
    candidate="10.$((100 + RANDOM % 150))"
    if ! grep -q "$candidate\." <<<"$used"; then
      echo "$candidate"
      return
    fi
  done
  echo "no free 10.X.0.0/16 for the networks" >&2
  return 1
}

# Prints a loopback TCP port nothing listens on.
pick_port() {
  local port
  for _ in $(seq 1 50); do
    port=$((20000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
  echo "no free loopback port" >&2
  return 1
}
