#!/usr/bin/env bash
# A simulated Mender A/B device: two root-filesystem slots (full copies: each is
# booted as its own directory, so its device number is stable across boots, as a
# partition's is), a persistent /data, a
# file-backed u-boot environment, and a "bootloader" loop on the host that applies
# Mender's u-boot logic (scripts/mender-double/uboot-sim) and boots the selected slot
# with systemd-nspawn. A reboot inside the device (systemctl reboot: nspawn exits 133)
# goes back through the bootloader; a power-off ends the loop.
#
#   ab-device.sh create NAME [IMAGE OPTIONS] [--watch-pid PID] [--timeout SECS]
#       Builds the factory image, flashes it to both slots, provisions /data (device
#       type, the image's artifact name), boots slot A and waits until systemd runs.
#       Prints NAME DIR PART BOOTS PID BOOT_MS (KEY=VALUE lines).
#   ab-device.sh wait-boot NAME [--boot N] [--timeout SECS]
#       Waits until the device has booted at least N times (default: 1) and its systemd
#       is running or degraded. Prints PART BOOTS PID.
#   ab-device.sh exec NAME [--env K=V]... -- CMD...    like device.sh exec (125: not running)
#   ab-device.sh env NAME        the u-boot environment (fw_printenv, on the host)
#   ab-device.sh boots NAME      one line per boot: "N PART" (+ "exit RC" lines)
#   ab-device.sh reboot NAME     systemctl reboot inside, returns at once
#   ab-device.sh powercut NAME   SIGKILL to the device's init and nspawn (no shutdown,
#                                nothing flushed by the device), then power on again
#   ab-device.sh stop NAME       power off, end the loop, remove everything
#   ab-device.sh artifact OUT --name NAME [IMAGE OPTIONS]
#       Builds an OS image and writes it as a Mender artifact (mender-artifact write
#       rootfs-image; payload: an uncompressed tar archive of the whole root filesystem,
#       the cached bookworm tree plus the image's own files).
#
# IMAGE OPTIONS (what an OS image adds to the cached bookworm root filesystem):
#   --name NAME            artifact name (default fleet-os-1): /etc/mender/artifact_info
#                          and /etc/fleet-os-release
#   --device-type TYPE     default pi4-sim (create: written to /data/mender/device_type;
#                          artifact: its device_type dependency)
#   --agent BIN            the fleet-agent binary, installed stripped as /usr/bin/fleet-agent
#                          with systemd/fleet-agent.service (as the .deb installs them)
#   --agent-toml FILE      create: the device's agent.toml, provisioned on /data (the image
#                          links /etc/fleet-agent/agent.toml to /data/fleet-agent/agent.toml,
#                          Mender's way to keep device configuration across updates)
#   --add SRC:DEST         any other file (repeatable)
#   --debian-sources       keep Debian's mirror in apt's sources (default: none, as
#                          device.sh --no-debian-sources)
#   --client double|real   double (default): scripts/mender-double as /usr/bin/mender-update
#                          and /usr/bin/mender. real: Debian's mender-client 3.4 (`mender`)
#                          and libglib (apt-get download, cached); the slots are ext4
#                          images on loop devices, booted from their mounts; the loop
#                          numbers are the partition numbers (create prints PART_A,
#                          PART_B); artifacts carry an ext4 image
#
# Layout: $FLEET_AB_RUN/NAME (default /tmp/fleet-agent-ab/NAME):
#   slots/p2, slots/p3   the two root filesystems; the device sees both at /slots/p2 and
#                        /slots/p3, the double's RootfsPartA/B
#   image/               the factory image's own files (what it adds to the base tree)
#   data/                /data in the device (persistent, both slots): mender/ (the
#                        datastore, /var/lib/mender links there), fleet-agent/
#   boot/                /uboot in the device: uboot.env (the environment),
#                        root (the booted partition: the double's ROOT_PART_FILE)
#   state, boots.log, nspawn.log, loop.log
# Needs root. Uses scripts/device.sh's helpers (sourced).
set -Eeuo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck disable=SC2034 # read by device.sh: stop before its command dispatch
DEVICE_SH_LIBRARY=1
# shellcheck source=device.sh
. "$here/device.sh"
trap 'log "error: unexpected failure at line $LINENO: $BASH_COMMAND"' ERR
log() { echo "ab-device.sh: $*" >&2; }
usage() { sed -n '/^#   ab-device.sh/,/^# Layout/p' "$0" | sed 's/^# \{0,1\}//' | grep -v '^Layout' >&2; exit 64; }

