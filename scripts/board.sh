#!/usr/bin/env bash
# The emulated arm64 board: qemu-system-aarch64 -M virt with Debian's U-Boot
# (u-boot-qemu, qemu_arm64) as its firmware, booting Debian bookworm arm64 with Debian's
# kernel from a disk with a boot partition (FAT: boot.scr and uboot.env, the boot
# environment, as Mender keeps it on a Raspberry Pi), root filesystems A and B and a
# data partition. U-Boot picks the slot and counts boots (bootcount, bootlimit,
# upgrade_available, altbootcmd); Linux reads and writes the same environment with
# fw_printenv/fw_setenv; Debian's mender-client 3.4 installs mender-artifact artifacts;
# the arm64 fleet-agent .deb runs from its own timer. docs/os-updates-board.md
# describes the board and its scenarios (scripts/board-check.sh).
#
#   scripts/board.sh image  --deb DEB                 build (or find) the cached images
#   scripts/board.sh artifact OUT.mender --deb DEB --name N [--variant V]
#   scripts/board.sh start NAME --deb DEB --agent-toml FILE   flash a board, power on
#   scripts/board.sh wait NAME REGEX [--console] [--after LINE] [--timeout S]
#                                                     wait for a line of events.log (the
#                                                     journal) or console.log, print it
#   scripts/board.sh powercut NAME                    SIGKILL qemu (no flush, no shutdown)
#   scripts/board.sh poweron NAME                     start qemu again on the same disk
#   scripts/board.sh stop NAME                        kill qemu, remove the board
#
# Variants (the image's own difference): healthy; unhealthy (has
# /etc/fleet-board/unhealthy, which the scenarios' health command refuses); noinit
# (/sbin/init exits at once: the kernel panics, "Attempted to kill init").
#
# Cache ($FLEET_TEST_CACHE/board, default /var/cache/fleet-agent-tests/board): every
# stage's directory is named by the sha256 of its inputs (recipe text, package list, the
# agent .deb, the files this script writes), built in a temporary directory and renamed
# into place when complete, so an interrupted build is never used and a changed input
# rebuilds that stage and those after it only:
#   base-<key>/      debootstrapped arm64 tree with the kernel and initramfs (minutes)
#   slot-<key>.ext4  a root filesystem image: base + agent .deb + board files + variant
#   disk-<key>.img   the factory disk: MBR, boot (FAT: boot.scr), A, B (empty), data
#   art-<key>.mender an artifact of a slot image
# Boards live in /tmp/fleet-agent-board/NAME (disk, console and event logs).
# Host packages it installs when missing: qemu-system-arm, u-boot-qemu, u-boot-tools,
# qemu-user-static, binfmt-support, debootstrap, dosfstools, mtools, e2fsprogs, fdisk,
# mender-artifact. Needs root (debootstrap, chroot).
set -euo pipefail
log() { echo "board: $*" >&2; }
die() { log "error: $*"; exit 1; }

cache=${FLEET_TEST_CACHE:-/var/cache/fleet-agent-tests}/board
run_dir=${FLEET_BOARD_RUN:-/tmp/fleet-agent-board}
UBOOT=/usr/lib/u-boot/qemu_arm64/u-boot.bin
DEVICE_TYPE=qemu-arm64-board
# Artifacts are gzip-compressed ext4 images (Debian's mender-artifact 3.9 offers none, gzip,
# lzma: zstd is not built in). Under emulation the download (and the
# agent's SHA-256 of it) is what costs, about 5 MB/s; mender decompresses faster.
ARTIFACT_COMPRESSION=${FLEET_BOARD_COMPRESSION:-gzip}
# Partition layout (MiB): Mender's usual order on one disk.
BOOT_MIB=64 ROOTFS_MIB=900 DATA_MIB=1400
# The boot environment: Debian's qemu_arm64 U-Boot keeps its own environment in NOR
# flash (CONFIG_ENV_IS_IN_FLASH), which Debian's arm64 kernel cannot reach (no
# CONFIG_MTD_CFI, no CONFIG_MTD_PHYSMAP). So the Mender variables live in uboot.env on
# the FAT boot partition, as with Mender on a Raspberry Pi (CONFIG_ENV_IS_IN_FAT there;
# fw_env.config "/uboot/uboot.env 0x0000 0x4000"): boot.scr imports and saves it with
# `env import -c` / `env export -c` + `save` (FAT write), Linux with libubootenv.
ENV_SIZE=0x4000
sha() { sha256sum | cut -c1-16; }

