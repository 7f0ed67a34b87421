#!/usr/bin/env bash
# The simulated fleet: N fleet-agent processes against the real git server
# (scripts/git-server.sh), driven by scripts/fleet_sim.py (what it measures is
# described there and in docs/performance.md). Bounded in time by `timeout`.
#   scripts/fleet-sim.sh                  the short form CI runs: 100 agents, a timer
#                                         minute of 0.5 s, both protocols, 1 and 5,000
#                                         refs, the outage with v2 (under 2 minutes)
#   FLEET_SIM_FULL=1 scripts/fleet-sim.sh 1,000 agents, a timer minute of 3 s, every
#                                         scenario with both protocols (about 20 min;
#                                         run it under nice on a shared machine)
#   AGENT=path/to/fleet-agent             another build (default: a release build)
#   FLEET_SIM_KEEP=DIR                    keep the work directory (results.json, logs)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${AGENT:-}" ]; then
  cargo build --release --quiet --manifest-path "$here/Cargo.toml"
fi
agent=${AGENT:-$here/target/release/fleet-agent}
command -v python3 >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3 >/dev/null
work=${FLEET_SIM_KEEP:-$(mktemp -d)}
mkdir -p "$work"
cleanup() {
  "$here/scripts/git-server.sh" stop "$work/server" 2>/dev/null || true
  [ -n "${FLEET_SIM_KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
if [ -n "${FLEET_SIM_FULL:-}" ]; then
  args=(--agents 1000 --minute 3 --steady 15 --outage "v2,v0" --outage-minutes 20)
  limit=3600
else
  args=(--agents 100 --minute 0.5 --steady 10 --outage v2 --outage-minutes 10)
  limit=240
fi
start=$(date +%s)
timeout --kill-after=10 "$limit" python3 "$here/scripts/fleet_sim.py" --agent "$agent" \
  --work "$work" "${args[@]}" "$@"
echo "fleet-sim: $(( $(date +%s) - start )) s"
