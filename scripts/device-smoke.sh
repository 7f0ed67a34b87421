#!/usr/bin/env bash
# End-to-end check of the device test harness, no agent involved: boots a device, serves
# the signed test apt repository on 127.0.0.1, configures it inside the device as a
# deb822 source, installs fleet-test-service with apt and checks the result with the
# device's own tools (dpkg-query, systemctl, journalctl). Then stops everything and
# checks that nothing is left.
#
#   scripts/device-smoke.sh
#
# Environment: SMOKE_MIRROR=0 boots the device without Debian's mirror (no network
# needed once the rootfs is cached); by default the device keeps its Debian source and
# also installs Debian's `hello`, to show the apt archive cache (0 B to download on the
# second run). Prints "TIMING step ms" lines and a summary. Needs root. Exit 0: passed.
set -Eeuo pipefail

here=$(cd "$(dirname "$0")" && pwd)
exec 3>&1 # TIMING lines go here even when a step's output is redirected
run_dir=${FLEET_DEVICE_RUN:-/tmp/fleet-agent-devices}
mirror=${SMOKE_MIRROR:-1}
name=fleet-smoke-$$
tmp=$(mktemp -d /tmp/fleet-smoke.XXXXXX)
server_pid=
device_started=0
timings=()

log() { echo "smoke: $*" >&2; }
fail() { log "FAIL: $*"; exit 1; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
timed() { # timed STEP CMD...: runs CMD, records its duration
  local step=$1 t0 rc=0
  shift
  t0=$(now_ms)
  "$@" || rc=$?
  local ms=$(($(now_ms) - t0))
  echo "TIMING $step $ms" >&3
  timings+=("$(printf '%-22s %6d ms' "$step" "$ms")")
  return $rc
}
dev() { "$here/device.sh" exec "$name" "$@"; }

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$device_started" = 1 ]; then
    "$here/device.sh" stop "$name" >/dev/null || rc=1
  fi
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[ "$(id -u)" = 0 ] || fail "must run as root"
py=python3
[ -x /usr/bin/python3 ] && py=/usr/bin/python3

# 1. The cached root filesystem (built on the first run).
timed rootfs "$here/device-rootfs.sh" >"$tmp/rootfs.out"

# 2. The signed test repository, served on a free port of 127.0.0.1.
timed apt-repo "$here/test-apt-repo.sh" "$tmp/repo" >"$tmp/repo.out"
repo_keyring=$(sed -n 's/^KEYRING=//p' "$tmp/repo.out")
repo_sources=$(sed -n 's/^SOURCES=//p' "$tmp/repo.out")
# Port 0: the kernel picks a free port, the server says which (no race). The server
# exits by itself when this script is gone, even after a SIGKILL.
$py -u - "$tmp/repo" $$ >"$tmp/http.log" 2>&1 <<'EOF' &
import functools, http.server, os, sys, threading, time
directory, parent = sys.argv[1], int(sys.argv[2])
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=directory)
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
print("Serving HTTP on 127.0.0.1 port %d" % server.server_address[1], flush=True)
threading.Thread(target=server.serve_forever, daemon=True).start()
while os.getppid() == parent:
    time.sleep(0.5)
EOF
server_pid=$!
port=
for _ in $(seq 1 100); do
  port=$(sed -n 's/.* port \([0-9][0-9]*\).*/\1/p' "$tmp/http.log" | head -n1)
  [ -n "$port" ] && break
  kill -0 "$server_pid" 2>/dev/null || fail "the HTTP server did not start: $(cat "$tmp/http.log")"
  sleep 0.05
done
[ -n "$port" ] || fail "the HTTP server did not report its port"
url=http://127.0.0.1:$port/
log "apt repository at $url"

# 3. Boot the device. --watch-pid: stopped even if this script is killed with SIGKILL.
start_args=(--watch-pid $$)
[ "$mirror" = 1 ] || start_args+=(--no-debian-sources)
device_started=1
timed device-start "$here/device.sh" start "$name" "${start_args[@]}" >"$tmp/start.out"
cat "$tmp/start.out"
root=$(sed -n 's/^ROOT=//p' "$tmp/start.out")
[ "$(sed -n 's/^STATE=//p' "$tmp/start.out")" = running ] || fail "device state is not running"
[ "$(dev -- systemctl is-system-running)" = running ] || fail "systemd in the device is not running"
[ "$(dev -- hostname)" = "$name" ] || fail "device hostname is not $name"
[ "$(dev -- cat /proc/1/comm)" = systemd ] || fail "PID 1 in the device is not systemd"

# 4. The source, with the keyring, inside the device (through exec's stdin).
configure() {
  dev -- install -d -m 755 /etc/apt/keyrings
  dev -- sh -c 'cat >/etc/apt/keyrings/fleet-test-archive-keyring.gpg' <"$repo_keyring"
  sed -e "s|@URL@|$url|" -e "s|@KEYRING@|/etc/apt/keyrings/fleet-test-archive-keyring.gpg|" \
    "$repo_sources" | dev -- sh -c 'cat >/etc/apt/sources.list.d/fleet-test.sources'
  dev -- cat /etc/apt/sources.list.d/fleet-test.sources >&2
}
timed configure-source configure

