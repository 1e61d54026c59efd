#!/usr/bin/env bash
# Builds the aspen image without a registry: the binary (and, if it is dynamically linked,
# the shared libraries ldd lists for it) goes into a root filesystem tarball that
# `docker import` turns into an image. Nothing is pulled, so it works offline and on
# engines that cannot reach Docker Hub.
#
#   deploy/image.sh                       # static release binary, built here (10-15 min)
#   deploy/image.sh --binary target/debug/aspen --tag aspen:dev   # an existing binary
#
# Built as aspen:local (the default), it then writes the compose project's configs with
# deploy/compose/configure.sh (it keeps existing identities), so `docker compose up -d` in
# deploy/compose is the one command left; --no-configure skips that.
#
# The image has the layout deploy/Dockerfile builds: /usr/local/bin/aspen as the
# entrypoint, user aspen (10001) owning the data dir /var/lib/aspen, configs expected
# under /etc/aspen, and nothing else (no shell).
set -euo pipefail

usage() {
  cat <<'EOF'
usage: deploy/image.sh [--binary FILE] [--tag IMAGE] [--no-configure]
  --binary FILE  put this aspen binary in the image instead of building the static
                 release binary (RUSTFLAGS="-C target-feature=+crt-static" cargo build
                 --release --target x86_64-unknown-linux-gnu --bin aspen)
  --tag IMAGE    the image's name (default: aspen:local)
  --no-configure do not write deploy/compose's configs afterwards (done only for the
                 default tag, aspen:local, which the compose project uses)
EOF
}

root_dir="$(cd "$(dirname "$0")/.." && pwd)"
binary=""
tag=aspen:local
configure=1
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --no-configure) configure=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "image.sh: unknown argument $1" >&2; usage >&2; exit 1 ;;
  esac
done

# The image's user: a fixed id, so volumes and files made for it keep their owner.
uid=10001

if [ -z "$binary" ]; then
  target=x86_64-unknown-linux-gnu
  echo "building the static release binary (cargo build --release --target $target)"
  (cd "$root_dir" && RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked --target "$target" --bin aspen)
  binary="${CARGO_TARGET_DIR:-$root_dir/target}/$target/release/aspen"
fi
if [ ! -x "$binary" ]; then
  echo "image.sh: $binary is not an executable" >&2
  exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/aspen" "$rootfs/var/lib/aspen" "$rootfs/tmp"
# Debug info (most of a debug build's size) is left out; symbols stay, for backtraces.
strip --strip-debug -o "$rootfs/usr/local/bin/aspen" "$binary"
chmod 0755 "$rootfs/usr/local/bin/aspen"
chmod 1777 "$rootfs/tmp"
printf 'root:x:0:0:root:/:/sbin/nologin\naspen:x:%s:%s:aspen:/var/lib/aspen:/sbin/nologin\n' \
  "$uid" "$uid" >"$rootfs/etc/passwd"
printf 'root:x:0:\naspen:x:%s:\n' "$uid" >"$rootfs/etc/group"

# A dynamically linked binary needs its loader and libraries, at the paths ldd names.
libs=0
if ldd "$binary" >/dev/null 2>&1; then
  while read -r lib; do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
    libs=$((libs + 1))
  done < <(ldd "$binary" | grep -oE '/[^ ]+' | sort -u)
fi

# Everything owned by root except the data dir, which belongs to the image's user.
tar --numeric-owner --owner=0 --group=0 -C "$rootfs" --exclude=./var/lib/aspen \
  -cf "$work/rootfs.tar" .
tar --numeric-owner --owner="$uid" --group="$uid" -C "$rootfs" -rf "$work/rootfs.tar" \
  ./var/lib/aspen
docker import \
  --change 'ENTRYPOINT ["/usr/local/bin/aspen"]' \
  --change 'CMD ["--help"]' \
  --change "USER $uid:$uid" \
  --change 'WORKDIR /var/lib/aspen' \
  --change 'EXPOSE 7070/tcp 7401/udp' \
  --message "aspen from $(basename "$binary") ($libs shared libraries)" \
  "$work/rootfs.tar" "$tag" >/dev/null
size=$(docker image inspect "$tag" --format '{{.Size}}')
echo "built $tag from $binary: $((size / 1024 / 1024)) MiB, $libs shared libraries"

if [ "$configure" = 1 ] && [ "$tag" = aspen:local ]; then
  echo "writing the compose project's configs (deploy/compose/configure.sh)"
  "$root_dir/deploy/compose/configure.sh"
  echo "ready: cd deploy/compose && docker compose up -d"
fi
