#!/usr/bin/env bash
# Can Debian bookworm's real Mender client (mender-client 3.4, `mender`) drive an A/B
# switch on the simulated device? Probes it on a booted Debian (scripts/device.sh, with
# Debian's mirror): installs mender-client and libubootenv-tool with apt, gives it two
# loop devices as RootfsPartA/B (/dev/mmcblk0p2, /dev/mmcblk0p3 inside) and a file-backed
# u-boot environment, and runs `mender install` of a real rootfs-image artifact.
# Prints PROBE lines (what happened) and exits 0 when the probe itself ran.
#
#   real-client-probe.sh            (root; needs the Debian mirror)
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
name=mender-probe-$$
t=$(mktemp -d)
loops=()
cleanup() {
  "$here/device.sh" stop "$name" >/dev/null 2>&1
  for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null; done
  rm -rf "$t"
}
trap cleanup EXIT
probe() { echo "PROBE $*"; }
dx() { "$here/device.sh" exec "$name" -- "$@"; }

# Two 32 MiB "partitions" on loop devices, and an 8 MiB ext4 root filesystem image.
for p in 2 3; do
  truncate -s 32M "$t/part$p.img"
  loops+=("$(losetup -f --show "$t/part$p.img")")
done
mkdir -p "$t/rootfs/etc"
echo fleet-os-2 >"$t/rootfs/etc/fleet-os-release"
mkfs.ext4 -q -d "$t/rootfs" "$t/rootfs.ext4" 8M
mender-artifact write rootfs-image -t pi4-sim -n fleet-os-2 -f "$t/rootfs.ext4" -o "$t/fleet-os-2.mender" >/dev/null
head -c 16384 /dev/zero >"$t/uboot.env"
echo "$t/uboot.env 0x0000 0x4000" >"$t/fw_env.host.config"
"$here/mender-double/uboot-sim" init "$t/fw_env.host.config" 2 3

"$here/device.sh" start "$name" --watch-pid $$ -- \
  --bind="${loops[0]}:/dev/mmcblk0p2" --bind="${loops[1]}:/dev/mmcblk0p3" \
  --bind="$t:/probe" >/dev/null || { probe "device did not boot"; exit 1; }
t0=$(date +%s%N)
dx sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mender-client libubootenv-tool >/dev/null' ||
  { probe "apt-get install mender-client libubootenv-tool failed"; exit 1; }
probe "installed $(dx dpkg-query -W -f '${Package} ${Version}' mender-client) and $(dx dpkg-query -W -f '${Package} ${Version}' libubootenv-tool) in $((($(date +%s%N) - t0) / 1000000)) ms"
dx sh -c 'echo "/probe/uboot.env 0x0000 0x4000" >/etc/fw_env.config
  mkdir -p /etc/mender /var/lib/mender
  echo "{\"RootfsPartA\": \"/dev/mmcblk0p2\", \"RootfsPartB\": \"/dev/mmcblk0p3\"}" >/etc/mender/mender.conf
  echo device_type=pi4-sim >/var/lib/mender/device_type
  echo artifact_name=fleet-os-1 >/etc/mender/artifact_info'
probe "block devices inside: $(dx sh -c 'ls -l /dev/mmcblk0p2 /dev/mmcblk0p3 | cut -c1-10 | tr "\n" " "')"

dx mender --no-syslog install --reboot-exit-code /probe/fleet-os-2.mender >"$t/install.out" 2>&1
rc=$?
probe "mender install --reboot-exit-code: exit $rc"
grep -E 'level=(error|warning)|Installing|Wrote|Use -commit' "$t/install.out" | sed 's/^/PROBE   /' | head -12
cmp -s -n "$(stat -c %s "$t/rootfs.ext4")" "$t/rootfs.ext4" "${loops[1]}" &&
  probe "the image was written to RootfsPartB (/dev/mmcblk0p3)" || probe "RootfsPartB does not hold the image"
probe "boot environment after install: $(fw_printenv -c "$t/fw_env.host.config" mender_boot_part upgrade_available bootcount | tr '\n' ' ')"
dx mender --no-syslog install --reboot-exit-code /probe/fleet-os-2.mender >/dev/null 2>&1
probe "second mender install while one is pending: exit $?"
dx mender --no-syslog rollback >/dev/null 2>&1
probe "mender rollback: exit $?"
probe "boot environment after rollback: $(fw_printenv -c "$t/fw_env.host.config" mender_boot_part upgrade_available | tr '\n' ' ')"
dx mender --no-syslog commit >/dev/null 2>&1
probe "mender commit with nothing in progress: exit $?"
# A fall-back: install, then the bootloader's altbootcmd (done here on the host's view
# of the environment), then commit from the old slot.
dx mender --no-syslog install --reboot-exit-code /probe/fleet-os-2.mender >/dev/null 2>&1
printf '%s\n' mender_boot_part=2 mender_boot_part_hex=2 upgrade_available=0 >"$t/fallback"
fw_setenv -c "$t/fw_env.host.config" -s "$t/fallback"
dx mender --no-syslog commit >"$t/commit.out" 2>&1
probe "mender commit after a fall-back: exit $? ($(grep -o 'Reboot to the new update failed[^"]*' "$t/commit.out" | head -c 60))"
dx mender --no-syslog commit >/dev/null 2>&1
probe "mender commit again: exit $?"
probe "mender show-artifact: $(dx mender --no-syslog show-artifact 2>/dev/null)"
exit 0
