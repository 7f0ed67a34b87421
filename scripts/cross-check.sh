#!/usr/bin/env bash
# Builds the arm binaries the `cross` way (Cross.toml, podman, the image of
# scripts/cross-image.sh) and checks them like the release binaries:
#  - the README's cross command for each target, time-boxed, into target/cross;
#  - the aarch64 binary within the 4 MiB budget (4,194,304 bytes), as build-release.sh;
#  - scripts/qemu-check.sh on the cross-built binaries (qemu-user; the armv6 one with
#    the Pi 1's CPU);
#  - the same behaviour as the zigbuild binary of scripts/build-release.sh for the same
#    target, when that one is there: under qemu, the same stdout, stderr and exit
#    status for --version, --help, validate and plan of the example fleet.
#
#   scripts/cross-check.sh                 aarch64 only (what CI runs)
#   scripts/cross-check.sh --all           the three arm targets
#   scripts/cross-check.sh TARGET...       those targets
#
# Environment: CROSS_CHECK_TIMEOUT, seconds per target build (default 1200; a build
# that takes longer fails the check). Runs scripts/cross-image.sh first (the image is
# rebuilt only when its recipe changed). Needs root, like that script.
# Prints a line per step and a table of times and sizes; exits 1 if a check fails.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

arm_targets="aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf arm-unknown-linux-musleabihf"
case "${1:-}" in
  "") targets=aarch64-unknown-linux-musl ;;
  --all) targets=$arm_targets ;;
  -*)
    echo "usage: $0 [--all | TARGET...]" >&2
    exit 2
    ;;
  *) targets="$*" ;;
esac
for t in $targets; do
  [[ " $arm_targets " == *" $t "* ]] || {
    echo "cross-check: $t is not one of: $arm_targets" >&2
    exit 2
  }
done
timeout_s=${CROSS_CHECK_TIMEOUT:-1200}
budget=4194304 # bytes: 4 MiB for the aarch64 binary, as in scripts/build-release.sh
out="$here/target/cross"
zig_bins="$here/target/release-cross"
device=7b2e9c14-0a6d-4e8f-b1c3-5d7e9f1a3b02

scripts/cross-image.sh
command -v file >/dev/null ||
  flock /tmp/host-apt.lock sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends file' >&2

# The README's commands. The aarch64 std comes from rustup; the armv7 and armv6 ones are
# built from source, and CROSS_CUSTOM_TOOLCHAIN=1 keeps cross from `rustup target add`.
export CROSS_CONTAINER_ENGINE=podman CARGO_TARGET_DIR="$out"
# A time-boxed build that runs over leaves its container running: `timeout` ends cross
# and `podman run`, and podman passes the signal on, but the container's first process
# is cross's `sh -c`, and a PID 1 ignores SIGTERM. So the containers that build into
# this target directory are removed when the script ends.
stop_builds() {
  local c
  for c in $(podman ps -q 2>/dev/null); do
    if podman inspect --format '{{range .Mounts}} {{.Source}}>{{.Destination}} {{end}}' "$c" 2>/dev/null |
      grep -qF " $out>/target "; then
      podman rm -f -t 0 "$c" >/dev/null 2>&1 || true
    fi
  done
}
trap stop_builds EXIT
status=0
declare -A took
for t in $targets; do
  custom=()
  [ "$t" = aarch64-unknown-linux-musl ] || custom=(env CROSS_CUSTOM_TOOLCHAIN=1)
  echo "cross build --release --locked --target $t"
  start=$(date +%s)
  log="$out/cross-build-$t.log"
  mkdir -p "$out"
  if ! timeout "$timeout_s" "${custom[@]}" cross +1.95.0 build --release --locked --target "$t" >"$log" 2>&1; then
    took[$t]=$(($(date +%s) - start))
    echo "cross-check: the build of $t failed or took over $timeout_s s (after ${took[$t]} s); its log ($log) ends:" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
  took[$t]=$(($(date +%s) - start))
done

printf '%-34s %8s %10s  %s\n' target seconds bytes file
for t in $targets; do
  b="$out/$t/release/fleet-agent"
  size=$(stat -c %s "$b")
  printf '%-34s %8s %10s  %s\n' "$t" "${took[$t]}" "$size" "$(file -b "$b" | cut -d, -f1-2)"
  if [ "$t" = aarch64-unknown-linux-musl ] && [ "$size" -gt "$budget" ]; then
    echo "cross-check: $t binary is $size bytes, over the budget of $budget" >&2
    status=1
  fi
done

# shellcheck disable=SC2086 # one word per target
scripts/qemu-check.sh "$out" $targets || status=1

# Same behaviour as the zigbuild binary: byte-for-byte the same output of commands
# whose output depends only on the binary and the example fleet.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"; stop_builds' EXIT
for t in $targets; do
  zb="$zig_bins/$t/release/fleet-agent"
  if [ ! -x "$zb" ]; then
    echo "$t: no zigbuild binary at ${zb#"$here"/} (scripts/build-release.sh): comparison skipped"
    continue
  fi
  case $t in
    aarch64-*) run=(qemu-aarch64-static) ;;
    armv7-*) run=(qemu-arm-static) ;;
    arm-*) run=(qemu-arm-static -cpu arm1176) ;;
  esac
  echo "$t: cross-built against zigbuild-built, under ${run[*]}:"
  for spec in "--version|--version" "--help|--help" "validate|--config /dev/null validate examples/fleet" \
    "plan (pending)|plan --repo examples/fleet --device $device --device-type raspberrypi3 --config /dev/null"; do
    label=${spec%%|*} args=${spec#*|}
    for which in cross zig; do
      bin="$out/$t/release/fleet-agent"
      [ $which = cross ] || bin=$zb
      rc=0
      # shellcheck disable=SC2086 # args is a list of words
      "${run[@]}" "$bin" $args >"$scratch/$which.out" 2>"$scratch/$which.err" || rc=$?
      echo "$rc" >"$scratch/$which.rc"
    done
    if cmp -s "$scratch/cross.out" "$scratch/zig.out" && cmp -s "$scratch/cross.err" "$scratch/zig.err" &&
      cmp -s "$scratch/cross.rc" "$scratch/zig.rc"; then
      printf '  ok    %-26s same output (%s lines), exit %s\n' "$label" \
        "$(cat "$scratch/cross.out" "$scratch/cross.err" | wc -l)" "$(cat "$scratch/cross.rc")"
    else
      printf '  FAIL  %-26s differs from the zigbuild binary (built from this tree? scripts/build-release.sh)\n' "$label"
      diff <(cat "$scratch/zig.out" "$scratch/zig.err" "$scratch/zig.rc") \
        <(cat "$scratch/cross.out" "$scratch/cross.err" "$scratch/cross.rc") | sed 's/^/        | /' | head -n 30
      status=1
    fi
  done
done

if [ $status != 0 ]; then
  echo "cross-check: FAILED" >&2
  exit 1
fi
echo "cross-check: all checks passed"
