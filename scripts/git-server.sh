#!/usr/bin/env bash
# A production git server on 127.0.0.1 for the fleet simulation and the benchmarks:
# nginx in front of `git http-backend` through fcgiwrap (Debian packages, installed
# when missing). Everything (config, sockets, logs, pid files) lives under one scratch
# directory; nothing of the system's nginx is used. The Python server in
# scripts/git-http-server.py stays for unit-level tests only.
#
#   scripts/git-server.sh start DIR PROJECT_ROOT PORT [v2|v0]
#       serves the bare repositories under PROJECT_ROOT at http://127.0.0.1:PORT/;
#       v0 hides the client's Git-Protocol header from git (a server without
#       protocol v2); fcgiwrap preforks $GIT_SERVER_WORKERS (default 4) workers.
#   scripts/git-server.sh stop DIR
#   scripts/git-server.sh overload DIR off | 503 SECS | 429 RATE SECS
#       503: every request answers 503 with Retry-After: SECS (a server in
#       maintenance); 429: nginx's limit_req lets RATE requests per second through
#       (burst 2 x RATE) and answers the rest 429 with Retry-After: SECS.
#   scripts/git-server.sh pids DIR      the server's processes (nginx, fcgiwrap)
#   scripts/git-server.sh usage DIR [reset]
#       CPU nanoseconds and peak memory bytes of the server and every process it
#       started (nginx, fcgiwrap, each git http-backend and upload-pack, also those
#       that have exited): the cgroup (v1 cpuacct and memory) the server runs in;
#       `reset` restarts the peak. Empty when the machine has no such cgroups.
#
# The access log (DIR/access.log) has one line per request:
#   msec method uri status request_length bytes_sent request_time git_protocol
# so that bytes on the wire and request rates can be read from it.
# nginx variables are written literally into its configuration.
# shellcheck disable=SC2016
set -euo pipefail

need() {
  [ -x /usr/sbin/nginx ] && [ -x /usr/sbin/fcgiwrap ] && return 0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    nginx-light fcgiwrap >/dev/null
}

write_conf() { # dir root port proto
  local dir=$1 root=$2 port=$3 proto=$4 v0=""
  [ "$proto" = v0 ] && v0='fastcgi_param HTTP_GIT_PROTOCOL "";'
  mkdir -p "$dir/tmp"
  [ -f "$dir/overload.conf" ] || : > "$dir/overload.conf"
  [ -f "$dir/limit.conf" ] || echo 'limit_req_zone $server_port zone=git:1m rate=100000r/s;' > "$dir/limit.conf"
  cat > "$dir/nginx.conf" <<EOF
# Written by scripts/git-server.sh.
user root;
daemon on;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  log_format fleet '\$msec \$request_method \$uri \$status \$request_length \$bytes_sent \$request_time "\$http_git_protocol"';
  access_log $dir/access.log fleet;
  client_body_temp_path $dir/tmp/body;
  fastcgi_temp_path $dir/tmp/fastcgi;
  proxy_temp_path $dir/tmp/proxy;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  keepalive_timeout 30;
  client_max_body_size 64m;
  include $dir/limit.conf;
  map \$status \$retry_after { 429 \$overload_retry; 503 \$overload_retry; default ""; }
  server {
    listen 127.0.0.1:$port backlog=4096;
    set \$overload_retry "";
    location / {
      include $dir/overload.conf;
      fastcgi_pass unix:$dir/fcgiwrap.sock;
      fastcgi_param SCRIPT_FILENAME /usr/lib/git-core/git-http-backend;
      fastcgi_param GIT_PROJECT_ROOT $root;
      fastcgi_param GIT_HTTP_EXPORT_ALL 1;
      fastcgi_param PATH_INFO \$uri;
      fastcgi_param QUERY_STRING \$query_string;
      fastcgi_param REQUEST_METHOD \$request_method;
      fastcgi_param CONTENT_TYPE \$content_type;
      fastcgi_param CONTENT_LENGTH \$content_length;
      fastcgi_param REMOTE_ADDR \$remote_addr;
      fastcgi_param SERVER_PROTOCOL \$server_protocol;
      fastcgi_param GATEWAY_INTERFACE CGI/1.1;
      $v0
      add_header Retry-After \$retry_after always;
    }
  }
}
EOF
}

# The cgroups the server runs in (cgroup v1 cpuacct and memory, below this shell's
# own), written to DIR/cgroups; none when they cannot be made.
cgroups() { # dir
  local dir=$1 name own
  name=fleet-git-server-$(echo "$dir" | md5sum | cut -c1-8)
  : > "$dir/cgroups"
  for c in cpuacct memory; do
    own=$(awk -F: -v c="$c" '$2 == c {print $3}' /proc/self/cgroup)
    [ -d "/sys/fs/cgroup/$c" ] || continue
    mkdir -p "/sys/fs/cgroup/$c${own%/}/$name" 2>/dev/null &&
      echo "/sys/fs/cgroup/$c${own%/}/$name" >> "$dir/cgroups"
  done
}