# --- host tools ---------------------------------------------------------------------
host_tools() {
  local need=()
  command -v qemu-system-aarch64 >/dev/null || need+=(qemu-system-arm)
  [ -f "$UBOOT" ] || need+=(u-boot-qemu)
  command -v mkimage >/dev/null || need+=(u-boot-tools)
  command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
  command -v update-binfmts >/dev/null || need+=(binfmt-support)
  command -v debootstrap >/dev/null || need+=(debootstrap)
  command -v mkfs.vfat >/dev/null || need+=(dosfstools)
  command -v mcopy >/dev/null || need+=(mtools)
  command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
  command -v sfdisk >/dev/null || need+=(fdisk)
  command -v mender-artifact >/dev/null || need+=(mender-artifact)
  command -v fw_printenv >/dev/null || need+=(libubootenv-tool)
  if [ ${#need[@]} -gt 0 ]; then
    log "installing on the host: ${need[*]}"
    flock /tmp/host-apt.lock sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -o DPkg::Lock::Timeout=300 -y -qq --no-install-recommends "$@"' \
      apt "${need[@]}" >&2 || die "cannot install ${need[*]}"
  fi
}

binfmt() {
  local b=/proc/sys/fs/binfmt_misc
  [ -e "$b/register" ] || mount -t binfmt_misc binfmt_misc "$b" || die "cannot mount binfmt_misc"
  [ -e "$b/qemu-aarch64" ] || update-binfmts --enable qemu-aarch64 >&2 || die "cannot register qemu-aarch64"
}

# --- stage 1: the base tree -----------------------------------------------------------
# minbase plus what a board needs: systemd with udev (device units for fstab), kmod,
# e2fsprogs, libubootenv-tool, Debian's mender-client, then Debian's arm64 kernel with an
# initramfs that holds only the modules a virt board needs to find its root (listed
# below: the default MODULES=most takes minutes under qemu user emulation and is not
# needed). The Debian mirror is the host's.
BASE_INCLUDE=systemd,systemd-sysv,dbus,udev,kmod,e2fsprogs,procps,libubootenv-tool,mender-client,libglib2.0-0,initramfs-tools,zstd
INITRAMFS_MODULES="virtio_pci virtio_mmio virtio_blk virtio_net virtio_console ext4 vfat nls_cp437 nls_ascii"
MASK_UNITS="apt-daily.timer apt-daily-upgrade.timer apt-daily.service apt-daily-upgrade.service
dpkg-db-backup.timer fstrim.timer e2scrub_all.timer e2scrub_reap.service systemd-firstboot.service
mender-client.service mender-authd.service getty@tty1.service serial-getty@ttyAMA0.service man-db.timer"
# shellcheck disable=SC2086,SC2116 # the recipe is one line with single spaces
base_recipe() {
  echo "board-base v1 bookworm arm64 minbase include=$BASE_INCLUDE kernel=linux-image-arm64"
  echo "initramfs=$INITRAMFS_MODULES mask=$(echo $MASK_UNITS)"
}

build_base() {
  local key out tmp mirror
  key=$(base_recipe | sha)
  out=$cache/base-$key
  BASE=$out
  [ -f "$out/.complete" ] && { touch "$out"; return 0; }
  mkdir -p "$cache/debootstrap-debs"
  exec 7>"$cache/.lock-base"
  flock 7
  [ -f "$out/.complete" ] && { exec 7>&-; return 0; }
  binfmt
  mirror=${FLEET_TEST_MIRROR:-$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)}
  mirror=${mirror:-http://deb.debian.org/debian}
  tmp=$(mktemp -d "$cache/.base.XXXXXX")
  chmod 755 "$tmp"
  local s
  s=$(date +%s)
  log "debootstrap --arch=arm64 bookworm from $mirror (under qemu user emulation: minutes)"
  if ! debootstrap --arch=arm64 --variant=minbase --include="$BASE_INCLUDE" \
    --cache-dir="$cache/debootstrap-debs" bookworm "$tmp" "$mirror" >"$cache/.debootstrap.log" 2>&1; then
    tail -n 30 "$cache/.debootstrap.log" >&2
    rm -rf --one-file-system "$tmp"
    die "debootstrap failed"
  fi
  # The kernel, with a small initramfs.
  mkdir -p "$tmp/etc/initramfs-tools/conf.d"
  echo "MODULES=list" >"$tmp/etc/initramfs-tools/conf.d/board.conf"
  echo "COMPRESS=zstd" >>"$tmp/etc/initramfs-tools/conf.d/board.conf"
  # shellcheck disable=SC2086 # one module a line
  printf '%s\n' $INITRAMFS_MODULES >"$tmp/etc/initramfs-tools/modules"
  echo "deb $mirror bookworm main" >"$tmp/etc/apt/sources.list"
  cp /etc/resolv.conf "$tmp/etc/resolv.conf" 2>/dev/null || true
  mount -t proc proc "$tmp/proc"
  if ! { chroot "$tmp" apt-get update -qq &&
    chroot "$tmp" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      -o Dir::Cache::Archives=/var/cache/apt/archives linux-image-arm64; } >"$cache/.kernel.log" 2>&1; then
    umount -l "$tmp/proc"
    tail -n 30 "$cache/.kernel.log" >&2
    rm -rf --one-file-system "$tmp"
    die "installing the kernel failed"
  fi
  umount -l "$tmp/proc"
  for u in $MASK_UNITS; do ln -sfn /dev/null "$tmp/etc/systemd/system/$u"; done
  rm -f "$tmp/etc/apt/sources.list" "$tmp/etc/resolv.conf"
  echo "# no Debian mirror on the board (scripts/board.sh)" >"$tmp/etc/apt/sources.list"
  find "$tmp/var/cache/apt/archives" -maxdepth 1 -name '*.deb' -delete
  rm -rf "$tmp/var/lib/apt/lists/"* "$tmp/debootstrap"
  mkdir -p "$tmp/var/lib/apt/lists/partial"
  : >"$tmp/etc/machine-id"
  rm -f "$tmp/var/lib/dbus/machine-id"
  base_recipe >"$tmp/.recipe"
  touch "$tmp/.complete"
  mv -T "$tmp" "$out"
  exec 7>&-
  log "base tree $out built in $(($(date +%s) - s)) s ($(du -sh "$out" | cut -f1))"
}


# --- stage 2: a slot image ----------------------------------------------------------------
# The files the board adds to every root filesystem. Part of the slot key (declare -f).
board_files() { # TREE NAME VARIANT
  local t=$1 name=$2 variant=$3
  mkdir -p "$t/etc/mender" "$t/etc/fleet-agent" "$t/data" "$t/uboot" "$t/etc/fleet-board" \
    "$t/etc/systemd/network" "$t/etc/systemd/journald.conf.d" "$t/var/log/journal" \
    "$t/etc/systemd/system/fleet-agent.timer.d" "$t/etc/systemd/system/fleet-agent.service.d"
  echo board >"$t/etc/hostname"
  # No login on the console that carries the journal to the host.
  ln -sfn /dev/null "$t/etc/systemd/system/serial-getty@hvc0.service"
  printf '127.0.0.1 localhost\n127.0.1.1 board\n' >"$t/etc/hosts"
  # The data partition: shared by both slots; Mender's datastore and the agent's state.
  printf '/dev/vda4 /data ext4 defaults,noatime 0 2\n' >"$t/etc/fstab"
  rm -rf "$t/var/lib/mender"
  ln -sfn /data/mender "$t/var/lib/mender"
  ln -sfn /data/fleet-agent/agent.toml "$t/etc/fleet-agent/agent.toml"
  # The boot environment as Linux sees it: uboot.env on the boot partition.
  printf '/dev/vda1 /uboot vfat defaults,noatime 0 0\n' >>"$t/etc/fstab"
  printf '# file offset size (scripts/board.sh)\n/uboot/uboot.env 0x0000 %s\n' "$ENV_SIZE" >"$t/etc/fw_env.config"
  printf '{\n  "RootfsPartA": "/dev/vda2",\n  "RootfsPartB": "/dev/vda3"\n}\n' >"$t/etc/mender/mender.conf"
  echo "artifact_name=$name" >"$t/etc/mender/artifact_info"
  echo "$name" >"$t/etc/fleet-os-release"
  # Network: QEMU's user network; the host's 127.0.0.1 is 10.0.2.2. Static, no DNS.
  printf '[Match]\nName=e*\n\n[Network]\nAddress=10.0.2.15/24\nGateway=10.0.2.2\n' >"$t/etc/systemd/network/10-board.network"
  ln -sfn /lib/systemd/system/systemd-networkd.service "$t/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
  mkdir -p "$t/etc/systemd/system/network-online.target.wants"
  ln -sfn /lib/systemd/system/systemd-networkd-wait-online.service "$t/etc/systemd/system/network-online.target.wants/systemd-networkd-wait-online.service"
  # The journal, persistent on the slot, and forwarded live to the host through the
  # second console (virtio, /dev/hvc0 -> the board's events.log).
  printf '[Journal]\nStorage=persistent\nForwardToConsole=yes\nTTYPath=/dev/hvc0\nMaxLevelConsole=info\n' >"$t/etc/systemd/journald.conf.d/board.conf"
  # The package's timer, faster on the board: 5 s after boot, then 10 s after each run
  # ends, no random delay (the package's own settings are for a fleet). One empty
  # assignment resets every monotonic setting of the unit (systemd.timer(5)).
  printf '[Timer]\nOnBootSec=\nOnBootSec=5s\nOnUnitInactiveSec=10s\nRandomizedDelaySec=0\nFixedRandomDelay=false\n' \
    >"$t/etc/systemd/system/fleet-agent.timer.d/board.conf"
  # After every run, one line for the host: where the board runs and what the agent says.
  cat >"$t/usr/local/sbin/board-report" <<'R'
#!/bin/sh
# One line per fleet-agent run for the host (scripts/board.sh): root, artifact, env, phase.
root=$(findmnt -no SOURCE /)
art=$(mender show-artifact 2>/dev/null)
env=$(fw_printenv mender_boot_part upgrade_available bootcount 2>/dev/null | tr '\n' ' ')
st=$(fleet-agent os status --json 2>/dev/null | tr -d '\n' | tr -s ' ')
echo "BOARD-REPORT exit=${EXIT_STATUS:-?} root=$root artifact=$art env: ${env}os: $st"
R
  chmod 755 "$t/usr/local/sbin/board-report"
  printf '[Service]\nExecStopPost=/usr/local/sbin/board-report\n' >"$t/etc/systemd/system/fleet-agent.service.d/board.conf"
  # The kernel and initramfs under fixed names for U-Boot (booti wants an uncompressed
  # Image: Debian's vmlinuz is gzip'd).
  local k i
  k=$(find "$t/boot" -maxdepth 1 -name 'vmlinuz-*' | sort | tail -n 1)
  i=$(find "$t/boot" -maxdepth 1 -name 'initrd.img-*' | sort | tail -n 1)
  [ -n "$k" ] && [ -n "$i" ] || return 1
  if gzip -t "$k" 2>/dev/null; then zcat "$k" >"$t/boot/Image"; else ln -f "$k" "$t/boot/Image"; fi
  ln -f "$i" "$t/boot/initrd"
  # Smaller slots (and artifacts): modules for hardware a virt board does not have,
  # documentation, translations and apt's caches go (about 250 MB of 660).
  local m kv
  for m in "$t"/usr/lib/modules/*/; do
    kv=$(basename "$m")
    (cd "$m/kernel" && rm -rf sound drivers/{media,gpu,scsi,usb,iio,infiniband,target,staging,hwmon,bluetooth,isdn} \
      drivers/net/{wireless,ethernet,wwan,can,dsa,usb} net/{wireless,mac80211,bluetooth})
    chroot "$t" /sbin/depmod "$kv" || return 1
  done
  rm -rf "$t"/usr/share/{doc,man,locale}/* "$t"/var/cache/apt/*.bin
  : >"$t/etc/machine-id"
  case "$variant" in
    healthy) ;;
    unhealthy) echo "the scenarios' health command refuses this image" >"$t/etc/fleet-board/unhealthy" ;;
    noinit)
      rm -f "$t/sbin/init"
      printf '#!/bin/sh\necho "board: this image has a broken init"\nexit 1\n' >"$t/sbin/init"
      chmod 755 "$t/sbin/init" ;;
    *) return 1 ;;
  esac
}

deb_key() { sha256sum "$1" | cut -c1-16; }

# build_slot DEB NAME VARIANT: sets SLOT (an ext4 image of the whole root filesystem).
build_slot() {
  local deb=$1 name=$2 variant=$3 key out tmp
  build_base
  key=$( { echo "slot v1 base=$BASE deb=$(deb_key "$deb") name=$name variant=$variant"; declare -f board_files; } | sha)
  out=$cache/slot-$key.ext4
  SLOT=$out
  [ -f "$out" ] && { touch "$out"; return 0; }
  local s
  s=$(date +%s)
  tmp=$(mktemp -d "$cache/.slot.XXXXXX")
  mkdir "$tmp/tree"
  cp -a "$BASE/." "$tmp/tree/"
  rm -f "$tmp/tree/.complete" "$tmp/tree/.recipe"
  binfmt
  cp "$deb" "$tmp/tree/tmp/fleet-agent.deb"
  if ! chroot "$tmp/tree" dpkg -i /tmp/fleet-agent.deb >"$tmp/dpkg.log" 2>&1; then
    cat "$tmp/dpkg.log" >&2
    rm -rf --one-file-system "$tmp"
    die "dpkg -i of the agent failed"
  fi
  rm -f "$tmp/tree/tmp/fleet-agent.deb"
  board_files "$tmp/tree" "$name" "$variant" || { rm -rf --one-file-system "$tmp"; die "board files failed"; }
  local mib
  mib=$(($(du -sm "$tmp/tree" | cut -f1) * 12 / 10 + 64))
  [ "$mib" -le "$ROOTFS_MIB" ] || die "the root filesystem needs $mib MiB, the slot has $ROOTFS_MIB"
  mkfs.ext4 -q -F -L "rootfs" -d "$tmp/tree" "$tmp/slot.ext4" "${mib}M" >/dev/null || die "mkfs.ext4 failed"
  mv "$tmp/slot.ext4" "$out"
  rm -rf --one-file-system "$tmp"
  log "slot image $name ($variant) built in $(($(date +%s) - s)) s: $out"
}

# --- stage 3: the factory disk ------------------------------------------------------------
# U-Boot runs its default bootcmd (distro_bootcmd), which finds boot.scr on the bootable
# FAT partition. boot.scr does what Mender's U-Boot integration does (meta-mender's
# env_mender.h defaults: bootlimit=1, bootcount=0, upgrade_available=0,
# altbootcmd="run mender_altbootcmd; run bootcmd"; the boot count of
# CONFIG_BOOTCOUNT_LIMIT with CONFIG_BOOTCOUNT_ENV: counted and saved only while
# upgrade_available=1, altbootcmd instead of the normal boot once bootcount > bootlimit).
# Debian's qemu_arm64 U-Boot is built without CONFIG_BOOTCOUNT_LIMIT, so the count is
# done at the top of boot.scr, with the same variables and rule. The environment
# (uboot.env) holds the variables below; the script variables are re-set by every boot.
boot_cmd() {
  cat <<'B'
# The boot script of the board (scripts/board.sh): boot counting as Mender does it, then the slot.
# (No apostrophes in comments: the hush parser of U-Boot reads them as quotes.)
setenv board_saveenv 'env export -c -s 0x4000 0x50000000 bootcount bootlimit upgrade_available mender_boot_part mender_boot_part_hex altbootcmd mender_altbootcmd; save virtio 0:1 0x50000000 uboot.env 0x4000'
if load virtio 0:1 0x50000000 uboot.env && env import -c 0x50000000 0x4000; then
  echo "board: environment from uboot.env"
else
  echo "board: no valid uboot.env: the Mender defaults (partition 2)"
  setenv bootlimit 1
  setenv bootcount 0
  setenv upgrade_available 0
  setenv mender_boot_part 2
  setenv mender_boot_part_hex 2
  setenv board_init 1
fi
setenv altbootcmd 'run mender_altbootcmd; run bootcmd'
setenv mender_altbootcmd 'if test ${mender_boot_part} = 2; then setenv mender_boot_part 3; setenv mender_boot_part_hex 3; else setenv mender_boot_part 2; setenv mender_boot_part_hex 2; fi; setenv upgrade_available 0; echo "board: altbootcmd: falling back to partition ${mender_boot_part}"; run board_saveenv'
if test "${board_init}" = 1; then setenv board_init; run board_saveenv; fi
echo "board: mender_boot_part=${mender_boot_part} upgrade_available=${upgrade_available} bootcount=${bootcount} bootlimit=${bootlimit}"
if test "${upgrade_available}" = 1; then
  setexpr bootcount ${bootcount} + 1
  run board_saveenv
  if test ${bootcount} -gt ${bootlimit}; then
    echo "board: bootcount ${bootcount} > bootlimit ${bootlimit}: running altbootcmd"
    run altbootcmd
  fi
fi
echo "board: booting root filesystem /dev/vda${mender_boot_part}"
setenv bootargs "console=ttyAMA0 root=/dev/vda${mender_boot_part} rootfstype=ext4 rootwait rw init=/sbin/init panic=5 quiet loglevel=4 systemd.show_status=1"
if load virtio 0:${mender_boot_part_hex} ${kernel_addr_r} /boot/Image; then
  if load virtio 0:${mender_boot_part_hex} ${ramdisk_addr_r} /boot/initrd; then
    booti ${kernel_addr_r} ${ramdisk_addr_r}:${filesize} ${fdtcontroladdr}
  fi
fi
# As mender_try_to_recover in Mender: a slot that cannot be loaded during an update
# resets, and the count above falls back.
echo "board: cannot boot /dev/vda${mender_boot_part}"
if test "${upgrade_available}" = 1; then reset; fi
B
}

# build_disk DEB: sets DISK (factory image: A = fleet-os-1, B empty).
build_disk() {
  local deb=$1 key tmp s
  build_slot "$deb" fleet-os-1 healthy
  key=$( { echo "disk v2 slot=$SLOT boot=$BOOT_MIB rootfs=$ROOTFS_MIB data=$DATA_MIB"; boot_cmd; } | sha)
  DISK=$cache/disk-$key.img
  [ -f "$DISK" ] && { touch "$DISK"; return 0; }
  s=$(date +%s)
  tmp=$(mktemp -d "$cache/.disk.XXXXXX")
  local total=$((1 + BOOT_MIB + 2 * ROOTFS_MIB + DATA_MIB))
  truncate -s "${total}M" "$tmp/disk.img"
  sfdisk -q "$tmp/disk.img" <<P
label: dos
start=1MiB, size=${BOOT_MIB}MiB, type=c, bootable
size=${ROOTFS_MIB}MiB, type=83
size=${ROOTFS_MIB}MiB, type=83
size=${DATA_MIB}MiB, type=83
P
  boot_cmd >"$tmp/boot.cmd"
  mkimage -q -A arm64 -T script -C none -n "board boot script" -d "$tmp/boot.cmd" "$tmp/boot.scr" >/dev/null
  mkfs.vfat -n BOOT -C "$tmp/boot.vfat" $((BOOT_MIB * 1024)) >/dev/null
  mcopy -i "$tmp/boot.vfat" "$tmp/boot.scr" "$tmp/boot.cmd" ::/
  dd if="$tmp/boot.vfat" of="$tmp/disk.img" bs=1M seek=1 conv=notrunc,sparse status=none
  dd if="$SLOT" of="$tmp/disk.img" bs=1M seek=$((1 + BOOT_MIB)) conv=notrunc,sparse status=none
  mv "$tmp/disk.img" "$DISK"
  rm -rf "$tmp"
  log "factory disk built in $(($(date +%s) - s)) s: $DISK"
}

# --- artifacts ------------------------------------------------------------------------------
# build_artifact DEB NAME VARIANT: sets ARTIFACT (cached by the slot image and the name).
build_artifact() {
  local deb=$1 name=$2 variant=$3 key tmp
  build_slot "$deb" "$name" "$variant"
  key=$(echo "artifact v2 slot=$SLOT name=$name type=$DEVICE_TYPE compression=$ARTIFACT_COMPRESSION" | sha)
  ARTIFACT=$cache/art-$key.mender
  [ -f "$ARTIFACT" ] && { touch "$ARTIFACT"; return 0; }
  tmp=$(mktemp "$cache/.art.XXXXXX")
  mender-artifact write rootfs-image --compression "$ARTIFACT_COMPRESSION" -t "$DEVICE_TYPE" -n "$name" \
    -f "$SLOT" -o "$tmp" >"$tmp.log" 2>&1 || { cat "$tmp.log" >&2; rm -f "$tmp" "$tmp.log"; die "mender-artifact failed"; }
  rm -f "$tmp.log"
  mv "$tmp" "$ARTIFACT"
}

# Stage outputs unused for 3 days go (every use touches its output): each agent build
# makes new slots, disks and artifacts of about 0.5 GB.
prune_cache() {
  find "$cache" -maxdepth 1 \( -name 'slot-*.ext4' -o -name 'disk-*.img' -o -name 'art-*.mender' \) -mtime +3 -delete
  find "$cache" -maxdepth 1 -name 'base-*' -type d -mtime +3 -exec rm -rf --one-file-system {} +
  # Leftovers of interrupted builds (never used: only complete outputs are renamed).
  find "$cache" -maxdepth 1 -name '.*.*' \( -name '.base.*' -o -name '.slot.*' -o -name '.disk.*' -o -name '.art.*' \) \
    -mmin +720 -exec rm -rf --one-file-system {} +
}

# --- a board ----------------------------------------------------------------------------------
check_name() { [[ $1 =~ ^[a-z0-9][a-z0-9-]*$ ]] || die "bad board name '$1'"; }

# The data partition at the factory: Mender's device type and the agent's configuration.
provision_data() { # DIR AGENT_TOML
  local dir=$1 toml=$2 t
  t=$dir/.data
  rm -rf "$t"
  mkdir -p "$t/mender" "$t/fleet-agent"
  echo "device_type=$DEVICE_TYPE" >"$t/mender/device_type"
  install -m 600 "$toml" "$t/fleet-agent/agent.toml"
  mkfs.ext4 -q -F -L data -d "$t" "$dir/data.ext4" "${DATA_MIB}M" >/dev/null
  dd if="$dir/data.ext4" of="$dir/disk.img" bs=1M seek=$((1 + BOOT_MIB + 2 * ROOTFS_MIB)) conv=notrunc,sparse status=none
  rm -rf "$t" "$dir/data.ext4"
}

qemu_alive() { [ -f "$dir/qemu.pid" ] && kill -0 "$(cat "$dir/qemu.pid")" 2>/dev/null; }

# One power-on: a new qemu process on the board's disk and flash. Console (U-Boot,
# kernel) and events (the journal, from /dev/hvc0) are appended to their logs.
power_on() {
  qemu_alive && die "$name is already on"
  echo "=== power on $(date -u +%FT%TZ)" >>"$dir/console.log"
  echo "=== power on $(date -u +%FT%TZ)" >>"$dir/events.log"
  # FLEET_BOARD_NICE is the level qemu runs at, whatever the caller's own.
  local inc=$((${FLEET_BOARD_NICE:-15} - $(nice)))
  [ "$inc" -ge 0 ] || inc=0
  setsid nice -n "$inc" qemu-system-aarch64 -M virt -cpu cortex-a57 -smp 2 -m 1024 \
    -bios "$UBOOT" \
    -drive if=none,format=raw,file="$dir/disk.img",id=disk,cache=writeback \
    -device virtio-blk-device,drive=disk \
    -netdev user,id=net -device virtio-net-device,netdev=net \
    -device virtio-rng-device \
    -chardev null,id=con,logfile="$dir/console.log",logappend=on -serial chardev:con \
    -device virtio-serial-device \
    -chardev null,id=ev,logfile="$dir/events.log",logappend=on -device virtconsole,chardev=ev \
    -display none -monitor none -pidfile "$dir/qemu.pid" \
    </dev/null >>"$dir/qemu.log" 2>&1 &
  for _ in $(seq 100); do
    if [ -s "$dir/qemu.pid" ]; then
      # FLEET_BOARD_WATCH_PID: a board outlives no test that forgot it.
      if [ -n "${FLEET_BOARD_WATCH_PID:-}" ]; then
        # shellcheck disable=SC2016 # $1 and $2 are the watcher's own arguments
        setsid bash -c 'while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 2; done; kill -KILL "$2" 2>/dev/null' \
          watch "$FLEET_BOARD_WATCH_PID" "$(cat "$dir/qemu.pid")" </dev/null >/dev/null 2>&1 &
      fi
      return 0
    fi
    kill -0 $! 2>/dev/null || break
    sleep 0.05
  done
  cat "$dir/qemu.log" >&2
  die "qemu did not start"
}

# wait_for FILE PATTERN TIMEOUT [AFTER_LINE]: waits for an extended regex in a log,
# counting only lines after line AFTER_LINE; prints the matching line.
wait_for() {
  local file=$1 pat=$2 timeout=$3 after=${4:-0} deadline line
  deadline=$(($(date +%s) + timeout))
  while :; do
    line=$(tail -n +"$((after + 1))" "$file" 2>/dev/null | tr -d '\r' | grep -E -m1 -- "$pat") && { echo "$line"; return 0; }
    [ "$(date +%s)" -lt "$deadline" ] || { log "$name: no '$pat' in ${file##*/} within $timeout s"; return 1; }
    qemu_alive || [ "${WAIT_OFF_OK:-0}" = 1 ] || { log "$name: qemu is off while waiting for '$pat'"; return 1; }
    sleep 1
  done
}

wait_off() { # TIMEOUT
  local deadline=$(($(date +%s) + $1))
  while qemu_alive; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.5
  done
}

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 64; }

