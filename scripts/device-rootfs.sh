#!/usr/bin/env bash
# Builds (once) the Debian bookworm root filesystem that the device tests boot with
# systemd-nspawn, and prints its path on stdout (the only thing printed on stdout).
#
#   scripts/device-rootfs.sh            build if missing or incomplete, print the path
#   scripts/device-rootfs.sh --rebuild  build a new one even if the cached one is complete
#
# Cache layout (base: $FLEET_TEST_CACHE, default /var/cache/fleet-agent-tests):
#   bookworm              the root filesystem: a symbolic link to bookworm.<time>.<id>/;
#                         complete when bookworm/.fleet-test-rootfs holds the current
#                         recipe (see RECIPE below)
#   apt-archives/         .debs that devices downloaded (scripts/device.sh seeds every
#                         device with them and collects new ones when it stops)
#   debootstrap-debs/     debootstrap's own download cache (a cold rebuild reuses it)
#   .lock                 flock: one build at a time, concurrent callers wait
#
# A build goes to a temporary directory beside the final one, is renamed when complete,
# and the link is switched to it with a rename: an interrupted build never looks
# complete, and devices running on the previous tree keep it until they stop.
# Environment: FLEET_TEST_CACHE, FLEET_TEST_MIRROR (default: the host's Debian mirror
# from /etc/apt/sources.list*, else http://deb.debian.org/debian).
# Needs root (debootstrap, chroot).
set -euo pipefail

SUITE=bookworm
INCLUDE=systemd,systemd-sysv,dbus,ca-certificates,gnupg,apt-utils
# Units that make a test device behave unpredictably: timers that run apt or dpkg on
# their own (they would take the dpkg lock in the middle of a test), and the first-boot
# wizard, which would wait for input on the console.
MASK_UNITS="apt-daily.timer apt-daily-upgrade.timer apt-daily.service apt-daily-upgrade.service
dpkg-db-backup.timer fstrim.timer systemd-firstboot.service"
# Anything that changes what is built must change RECIPE: a cached rootfs with another
# recipe is rebuilt.
RECIPE="fleet-test-rootfs v1 suite=$SUITE variant=minbase include=$INCLUDE mask=$(echo $MASK_UNITS)"

log() { echo "device-rootfs: $*" >&2; }
die() { log "error: $*"; exit 1; }

rebuild=0
case "${1:-}" in
  --rebuild) rebuild=1 ;;
  "") ;;
  *) die "usage: $0 [--rebuild]" ;;
esac

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot, systemd-nspawn)"

cache=${FLEET_TEST_CACHE:-/var/cache/fleet-agent-tests}
rootfs=$cache/$SUITE
marker=.fleet-test-rootfs

complete() {
  [ -f "$rootfs/$marker" ] && [ "$(cat "$rootfs/$marker")" = "$RECIPE" ] &&
    [ -x "$rootfs/usr/lib/systemd/systemd" ] && [ -x "$rootfs/usr/bin/apt-get" ] &&
    [ -x "$rootfs/usr/bin/dpkg" ] && [ -f "$rootfs/etc/os-release" ]
}

# Fast path without the lock: a complete rootfs is never modified in place.
if [ $rebuild = 0 ] && complete; then
  echo "$rootfs"
  exit 0
fi

