#!/usr/bin/env bash
# A real Debian device for tests: a throwaway copy of the cached bookworm root filesystem
# (scripts/device-rootfs.sh) booted with systemd-nspawn, systemd as its PID 1, sharing
# the host's network (a server on the host's 127.0.0.1 is reachable from inside).
#
#   device.sh start NAME [--copy overlay|cp] [--no-debian-sources] [--watch-pid PID]
#                        [--timeout SECS] [-- EXTRA_NSPAWN_ARGS...]
#       Boots a fresh device and waits until its systemd reports running or degraded.
#       Prints KEY=VALUE lines on stdout: NAME, ROOT (the device's / as seen from the
#       host, writable), PID (the device's init, for nsenter), NSPAWN_PID, COPY, STATE,
#       COPY_MS, BOOT_MS. Everything else goes to stderr. Exit 0 when booted, 1 otherwise (and
#       nothing is left behind).
#       --copy               overlay (default when the kernel has overlayfs) or cp
#                            (cp -a --reflink=auto of the whole tree)
#       --no-debian-sources  the device has no apt source at all (no Debian mirror):
#                            apt sees only what the test configures
#       --watch-pid PID      stop the device when process PID exits (a test binary
#                            that dies without cleaning up)
#       --timeout SECS       boot timeout (default 120, env FLEET_DEVICE_BOOT_TIMEOUT)
#       Env FLEET_DEVICE_ROOTFS: boot this root filesystem tree instead of
#       scripts/device-rootfs.sh's (never modified: the device is an overlay or a copy)
#   device.sh exec NAME [--env K=V]... -- CMD [ARGS...]
#       Runs CMD inside the device (nsenter into all its namespaces) with a clean
#       environment (PATH, HOME=/root, LANG=C.UTF-8, TERM=dumb, plus --env). stdin,
#       stdout, stderr and the exit code are CMD's own. 125: the device is not running.
#   device.sh stop NAME [--keep]
#       Powers the device off (systemctl poweroff; SIGTERM then SIGKILL if it does not
#       stop within FLEET_DEVICE_STOP_TIMEOUT, default 30 s), keeps the .debs it
#       downloaded in the shared apt archive cache, and removes its root filesystem.
#       --keep leaves ROOT in place for inspection (a later stop removes it). A device
#       that does not exist is not an error. Prints STOPPED=NAME and STOP_MS.
#   device.sh status NAME   KEY=VALUE lines; exit 0 if running, 1 if not
#   device.sh list          names of the devices that have state
#   device.sh stop-all      stop every device (for CI cleanup)
#
# State: $FLEET_DEVICE_RUN/NAME (default /tmp/fleet-agent-devices/NAME): root/ (copy or
# overlay mount), upper/ and work/ (overlay), nspawn.log (systemd-nspawn's
# own messages; the device logs to its journal), state.
# Needs root: mount, systemd-nspawn, nsenter.
set -Eeuo pipefail
trap 'log "error: unexpected failure at line $LINENO: $BASH_COMMAND"' ERR