[ $# -ge 1 ] || usage
cmd=$1
shift
[ "$(id -u)" = 0 ] || die "must run as root"
deb='' toml='' variant=healthy art_name='' timeout=600
parse_opts() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --deb) deb=${2:?}; shift 2 ;;
      --agent-toml) toml=${2:?}; shift 2 ;;
      --name) art_name=${2:?}; shift 2 ;;
      --variant) variant=${2:?}; shift 2 ;;
      --timeout) timeout=${2:?}; shift 2 ;;
      *) die "unknown option $1" ;;
    esac
  done
}
case "$cmd" in
  image)
    parse_opts "$@"
    [ -f "$deb" ] || die "--deb DEB: the arm64 fleet-agent package"
    host_tools
    mkdir -p "$cache"
    build_disk "$deb"
    prune_cache
    echo "BASE=$BASE"
    echo "DISK=$DISK" ;;
  artifact)
    out=${1:?artifact OUT.mender}
    shift
    parse_opts "$@"
    [ -f "$deb" ] || die "--deb DEB: the arm64 fleet-agent package"
    [ -n "$art_name" ] || die "--name NAME"
    host_tools
    mkdir -p "$cache"
    build_artifact "$deb" "$art_name" "$variant"
    ln -f "$ARTIFACT" "$out.tmp.$$" 2>/dev/null || cp "$ARTIFACT" "$out.tmp.$$"
    mv -f "$out.tmp.$$" "$out"
    echo "ARTIFACT=$out"
    echo "SHA256=$(sha256sum "$out" | cut -d' ' -f1)" ;;
  start | wait | powercut | poweron | stop | console | events)
    name=${1:?board NAME}
    shift
    check_name "$name"
    dir=$run_dir/$name
    case "$cmd" in
      start)
        parse_opts "$@"
        [ -f "$deb" ] || die "--deb DEB: the arm64 fleet-agent package"
        [ -f "$toml" ] || die "--agent-toml FILE"
        host_tools
        mkdir -p "$cache"
        build_disk "$deb"
        [ ! -e "$dir" ] || { qemu_alive && die "$name exists and runs"; rm -rf "$dir"; }
        mkdir -p "$dir"
        t0=$(date +%s%3N)
        cp --sparse=always "$DISK" "$dir/disk.img"
        provision_data "$dir" "$toml"
        : >"$dir/console.log"
        : >"$dir/events.log"
        power_on
        echo "DIR=$dir"
        echo "FLASHED_MS=$(($(date +%s%3N) - t0))" ;;
      wait)
        pat=${1:?PATTERN}
        shift
        file=events after=0
        while [ $# -gt 0 ]; do
          case "$1" in
            --timeout) timeout=${2:?}; shift 2 ;;
            --console) file=console; shift ;;
            --after) after=${2:?}; shift 2 ;;
            *) die "wait: unknown option $1" ;;
          esac
        done
        wait_for "$dir/$file.log" "$pat" "$timeout" "$after" ;;
      powercut)
        qemu_alive || die "$name is off"
        echo "=== power cut $(date -u +%FT%TZ)" >>"$dir/console.log"
        kill -KILL "$(cat "$dir/qemu.pid")"
        WAIT_OFF_OK=1 wait_off 10 || die "qemu survived SIGKILL"
        rm -f "$dir/qemu.pid" ;;
      poweron) power_on ;;
      console) cat "$dir/console.log" ;;
      events) cat "$dir/events.log" ;;
      stop)
        if qemu_alive; then kill -KILL "$(cat "$dir/qemu.pid")"; WAIT_OFF_OK=1 wait_off 10 || true; fi
        rm -rf "$dir"
        echo "STOPPED=$name" ;;
    esac ;;
  _base) host_tools; mkdir -p "$cache"; build_base; echo "BASE=$BASE" ;;
  -h | --help | help) usage ;;
  *) log "unknown command $cmd"; usage ;;
esac
