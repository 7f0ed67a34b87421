#!/usr/bin/env bash
# The main job on the bundled example fleet: builds fleet-agent, makes a git repository
# of examples/fleet in a scratch directory, and runs pull (sync, plan, apply) into a
# scratch root, then plan (nothing left to do) and status.
#   scripts/demo.sh [SCRATCH_DIR]   (default /tmp/fleet-agent-demo; a directory that
#   exists must be one demo.sh made before: it refuses any other)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
scratch=${1:-/tmp/fleet-agent-demo}
device=${DEVICE:-7b2e9c14-0a6d-4e8f-b1c3-5d7e9f1a3b02}   # the counter screen of bakery 1

if ! command -v cargo >/dev/null || ! command -v git >/dev/null || ! command -v cc >/dev/null; then
  "$here/scripts/install-deps.sh"
fi
# The scratch directory is deleted and made again: only one that this script made
# (it leaves a marker there), or that does not exist yet; never the checkout or a parent.
marker=.fleet-agent-demo
scratch=$(realpath -m "$scratch")
case "$here/" in
  "$scratch"/*) echo "demo.sh: refusing $scratch: it holds this checkout" >&2; exit 64 ;;
esac
if [ -e "$scratch" ] && [ ! -e "$scratch/$marker" ]; then
  echo "demo.sh: refusing $scratch: it exists and was not made by demo.sh (no $marker in it); choose another directory" >&2
  exit 64
fi
echo "demo.sh: building fleet-agent (release; about 70 s the first time)" >&2
cargo build --release --manifest-path "$here/Cargo.toml"
agent="$here/target/release/fleet-agent"

rm -rf "$scratch"
mkdir -p "$scratch/root"
touch "$scratch/$marker"
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