ab_run=${FLEET_AB_RUN:-/tmp/fleet-agent-ab}
double_dir=$here/mender-double
PART_A=2
PART_B=3

ab_load_state() {
  LOOP_PID='' LOOP_START='' NSPAWN_PID='' NSPAWN_START='' PID='' PID_START='' BOOTS=0 PART=''
  STATE='' UUID='' WATCH_PID='' CLIENT=double LOOP_DEVS=''
  [ -f "$dir/state" ] || return 1
  # shellcheck disable=SC1091
  . "$dir/state"
}
ab_write_state() {
  cat >"$dir/state.tmp.$$" <<EOF
LOOP_PID=$LOOP_PID
LOOP_START=$LOOP_START
NSPAWN_PID=$NSPAWN_PID
NSPAWN_START=$NSPAWN_START
PID=$PID
PID_START=$PID_START
BOOTS=$BOOTS
PART=$PART
STATE=$STATE
UUID=$UUID
CLIENT=$CLIENT
LOOP_DEVS='$LOOP_DEVS'
WATCH_PID=$WATCH_PID
EOF
  mv -f "$dir/state.tmp.$$" "$dir/state"
}

# --- the OS image ---
img_name=fleet-os-1 img_type=pi4-sim img_agent='' img_toml='' img_debian=0 img_client=double
img_adds=()
parse_image_opt() { # sets SHIFT to the number of words consumed, 0 if not an image option
  SHIFT=2
  case "$1" in
    --name) img_name=${2:?} ;;
    --device-type) img_type=${2:?} ;;
    --agent) img_agent=${2:?} ;;
    --agent-toml) img_toml=${2:?} ;;
    --add) img_adds+=("${2:?}") ;;
    --client) img_client=${2:?}; case "$img_client" in double | real) ;; *) die "--client double|real" ;; esac ;;
    --debian-sources) img_debian=1; SHIFT=1 ;;
    *) SHIFT=0 ;;
  esac
}

# Debian's mender-client and libglib2.0-0 (the only dependency minbase lacks), fetched
# once with apt-get download into the test cache; prints their paths.
real_client_debs() {
  local d=$cache/real-mender-debs p f
  mkdir -p "$d"
  for p in mender-client libglib2.0-0; do
    f=$(ls "$d/${p}"_*.deb 2>/dev/null | head -n1)
    if [ -z "$f" ]; then
      (cd "$d" && apt-get download -q "$p" >&2) || die "apt-get download $p failed"
      f=$(ls "$d/${p}"_*.deb | head -n1)
    fi
    echo "$f"
  done
}