# Host tools of the whole harness: debootstrap (this script), systemd-nspawn and
# nsenter (device.sh), apt-ftparchive, gpg and dpkg-deb (test-apt-repo.sh).
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v nsenter >/dev/null || need+=(util-linux)
command -v apt-ftparchive >/dev/null || need+=(apt-utils)
command -v gpg >/dev/null || need+=(gnupg)
command -v gpgv >/dev/null || need+=(gpgv)
if [ ${#need[@]} -gt 0 ]; then
  log "installing on the host: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt_install() { apt-get install -y -q --no-install-recommends "${need[@]}" >&2; }
  # Retried after a fresh package list and after finishing an interrupted install
  # (dpkg's "unmet dependencies, try apt --fix-broken install").
  apt_install || { apt-get update -q >&2 && apt_install; } ||
    { apt-get install -y -q -f >&2 && apt_install; } || die "could not install ${need[*]}"
fi

mkdir -p "$cache" "$cache/apt-archives/partial" "$cache/debootstrap-debs"
exec 9>"$cache/.lock"
flock 9
# Someone else may have built it while we waited for the lock.
if [ $rebuild = 0 ] && complete; then
  echo "$rootfs"
  exit 0
fi

# The host's Debian mirror: the first URI of a source whose suites include $SUITE
# (deb822 .sources files first, then one-line .list files).
host_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v suite="$SUITE" '
      function flush() { if (uri != "" && suites ~ ("(^| )" suite "( |$)") && types ~ /(^| )deb( |$)/) { print uri; found=1; exit } uri=""; suites=""; types="" }
      /^[ \t]*$/ { flush(); next }
      /^[ \t]*#/ { next }
      tolower($1) == "uris:" { uri = $2 }
      tolower($1) == "suites:" { $1 = ""; suites = $0 " " }
      tolower($1) == "types:" { $1 = ""; types = $0 " " }
      END { if (!found) flush() }' "$f"
  done | head -n1
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk -v suite="$SUITE" '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ } if ($(i+1) == suite) { print $i; exit } }' "$f"
  done | head -n1
}
mirror=${FLEET_TEST_MIRROR:-$( (host_mirror || true) | head -n1)}
mirror=${mirror:-http://deb.debian.org/debian}

# Old trees: removed unless a device's overlay still uses one (device.sh holds
# .gc.lock shared while it copies a tree with cp).
gc_old_trees() {
  local current d
  current=$(readlink -f "$rootfs" 2>/dev/null || true)
  exec 7>"$cache/.gc.lock"
  flock -n 7 || return 0
  for d in "$cache/$SUITE".* "$cache"/.build-"$SUITE".*; do
    [ -d "$d" ] && [ ! -L "$d" ] || continue
    [ "$d" != "$current" ] || continue
    # A build directory of a build that is still running holds the build lock, which
    # we hold: any .build-* left is from a build that died.
    # Devices of the older layout mounted the link's path itself.
    if grep -qF "lowerdir=$d," /proc/mounts || grep -qF "lowerdir=$d:" /proc/mounts ||
      { [[ $d == *.old-* ]] && grep -qF "lowerdir=$rootfs," /proc/mounts; }; then
      log "keeping $d: a running device uses it"
      continue
    fi
    rm -rf --one-file-system "$d"
  done
  exec 7>&-
}

tmp=$(mktemp -d "$cache/.build-$SUITE.XXXXXX")
cleanup() {
  # A failed build leaves nothing mounted and nothing half-built behind.
  for m in proc sys dev/pts dev; do umount -l "$tmp/$m" 2>/dev/null || true; done
  rm -rf --one-file-system "$tmp"
}
trap cleanup EXIT
chmod 755 "$tmp"

start=$(date +%s)
log "debootstrap $SUITE from $mirror into $tmp (cache $cache)"
debootstrap --variant=minbase --include="$INCLUDE" --cache-dir="$cache/debootstrap-debs" \
  "$SUITE" "$tmp" "$mirror" >&2 || die "debootstrap failed (log: $tmp/debootstrap/debootstrap.log)"

# Device identity is set per device by device.sh; the image has none of its own.
echo device >"$tmp/etc/hostname"
: >"$tmp/etc/machine-id"
rm -f "$tmp/var/lib/dbus/machine-id"
for u in $MASK_UNITS; do ln -sfn /dev/null "$tmp/etc/systemd/system/$u"; done
# deb822 source for the Debian mirror, like a current Debian image.
rm -f "$tmp/etc/apt/sources.list"
cat >"$tmp/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $SUITE
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
# debootstrap's own .debs are in debootstrap-debs/; the image keeps no archives.
find "$tmp/var/cache/apt/archives" -maxdepth 1 -name '*.deb' -delete
rm -rf "$tmp/var/lib/apt/lists/"* "$tmp/var/log/"*.log "$tmp/debootstrap"
mkdir -p "$tmp/var/lib/apt/lists/partial"
echo "$RECIPE" >"$tmp/$marker"

# Atomic replace: the tree gets a name of its own and $rootfs, a symbolic link, is
# switched to it with one rename. Devices mount the tree behind the link, so a running
# device keeps its tree until it stops; trees that no device uses are removed.
final=$cache/$SUITE.$(date +%Y%m%d%H%M%S).${tmp##*.}
mv "$tmp" "$final"
trap - EXIT
if [ -d "$rootfs" ] && [ ! -L "$rootfs" ]; then
  # A plain directory (an older layout): moved aside, removed by the sweep below.
  mv "$rootfs" "$cache/$SUITE.old-$$"
fi
ln -sfn "${final##*/}" "$cache/.$SUITE.link.$$"
mv -T "$cache/.$SUITE.link.$$" "$rootfs"
log "built $final in $(($(date +%s) - start)) s ($(du -sh "$final" | cut -f1))"
gc_old_trees
echo "$rootfs"