apt_env=(--env DEBIAN_FRONTEND=noninteractive)
timed apt-update dev "${apt_env[@]}" -- apt-get update -o Dpkg::Use-Pty=0 >"$tmp/update.log" 2>&1 ||
  { cat "$tmp/update.log" >&2; fail "apt-get update failed"; }
cat "$tmp/update.log" >&2
! grep -E '^(W|E):' "$tmp/update.log" >&2 || fail "apt-get update warned or failed"
grep -q "127.0.0.1:$port fleet-test InRelease" "$tmp/update.log" || fail "the signed InRelease was not fetched"

# 5. Install the service package (and its dependency) with apt.
timed apt-install dev "${apt_env[@]}" -- apt-get install -y -o Dpkg::Use-Pty=0 fleet-test-service \
  >"$tmp/install.log" 2>&1 || { cat "$tmp/install.log" >&2; fail "apt-get install failed"; }
cat "$tmp/install.log" >&2

# 6. Assertions with the device's own tools.
check() {
  local what=$1 want=$2 got
  shift 2
  got=$(dev -- "$@" 2>&1) || true
  [ "$got" = "$want" ] || fail "$what: expected '$want', got '$got'"
  log "ok: $what = $got"
}
asserts() {
  check "fleet-test-service package" "installed 1.0" \
    dpkg-query -W -f '${db:Status-Status} ${Version}' fleet-test-service
  check "fleet-test-dep package (dependency)" "installed 1.0" \
    dpkg-query -W -f '${db:Status-Status} ${Version}' fleet-test-dep
  check "conffile" "/etc/fleet-test-service.conf" \
    sh -c "dpkg-query -W -f '\${Conffiles}' fleet-test-service | awk '{print \$1}'"
  check "is-enabled" enabled systemctl is-enabled fleet-test-service.service
  check "is-active" active systemctl is-active fleet-test-service.service
  check "origin of the installed version" "http://127.0.0.1:$port fleet-test/main $(dev -- dpkg --print-architecture) Packages" \
    sh -c "apt-cache policy fleet-test-service | awk '/\\*\\*\\*/ { getline; print \$2, \$3, \$4, \$5 }'"
  local j=
  for _ in $(seq 1 50); do
    j=$(dev -- journalctl -u fleet-test-service.service --no-pager -o cat)
    grep -q 'fleet-test-service 1.0 started' <<<"$j" && break
    sleep 0.1
  done
  grep -q 'fleet-test-service 1.0 started' <<<"$j" || fail "journal of fleet-test-service: $j"
  log "ok: journal: $(grep 'started' <<<"$j" | tail -n1)"
  # A reload reaches the process (a handler test will rely on it).
  dev -- systemctl reload fleet-test-service.service
  for _ in $(seq 1 50); do
    dev -- journalctl -u fleet-test-service.service --no-pager -o cat | grep -q 'reloaded' && break
    sleep 0.1
  done
  dev -- journalctl -u fleet-test-service.service --no-pager -o cat | grep -q 'reloaded' ||
    fail "reload did not reach fleet-test-service"
  check "main PID unchanged by reload" active systemctl is-active fleet-test-service.service
  log "ok: reload logged"
  # The file is visible from the host too, through ROOT.
  grep -q '^message=default' "$root/etc/fleet-test-service.conf" || fail "ROOT does not show the device's files"
}
timed asserts asserts

# 7. Debian's own mirror through the shared apt archive cache.
if [ "$mirror" = 1 ]; then
  timed apt-install-hello dev "${apt_env[@]}" -- apt-get install -y -o Dpkg::Use-Pty=0 hello \
    >"$tmp/hello.log" 2>&1 || { cat "$tmp/hello.log" >&2; fail "apt-get install hello failed"; }
  need=$(sed -n 's/^Need to get \(.*\) of archives.*/\1/p' "$tmp/hello.log" | head -n1)
  log "hello: 'Need to get ${need:-?}' (0 B when the apt archive cache is warm)"
  check "hello runs" "Hello, world!" hello
fi

# 8. Stop, and nothing may be left.
timed device-stop "$here/device.sh" stop "$name" >"$tmp/stop.out"
device_started=0
[ ! -e "$run_dir/$name" ] || fail "the device's directory is left"
! grep -q " $run_dir/$name/" /proc/mounts || fail "a mount is left"
! pgrep -f -- "--machine $name( |$)" >/dev/null || fail "a systemd-nspawn process is left"
"$here/device.sh" status "$name" >/dev/null && fail "status says the device still exists"

echo
echo "device smoke test passed"
printf '  %s\n' "${timings[@]}"