# Writes the image layer (everything the OS image adds to the cached rootfs) to DIR.
build_image() {
  local d=$1 a src dest
  install -d -m 755 "$d/usr/bin" "$d/usr/local/bin" "$d/usr/lib/x86_64-linux-gnu" "$d/etc/mender" \
    "$d/etc/fleet-agent" "$d/var/lib" "$d/data" "$d/slots" "$d/uboot" "$d/etc/apt/sources.list.d"
  # The boot environment tools (libubootenv, from the host: both are Debian bookworm).
  cp -a /usr/bin/fw_printenv /usr/bin/fw_setenv "$d/usr/bin/"
  cp -a /usr/lib/x86_64-linux-gnu/libubootenv.so.0* "$d/usr/lib/x86_64-linux-gnu/"
  echo "/uboot/uboot.env 0x0000 0x4000" >"$d/etc/fw_env.config"
  # The datastore on the data partition, as on a Mender device.
  ln -sfn /data/mender "$d/var/lib/mender"
  if [ "$img_client" = real ]; then
    # Debian's mender-client 3.4 and the one library minbase lacks, unpacked (not
    # configured: the daemon stays off; standalone mode needs no service).
    local deb x
    x=$(mktemp -d)
    for deb in $(real_client_debs); do dpkg-deb -x "$deb" "$x"; done
    # bookworm is merged-/usr: /lib is a link to usr/lib in the base tree. The package's
    # /var/lib/mender is the link to /data/mender here.
    if [ -d "$x/lib" ]; then mkdir -p "$x/usr/lib" && cp -a "$x/lib/." "$x/usr/lib/" && rm -rf "${x:?}/lib"; fi
    rm -rf "$x/var/lib/mender"
    cp -a "$x/." "$d/"
    rm -rf "$x"
  else
    install -m 755 "$double_dir/mender-update" "$d/usr/bin/mender-update"
    install -m 755 "$double_dir/mender-update" "$d/usr/bin/mender"
    cat >"$d/etc/mender-double.conf" <<EOF
# The simulated A/B device (scripts/ab-device.sh): see scripts/mender-double/mender-update.
ROOTFS_PART_A=/slots/p$PART_A
ROOTFS_PART_B=/slots/p$PART_B
ROOT_PART_FILE=/uboot/root
FW_ENV_CONFIG=/etc/fw_env.config
DATASTORE=/var/lib/mender
PAUSE_FILE=/run/mender-double.pause
EOF
  fi
  echo "artifact_name=$img_name" >"$d/etc/mender/artifact_info"
  echo "$img_name" >"$d/etc/fleet-os-release"
  if [ -n "$img_agent" ]; then
    # Stripped: the debug build is ~100 MB, its code ~15 MB.
    strip --strip-debug -o "$d/usr/bin/fleet-agent" "$img_agent"
    chmod 755 "$d/usr/bin/fleet-agent"
    install -D -m 644 "$here/../systemd/fleet-agent.service" "$d/usr/lib/systemd/system/fleet-agent.service"
  fi
  ln -sfn /data/fleet-agent/agent.toml "$d/etc/fleet-agent/agent.toml"
  if [ "$img_debian" = 0 ]; then
    echo "# no Debian mirror on the simulated device (ab-device.sh)" >"$d/etc/apt/sources.list.d/debian.sources"
  fi
  for a in "${img_adds[@]}"; do
    src=${a%%:*} dest=${a#*:}
    install -D -m "$(stat -c %a "$src")" "$src" "$d/${dest#/}"
  done
}

# --- the bootloader loop (runs detached, one per device) ---
cmd_loop() {
  ab_load_state || die "no state for $name"
  local part rc flag root l binds private
  exec >>"$dir/loop.log" 2>&1
  LOOP_PID=$$
  LOOP_START=$(starttime $$)
  ab_write_state
  while :; do
    [ ! -e "$dir/poweroff" ] || break
    part=$("$double_dir/uboot-sim" boot "$dir/boot/fw_env.host.config")
    echo "/slots/p$part" >"$dir/boot/root"
    BOOTS=$((BOOTS + 1)) PART=$part PID='' PID_START='' STATE=booting
    echo "$BOOTS $part" >>"$dir/boots.log"
    root=$dir/slots/p$part binds=(--bind="$dir/slots:/slots") private=()
    if [ "$CLIENT" = real ]; then
      # The slot's loop device is mounted in a mount namespace of its own, which ends
      # with the boot: never on the host, where every container started meanwhile (other
      # tests' devices) takes a copy of the host's mounts that can keep the slot's
      # filesystem alive after the host unmounts it, and that filesystem's late
      # write-back then damages what the Mender client installs into the slot next
      # (seen in CI: EIO, or a journal without the run, on the slot's next boot).
      root=$dir/mnt binds=()
      mkdir -p "$root"
      private=(unshare -m --propagation private sh -c 'mount "$1" "$2" && shift 2 && exec "$@"' sh
        "/dev/loop$part" "$root")
      for l in $LOOP_DEVS; do binds+=(--bind="$l"); done
    fi
    # (unshare and sh exec: $! is systemd-nspawn's pid either way.)
    setsid "${private[@]}" systemd-nspawn --register=no --keep-unit -q -b -D "$root" --machine "$name" \
      --uuid "$UUID" --link-journal=no --console=pipe \
      --bind="$dir/data:/data" --bind="$dir/boot:/uboot" "${binds[@]}" \
      </dev/null >>"$dir/nspawn.log" 2>&1 &
    NSPAWN_PID=$!
    NSPAWN_START=$(starttime "$NSPAWN_PID") || NSPAWN_START=''
    ab_write_state
    rc=0
    wait "$NSPAWN_PID" || rc=$?
    echo "exit $rc" >>"$dir/boots.log"
    NSPAWN_PID='' NSPAWN_START='' PID='' PID_START='' STATE=off
    ab_write_state
    [ "$CLIENT" != real ] || release_slot "loop$part"
    rmdir "/run/systemd/nspawn/propagate/$name" 2>/dev/null || true
    flag=0
    [ ! -e "$dir/powercut" ] || { rm -f "$dir/powercut"; flag=1; }
    # 133: the device rebooted (systemd-nspawn's exit status for a reboot of its
    # container); a power cut is followed by power-on; anything else is a power-off.
    [ "$rc" = 133 ] || [ "$flag" = 1 ] || break
  done
  STATE=off
  ab_write_state
}

# After a power-off (real client): waits until the slot's ext4 filesystem is gone
# from the kernel (/sys/fs/ext4/DEV) before the next boot, so that nothing of the
# last boot can write to the slot once the Mender client may install into it. With
# the slot mounted in the boot's own namespace (above) it is gone at once; a wait is
# noted in $ab_run/slot-holders.log, and after 60 s the mount namespaces still
# holding it are named there and the device boots anyway.
release_slot() { # DEV
  local dev=$1 i mm
  for i in $(seq 600); do
    if [ ! -e "/sys/fs/ext4/$dev" ]; then
      [ "$i" = 1 ] || echo "$(date -u +%FT%TZ) $name: slot $dev released $(((i - 1) * 100)) ms after the power-off" >>"$ab_run/slot-holders.log"
      return 0
    fi
    sleep 0.1
  done
  mm=$(cat "/sys/block/$dev/dev" 2>/dev/null) || mm=none
  # mountinfo's third field is the mounted device's major:minor.
  log "slot $dev still mounted 60 s after the power-off, in the mount namespaces of pids" \
    "$(grep -lE "^[0-9]+ [0-9]+ $mm " /proc/[0-9]*/mountinfo 2>/dev/null | cut -d/ -f3 | tr '\n' ' ')" \
    "; booting anyway" 2>&1 | tee -a "$ab_run/slot-holders.log" >&2
}

# Waits for boot number N to reach running/degraded; sets PID.
wait_boot() { # N TIMEOUT
  local want=$1 timeout=$2 deadline state
  deadline=$(($(date +%s) + timeout))
  while :; do
    ab_load_state || die "no state for $name"
    alive "$LOOP_PID" "$LOOP_START" || die "the bootloader loop of $name is gone (see $dir/loop.log)"
    if [ "$BOOTS" -ge "$want" ] && [ -n "$NSPAWN_PID" ] && alive "$NSPAWN_PID" "$NSPAWN_START"; then
      if [ -z "$PID" ] || ! alive "$PID" "$PID_START"; then
        if PID=$(find_init); then
          PID_START=$(starttime "$PID") || PID=''
          # Only the loop writes the state; the init PID is re-found when needed.
        fi
      fi
      if [ -n "$PID" ]; then
        state=$(timeout 20 env -i PATH="$device_path" nsenter -t "$PID" -a -- systemctl is-system-running --wait 2>/dev/null) || true
        case "$state" in running | degraded) return 0 ;; esac
      fi
    fi
    [ "$(date +%s)" -lt "$deadline" ] || die "$name: boot $want not up within $timeout s (boots: $BOOTS)"
    sleep 0.05
  done
}

