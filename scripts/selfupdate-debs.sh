#!/usr/bin/env bash
# Builds amd64 fleet-agent .debs of several versions from this one source tree, for the
# self-update tests (tests/device/self_update.rs): the version is set at build time
# with FLEET_AGENT_VERSION (`fleet-agent --version` prints it), the package version is
# VERSION-1, and the package is made by cargo-deb from [package.metadata.deb], as
# scripts/build-release.sh does.
#
#   scripts/selfupdate-debs.sh OUTDIR VERSION...     e.g. OUTDIR 0.1.1 0.1.2
#
# Prints one line per package: the path of OUTDIR/fleet-agent_VERSION-1_amd64.deb.
# A package whose stamp (the version and a hash of every file that goes into it) has
# not changed is not built again.
#
# Differences from a release package, on purpose (they make the build take seconds
# instead of minutes and change nothing the tests look at): the binary is built for the
# host's x86_64-unknown-linux-gnu (dynamically linked against glibc, which every Debian
# device has; the release .deb carries a static musl binary), without LTO, at
# opt-level 1, in target/selfupdate-debs (never target/release, whose lock a running
# `cargo test` holds). cargo-deb adds the libc6 dependency it finds.
# Needs: cargo, cargo-deb (installed if missing), dpkg-deb.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
die() { echo "selfupdate-debs: error: $*" >&2; exit 1; }
[ $# -ge 2 ] || die "usage: $0 OUTDIR VERSION..."
out=$1
shift
for v in "$@"; do
  [[ $v =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "$v is not a version X.Y.Z"
done
mkdir -p "$out"
out=$(cd "$out" && pwd)

command -v cargo-deb >/dev/null ||
  cargo install --locked --quiet cargo-deb --version 3.8.0 >&2 ||
  die "cannot install cargo-deb"

target=x86_64-unknown-linux-gnu
export CARGO_TARGET_DIR="$here/target/selfupdate-debs"
export CARGO_PROFILE_RELEASE_LTO=false
export CARGO_PROFILE_RELEASE_OPT_LEVEL=1
export CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
# Everything that goes into the package.
sources=$(git ls-files -z -- Cargo.toml Cargo.lock src debian systemd roles README.md |
  xargs -0 sha256sum | sha256sum | cut -c1-16)
# Builds of one tree at a time (two test processes may ask at once).
mkdir -p "$CARGO_TARGET_DIR"
exec 9>>"$CARGO_TARGET_DIR/.selfupdate-debs.lock"
flock 9

for v in "$@"; do
  deb=$out/fleet-agent_${v}-1_amd64.deb
  stamp=$deb.stamp
  if [ -f "$deb" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$v $sources" ]; then
    echo "$deb"
    continue
  fi
  rm -f "$deb" "$stamp"
  log=$(mktemp)
  if ! FLEET_AGENT_VERSION=$v cargo build --release --locked --target "$target" >"$log" 2>&1 ||
    ! cargo run --quiet --locked --example completions -- "$here/target/completions" >>"$log" 2>&1 ||
    ! cargo deb --no-build --no-strip --target "$target" --deb-version "$v-1" \
      --output "$deb.tmp" >>"$log" 2>&1; then
    tail -n 60 "$log" >&2
    rm -f "$log" "$deb.tmp"
    die "building $v failed"
  fi
  rm -f "$log"
  got=$(dpkg-deb -f "$deb.tmp" Version)
  [ "$got" = "$v-1" ] || die "$deb.tmp has version $got"
  mv "$deb.tmp" "$deb"
  echo "$v $sources" >"$stamp"
  echo "$deb"
done
