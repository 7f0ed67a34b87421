#!/usr/bin/env bash
# The project's benchmark (docs/performance.md): hyperfine for wall times (median),
# GNU time for peak RSS (median of the runs), over file:// and smart HTTP (the real
# server of scripts/git-server.sh: nginx + fcgiwrap + git http-backend), for
#   noop      a no-op pull (nothing changed upstream, nothing drifted)
#   converge  the first converge of a realistic 30-resource role on an empty root
#             (clone, load, plan, apply: 14 files from templates and sources, 8
#             directories, 5 symlinks, 3 absent paths)
#   plan      `plan` after a one-file change upstream (the change is fetched once)
# and prints the machine it ran on. Installs hyperfine and GNU time when missing.
#   scripts/bench.sh [RUNS]     (default 10)
#   AGENT=path/to/fleet-agent scripts/bench.sh   (another build)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-10}
for tool in hyperfine:hyperfine /usr/bin/time:time; do
  command -v "${tool%%:*}" >/dev/null ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${tool##*:}" >/dev/null
done
if [ -z "${AGENT:-}" ]; then
  cargo build --release --quiet --manifest-path "$here/Cargo.toml"
fi
agent=${AGENT:-$here/target/release/fleet-agent}
scratch=$(mktemp -d)
trap '"$here/scripts/git-server.sh" stop "$scratch/server" >/dev/null 2>&1 || true; rm -rf "$scratch"' EXIT

# The fleet: one role of 30 resources.
src=$scratch/src
mkdir -p "$src/roles/app/templates" "$src/roles/app/files"
{
  printf 'format: 1\nvars:\n  site: bench\n  port: 8080\nroles:\n  - app\n'
} > "$src/fleet.yml"
{
  echo "description: a realistic application role (30 resources)"
  echo "resources:"
  for i in $(seq 8); do printf '  - directory:\n      path: /opt/app/d%s\n      mode: "0755"\n' "$i"; done
  for i in $(seq 7); do
    printf '  - file:\n      path: /opt/app/d%s/app.conf\n      template: app.conf.j2\n' "$i"
  done
  for i in $(seq 7); do printf '  - file:\n      path: /opt/app/d8/lib%s.sh\n      source: lib%s.sh\n      mode: "0755"\n' "$i" "$i"; done
  for i in $(seq 5); do printf '  - symlink:\n      path: /opt/app/current%s\n      target: /opt/app/d%s\n' "$i" "$i"; done
  for i in $(seq 3); do printf '  - absent:\n      path: /opt/app/old%s\n' "$i"; done
} > "$src/roles/app/role.yml"
printf '# {{ site }}\nsite={{ site }}\nport={{ port }}\ndevice={{ device.id }}\n' > "$src/roles/app/templates/app.conf.j2"
for i in $(seq 7); do
  { echo '#!/bin/sh'; for l in $(seq 200); do echo "echo library $i line $l"; done; } > "$src/roles/app/files/lib$i.sh"
done
git init -q -b main "$src"
git -C "$src" add -A
git -C "$src" -c user.name=bench -c user.email=bench@example.com commit -qm bench
git clone -q --bare "$src" "$scratch/srv/fleet.git"
git -C "$src" remote add origin "$scratch/srv/fleet.git"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
base=$("$here/scripts/git-server.sh" start "$scratch/server" "$scratch/srv" "$port" v2)

median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

device() { # root url
  mkdir -p "$1/etc/fleet-agent"
  printf 'repo = "%s"\nbranch = "main"\ndevice_id = "bench-0001"\ndevice_type = "bench"\n' "$2" > "$1/etc/fleet-agent/agent.toml"
}

# measure NAME PREPARE COMMAND: hyperfine's median, then GNU time's median peak RSS.
measure() {
  local name=$1 prepare=$2 command=$3 rss=()
  bash -c "$prepare" >/dev/null 2>&1
  # shellcheck disable=SC2086  # the command's words
  $command >/dev/null 2>&1 || echo "$name: exit $? (plan: 2 means changes pending)"
  hyperfine -N -i --runs "$runs" --warmup 2 --prepare "$prepare" --export-json "$scratch/h.json" \
    --style none "$command" >/dev/null
  for _ in $(seq "$runs"); do
    bash -c "$prepare" >/dev/null 2>&1
    # shellcheck disable=SC2086  # the command's words
    /usr/bin/time -f %M $command >/dev/null 2>"$scratch/t" || true
    rss+=("$(tail -1 "$scratch/t")")
  done
  printf '%-22s median %7.2f ms   peak RSS median %6s KiB\n' "$name" \
    "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["results"][0]["median"]*1000)' "$scratch/h.json")" \
    "$(printf '%s\n' "${rss[@]}" | median)"
}

echo "machine: $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "agent: $agent ($(stat -c %s "$agent") bytes), $runs runs each"
for proto in file http; do
  case $proto in
    file) url="file://$scratch/srv/fleet.git" ;;
    http) url="$base/fleet.git" ;;
  esac
  root=$scratch/root-$proto
  device "$root" "$url"
  "$agent" --root "$root" -q pull
  measure "$proto noop pull" "/bin/true" "$agent --root $root -q pull"
  fresh=$scratch/fresh-$proto
  printf 'rm -rf %s && mkdir -p %s/etc/fleet-agent && cp %s/etc/fleet-agent/agent.toml %s/etc/fleet-agent/\n' \
    "$fresh" "$fresh" "$root" "$fresh" > "$scratch/fresh-$proto.sh"
  measure "$proto first converge" "bash $scratch/fresh-$proto.sh" "$agent --root $fresh -q pull"
done
# One file changes upstream; both devices plan it (the first plan fetches it).
echo "echo changed" >> "$src/roles/app/files/lib1.sh"
git -C "$src" -c user.name=bench -c user.email=bench@example.com commit -qam "one file"
git -C "$src" push -q origin main
for proto in file http; do
  root=$scratch/root-$proto
  measure "$proto plan, 1 change" "/bin/true" "$agent --root $root -q plan"
done