current_init() {
  ab_load_state || return 1
  [ -n "$NSPAWN_PID" ] && alive "$NSPAWN_PID" "$NSPAWN_START" || return 1
  PID=$(find_init) || return 1
}

# --client real: the slots are ext4 images on loop devices (the real client writes
# images to block devices, BLKGETSIZE64), booted from their mounts, so that the mounted
# root is the partition the client sees. The loop devices' numbers are the partition
# numbers (mender_boot_part), and RootfsPartA/B go to the fallback configuration on
# /data (/var/lib/mender/mender.conf): artifacts are built once for every device.
real_slots() { # ROOTFS
  local tree=$dir/tree la lb
  mkdir -p "$tree"
  tar -C "$1" --numeric-owner -cf - . | tar -C "$tree" --numeric-owner -xpf -
  cp -a "$dir/image/." "$tree/"
  : >"$tree/etc/machine-id"
  mkfs.ext4 -q -F -L rootfs -d "$tree" "$dir/slotA.img" 700M
  cp --sparse=always "$dir/slotA.img" "$dir/slotB.img"
  rm -rf "$tree"
  rmdir "$dir/slots/p$PART_A" "$dir/slots/p$PART_B"
  la=$(losetup -f --show "$dir/slotA.img")
  lb=$(losetup -f --show "$dir/slotB.img")
  LOOP_DEVS="$la $lb"
  PART_A=${la#/dev/loop} PART_B=${lb#/dev/loop}
  echo "{\"RootfsPartA\": \"$la\", \"RootfsPartB\": \"$lb\"}" >"$dir/data/mender/mender.conf"
}

cmd_create() {
  local watch='' timeout=${FLEET_DEVICE_BOOT_TIMEOUT:-120} t0 rootfs
  while [ $# -gt 0 ]; do
    parse_image_opt "$@"
    if [ "$SHIFT" != 0 ]; then shift "$SHIFT"; continue; fi
    case "$1" in
      --watch-pid) watch=${2:?}; shift 2 ;;
      --timeout) timeout=${2:?}; shift 2 ;;
      *) die "create: unknown option $1" ;;
    esac
  done
  lockf=$ab_run/.$name.lock
  mkdir -p "$ab_run"
  exec 8>>"$lockf"
  flock 8
  if ab_load_state && alive "$LOOP_PID" "$LOOP_START"; then die "$name exists and runs; stop it first"; fi
  [ ! -e "$dir" ] || ab_teardown >/dev/null
  t0=$(now_ms)
  rootfs=$(readlink -f "$("$here/device-rootfs.sh")") || die "no root filesystem"
  mkdir -p "$dir"/{image,slots/p$PART_A,slots/p$PART_B,data/mender,data/fleet-agent,boot}
  trap 'rc=$?; if [ $rc != 0 ]; then log "create failed; nspawn.log:"; tail -n 30 "$dir/nspawn.log" >&2 2>/dev/null; ab_teardown >/dev/null 2>&1; fi' EXIT
  build_image "$dir/image"
  if [ "$img_client" = real ]; then
    real_slots "$rootfs"
  else
    # The factory image is flashed to both slots (a Mender disk image holds it twice).
    # Slot B is a tree of hard links to slot A's files: copying 180 MB twice costs
    # seconds on a busy machine, and every install replaces all of B's names (rm, then
    # extract), never writing into the shared inodes. Only booting B before any install
    # would let in-place writes (logs) show through to A; no scenario does that.
    tar -C "$rootfs" --numeric-owner -cf - . | tar -C "$dir/slots/p$PART_A" --numeric-owner -xpf -
    cp -a "$dir/image/." "$dir/slots/p$PART_A/"
    : >"$dir/slots/p$PART_A/etc/machine-id"
    rmdir "$dir/slots/p$PART_B"
    cp -al "$dir/slots/p$PART_A" "$dir/slots/p$PART_B"
    seed_archives "$dir/slots/p$PART_A/var/cache/apt/archives"
  fi
  # Provisioning of the data partition: device type, and the name the image's
  # bootstrap artifact would record on first start.
  echo "device_type=$img_type" >"$dir/data/mender/device_type"
  if [ "$img_client" = double ]; then
    mkdir -p "$dir/data/mender/double-store"
    echo "artifact_name=$img_name" >"$dir/data/mender/double-store/artifact_name"
  fi
  [ -z "$img_toml" ] || install -m 644 "$img_toml" "$dir/data/fleet-agent/agent.toml"
  # The environment: a zeroed 16 KiB file gets Mender's defaults (partition A).
  head -c 16384 /dev/zero >"$dir/boot/uboot.env"
  echo "$dir/boot/uboot.env 0x0000 0x4000" >"$dir/boot/fw_env.host.config"
  "$double_dir/uboot-sim" init "$dir/boot/fw_env.host.config" "$PART_A" "$PART_B"
  LOOP_PID='' LOOP_START='' NSPAWN_PID='' NSPAWN_START='' PID='' PID_START='' BOOTS=0 PART=''
  STATE=created UUID=$(tr -d '-' </proc/sys/kernel/random/uuid) WATCH_PID='' CLIENT=$img_client
  ab_write_state
  # From here on only the loop writes the state; it records its own PID first.
  setsid "$0" _loop "$name" </dev/null >/dev/null 2>&1 8>&- 9>&- &
  for _ in $(seq 100); do
    ab_load_state && [ -n "$LOOP_PID" ] && break
    sleep 0.05
  done
  [ -n "$LOOP_PID" ] || die "the bootloader loop did not start"
  if [ -n "$watch" ]; then
    setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; FLEET_AB_WATCHDOG=1 exec "$2" stop "$3"' \
      watchdog "$watch" "$0" "$name" </dev/null >>"$dir/watchdog.log" 2>&1 8>&- 9>&- &
    echo "$!" >"$dir/watchdog.pid"
  fi
  wait_boot 1 "$timeout"
  trap - EXIT
  echo "NAME=$name"
  echo "DIR=$dir"
  echo "PART=$PART"
  echo "PART_A=$PART_A"
  echo "PART_B=$PART_B"
  echo "BOOTS=$BOOTS"
  echo "PID=$PID"
  echo "BOOT_MS=$(($(now_ms) - t0))"
}

