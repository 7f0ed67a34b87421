#!/usr/bin/env bash
# Exercises the mender-update double and the simulated bootloader in a scratch
# directory, with real artifacts (mender-artifact) and a real file-backed u-boot
# environment (libubootenv). No root needed. Prints "ok: ..." per check and
# "test-double: all N checks passed"; exits 1 at the first failed check.
#
#   test-double.sh [SCRATCH]     (default: a new mktemp -d, removed at the end)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
for t in mender-artifact fw_printenv fw_setenv; do
  command -v "$t" >/dev/null || { echo "test-double: $t is missing (apt-get install mender-artifact libubootenv-tool)" >&2; exit 2; }
done
if [ $# -ge 1 ]; then t=$1; mkdir -p "$t"; keep=1; else t=$(mktemp -d); keep=0; fi
[ $keep = 1 ] || trap 'rm -rf "$t"' EXIT

checks=0
ok() { checks=$((checks + 1)); echo "ok: $*"; }
die() { echo "FAILED: $*" >&2; exit 1; }
# expect CODE CMD...: runs CMD, checks its exit code; output in $t/out, $t/err.
expect() {
  local want=$1 rc
  shift
  "$@" >"$t/out" 2>"$t/err"
  rc=$?
  [ "$rc" = "$want" ] || die "$* exited $rc, expected $want; stdout: $(cat "$t/out"); stderr: $(cat "$t/err")"
}

# The simulated device: two slots, an environment, a datastore, the double's config.
mkdir -p "$t/slots/p2" "$t/slots/p3" "$t/data/mender" "$t/boot" "$t/bin"
echo "$t/boot/uboot.env 0x0000 0x4000" >"$t/boot/fw_env.config"
head -c 16384 /dev/zero >"$t/boot/uboot.env"
cat >"$t/double.conf" <<EOF
ROOTFS_PART_A=$t/slots/p2
ROOTFS_PART_B=$t/slots/p3
ROOT_PART_FILE=$t/boot/root
FW_ENV_CONFIG=$t/boot/fw_env.config
DATASTORE=$t/data/mender
ARTIFACT_INFO=$t/slots/p2/etc/mender/artifact_info
PAUSE_FILE=$t/pause
EOF
export MENDER_DOUBLE_CONF=$t/double.conf
ln -sf "$here/mender-update" "$t/bin/mender-update"
ln -sf "$here/mender-update" "$t/bin/mender"
mu() { "$t/bin/mender-update" "$@"; }
m3() { "$t/bin/mender" "$@"; }
echo "device_type=pi4-sim" >"$t/data/mender/device_type"
echo "os 1" >"$t/slots/p2/os"
env_of() { fw_printenv -c "$t/boot/fw_env.config" -n "$1"; }
# Power on / reset: the bootloader picks the partition; "the kernel mounts it as root".
boot() {
  local p
  p=$("$here/uboot-sim" boot "$t/boot/fw_env.config") || die "uboot-sim boot failed"
  echo "$t/slots/p$p" >"$t/boot/root"
  booted=$p
}
"$here/uboot-sim" init "$t/boot/fw_env.config" 2 3 || die "uboot-sim init"
"$here/uboot-sim" init "$t/boot/fw_env.config" 2 3 || die "uboot-sim init (again)"
boot
[ "$booted" = 2 ] || die "a new device boots partition A (2), booted $booted"
ok "fresh environment boots partition 2"

# Artifacts: rootfs-image payloads that are tar archives of a root filesystem.
mkart() { # NAME DIR [DEVICE_TYPE]
  local name=$1 dir=$2 dt=${3:-pi4-sim}
  mkdir -p "$t/art"
  tar -C "$dir" -cf "$t/art/$name.tar" .
  mender-artifact write rootfs-image -t "$dt" -n "$name" -f "$t/art/$name.tar" -o "$t/art/$name.mender" >/dev/null 2>&1 ||
    die "mender-artifact write $name"
}
mkdir -p "$t/img2/etc" "$t/img3/etc"
echo "os 2" >"$t/img2/os"
echo "os 3" >"$t/img3/os"
mkart fleet-os-2 "$t/img2"
mkart fleet-os-3 "$t/img3"
mkart other-type "$t/img3" pi2-sim

expect 0 mu show-artifact
[ "$(cat "$t/out")" = unknown ] || die "4.x show-artifact with an empty store prints unknown, got $(cat "$t/out")"
ok "4.x show-artifact on an empty store: unknown"
mkdir -p "$t/slots/p2/etc/mender"
echo "artifact_name=fleet-os-1" >"$t/slots/p2/etc/mender/artifact_info"
echo "artifact_name=fleet-os-1" >"$t/data/mender/double-store/artifact_name"

expect 2 mu commit
grep -q "No update in progress" "$t/out" || die "commit without update says so"
expect 2 mu rollback
ok "commit and rollback with nothing in progress exit 2"

expect 1 mu install --reboot-exit-code "$t/art/other-type.mender"
[ -z "$(ls -A "$t/slots/p3")" ] || die "an incompatible artifact must not touch the passive slot"
expect 2 mu commit
ok "artifact for another device type: exit 1, slot untouched, nothing in progress"

printf 'garbage' >"$t/art/bad.mender"
expect 1 mu install --reboot-exit-code "$t/art/bad.mender"
expect 1 mu install --reboot-exit-code "$t/art/missing.mender"
ok "bad and missing artifacts: exit 1"

# Happy path: install → 4, pending rules, reboot, commit.
expect 4 mu install --reboot-exit-code "$t/art/fleet-os-2.mender"
grep -q "Installed, but not committed" "$t/out" || die "install output"
[ "$(cat "$t/slots/p3/os")" = "os 2" ] || die "payload in the passive slot"
[ "$(env_of mender_boot_part)" = 3 ] && [ "$(env_of upgrade_available)" = 1 ] && [ "$(env_of bootcount)" = 0 ] ||
  die "install sets mender_boot_part=3 upgrade_available=1 bootcount=0: $(fw_printenv -c "$t/boot/fw_env.config")"
ok "install: exit 4, payload in slot 3, boot variables set"
expect 0 mu show-artifact
[ "$(cat "$t/out")" = fleet-os-1 ] || die "show-artifact during a pending update: still the old name"
ok "show-artifact while pending: the old name"
expect 1 mu install --reboot-exit-code "$t/art/fleet-os-3.mender"
grep -q "already in progress" "$t/err" || die "second install says 'already in progress': $(cat "$t/err")"
[ "$(cat "$t/slots/p3/os")" = "os 2" ] || die "a refused install must not write the slot"
ok "second install: exit 1, update already in progress"
boot
[ "$booted" = 3 ] || die "first boot after install: partition 3, got $booted"
[ "$(env_of bootcount)" = 1 ] || die "bootcount 1 after the first boot"
expect 0 mu commit
grep -q "Committed" "$t/out" || die "commit output"
[ "$(env_of upgrade_available)" = 0 ] || die "commit clears upgrade_available"
expect 0 mu show-artifact
[ "$(cat "$t/out")" = fleet-os-2 ] || die "after commit: fleet-os-2"
expect 0 mu show-provides
grep -qx "rootfs-image.version=fleet-os-2" "$t/out" || die "provides after commit: $(cat "$t/out")"
expect 2 mu commit
boot
[ "$booted" = 3 ] || die "committed: stays on 3 across reboots"
boot
[ "$booted" = 3 ] || die "committed: stays on 3 across reboots"
ok "reboot, commit 0, commit again 2, new name, stays on slot 3"

# Without --reboot-exit-code a reboot-required install exits 0.
expect 0 mu install "$t/art/fleet-os-3.mender"
[ "$(cat "$t/slots/p2/os")" = "os 3" ] || die "passive slot is now 2"
[ "$(env_of mender_boot_part)" = 2 ] || die "boots 2 next"
ok "install without --reboot-exit-code: exit 0"
# Rollback before reboot: back to the running slot.
expect 0 mu rollback
[ "$(env_of mender_boot_part)" = 3 ] && [ "$(env_of upgrade_available)" = 0 ] || die "rollback before reboot"
expect 2 mu rollback
boot
[ "$booted" = 3 ] || die "after rollback: still 3"
ok "rollback before reboot: 0, boot variables back, then 2"

# Fall-back: install, reboot twice without commit → old slot, commit refused.
expect 4 mu install --reboot-exit-code "$t/art/fleet-os-3.mender"
boot
[ "$booted" = 2 ] || die "first boot: new slot 2"
boot
[ "$booted" = 3 ] || die "second boot without commit: bootloader falls back to 3, got $booted"
[ "$(env_of upgrade_available)" = 0 ] || die "fall-back clears upgrade_available"
expect 1 mu commit
grep -q "refusing to commit" "$t/err" || die "commit after fall-back is refused: $(cat "$t/err")"
expect 2 mu commit
expect 0 mu show-artifact
[ "$(cat "$t/out")" = fleet-os-2 ] || die "after fall-back the name stays fleet-os-2"
ok "two boots without commit: fall-back to 3, commit refused (1), then nothing in progress (2)"

# Rollback after booting the new slot: the environment points back; reboot returns.
expect 4 mu install --reboot-exit-code "$t/art/fleet-os-3.mender"
boot
[ "$booted" = 2 ] || die "boots new slot"
expect 0 mu rollback
[ "$(env_of mender_boot_part)" = 3 ] && [ "$(env_of upgrade_available)" = 0 ] || die "rollback from the new slot"
boot
[ "$booted" = 3 ] || die "after rollback and reboot: old slot"
ok "rollback on the new slot, reboot: old slot"

# Power cut in the middle of install (kill -9).
for at in Download ArtifactInstall; do
  echo "$at" >"$t/pause"
  rm -f "$t/pause.reached"
  "$t/bin/mender-update" install --reboot-exit-code "$t/art/fleet-os-3.mender" >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 100); do [ -f "$t/pause.reached" ] && break; sleep 0.05; done
  [ -f "$t/pause.reached" ] || die "install did not reach $at"
  kill -9 "$pid"
  wait "$pid" 2>/dev/null
  rm -f "$t/pause" "$t/pause.reached"
  [ "$(env_of mender_boot_part)" = 3 ] && [ "$(env_of upgrade_available)" = 0 ] || die "a cut in $at leaves the boot variables alone"
  if [ $at = Download ]; then
    expect 2 mu rollback
  else
    expect 1 mu install --reboot-exit-code "$t/art/fleet-os-3.mender"
    grep -q "already in progress" "$t/err" || die "after a cut in ArtifactInstall: already in progress"
    expect 0 mu rollback
  fi
  boot
  [ "$booted" = 3 ] || die "power cut in $at: boots the old slot"
  expect 4 mu install --reboot-exit-code "$t/art/fleet-os-3.mender"
  expect 0 mu rollback
  ok "power cut in $at: old slot, install works again (after rollback where state was kept)"
