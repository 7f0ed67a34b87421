#!/usr/bin/env bash
# The main job on the bundled example fleet: builds fleet-agent, makes a git repository
# of examples/fleet in a scratch directory, and runs pull (sync, plan, apply) into a
# scratch root, then plan (nothing left to do) and status.
#   scripts/demo.sh [SCRATCH_DIR]   (default /tmp/fleet-agent-demo)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
scratch=${1:-/tmp/fleet-agent-demo}
device=${DEVICE:-7b2e9c14-0a6d-4e8f-b1c3-5d7e9f1a3b02}   # the counter screen of bakery 1

if ! command -v cargo >/dev/null || ! command -v git >/dev/null || ! command -v cc >/dev/null; then
  "$here/scripts/install-deps.sh"
fi
cargo build --release --quiet --manifest-path "$here/Cargo.toml"
agent="$here/target/release/fleet-agent"

rm -rf "$scratch"
mkdir -p "$scratch/root"
# The fleet repository: examples/fleet as the branches main and production.
git init -q -b main "$scratch/fleet"
cp -r "$here/examples/fleet/." "$scratch/fleet/"
git -C "$scratch/fleet" add -A
git -C "$scratch/fleet" -c user.name=demo -c user.email=demo@example.com commit -qm "Example fleet"
git -C "$scratch/fleet" branch production

cat > "$scratch/agent.toml" <<TOML
repo = "file://$scratch/fleet"
branch = "production"
device_id = "$device"
device_type = "raspberrypi3"
TOML

set -x
"$agent" --root "$scratch/root" --config "$scratch/agent.toml" pull
"$agent" --root "$scratch/root" --config "$scratch/agent.toml" plan || true
"$agent" --root "$scratch/root" --config "$scratch/agent.toml" status
set +x
echo
echo "The device's files are under $scratch/root (try: cat $scratch/root/etc/signage/page.conf)."
echo "Change $scratch/fleet, commit to production, and run the pull again to see a diff applied."
