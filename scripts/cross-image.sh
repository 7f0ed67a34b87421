#!/usr/bin/env bash
# Sets up this machine for `cross` (cross-rs) with podman and no registry but the
# package registries: builds the container image that Cross.toml names for the arm
# targets, from Debian packages and zig from PyPI, configures podman so that it runs
# containers here, installs `cross` from crates.io and the Rust pieces that the builds
# take from the host. After it, from the top of a checkout (docs/release.md):
#
#   export CROSS_CONTAINER_ENGINE=podman
#   cross +1.95.0 build --release --locked --target aarch64-unknown-linux-musl
#   CROSS_CUSTOM_TOOLCHAIN=1 cross +1.95.0 build --release --locked --target armv7-unknown-linux-musleabihf
#   CROSS_CUSTOM_TOOLCHAIN=1 cross +1.95.0 build --release --locked --target arm-unknown-linux-musleabihf
#
#   scripts/cross-image.sh            set up; the image is rebuilt only when its recipe changed
#   scripts/cross-image.sh --rebuild  build the image again even if it is current
#
# What it does, each step skipped when already done (safe to interrupt and repeat):
#  1. Host packages: podman, runc and debootstrap (Debian).
#  2. podman's settings, in /etc/containers/containers.conf.d/50-fleet-agent-cross.conf,
#     which every podman command reads, so `cross` inherits them: the runc runtime (crun fails on this
#     machine's hybrid cgroups), the cgroupfs cgroup manager (no systemd), and explicit
#     ulimits: nofile at the hard limit (podman's default of 1048576 is above it) and
#     nproc at min(hard limit, 32768) (podman lowers its own nproc limit to 32768, and
#     runc cannot raise a container's above it: "error setting rlimit type 6").
#  3. cross 0.2.5 (cargo install --locked), and for the pinned toolchain (1.95.0, the
#     one scripts/build-release.sh builds with) the aarch64 musl standard library and
#     rust-src (the armv7 and armv6 builds compile std from source).
#  4. The image, in two layers:
#     - base, localhost/fleet-agent-cross-base:<recipe>: Debian bookworm (debootstrap
#       --variant=minbase) with gcc and libc6-dev (build scripts and proc macros are
#       built for the host inside the container) and ca-certificates, plus zig
#       (ziglang from PyPI) in /opt/zig. Minutes to build; keyed on its recipe alone.
#     - localhost/fleet-agent-cross:bookworm (the name in Cross.toml): the base plus
#       scripts/cross/zig-cc and its links (zig as the C compiler, archiver and linker
#       of each arm target) and the host's CA bundle (cargo inside downloads crates,
#       e.g. the standard library's, and must trust what the host trusts). Seconds to
#       build (podman build, COPY only); carries its recipe in a label.
#     A new image is made under a temporary name and then tagged: the name in
#     Cross.toml always points at a complete image.
#
# Environment: FLEET_CROSS_CACHE (default /var/cache/fleet-agent-cross: debootstrap's
# downloads), FLEET_CROSS_MIRROR (default http://deb.debian.org/debian).
# Needs root (debootstrap, rootful podman).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

SUITE=bookworm
INCLUDE=gcc,libc6-dev,ca-certificates
ZIG_VERSION=0.17.1
CROSS_VERSION=0.2.5
# cross 0.2.5 reads `rustup toolchain list` expecting "name (default)"; rustup 1.28+
# prints "stable-... (active, default)", which cross takes for a missing toolchain and
# "installs" with `rustup toolchain add`, moving the host's stable to the newest
# release (seen here: 1.95.0 -> 1.99.1, from a bare `cross --version` in the checkout).
# A toolchain named by its version is listed without annotations: always `cross +1.95.0`.
TOOLCHAIN=1.95.0
IMAGE=localhost/fleet-agent-cross:$SUITE
BASE_REPO=localhost/fleet-agent-cross-base
# Anything that changes the base must change BASE_RECIPE.
BASE_RECIPE="fleet-agent-cross-base v1 suite=$SUITE variant=minbase include=$INCLUDE zig=$ZIG_VERSION"

