#!/usr/bin/env bash
# Installs what the tests need, then runs them all: formatting, clippy, unit tests (in
# process), integration tests (real git repositories over file://, smart HTTP on
# 127.0.0.1 and an ssh client stand-in, the real binary on scratch roots), and the
# device suite (a booted Debian bookworm with systemd, real apt and dpkg; needs root),
# the kiosk screenshot test included (it downloads about 190 MB into a cache once).
# Every suite runs even when an earlier one fails; the exit code says whether all passed.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
scripts/install-deps.sh
rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
# The fuzz entry points (src/fuzz.rs) exist only with this feature (scripts/fuzz.sh).
cargo clippy --lib --features fuzzing --quiet -- -D warnings
# The device suite boots a cached Debian root filesystem: build it first if missing
# (about a minute from the Debian mirror; cached in /var/cache/fleet-agent-tests).
start=$(date +%s)
scripts/device-rootfs.sh >/dev/null
echo "device root filesystem ready in $(( $(date +%s) - start )) s"
failed=()
suite() { # NAME CARGO-TEST-ARGS...
  local name=$1 t0
  shift
  t0=$(date +%s)
  if cargo test "$@"; then
    echo "test.sh: $name passed in $(( $(date +%s) - t0 )) s"
  else
    echo "test.sh: $name FAILED after $(( $(date +%s) - t0 )) s"
    failed+=("$name")
  fi
}
suite "unit tests" --lib --bins
suite "integration tests" --test integration -- --test-threads=4
suite "device tests" --test device -- --test-threads=4
suite "kiosk screenshot test" --test device -- --ignored kiosk
if [ ${#failed[@]} -gt 0 ]; then
  echo "test.sh: failed: ${failed[*]}" >&2
  exit 1
fi
echo "test.sh: all suites passed"
