#!/usr/bin/env bash
# Builds the release artifacts without Docker, on a plain Debian machine:
#  - static musl binaries with cargo-zigbuild (zig from PyPI as the C compiler and
#    linker, also for libgit2, zlib and ring's C code):
#      aarch64-unknown-linux-musl        Pi 3/4/5 and other arm64 boards   (.deb: arm64)
#      armv7-unknown-linux-musleabihf    Pi 2/3 with a 32-bit OS           (.deb: armhf)
#      arm-unknown-linux-musleabihf      Pi 1 / Zero (ARMv6)     (binary; or the armhf .deb)
#      x86_64-unknown-linux-musl         tests and x86 devices             (.deb: amd64)
#    The arm targets are built with std from source (rust-src, -Zbuild-std through
#    RUSTC_BOOTSTRAP=1 on the pinned stable toolchain, and -C link-self-contained=no so
#    that zig supplies musl's crt files), with std's `optimize_for_size` feature: std is
#    then compiled with the binary's own profile (opt-level "z", LTO through std) and
#    its size-optimized code paths, which makes the aarch64 binary 348 KB smaller
#    (4,192,504 -> 3,844,008 bytes measured) with the same behaviour and panic messages.
#    For armv7 and armv6 it is also the only way: the mirror of this kind of machine
#    has no std for them. x86_64 (tests, amd64 .deb) uses rustup's std.
#  - the .debs with cargo-deb from those binaries (dist/fleet-agent_<version>_<arch>.deb),
#  - checks: the aarch64 binary within the 4 MiB budget, lintian clean on every .deb.
# Installs what is missing (Rust targets, rust-src, ziglang, cargo-zigbuild, cargo-deb,
# lintian). Prints a short summary on success; the log of the failing step otherwise.
#
#   scripts/build-release.sh                       every target
#   TARGETS="aarch64-unknown-linux-musl" scripts/build-release.sh
#   ARMHF_TARGET=arm-unknown-linux-musleabihf scripts/build-release.sh   (see below)
#
# Builds go to target/release-cross (never target/, so they do not wait for the lock of
# a developer's cargo build). The .debs go to dist/. scripts/qemu-check.sh then runs the
# arm binaries under qemu.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

export CARGO_TARGET_DIR="$here/target/release-cross"
dist="$here/dist"
tools="$CARGO_TARGET_DIR/tools"
budget=4194304 # bytes: 4 MiB for the aarch64 binary (issue "Build and ship")
budget_target=aarch64-unknown-linux-musl
targets=${TARGETS:-aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf arm-unknown-linux-musleabihf x86_64-unknown-linux-musl}
# Debian architecture of each target's package. Raspberry Pi OS's armhf is ARMv6, and
# an armv7 binary dies with SIGILL on a Pi 1 / Zero: the armhf package carries the
# ARMv6 binary, which runs on every 32-bit Pi (ARMv7 boards too).
# ARMHF_TARGET=armv7-unknown-linux-musleabihf packages the armv7 binary instead.
armhf_target=${ARMHF_TARGET:-arm-unknown-linux-musleabihf}
declare -A deb_arch=(
  [aarch64-unknown-linux-musl]=arm64
  [$armhf_target]=armhf
  [x86_64-unknown-linux-musl]=amd64
)

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

# step NAME CMD...: runs CMD with its output in a log that is shown only if it fails.
step() {
  local name=$1
  shift
  if ! "$@" >"$logs/$name.log" 2>&1; then
    echo "build-release: $name failed: $*" >&2
    tail -n 80 "$logs/$name.log" >&2
    exit 1
  fi
}