log() { echo "cross-image: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

rebuild=0
case "${1:-}" in
  --rebuild) rebuild=1 ;;
  "") ;;
  *) die "usage: $0 [--rebuild]" ;;
esac
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, rootful podman)"

cache=${FLEET_CROSS_CACHE:-/var/cache/fleet-agent-cross}
mirror=${FLEET_CROSS_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$cache/debootstrap-debs"
exec 9>"$cache/.lock"
flock 9

# --- 1. host packages ------------------------------------------------------------------

need=()
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v python3 >/dev/null || need+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
if [ ${#need[@]} -gt 0 ]; then
  log "installing on the host: ${need[*]}"
  # One apt at a time on this host (other jobs may be installing too).
  flock /tmp/host-apt.lock sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"' \
    apt "${need[@]}" >&2 || die "cannot install ${need[*]}"
fi

# --- 2. podman settings ------------------------------------------------------------------

# write_if_changed FILE: stdin to FILE, atomically, only if the content differs.
write_if_changed() {
  local file=$1 tmp
  tmp=$(mktemp "$file.XXXXXX")
  cat >"$tmp"
  if cmp -s "$tmp" "$file"; then
    rm -f "$tmp"
    return 0
  fi
  chmod 644 "$tmp"
  sync "$tmp"
  mv -f "$tmp" "$file"
  sync "$(dirname "$file")"
  log "wrote $file"
}

hard_nofile=$(ulimit -Hn)
[ "$hard_nofile" != unlimited ] || hard_nofile=1048576
hard_nproc=$(ulimit -Hu)
[ "$hard_nproc" != unlimited ] || hard_nproc=32768
[ "$hard_nproc" -le 32768 ] || hard_nproc=32768
conf_dir=/etc/containers/containers.conf.d
mkdir -p "$conf_dir"
write_if_changed "$conf_dir/50-fleet-agent-cross.conf" <<EOF
# Written by fleet-agent's scripts/cross-image.sh: what podman needs to run containers
# on this machine (and so \`cross\` with CROSS_CONTAINER_ENGINE=podman). The limits are
# this machine's hard limits; the script rewrites them when they change.
[containers]
default_ulimits = ["nofile=$hard_nofile:$hard_nofile", "nproc=$hard_nproc:$hard_nproc"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
EOF

# --- 3. cross and the toolchain's pieces -------------------------------------------------

# Not `cross --version`: in a directory with a Cargo.toml, cross goes on to its toolchain
# step and would "install" (update) stable, as said above TOOLCHAIN.
if ! cargo install --list | grep -qx "cross v$CROSS_VERSION:"; then
  log "installing cross $CROSS_VERSION (cargo install)"
  cargo install --locked --quiet cross --version "$CROSS_VERSION" >&2 || die "cargo install cross failed"
fi
command -v rustup >/dev/null || die "needs rustup (the toolchain that cross mounts into the container)"
rustup run "$TOOLCHAIN" rustc --version >/dev/null 2>&1 ||
  rustup toolchain install "$TOOLCHAIN" --profile minimal >&2 || die "cannot install toolchain $TOOLCHAIN"
rustup target list --toolchain "$TOOLCHAIN" --installed | grep -qx aarch64-unknown-linux-musl ||
  rustup target add aarch64-unknown-linux-musl --toolchain "$TOOLCHAIN" >&2 || die "cannot add aarch64-unknown-linux-musl"
rustup component list --toolchain "$TOOLCHAIN" --installed | grep -q '^rust-src' ||
  rustup component add rust-src --toolchain "$TOOLCHAIN" >&2 || die "cannot add rust-src"

# --- 4. the image ------------------------------------------------------------------------

base_tag=$(printf '%s' "$BASE_RECIPE" | sha256sum | cut -c1-16)
base=$BASE_REPO:$base_tag
ca_bundle=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
[ -f "$ca_bundle" ] || die "no CA bundle at $ca_bundle (set SSL_CERT_FILE)"

# The top layer's build context: its recipe is the hash of all of it.
ctx=$(mktemp -d)
rootfs=
cleanup() {
  rm -rf "$ctx"
  if [ -n "$rootfs" ]; then
    # debootstrap mounts these while it installs, and may leave them after a failure.
    for m in proc sys dev/pts dev; do umount -l "$rootfs/$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$rootfs"
  fi
}
trap cleanup EXIT
mkdir -p "$ctx/bin"
cp "$here/scripts/cross/zig-cc" "$ctx/bin/zig-cc"
chmod 755 "$ctx/bin/zig-cc"
for t in aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf arm-unknown-linux-musleabihf; do
  ln -s zig-cc "$ctx/bin/$t-cc"
  ln -s zig-cc "$ctx/bin/$t-ar"
done
cp "$ca_bundle" "$ctx/ca-certificates.crt"
cat >"$ctx/Containerfile" <<EOF
FROM $base
COPY bin/ /usr/local/bin/
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
EOF
# A tar of the context with fixed names, owners and times: its hash changes only when
# a file, a link or a mode does.
recipe=$(tar -C "$ctx" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -c . |
  sha256sum | cut -c1-16)

current=$(podman image inspect --format '{{index .Labels "fleet-agent.cross-recipe"}}' "$IMAGE" 2>/dev/null || true)
if [ $rebuild = 0 ] && [ "$current" = "$recipe" ]; then
  log "$IMAGE is current (recipe $recipe)"
  exit 0
fi

start=$(date +%s)
if [ $rebuild = 1 ] || ! podman image exists "$base"; then
  rootfs=$(mktemp -d "$cache/.rootfs.XXXXXX")
  chmod 755 "$rootfs"
  log "debootstrap $SUITE from $mirror (cache $cache/debootstrap-debs)"
  if ! debootstrap --variant=minbase --include="$INCLUDE" --cache-dir="$cache/debootstrap-debs" \
    "$SUITE" "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1; then
    tail -n 30 "$cache/debootstrap.log" >&2
    die "debootstrap failed (log: $cache/debootstrap.log)"
  fi
  log "zig $ZIG_VERSION from PyPI (ziglang)"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps \
    --target "$rootfs/opt/.ziglang" "ziglang==$ZIG_VERSION" >&2 || die "pip install ziglang failed"
  mv "$rootfs/opt/.ziglang/ziglang" "$rootfs/opt/zig"
  rm -rf "$rootfs/opt/.ziglang"
  ln -s /opt/zig/zig "$rootfs/usr/local/bin/zig"
  find "$rootfs/var/cache/apt/archives" -maxdepth 1 -name '*.deb' -delete
  rm -rf "$rootfs/var/lib/apt/lists/"* "$rootfs/var/log/"*.log "$rootfs/debootstrap"
  log "podman import $base"
  # /dev's nodes stay out: podman gives every container its own /dev.
  tar -C "$rootfs" --numeric-owner --exclude='./dev/*' -c . | podman import --quiet - "$base" >/dev/null ||
    die "podman import failed"
  rm -rf --one-file-system "$rootfs"
  rootfs=
fi

build_tag=localhost/fleet-agent-cross:build-$$
podman build --pull=never --quiet --label "fleet-agent.cross-recipe=$recipe" -t "$build_tag" "$ctx" >/dev/null ||
  die "podman build failed"
old=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
podman tag "$build_tag" "$IMAGE"
podman untag "$build_tag" "$build_tag"
# Older images: the previous top layer, and bases of other recipes.
if [ -n "$old" ] && [ "$old" != "$(podman image inspect --format '{{.Id}}' "$IMAGE")" ]; then
  podman rmi "$old" >/dev/null 2>&1 || true
fi
podman images --format '{{.Repository}}:{{.Tag}}' "$BASE_REPO" | while read -r b; do
  [ "$b" = "$base" ] || podman rmi "$b" >/dev/null 2>&1 || true
done
log "built $IMAGE (recipe $recipe) in $(($(date +%s) - start)) s"
