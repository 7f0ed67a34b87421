#!/usr/bin/env bash
# Installs what the tests need, then runs them all: formatting, clippy, unit and
# integration tests (real git repositories over file://, smart HTTP on 127.0.0.1 and
# an ssh client stand-in, the real binary on scratch roots).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
scripts/install-deps.sh
rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --all-targets
