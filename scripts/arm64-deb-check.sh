#!/usr/bin/env bash
# The arm64 .deb on an arm64 Debian: an arm64 bookworm root filesystem (debootstrap
# through qemu user emulation and binfmt_misc), booted with systemd-nspawn (its systemd,
# apt and dpkg are arm64 binaries run by qemu-aarch64-static), the release package
# installed with dpkg, and a pull run by the package's own timer against the example
# fleet served by smart HTTP on 127.0.0.1. Checks:
#   arch           the device's dpkg architecture is arm64, uname -m aarch64
#   install        dpkg -i: timer enabled and active, `fleet-agent --version`
#   timer fires    (a drop-in: 2 s after the timer starts) and the service succeeds
#   journal        the pull is in the journal ("applied <commit>: ...")
#   state          state.json: outcome applied, the served commit; `fleet-agent status`
#   second run     `systemctl start fleet-agent.service`: no changes
#
#   scripts/arm64-deb-check.sh [DEB]     default dist/fleet-agent_<version>-1_arm64.deb
#                                        (scripts/build-release.sh builds it)
#   scripts/arm64-deb-check.sh --prepare only build (or find) the cached root filesystem
#
# The root filesystem is built once and cached in $FLEET_TEST_CACHE/bookworm-arm64 (default
# /var/cache/fleet-agent-tests): a link to a complete tree, switched atomically, like
# scripts/device-rootfs.sh's; the device boots an overlay of it (scripts/device.sh with
# FLEET_DEVICE_ROOTFS). Host packages it installs when missing: qemu-user-static,
# binfmt-support, debootstrap, systemd-container. It mounts binfmt_misc when it is not
# mounted and registers qemu-aarch64 (with the F flag, so that the interpreter also
# works inside the container) when it is not registered.
# Needs root. Prints one line per check; exits 1 if any fails.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
log() { echo "arm64-deb-check: $*" >&2; }
die() { log "error: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (binfmt_misc, debootstrap, systemd-nspawn)"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
prepare=0
if [ "${1:-}" = --prepare ]; then
  prepare=1
else
  deb=${1:-dist/fleet-agent_${version}-1_arm64.deb}
  [ -f "$deb" ] || die "$deb is missing: run scripts/build-release.sh"
  [ "$(dpkg-deb -f "$deb" Architecture)" = arm64 ] || die "$deb is not an arm64 package"
fi
t0=$(date +%s)

# --- host -----------------------------------------------------------------------------
need=()
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
command -v update-binfmts >/dev/null || need+=(binfmt-support)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
if [ ${#need[@]} -gt 0 ]; then
  log "installing on the host: ${need[*]}"
  # One apt at a time on this host (other jobs may be installing too).
  flock /tmp/host-apt.lock sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"' \
    apt "${need[@]}" >&2 || die "cannot install ${need[*]}"
fi
binfmt=/proc/sys/fs/binfmt_misc
if [ ! -e "$binfmt/register" ]; then
  mount -t binfmt_misc binfmt_misc "$binfmt" || die "cannot mount binfmt_misc"
fi
if [ ! -e "$binfmt/qemu-aarch64" ]; then
  update-binfmts --enable qemu-aarch64 >&2 || die "cannot register qemu-aarch64 with binfmt_misc"
fi
grep -q '^flags:.*F' "$binfmt/qemu-aarch64" ||
  die "qemu-aarch64 is registered without the F flag: binaries in the container would not find the interpreter"

# --- the arm64 root filesystem, cached --------------------------------------------------
cache=${FLEET_TEST_CACHE:-/var/cache/fleet-agent-tests}
rootfs=$cache/bookworm-arm64
INCLUDE=systemd,systemd-sysv,dbus
MASK_UNITS="apt-daily.timer apt-daily-upgrade.timer apt-daily.service apt-daily-upgrade.service
dpkg-db-backup.timer fstrim.timer systemd-firstboot.service"
RECIPE="fleet-test-rootfs-arm64 v1 suite=bookworm arch=arm64 variant=minbase include=$INCLUDE mask=$(echo $MASK_UNITS)"
complete() { [ "$(cat "$rootfs/.fleet-test-rootfs" 2>/dev/null)" = "$RECIPE" ] && [ -x "$rootfs/usr/lib/systemd/systemd" ]; }
mkdir -p "$cache/debootstrap-debs-arm64"
exec 9>"$cache/.lock-arm64"
flock 9
rootfs_secs=0
if ! complete; then
  mirror=${FLEET_TEST_MIRROR:-$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)}
  mirror=${mirror:-http://deb.debian.org/debian}
  tmp=$(mktemp -d "$cache/.build-bookworm-arm64.XXXXXX")
  trap 'for m in proc sys dev/pts dev; do umount -l "$tmp/$m" 2>/dev/null || true; done; rm -rf --one-file-system "$tmp"' EXIT
  chmod 755 "$tmp"
  s=$(date +%s)
  log "debootstrap --arch=arm64 bookworm from $mirror (under qemu; takes minutes)"
  debootstrap --arch=arm64 --variant=minbase --include="$INCLUDE" \
    --cache-dir="$cache/debootstrap-debs-arm64" bookworm "$tmp" "$mirror" >"$cache/.debootstrap-arm64.log" 2>&1 ||
    { tail -n 30 "$cache/.debootstrap-arm64.log" >&2; die "debootstrap failed"; }
  echo device >"$tmp/etc/hostname"
  : >"$tmp/etc/machine-id"
  rm -f "$tmp/var/lib/dbus/machine-id"
  for u in $MASK_UNITS; do ln -sfn /dev/null "$tmp/etc/systemd/system/$u"; done
  find "$tmp/var/cache/apt/archives" -maxdepth 1 -name '*.deb' -delete
  rm -rf "$tmp/var/lib/apt/lists/"* "$tmp/debootstrap"
  mkdir -p "$tmp/var/lib/apt/lists/partial"
  echo "$RECIPE" >"$tmp/.fleet-test-rootfs"
  final=$cache/bookworm-arm64.$(date +%Y%m%d%H%M%S).${tmp##*.}
  mv "$tmp" "$final"
  trap - EXIT
  ln -sfn "${final##*/}" "$cache/.bookworm-arm64.link.$$"
  mv -T "$cache/.bookworm-arm64.link.$$" "$rootfs"
  rootfs_secs=$(($(date +%s) - s))
  log "built $final in $rootfs_secs s ($(du -sh "$final" | cut -f1))"
fi
exec 9>&-
tree=$(readlink -f "$rootfs")
if [ $prepare = 1 ]; then
  echo "arm64-deb-check: root filesystem $tree (built in $rootfs_secs s; 0: cached)"
  exit 0
fi

# --- the device ---------------------------------------------------------------------------
name=arm64check-$$
device=7b2e9c14-0a6d-4e8f-b1c3-5d7e9f1a3b02
scratch=$(mktemp -d)
server=
cleanup() {
  scripts/device.sh stop "$name" >/dev/null 2>&1 || true
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; fi
  rm -rf "$scratch"
}
trap cleanup EXIT

. "$(dirname "$0")/lib/example-fleet.sh"
serve_example_fleet "$scratch"
served=$(git -C "$scratch/srv/fleet.git" rev-parse production)

s=$(date +%s)
FLEET_DEVICE_ROOTFS=$tree scripts/device.sh start "$name" --no-debian-sources --timeout 600 \
  >"$scratch/device" 2>"$scratch/device.err" || {
  cat "$scratch/device.err" >&2
  exit 1
}
boot_secs=$(($(date +%s) - s))
root=$(sed -n 's/^ROOT=//p' "$scratch/device")
dev() { scripts/device.sh exec "$name" -- "$@"; }
cp "$deb" "$root/root/fleet-agent.deb"

# shellcheck source=lib/checks.sh
. "$here/scripts/lib/checks.sh"
journal() { dev journalctl -u fleet-agent.service -o cat --no-pager 2>/dev/null; }

echo "arch:"
expect "dpkg architecture" arm64 dev dpkg --print-architecture
expect "uname -m" aarch64 dev uname -m

echo "install:"
dev dpkg -i /root/fleet-agent.deb >"$scratch/out" 2>&1 || { cat "$scratch/out"; bad "dpkg -i"; }
expect "timer enabled" enabled dev systemctl is-enabled fleet-agent.timer
expect "timer active" active dev systemctl is-active fleet-agent.timer
expect "--version" "fleet-agent $version" dev fleet-agent --version
expect "package architecture" arm64 dev dpkg-query -W -f '${Architecture}' fleet-agent

echo "timer fires:"
cat >"$root/etc/fleet-agent/agent.toml" <<EOF
repo = "$url"
branch = "production"
device_id = "$device"
device_type = "raspberrypi4"
EOF
mkdir -p "$root/etc/systemd/system/fleet-agent.timer.d"
printf '[Timer]\nOnBootSec=\nOnUnitActiveSec=\nOnActiveSec=2s\nRandomizedDelaySec=0\n' \
  >"$root/etc/systemd/system/fleet-agent.timer.d/now.conf"
dev systemctl daemon-reload
before=$(dev systemctl show -p InvocationID --value fleet-agent.service)
dev systemctl restart fleet-agent.timer
s=$(date +%s)
for _ in $(seq 600); do
  id=$(dev systemctl show -p InvocationID --value fleet-agent.service)
  st=$(dev systemctl show -p ActiveState --value fleet-agent.service)
  if [ "$id" != "$before" ] && { [ "$st" = inactive ] || [ "$st" = failed ]; }; then break; fi
  sleep 0.5
done
pull_secs=$(($(date +%s) - s))
expect "unit result" "Result=success" dev systemctl show fleet-agent.service -p Result
if journal | grep -q "applied ${served:0:12}: "; then
  ok "journal: $(journal | grep "applied ${served:0:12}: " | tail -n 1)"
else
  bad "no pull of ${served:0:12} in the journal"
  journal | sed 's/^/        | /'
fi

echo "state:"
expect "outcome" '"applied"' dev sh -c "sed -n 's/^  \"outcome\": \(.*\),\$/\1/p' /var/lib/fleet-agent/state.json"
expect "applied commit" "\"$served\"" dev sh -c "sed -n 's/^  \"applied_commit\": \(.*\),\$/\1/p' /var/lib/fleet-agent/state.json"
if dev fleet-agent status | grep -q '^outcome: *applied$'; then ok "fleet-agent status: applied"; else bad "fleet-agent status"; dev fleet-agent status || true; fi

echo "second run:"
dev systemctl start fleet-agent.service || true
expect "unit result" "Result=success" dev systemctl show fleet-agent.service -p Result
if journal | tail -n 5 | grep -q "no changes at ${served:0:12}"; then ok "no changes"; else bad "the second run changed something"; journal | tail -n 8 | sed 's/^/        | /'; fi

echo "journal of the timer-driven pull (invocation $id):"
dev journalctl -q -o short _SYSTEMD_INVOCATION_ID="$id" + INVOCATION_ID="$id" --no-pager | sed 's/^/    /' | head -n 40
echo "durations: root filesystem ${rootfs_secs} s (0: cached), boot ${boot_secs} s, timer-driven pull ${pull_secs} s, all $(($(date +%s) - t0)) s"
if [ "$failed" != 0 ]; then
  echo "arm64-deb-check: FAILED" >&2
  exit 1
fi
echo "arm64-deb-check: all checks passed"