here=$(cd "$(dirname "$0")" && pwd)
run=${FLEET_DEVICE_RUN:-/tmp/fleet-agent-devices}
cache=${FLEET_TEST_CACHE:-/var/cache/fleet-agent-tests}
archives=$cache/apt-archives
# .debs with these names (space-separated globs) are never kept in the shared cache:
# tests build their own packages with the same names and versions but possibly other
# contents (the test packages, and fleet-agent itself from scripts/selfupdate-debs.sh).
nocache_glob=${FLEET_DEVICE_NOCACHE_GLOB:-fleet-test-* fleet-agent_*}
device_path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { echo "device.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
usage() { sed -n '/^#   device.sh/,/^# State/p' "$0" | sed 's/^# \{0,1\}//' | grep -v '^State' >&2; exit 64; }

check_name() {
  [[ "$1" =~ ^[A-Za-z0-9][A-Za-z0-9-]{0,62}$ ]] ||
    die "bad device name '$1' (letters, digits and '-', at most 63, it is the hostname)"
}

# Start time of a process (field 22 of /proc/PID/stat): a recorded PID is only
# trusted while it still names the same process.
starttime() {
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  s=${s##*) }
  set -- $s
  echo "${20}"
}
# Alive: same start time and not a zombie. A device's systemd-nspawn outlives the
# device.sh that started it, so its parent is whatever reaps orphans on this machine,
# which may take its time: an exited nspawn can stay a zombie for seconds.
alive() {
  local s
  [ -n "${1:-}" ] || return 1
  s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  s=${s##*) }
  set -- "${2:-x}" $s
  [ "$2" != Z ] && [ "$2" != X ] && [ "${21}" = "$1" ]
}

# Reads the state file of device $name into variables (ROOT, PID, PID_START, ...).
load_state() {
  ROOT='' PID='' PID_START='' NSPAWN_PID='' NSPAWN_START='' COPY='' WATCH_PID='' STATE=''
  [ -f "$dir/state" ] || return 1
  # shellcheck disable=SC1091
  . "$dir/state"
}
write_state() {
  cat >"$dir/state.tmp" <<EOF
ROOT=$ROOT
PID=$PID
PID_START=$PID_START
NSPAWN_PID=$NSPAWN_PID
NSPAWN_START=$NSPAWN_START
COPY=$COPY
WATCH_PID=$WATCH_PID
STATE=$STATE
EOF
  mv "$dir/state.tmp" "$dir/state"
}

# One start or stop of a device at a time. The lock file is removed with the device; a
# waiter that got the lock on a removed file tries again.
lock_device() {
  lockf=$run/.$name.lock
  mkdir -p "$run"
  while :; do
    exec 8>>"$lockf"
    flock 8
    [ "$(stat -c %d:%i "$lockf" 2>/dev/null)" = "$(stat -L -c %d:%i /proc/$$/fd/8)" ] && return 0
    exec 8>&-
  done
}

in_device() {
  env -i PATH="$device_path" HOME=/root USER=root LOGNAME=root LANG=C.UTF-8 TERM=dumb \
    "${extra_env[@]}" nsenter -t "$PID" -a -- "$@"
}

# The device's init: the child of systemd-nspawn that is PID 1 of its own namespace.
find_init() {
  local c f
  for c in $(ps -o pid= --ppid "$NSPAWN_PID" 2>/dev/null); do
    if grep -Eq '^NSpid:[[:space:]]+[0-9]+[[:space:]]+1$' "/proc/$c/status" 2>/dev/null; then
      echo "$c"
      return 0
    fi
  done
  # Not a child of systemd-nspawn (seen once in CI under load: the device booted, and no
  # child of nspawn was its init for 120 s): the process that is PID 1 of its own
  # namespace and whose hostname is this device's name (nspawn's --machine).
  for f in $(grep -lE '^NSpid:[[:space:]]+[0-9]+[[:space:]]+1$' /proc/[0-9]*/status 2>/dev/null || true); do
    c=${f#/proc/}
    c=${c%/status}
    if [ "$(timeout 5 nsenter -t "$c" -u hostname 2>/dev/null || true)" = "$name" ]; then
      [ -n "${FLEET_DEVICE_DEBUG:-}" ] && log "boot: init $c found by its hostname, not as a child of nspawn"
      echo "$c"
      return 0
    fi
  done
  return 1
}

# Hard links (or copies, across file systems) the cached .debs into DEST.
seed_archives() {
  local dest=$1 f
  mkdir -p "$dest/partial"
  for f in "$archives"/*.deb; do
    [ -f "$f" ] || continue
    ln -f "$f" "$dest/" 2>/dev/null || cp -f --reflink=auto "$f" "$dest/"
  done
}

nocache() {
  local g globs
  read -ra globs <<<"$nocache_glob" # split on spaces, no pathname expansion
  for g in "${globs[@]}"; do
    # shellcheck disable=SC2053
    [[ $1 == $g ]] && return 0
  done
  return 1
}

# Keeps the .debs a device downloaded: every one not yet in the cache, except test
# packages. ln is atomic; a concurrent harvest of the same file is harmless.
harvest_archives() {
  local src=$1 f b
  [ -d "$src" ] || return 0
  mkdir -p "$archives/partial"
  for f in "$src"/*.deb; do
    [ -f "$f" ] || continue
    b=${f##*/}
    nocache "$b" && continue
    [ -e "$archives/$b" ] && continue
    if ! ln "$f" "$archives/$b" 2>/dev/null; then
      cp --reflink=auto "$f" "$archives/partial/.$b.$$" &&
        mv -f "$archives/partial/.$b.$$" "$archives/$b" || rm -f "$archives/partial/.$b.$$"
    fi
  done
}

# The systemd-nspawn that runs ROOT, found by its command line (when the state file
# does not name it: a start interrupted at the wrong moment).
find_nspawn_by_root() {
  local p
  for p in $(pgrep -x systemd-nspawn || true); do
    if tr '\0' '\n' <"/proc/$p/cmdline" 2>/dev/null | grep -qxF -- "$1"; then
      echo "$p"
      return 0
    fi
  done
  return 1
}

# Removes everything of device $name; powers it off first if it runs.
teardown() {
  local keep=${1:-0} t0 i p
  t0=$(now_ms)
  load_state || true
  if ! alive "$NSPAWN_PID" "$NSPAWN_START" && p=$(find_nspawn_by_root "${ROOT:-$dir/root}"); then
    NSPAWN_PID=$p
    NSPAWN_START=$(starttime "$p") || true
    if [ -z "$PID" ] || ! alive "$PID" "$PID_START"; then
      PID=$(find_init) || PID=
      [ -z "$PID" ] || PID_START=$(starttime "$PID") || PID=
    fi
  fi
  if [ -n "$NSPAWN_PID" ] && alive "$NSPAWN_PID" "$NSPAWN_START"; then
    # systemctl poweroff, or where that cannot work yet (systemd still starting, no
    # bus) SIGTERM to systemd-nspawn, which asks the device's systemd to power off.
    if ! alive "$PID" "$PID_START" ||
      ! timeout 10 env -i PATH="$device_path" nsenter -t "$PID" -a -- systemctl poweroff --no-block \
        >/dev/null 2>&1; then
      kill -TERM "$NSPAWN_PID" 2>/dev/null || true
    fi
    local limit=$((${FLEET_DEVICE_STOP_TIMEOUT:-30} * 20))
    for ((i = 1; i <= limit; i++)); do
      alive "$NSPAWN_PID" "$NSPAWN_START" || break
      sleep 0.05
      # A SIGTERM that reached systemd-nspawn before it was ready is lost: ask again.
      [ $((i % 40)) != 0 ] || kill -TERM "$NSPAWN_PID" 2>/dev/null || true
    done
    if alive "$NSPAWN_PID" "$NSPAWN_START"; then
      log "$name did not power off in ${FLEET_DEVICE_STOP_TIMEOUT:-30} s; SIGTERM to systemd-nspawn"
      kill -TERM "$NSPAWN_PID" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do alive "$NSPAWN_PID" "$NSPAWN_START" || break; sleep 0.1; done
    fi
    if alive "$NSPAWN_PID" "$NSPAWN_START"; then
      log "$name: SIGKILL"
      alive "$PID" "$PID_START" && kill -KILL "$PID" 2>/dev/null || true
      kill -KILL "$NSPAWN_PID" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do alive "$NSPAWN_PID" "$NSPAWN_START" || break; sleep 0.1; done
    fi
  fi
  # The init of a PID namespace takes every process of the device with it.
  if [ -n "$PID" ] && alive "$PID" "$PID_START"; then
    kill -KILL "$PID" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do alive "$PID" "$PID_START" || break; sleep 0.1; done
  fi
  if [ -n "$WATCH_PID" ] && [ "${FLEET_DEVICE_WATCHDOG:-}" != "$WATCH_PID" ]; then
    kill "$WATCH_PID" 2>/dev/null || true
  fi
  # systemd-nspawn leaves this behind when /run is not a tmpfs.
  rmdir "/run/systemd/nspawn/propagate/$name" 2>/dev/null || true
  if [ "$keep" = 1 ]; then
    STATE=stopped
    [ -f "$dir/state" ] && write_state
    echo "STOPPED=$name"
    echo "STOP_MS=$(($(now_ms) - t0))"
    return 0
  fi
  if [ "$COPY" = overlay ] || [ -d "$dir/upper" ]; then
    for ((i = 0; i < 20; i++)); do
      mountpoint -q "$dir/root" 2>/dev/null || break
      umount "$dir/root" 2>/dev/null || sleep 0.1
    done
    if mountpoint -q "$dir/root" 2>/dev/null; then
      log "$name: root still busy, lazy unmount"
      umount -l "$dir/root"
    fi
    harvest_archives "$dir/upper/var/cache/apt/archives"
  else
    harvest_archives "$dir/root/var/cache/apt/archives"
  fi
  if [ -d "$dir" ]; then
    # Never follow a mount out of the device's directory.
    rm -rf --one-file-system "$dir"
  fi
  echo "STOPPED=$name"
  echo "STOP_MS=$(($(now_ms) - t0))"
}

# Shows why a start failed, then removes the device.
start_failed() {
  log "start of $name failed; systemd-nspawn said:"
  tail -n 30 "$dir/nspawn.log" >&2 2>/dev/null || true
  if [ -d "$ROOT/var/log/journal" ]; then
    log "the device's journal (last 40 lines):"
    journalctl -D "$ROOT/var/log/journal" --no-pager -n 40 >&2 2>/dev/null || true
  fi
  teardown >/dev/null 2>&1 || true
}

cmd_start() {
  local copy='' debian_sources=1 watch='' timeout=${FLEET_DEVICE_BOOT_TIMEOUT:-120}
  local nspawn_extra=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --copy) copy=${2:?--copy needs overlay or cp}; shift 2 ;;
      --no-debian-sources) debian_sources=0; shift ;;
      --watch-pid) watch=${2:?--watch-pid needs a pid}; shift 2 ;;
      --timeout) timeout=${2:?--timeout needs seconds}; shift 2 ;;
      --) shift; nspawn_extra=("$@"); break ;;
      *) die "start: unknown option $1" ;;
    esac
  done
  if [ -z "$copy" ]; then
    if grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null; then copy=overlay; else copy='cp'; fi
  fi
  case "$copy" in overlay | cp) ;; *) die "--copy overlay|cp" ;; esac

  lock_device
  if load_state; then
    if alive "$NSPAWN_PID" "$NSPAWN_START" && [ "$STATE" != stopped ]; then
      die "device $name is already running (PID $PID); stop it first"
    fi
    log "removing the leftovers of an earlier $name"
    teardown >/dev/null
  elif [ -e "$dir" ]; then
    teardown >/dev/null
  fi

  local rootfs
  # FLEET_DEVICE_ROOTFS: another cached tree (scripts/arm64-deb-check.sh: an arm64 one).
  rootfs=${FLEET_DEVICE_ROOTFS:-$("$here/device-rootfs.sh")} || die "no root filesystem"
  # The tree behind the link: a rebuild switches the link, this device keeps its tree.
  rootfs=$(readlink -f "$rootfs")
  mkdir -p "$dir"
  ROOT=$dir/root PID='' PID_START='' NSPAWN_PID='' NSPAWN_START='' COPY=$copy WATCH_PID='' STATE=starting
  write_state
  # From here on, any failure removes the device again.
  trap 'rc=$?; if [ $rc != 0 ]; then start_failed; fi' EXIT

  local t0 t_copy t_boot i c
  t0=$(now_ms)
  mkdir -p "$ROOT"
  if [ "$copy" = overlay ]; then
    mkdir -p "$dir/upper" "$dir/work"
    # Cached .debs go straight into the upper layer, as hard links when possible.
    install -d -m 755 "$dir/upper/var" "$dir/upper/var/cache" "$dir/upper/var/cache/apt"
    install -d -m 755 "$dir/upper/var/cache/apt/archives"
    seed_archives "$dir/upper/var/cache/apt/archives"
    mount -t overlay overlay \
      -o "lowerdir=$rootfs,upperdir=$dir/upper,workdir=$dir/work" "$ROOT"
  else
    rmdir "$ROOT"
    # Shared lock: the rootfs builder does not remove a tree while it is being copied.
    exec 7>>"$cache/.gc.lock"
    flock -s 7
    [ -d "$rootfs" ] || die "$rootfs vanished"
    cp -a --reflink=auto "$rootfs" "$ROOT"
    exec 7>&-
    seed_archives "$ROOT/var/cache/apt/archives"
  fi
  # Identity of this device.
  tr -d '-' </proc/sys/kernel/random/uuid >"$ROOT/etc/machine-id"
  echo "$name" >"$ROOT/etc/hostname"
  if ! grep -qw "$name" "$ROOT/etc/hosts" 2>/dev/null; then echo "127.0.1.1	$name" >>"$ROOT/etc/hosts"; fi
  if [ "$debian_sources" = 0 ]; then
    rm -f "$ROOT/etc/apt/sources.list" "$ROOT/etc/apt/sources.list.d/debian.sources"
  fi
  t_copy=$(now_ms)

  # setsid: the device outlives this script and is not hit by signals to the caller's
  # process group. No inherited descriptors: a caller reading our stdout to EOF must
  # not wait for the device.
  setsid systemd-nspawn --register=no --keep-unit -q -b -D "$ROOT" --machine "$name" \
    --link-journal=no --console=pipe "${nspawn_extra[@]}" \
    </dev/null >"$dir/nspawn.log" 2>&1 8>&- 9>&- &
  NSPAWN_PID=$!
  NSPAWN_START=$(starttime "$NSPAWN_PID") || true
  write_state
  # setsid execs nspawn in place (a background job is no process group leader); should
  # it ever fork instead, follow it to its child.
  for ((i = 0; i < 100; i++)); do
    case "$(cat "/proc/$NSPAWN_PID/comm" 2>/dev/null)" in
      systemd-nspawn) break ;;
      setsid) c=$( (ps -o pid= --ppid "$NSPAWN_PID" || true) | head -n1 | tr -d ' ')
        [ -n "$c" ] && [ "$(cat "/proc/$c/comm" 2>/dev/null)" = systemd-nspawn ] && { NSPAWN_PID=$c; break; } ;;
      "") die "systemd-nspawn exited at once" ;;
    esac
    sleep 0.01
  done
  NSPAWN_START=$(starttime "$NSPAWN_PID") || die "systemd-nspawn exited at once"
  write_state

  local deadline=$(($(date +%s) + timeout)) state=
  while :; do
    alive "$NSPAWN_PID" "$NSPAWN_START" || die "systemd-nspawn exited during boot"
    if [ -z "$PID" ] && PID=$(find_init); then
      PID_START=$(starttime "$PID") || PID=
      write_state
    fi
    if [ -n "$PID" ] && ! alive "$PID" "$PID_START"; then
      [ -n "${FLEET_DEVICE_DEBUG:-}" ] && log "boot: init candidate $PID is gone"
      PID=
    fi
    if [ -n "$PID" ]; then
      # 20 s per probe: under load (two suites and a CPU-heavy job on 2 cores) systemctl
      # has been seen to need more than 5 s to answer.
      state=$(timeout 20 env -i PATH="$device_path" nsenter -t "$PID" -a -- \
        systemctl is-system-running --wait 2>"$dir/boot-wait.err") || true
      [ -n "${FLEET_DEVICE_DEBUG:-}" ] && log "boot: is-system-running: '$state' at $(now_ms) $(head -c 300 "$dir/boot-wait.err")"
      case "$state" in
        running | degraded) break ;;
        maintenance | stopping | offline | unknown | initializing | starting | "") ;;
      esac
    fi
    [ "$(date +%s)" -lt "$deadline" ] ||
      die "$name did not boot within $timeout s (last state: ${state:-none}; init pid: ${PID:-not found}; systemctl said: $({ head -c 300 "$dir/boot-wait.err" 2>/dev/null || true; } | tr '\n' ' '))"
    sleep 0.05
  done
  t_boot=$(now_ms)
  if [ "$state" = degraded ]; then
    log "$name is degraded; failed units:"
    extra_env=()
    in_device systemctl --failed --no-legend --no-pager >&2 || true
  fi

  if [ -n "$watch" ]; then
    FLEET_DEVICE_WATCHDOG='' setsid bash -c '
      while kill -0 "$1" 2>/dev/null; do sleep 1; done
      FLEET_DEVICE_WATCHDOG=$$ exec "$2" stop "$3"' watchdog "$watch" "$here/device.sh" "$name" \
      </dev/null >>"$dir/watchdog.log" 2>&1 8>&- 9>&- &
    WATCH_PID=$!
  fi
  STATE=$state
  write_state
  trap - EXIT
  cat <<EOF