ab_teardown() {
  local i
  ab_load_state || true
  : >"$dir/poweroff" 2>/dev/null || true
  if [ -n "$NSPAWN_PID" ] && alive "$NSPAWN_PID" "$NSPAWN_START"; then
    PID=$(find_init) || PID=''
    if [ -z "$PID" ] || ! timeout 10 env -i PATH="$device_path" nsenter -t "$PID" -a -- systemctl poweroff --no-block >/dev/null 2>&1; then
      kill -TERM "$NSPAWN_PID" 2>/dev/null || true
    fi
  fi
  for ((i = 0; i < 600; i++)); do
    alive "$LOOP_PID" "$LOOP_START" || break
    sleep 0.05
    if [ $((i % 100)) = 99 ]; then
      ab_load_state || true
      [ -z "$NSPAWN_PID" ] || kill -TERM "$NSPAWN_PID" 2>/dev/null || true
    fi
  done
  if alive "$LOOP_PID" "$LOOP_START"; then
    ab_load_state || true
    PID=$(find_init 2>/dev/null) || PID=''
    [ -z "$PID" ] || kill -KILL "$PID" 2>/dev/null || true
    [ -z "$NSPAWN_PID" ] || kill -KILL "$NSPAWN_PID" 2>/dev/null || true
    kill -KILL "$LOOP_PID" 2>/dev/null || true
    sleep 0.2
  fi
  if [ -f "$dir/watchdog.pid" ] && [ "${FLEET_AB_WATCHDOG:-}" != 1 ]; then
    kill "$(cat "$dir/watchdog.pid")" 2>/dev/null || true
  fi
  rmdir "/run/systemd/nspawn/propagate/$name" 2>/dev/null || true
  if [ -d "$dir/mnt" ]; then
    mountpoint -q "$dir/mnt" && { umount "$dir/mnt" 2>/dev/null || umount -l "$dir/mnt"; }
  fi
  local l
  # Only a loop device still backed by this device's image: a stop that runs twice (the
  # test's and its watchdog's) must not detach a loop device another device (of another
  # suite running at the same time) has attached since.
  for l in $LOOP_DEVS; do
    case "$(losetup -n -O BACK-FILE "$l" 2>/dev/null)" in
      "$dir"/slot[AB].img*) losetup -d "$l" 2>/dev/null || true ;;
    esac
  done
  local p
  for p in "$dir"/slots/p*; do
    [ -d "$p/var/cache/apt/archives" ] && harvest_archives "$p/var/cache/apt/archives"
  done
  rm -rf --one-file-system "$dir"
  echo "STOPPED=$name"
}

