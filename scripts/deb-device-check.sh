#!/usr/bin/env bash
# Installs the amd64 .deb on a booted Debian test device (scripts/device.sh: bookworm
# under systemd-nspawn, systemd as PID 1) and checks the package's life cycle:
#   install        timer enabled and active, state dir 0700, dpkg --verify clean, the
#                  report uploader installed and not enabled
#   timer fires    (a drop-in with OnActiveSec=3s, RandomizedDelaySec=0) and the journal
#                  shows the pull from a smart-HTTP server on 127.0.0.1
#   exit 3         server gone: the run exits 3 and the unit is not failed
#   self-update    dpkg -i of the package from inside fleet-agent.service: the run
#                  survives its own upgrade (postinst restarts only the timer)
#   remove         timer stopped, state and config kept
#   purge          state dir and /etc/fleet-agent gone
#
#   scripts/deb-device-check.sh [DEB]    default dist/fleet-agent_<version>-1_amd64.deb
#
# Needs root (systemd-nspawn). Prints one line per check; exits 1 if any fails.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
deb=${1:-dist/fleet-agent_${version}-1_amd64.deb}
[ -f "$deb" ] || { echo "deb-device-check: $deb is missing: run scripts/build-release.sh" >&2; exit 1; }
name=debcheck-$$
device=7b2e9c14-0a6d-4e8f-b1c3-5d7e9f1a3b02

scratch=$(mktemp -d)
server=
cleanup() {
  scripts/device.sh stop "$name" >/dev/null 2>&1 || true
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; fi
  rm -rf "$scratch"
}
trap cleanup EXIT

# The example fleet served on 127.0.0.1 (the device shares the host's network).
. "$(dirname "$0")/lib/example-fleet.sh"
serve_example_fleet "$scratch"

scripts/device.sh start "$name" --no-debian-sources >"$scratch/device" 2>"$scratch/device.err" || {
  cat "$scratch/device.err" >&2
  exit 1
}
root=$(sed -n 's/^ROOT=//p' "$scratch/device")
dev() { scripts/device.sh exec "$name" -- "$@"; }
cp "$deb" "$root/root/fleet-agent.deb"

# shellcheck source=lib/checks.sh
. "$here/scripts/lib/checks.sh"

echo "install:"
dev dpkg -i /root/fleet-agent.deb >"$scratch/out" 2>&1 || { cat "$scratch/out"; bad "dpkg -i"; }
expect "timer enabled" enabled dev systemctl is-enabled fleet-agent.timer
expect "timer active" active dev systemctl is-active fleet-agent.timer
expect "state dir" "drwx------ root:root" dev stat -c '%A %U:%G' /var/lib/fleet-agent
expect "dpkg --verify" "" dev dpkg --verify fleet-agent
# The operator's files: agent.toml and the trusted signing keys (docs/signing.md).
conf=$(dev dpkg-query -W -f='${Conffiles}\n' fleet-agent | awk 'NF {print $1}' | sort | tr '\n' ' ')
[ "$conf" = "/etc/fleet-agent/agent.toml /etc/fleet-agent/allowed_signers " ] && ok "conffiles: $conf" || bad "conffiles: '$conf'"
# Run reports are shipped off (docs/reporting.md): the uploader is installed, not enabled.
expect "report uploader off" disabled dev systemctl is-enabled fleet-agent-upload.service

echo "timer fires:"
cat >"$root/etc/fleet-agent/agent.toml" <<EOF
repo = "$url"
branch = "production"
device_id = "$device"
device_type = "raspberrypi3"
EOF
mkdir -p "$root/etc/systemd/system/fleet-agent.timer.d"
printf '[Timer]\nOnActiveSec=3s\nRandomizedDelaySec=0\n' >"$root/etc/systemd/system/fleet-agent.timer.d/now.conf"
dev systemctl daemon-reload
dev systemctl restart fleet-agent.timer
for _ in $(seq 60); do
  dev journalctl -u fleet-agent.service -o cat --no-pager 2>/dev/null | grep -q '^Finished fleet-agent.service' && break
  sleep 0.5
done
if dev journalctl -u fleet-agent.service -o cat --no-pager | grep -q "applied [0-9a-f]*: "; then
  ok "journal: $(dev journalctl -u fleet-agent.service -o cat --no-pager | grep "applied [0-9a-f]*: " | tail -n 1)"
else
  bad "no pull in the journal"
  dev journalctl -u fleet-agent.service -o cat --no-pager | sed 's/^/        | /'
fi
rm -rf "$root/etc/systemd/system/fleet-agent.timer.d"
dev systemctl daemon-reload

echo "server unreachable:"
kill "$server"
wait "$server" 2>/dev/null || true
server=
dev systemctl start fleet-agent.service || true
expect "exit status" "ExecMainStatus=3" dev systemctl show fleet-agent.service -p ExecMainStatus
expect "unit result" "Result=success" dev systemctl show fleet-agent.service -p Result

echo "self-update from inside the service:"
mkdir -p "$root/etc/systemd/system/fleet-agent.service.d"
printf '[Service]\nExecStart=\nExecStart=/bin/sh -c "dpkg -i /root/fleet-agent.deb && echo self-update-survived"\n' \
  >"$root/etc/systemd/system/fleet-agent.service.d/selfupdate.conf"
dev systemctl daemon-reload
dev systemctl start fleet-agent.service || true
if dev journalctl -u fleet-agent.service -o cat --no-pager | grep -q '^self-update-survived$'; then
  ok "the run that upgraded the package finished"
else
  bad "the run did not survive its own upgrade"
fi
expect "unit result" "Result=success" dev systemctl show fleet-agent.service -p Result
expect "timer active" active dev systemctl is-active fleet-agent.timer
rm -rf "$root/etc/systemd/system/fleet-agent.service.d"
dev systemctl daemon-reload

echo "remove:"
dev dpkg -r fleet-agent >"$scratch/out" 2>&1 || { cat "$scratch/out"; bad "dpkg -r"; }
expect "timer" inactive dev systemctl is-active fleet-agent.timer
dev test -f /var/lib/fleet-agent/state.json && ok "state kept" || bad "state removed on remove"
dev test -f /etc/fleet-agent/agent.toml && ok "config kept" || bad "config removed on remove"

echo "purge:"
dev dpkg -P fleet-agent >"$scratch/out" 2>&1 || { cat "$scratch/out"; bad "dpkg -P"; }
dev test ! -e /var/lib/fleet-agent && ok "state dir deleted" || bad "state dir left"
dev test ! -e /etc/fleet-agent && ok "/etc/fleet-agent deleted" || bad "/etc/fleet-agent left"

if [ "$failed" != 0 ]; then
  echo "deb-device-check: FAILED" >&2
  exit 1
fi
echo "deb-device-check: all checks passed"