done

# 3.x CLI form.
expect 1 m3 --datastore "$t/data/mender" show-artifact
grep -q "flag provided but not defined" "$t/err" || die "3.x has no --datastore"
expect 0 m3 --data "$t/data/mender" show-artifact
[ "$(cat "$t/out")" = fleet-os-2 ] || die "3.x show-artifact"
expect 2 m3 commit
expect 4 m3 install --reboot-exit-code "$t/art/fleet-os-3.mender"
grep -q "Use -commit to update" "$t/out" || die "3.x install output"
# 3.x does not refuse an install while one is pending (app/standalone.go).
expect 4 m3 install --reboot-exit-code "$t/art/fleet-os-3.mender"
boot
[ "$booted" = 2 ] || die "3.x: boots the new slot"
expect 0 m3 commit
expect 0 m3 show-artifact
[ "$(cat "$t/out")" = fleet-os-3 ] || die "3.x commit sets the name"
ok "3.x form: --data only, install 4, no pending refusal, commit"

# Serving over HTTP (the double's /dev/tcp client), when python3 is there.
if command -v python3 >/dev/null; then
  python3 -c '
import http.server, socketserver, sys, os, threading
os.chdir(sys.argv[1])
class H(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a): pass
s = socketserver.TCPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
ppid = os.getppid()
def watch():
    import time
    while os.getppid() == ppid: time.sleep(0.5)
    os._exit(0)
threading.Thread(target=watch, daemon=True).start()
s.serve_forever()' "$t/art" >"$t/port" &
  srv=$!
  for _ in $(seq 50); do [ -s "$t/port" ] && break; sleep 0.05; done
  port=$(cat "$t/port")
  expect 1 mu install --reboot-exit-code "http://127.0.0.1:$port/nonexistent.mender"
  grep -q "404" "$t/err" || die "a 404 names the status: $(cat "$t/err")"
  expect 4 mu install --reboot-exit-code "http://127.0.0.1:$port/fleet-os-2.mender"
  [ "$(cat "$t/slots/p3/os")" = "os 2" ] || die "HTTP install wrote the slot"
  expect 0 mu rollback
  kill "$srv" 2>/dev/null
  ok "install from http://127.0.0.1 (200 and 404)"
fi
echo "test-double: all $checks checks passed"