cmd_artifact() {
  local out=${1:?artifact OUT}
  shift
  while [ $# -gt 0 ]; do
    parse_image_opt "$@"
    [ "$SHIFT" != 0 ] || die "artifact: unknown option $1"
    shift "$SHIFT"
  done
  local tmp
  tmp=$(mktemp -d)
  build_image "$tmp/image"
  local rootfs
  rootfs=$(readlink -f "$("$here/device-rootfs.sh")") || die "no root filesystem"
  local payload=$tmp/rootfs.tar
  if [ "$img_client" = real ]; then
    # An ext4 image of the whole tree, as a real rootfs-image artifact carries.
    mkdir -p "$tmp/tree"
    tar -C "$rootfs" --numeric-owner -cf - . | tar -C "$tmp/tree" --numeric-owner -xpf -
    cp -a "$tmp/image/." "$tmp/tree/"
    : >"$tmp/tree/etc/machine-id"
    payload=$tmp/rootfs.ext4
    mkfs.ext4 -q -F -L rootfs -d "$tmp/tree" "$payload" "$(($(du -sm "$tmp/tree" | cut -f1) * 13 / 10 + 64))M"
    rm -rf "$tmp/tree"
  else
    # The whole tree: the base, then the image's files (later members win on extraction).
    tar --numeric-owner -cf "$payload" -C "$rootfs" . -C "$tmp/image" .
  fi
  mender-artifact --compression none write rootfs-image -t "$img_type" -n "$img_name" \
    -f "$payload" -o "$out" >"$tmp/log" 2>&1 || { cat "$tmp/log" >&2; rm -rf "$tmp"; die "mender-artifact failed"; }
  rm -rf "$tmp"
  echo "ARTIFACT=$out"
  echo "NAME=$img_name"
  echo "SHA256=$(sha256sum "$out" | cut -d' ' -f1)"
}

[ $# -ge 1 ] || usage
cmd=$1
shift
[ "$(id -u)" = 0 ] || die "must run as root"
case "$cmd" in
  artifact) cmd_artifact "$@"; exit 0 ;;
  create | wait-boot | exec | env | boots | reboot | powercut | stop | _loop) ;;
  -h | --help | help) usage ;;
  *) log "unknown command $cmd"; usage ;;
