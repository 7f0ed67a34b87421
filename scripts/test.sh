#!/usr/bin/env bash
# Installs what the tests need, then runs them all: formatting, clippy, unit and
# integration tests (real git repositories over file://, smart HTTP on 127.0.0.1 and
# an ssh client stand-in, the real binary on scratch roots), and the device suite
# (a booted Debian bookworm with systemd, real apt and dpkg; needs root).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
scripts/install-deps.sh
rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
# The device suite boots a cached Debian root filesystem: build it first if missing
# (about a minute from the Debian mirror; cached in /var/cache/fleet-agent-tests).
start=$(date +%s)
scripts/device-rootfs.sh >/dev/null
echo "device root filesystem ready in $(( $(date +%s) - start )) s"
cargo test --all-targets -- --test-threads=4