# Runs a command inside the server's cgroups.
in_cgroups() { # dir command...
  local dir=$1
  shift
  sh -c 'for g in $(cat "$0/cgroups"); do echo $$ > "$g/cgroup.procs"; done; exec "$@"' "$dir" "$@"
}

usage() { # dir [reset]
  local dir=$1 cpu="" mem=""
  [ -f "$dir/cgroups" ] || { echo; return; }
  while read -r g; do
    case $g in
      */cpuacct/*) cpu=$(cat "$g/cpuacct.usage") ;;
      */memory/*)
        [ "${2:-}" = reset ] && echo 0 > "$g/memory.max_usage_in_bytes"
        mem=$(cat "$g/memory.max_usage_in_bytes") ;;
    esac
  done < "$dir/cgroups"
  echo "$cpu $mem"
}

start() { # dir root port [proto]
  local dir=$1 root=$2 port=$3 proto=${4:-v2}
  need
  root=$(cd "$root" && pwd)
  write_conf "$dir" "$root" "$port" "$proto"
  rm -f "$dir/fcgiwrap.sock"
  cgroups "$dir"
  in_cgroups "$dir" setsid /usr/sbin/fcgiwrap -c "${GIT_SERVER_WORKERS:-4}" -s "unix:$dir/fcgiwrap.sock" \
    </dev/null >>"$dir/fcgiwrap.log" 2>&1 &
  for _ in $(seq 50); do [ -S "$dir/fcgiwrap.sock" ] && break; sleep 0.1; done
  # Its pid: setsid forks when started from a shell with job control.
  pgrep -o -f -- "-s unix:$dir/fcgiwrap.sock" > "$dir/fcgiwrap.pid"
  in_cgroups "$dir" /usr/sbin/nginx -c "$dir/nginx.conf" -e "$dir/error.log"
  for _ in $(seq 50); do
    curl -fsS -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null && break
    # http-backend answers 404 for /, which means the server is up.
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/" || true)" != 000 ] && break
    sleep 0.1
  done
  echo "http://127.0.0.1:$port"
}

stop() { # dir
  local dir=$1 pid
  if [ -f "$dir/nginx.pid" ]; then
    /usr/sbin/nginx -c "$dir/nginx.conf" -e "$dir/error.log" -s stop 2>/dev/null || true
    for _ in $(seq 50); do [ -f "$dir/nginx.pid" ] || break; sleep 0.1; done
  fi
  if [ -f "$dir/fcgiwrap.pid" ]; then
    pid=$(cat "$dir/fcgiwrap.pid")
    # fcgiwrap and its workers (its children).
    # shellcheck disable=SC2046
    kill -TERM "$pid" $(pgrep -P "$pid") 2>/dev/null || true
    rm -f "$dir/fcgiwrap.pid" "$dir/fcgiwrap.sock"
  fi
  if [ -f "$dir/cgroups" ]; then
    sleep 0.5
    while read -r g; do rmdir "$g" 2>/dev/null || true; done < "$dir/cgroups"
  fi
}

overload() { # dir mode [args]
  local dir=$1 mode=$2
  case $mode in
    off)
      : > "$dir/overload.conf"
      echo 'limit_req_zone $server_port zone=git:1m rate=100000r/s;' > "$dir/limit.conf" ;;
    503)
      printf 'set $overload_retry %s;\nreturn 503;\n' "$3" > "$dir/overload.conf" ;;
    429)
      echo "limit_req_zone \$server_port zone=git:1m rate=$3r/s;" > "$dir/limit.conf"
      printf 'set $overload_retry %s;\nlimit_req zone=git burst=%s nodelay;\nlimit_req_status 429;\n' \
        "$4" "$(( $3 * 2 ))" > "$dir/overload.conf" ;;
    *) echo "overload: off | 503 SECS | 429 RATE SECS" >&2; return 2 ;;
  esac
  /usr/sbin/nginx -c "$dir/nginx.conf" -e "$dir/error.log" -s reload
  sleep 1  # the new workers take over
}

pids() { # dir
  local dir=$1
  {
    [ -f "$dir/nginx.pid" ] && { cat "$dir/nginx.pid"; pgrep -P "$(cat "$dir/nginx.pid")" || true; }
    [ -f "$dir/fcgiwrap.pid" ] && { cat "$dir/fcgiwrap.pid"; pgrep -P "$(cat "$dir/fcgiwrap.pid")" || true; }
  } | sort -u
}

cmd=${1:-}
shift || true
# The scratch directory, absolute (nginx resolves relative paths against its prefix).
if [ $# -gt 0 ]; then
  mkdir -p "$1"
  set -- "$(cd "$1" && pwd)" "${@:2}"
fi
case $cmd in
  start) start "$@" ;;
  stop) stop "$@" ;;
  overload) overload "$@" ;;
  pids) pids "$@" ;;
  usage) usage "$@" ;;
  *) sed -n '2,20p' "$0" >&2; exit 2 ;;
esac