esac
[ $# -ge 1 ] || usage
name=$1
shift
check_name "$name"
dir=$ab_run/$name
extra_env=()
case "$cmd" in
  create) cmd_create "$@" ;;
  _loop) cmd_loop ;;
  wait-boot)
    want=1 timeout=${FLEET_DEVICE_BOOT_TIMEOUT:-120}
    while [ $# -gt 0 ]; do
      case "$1" in
        --boot) want=${2:?}; shift 2 ;;
        --timeout) timeout=${2:?}; shift 2 ;;
        *) die "wait-boot: unknown option $1" ;;
      esac
    done
    wait_boot "$want" "$timeout"
    echo "PART=$PART"
    echo "BOOTS=$BOOTS"
    echo "PID=$PID" ;;
  exec)
    while [ $# -gt 0 ]; do
      case "$1" in
        --env) extra_env+=("${2:?}"); shift 2 ;;
        --) shift; break ;;
        *) log "exec: expected -- before the command"; exit 125 ;;
      esac
    done
    current_init || { log "device $name is not running"; exit 125; }
    env -i PATH="$device_path" HOME=/root USER=root LOGNAME=root LANG=C.UTF-8 TERM=dumb \
      "${extra_env[@]}" nsenter -t "$PID" -a -- "$@" <&0 &
    child=$!
    # A shutdown of the device (systemd-shutdown) sends SIGSTOP to every process in it,
    # then SIGTERM/SIGKILL, then SIGCONT. nsenter, outside the device, stops itself
    # when its child stops and would stay stopped, its dead child unreaped, which keeps
    # the device's shutdown waiting for that process forever. Keep nsenter going.
    ( while kill -0 "$child" 2>/dev/null; do
        [ "$(cut -d' ' -f3 "/proc/$child/stat" 2>/dev/null)" != T ] || kill -CONT "$child" 2>/dev/null
        sleep 0.2
      done ) &
    watcher=$!
    rc=0
    wait "$child" || rc=$?
    kill "$watcher" 2>/dev/null || true
    exit "$rc" ;;
  env) fw_printenv -c "$dir/boot/fw_env.host.config" ;;
  boots) cat "$dir/boots.log" ;;
  reboot)
    current_init || die "device $name is not running"
    env -i PATH="$device_path" nsenter -t "$PID" -a -- systemctl reboot --no-block ;;
  powercut)
    current_init || die "device $name is not running"
    : >"$dir/powercut"
    kill -KILL "$PID" 2>/dev/null || true
    kill -KILL "$NSPAWN_PID" 2>/dev/null || true ;;
  stop)
    mkdir -p "$ab_run"
    lockf=$ab_run/.$name.lock
    exec 8>>"$lockf"
    flock 8
    [ -e "$dir" ] || { echo "STOPPED=$name"; exit 0; }
    ab_teardown ;;
esac
