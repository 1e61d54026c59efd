# Sourced by the benchmark scripts.
#
#   wait_ready URL    polls URL (a /readyz) every 0.2 s for up to 30 s; fails if it never
#                     answered with success

wait_ready() {
  for _ in $(seq 1 150); do
    curl -fs "$1" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  curl -fs "$1" >/dev/null
}