NAME=$name
ROOT=$ROOT
PID=$PID
NSPAWN_PID=$NSPAWN_PID
COPY=$copy
STATE=$state
COPY_MS=$((t_copy - t0))
BOOT_MS=$((t_boot - t_copy))
EOF
}

cmd_exec() {
  extra_env=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --env) [[ "${2:-}" == *=* ]] || { log "--env needs K=V"; exit 125; }; extra_env+=("$2"); shift 2 ;;
      --) shift; break ;;
      *) log "exec: expected -- before the command"; exit 125 ;;
    esac
  done
  [ $# -gt 0 ] || { log "exec: no command"; exit 125; }
  if ! load_state || ! alive "$PID" "$PID_START" || [ "$STATE" = stopped ]; then
    log "device $name is not running"
    exit 125
  fi
  # exec: the command's exit status is ours (nsenter execs it in the device).
  exec env -i PATH="$device_path" HOME=/root USER=root LOGNAME=root LANG=C.UTF-8 TERM=dumb \
    "${extra_env[@]}" nsenter -t "$PID" -a -- "$@"
}

cmd_status() {
  if ! load_state; then
    echo "NAME=$name"
    echo "STATE=absent"
    exit 1
  fi
  local st=$STATE
  if ! alive "$PID" "$PID_START"; then st=stopped; fi
  printf 'NAME=%s\nROOT=%s\nPID=%s\nNSPAWN_PID=%s\nCOPY=%s\nSTATE=%s\n' \
    "$name" "$ROOT" "$PID" "$NSPAWN_PID" "$COPY" "$st"
  [ "$st" != stopped ] || exit 1
}