apt_install() {
  local sudo=
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# --- tools -------------------------------------------------------------------------

# git, a host C compiler (build scripts), python3, Rust via rustup.
step install-deps scripts/install-deps.sh
command -v rustup >/dev/null || {
  echo "build-release: needs rustup (cross targets and rust-src)" >&2
  exit 1
}

# Debian tools: lintian (it brings man-db, which systemd-analyze verify uses to check
# Documentation=man:...), file, systemd-analyze (works without a running systemd).
need=()
command -v lintian >/dev/null || need+=(lintian)
command -v md5sum >/dev/null || need+=(coreutils)
command -v file >/dev/null || need+=(file)
command -v systemd-analyze >/dev/null || need+=(systemd)
if [ ${#need[@]} -gt 0 ]; then step apt-install apt_install "${need[@]}"; fi

# zig: a zig on PATH, `python3 -m ziglang`, or ziglang installed under target/ (pip's
# --target install is allowed on Debian's externally managed Python).
if [ -d "$tools/python/ziglang" ]; then export PYTHONPATH="$tools/python${PYTHONPATH:+:$PYTHONPATH}"; fi
if ! python3 -m ziglang version >/dev/null 2>&1 && ! zig version >/dev/null 2>&1; then
  python3 -m pip --version >/dev/null 2>&1 || step apt-install-pip apt_install python3-pip
  step install-ziglang python3 -m pip install --quiet --disable-pip-version-check \
    --target "$tools/python" "ziglang==0.17.1"
  export PYTHONPATH="$tools/python${PYTHONPATH:+:$PYTHONPATH}"
fi
command -v cargo-zigbuild >/dev/null || step install-cargo-zigbuild cargo install --locked --quiet cargo-zigbuild --version 0.24.1
command -v cargo-deb >/dev/null || step install-cargo-deb cargo install --locked --quiet cargo-deb --version 3.8.0

installed_targets=$(rustup target list --installed)
have_std() { grep -qx "$1" <<<"$installed_targets"; }
for t in $targets; do
  # Use the plain target where rustup has its std; fall back to build-std where not.
  have_std "$t" || rustup target add "$t" >/dev/null 2>&1 || true
done
installed_targets=$(rustup target list --installed)
std_from_source() { [[ "$1" != x86_64-* ]] || ! have_std "$1"; }
for t in $targets; do
  if std_from_source "$t"; then
    rustup component list --installed | grep -q '^rust-src' || step rust-src rustup component add rust-src
    break
  fi
done

# --- version check -----------------------------------------------------------------

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
deb_version=$(sed -n '1s/^fleet-agent (\([^)]*\)).*/\1/p' debian/changelog)
if [ "$deb_version" != "$version-1" ]; then
  echo "build-release: debian/changelog's top entry is $deb_version, Cargo.toml's version is $version: add a changelog entry for $version-1" >&2
  exit 1
fi

# --- binaries ----------------------------------------------------------------------

binary() { echo "$CARGO_TARGET_DIR/$1/release/fleet-agent"; }

for t in $targets; do
  if ! std_from_source "$t"; then
    step "build-$t" cargo zigbuild --release --locked --target "$t"
  else
    # std from source; musl's crt1.o etc. from zig instead of rustc's self-contained copy.
    var="CARGO_TARGET_$(tr 'a-z-' 'A-Z_' <<<"$t")_RUSTFLAGS"
    step "build-$t" env RUSTC_BOOTSTRAP=1 "$var=-C link-self-contained=no" \
      cargo zigbuild --release --locked --target "$t" -Zbuild-std=std,panic_abort \
      -Zbuild-std-features=optimize_for_size
  fi
done

# --- packages ----------------------------------------------------------------------

# cargo-deb writes no md5sums (dpkg --verify needs them, e.g. to find a damaged SD card)
# and writes an empty "Depends:" for a static binary; both are fixed by repacking.
finish_deb() {
  local deb=$1 dir="$logs/deb"
  # (runs inside `if`, where set -e does not apply: every command is checked)
  rm -rf "$dir" && dpkg-deb -R "$deb" "$dir" || return 1
  sed -i '/^Depends: *$/d' "$dir/DEBIAN/control" || return 1
  touch "$dir/DEBIAN/conffiles" || return 1
  (
    cd "$dir" &&
      find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | LC_ALL=C sort |
      grep -vxF -f <(sed 's|^/||' DEBIAN/conffiles) | xargs -r -d '\n' md5sum >DEBIAN/md5sums
  ) || return 1
  [ -s "$dir/DEBIAN/conffiles" ] || rm "$dir/DEBIAN/conffiles" || return 1
  dpkg-deb --root-owner-group -Zxz -b "$dir" "$deb" >/dev/null
}

mkdir -p "$dist"
# Shell completions (bash, zsh, fish) from the clap definition, for the .debs.
step completions cargo run --quiet --locked --example completions -- "$here/target/completions"
debs=()
for t in $targets; do
  arch=${deb_arch[$t]:-}
  [ -n "$arch" ] || continue
  deb="$dist/fleet-agent_${version}-1_${arch}.deb"
  # --no-strip: cargo already stripped the binary (profile.release strip = true), and
  # the host's strip does not know foreign architectures.
  step "deb-$arch" cargo deb --no-build --no-strip --target "$t" --output "$deb"
  step "repack-$arch" finish_deb "$deb"
  debs+=("$deb")
done

# --- checks ------------------------------------------------------------------------

status=0
printf '%-34s %10s  %s\n' target bytes file
for t in $targets; do
  b=$(binary "$t")
  size=$(stat -c %s "$b")
  printf '%-34s %10s  %s\n' "$t" "$size" "$(file -b "$b" | cut -d, -f1-2)"
  if [ "$t" = "$budget_target" ] && [ "$size" -gt "$budget" ]; then
    echo "build-release: $t binary is $size bytes, over the budget of $budget" >&2
    status=1
  fi
done

if [ ${#debs[@]} -gt 0 ]; then
  # Errors and warnings fail; the overrides in debian/lintian-overrides carry reasons.
  if ! lintian --fail-on error,warning "${debs[@]}" >"$logs/lintian.log" 2>&1; then
    echo "build-release: lintian:" >&2
    grep -v 'running with root privileges' "$logs/lintian.log" >&2
    status=1
  fi
  # The units as installed: the package's files plus the host's systemd units (for
  # sysinit.target and the like) in a scratch root; Documentation= checked against the
  # package's man page. Any message counts as a failure (unknown keys only warn).
  vroot="$logs/verify-root"
  mkdir -p "$vroot/usr/lib/systemd/system"
  dpkg-deb -x "${debs[0]}" "$vroot"
  cp -an /usr/lib/systemd/system/. "$vroot/usr/lib/systemd/system/" 2>/dev/null || true
  if ! MANPATH="$vroot/usr/share/man" systemd-analyze verify --root="$vroot" \
    "$vroot/usr/lib/systemd/system/fleet-agent.service" \
    "$vroot/usr/lib/systemd/system/fleet-agent.timer" >"$logs/verify.log" 2>&1 ||
    [ -s "$logs/verify.log" ]; then
    echo "build-release: systemd-analyze verify:" >&2
    cat "$logs/verify.log" >&2
    status=1
  fi
  for d in "${debs[@]}"; do echo "${d#"$here"/}"; done
fi
exit $status
