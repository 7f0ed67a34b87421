#!/usr/bin/env bash
# Runs the arm release binaries under qemu user-mode emulation (Debian's
# qemu-user-static, installed if missing) and checks what they do:
#   --version                                       exit 0, "fleet-agent <version>"
#   validate examples/fleet                         exit 0
#   plan --repo examples/fleet --device ... --device-type raspberrypi3 --config /dev/null
#                                                   exit 2 (changes pending)
#   pull from the example fleet served by smart HTTP on 127.0.0.1 into a scratch root
#                                                   exit 0
#   a second pull                                   exit 0, a no-op: the server sees one
#                                                   refs request and no pack request
#   plan after the pulls                            exit 0 (nothing to do)
# for aarch64 (qemu-aarch64-static), armv7 (qemu-arm-static) and, when it was built,
# armv6 (qemu-arm-static -cpu arm1176, the Pi 1 / Zero CPU).
#
#   scripts/qemu-check.sh                  after scripts/build-release.sh
#   scripts/qemu-check.sh DIR [TARGET...]  the binaries in DIR/<target>/release/ instead
#                                          (target/cross after `cross`); with TARGETs,
#                                          only those, each required
#
# Prints one line per check; exits 1 if any check fails.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bins=$(realpath -m "${1:-$here/target/release-cross}")
only=("${@:2}")
cd "$here"
device=7b2e9c14-0a6d-4e8f-b1c3-5d7e9f1a3b02
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)

scripts/install-deps.sh >/dev/null
if ! command -v qemu-aarch64-static >/dev/null || ! command -v qemu-arm-static >/dev/null; then
  sudo=
  [ "$(id -u)" = 0 ] || sudo=sudo
  {
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-user-static
  } >/dev/null
fi

scratch=$(mktemp -d)
server=
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; fi
  rm -rf "$scratch"
}
trap cleanup EXIT

# The fleet repository: examples/fleet as branches main and production, served by git's
# http-backend on a free port of 127.0.0.1.
. "$(dirname "$0")/lib/example-fleet.sh"
serve_example_fleet "$scratch" || { cat "$scratch/http.log" >&2; exit 1; }

failed=0
# check LABEL EXPECTED_EXIT CMD...: runs CMD, compares its exit status, prints one line;
# the command's output is shown only on a mismatch.
check() {
  local label=$1 want=$2 got=0
  shift 2
  "$@" >"$scratch/out" 2>&1 || got=$?
  if [ "$got" = "$want" ]; then
    printf '  ok    %-26s exit %s\n' "$label" "$got"
  else
    printf '  FAIL  %-26s exit %s, expected %s\n' "$label" "$got" "$want"
    sed 's/^/        | /' "$scratch/out" | tail -n 30
    failed=1
  fi
}

checked=0
for spec in aarch64-unknown-linux-musl:qemu-aarch64-static: \
  armv7-unknown-linux-musleabihf:qemu-arm-static: \
  arm-unknown-linux-musleabihf:qemu-arm-static:arm1176; do
  IFS=: read -r target qemu cpu <<<"$spec"
  if [ ${#only[@]} -gt 0 ] && [[ " ${only[*]} " != *" $target "* ]]; then continue; fi
  bin="$bins/$target/release/fleet-agent"
  if [ ! -x "$bin" ]; then
    case $target in
      arm-*) [ ${#only[@]} -gt 0 ] || continue ;; # armv6 is optional unless asked for
    esac
    echo "qemu-check: $bin is missing: build it first (scripts/build-release.sh, or cross)" >&2
    exit 1
  fi
  run=("$qemu")
  [ -z "$cpu" ] || run+=(-cpu "$cpu")
  run+=("$bin")
  echo "$target ($qemu${cpu:+ -cpu $cpu}):"
  checked=$((checked + 1))

  check "--version" 0 "${run[@]}" --version
  if [ "$(cat "$scratch/out")" != "fleet-agent $version" ]; then
    echo "  FAIL  --version printed: $(cat "$scratch/out")"
    failed=1
  fi
  check "validate" 0 "${run[@]}" --config /dev/null validate examples/fleet
  check "plan --repo (pending)" 2 "${run[@]}" plan --repo examples/fleet --device "$device" \
    --device-type raspberrypi3 --config /dev/null

  root="$scratch/root-$target"
  mkdir -p "$root/etc/fleet-agent"
  printf 'repo = "%s"\nbranch = "production"\ndevice_id = "%s"\ndevice_type = "raspberrypi3"\n' \
    "$url" "$device" >"$root/etc/fleet-agent/agent.toml"
  check "pull (first)" 0 "${run[@]}" --root "$root" pull
  [ -f "$root/etc/signage/page.conf" ] || {
    echo "  FAIL  pull wrote no /etc/signage/page.conf under the root"
    failed=1
  }
  : >"$scratch/http.log"
  check "pull (second, no-op)" 0 "${run[@]}" --root "$root" pull
  refs=$(grep -c 'GET /fleet.git/info/refs?service=git-upload-pack' "$scratch/http.log" || true)
  packs=$(grep -c 'POST /fleet.git/git-upload-pack' "$scratch/http.log" || true)
  if [ "$refs" = 1 ] && [ "$packs" = 0 ]; then
    printf '  ok    %-26s %s refs request, %s pack requests\n' "no-op poll on the server" "$refs" "$packs"
  else
    printf '  FAIL  %-26s %s refs requests, %s pack requests (want 1 and 0)\n' "no-op poll on the server" "$refs" "$packs"
    sed 's/^/        | /' "$scratch/http.log"
    failed=1
  fi
  check "plan after pull (none)" 0 "${run[@]}" --root "$root" plan
done

if [ "$failed" != 0 ]; then
  echo "qemu-check: FAILED" >&2
  exit 1
fi
echo "qemu-check: $checked binaries, all checks passed"