# scripts/ab-device.sh sources this file for its helpers (alive, find_init, the apt
# archive cache...): stop before the command dispatch.
[ "${DEVICE_SH_LIBRARY:-}" != 1 ] || return 0
[ $# -ge 1 ] || usage
cmd=$1
shift
case "$cmd" in
  list)
    [ -d "$run" ] || exit 0
    for d in "$run"/*/; do [ -d "$d" ] && basename "$d"; done
    exit 0 ;;
  stop-all)
    [ "$(id -u)" = 0 ] || die "must run as root"
    [ -d "$run" ] || exit 0
    rc=0
    for d in "$run"/*/; do [ -d "$d" ] && { "$0" stop "$(basename "$d")" || rc=1; }; done
    exit $rc ;;
  start | exec | stop | status) ;;
  -h | --help | help) usage ;;
  *) log "unknown command $cmd"; usage ;;
esac
[ $# -ge 1 ] || usage
name=$1
shift
check_name "$name"
dir=$run/$name
[ "$(id -u)" = 0 ] || { log "must run as root"; [ "$cmd" = exec ] && exit 125; exit 1; }
extra_env=()
case "$cmd" in
  start) cmd_start "$@" ;;
  exec) cmd_exec "$@" ;;
  stop)
    keep=0
    case "${1:-}" in --keep) keep=1 ;; "") ;; *) die "stop: unknown option $1" ;; esac
    lock_device
    teardown "$keep"
    [ "$keep" = 1 ] || rm -f "$lockf" ;;
  status) cmd_status ;;
esac
