#!/usr/bin/env bash
# Peak resident memory of the agent on big inputs (issue 13, item 6): a first clone of
# a repository with 200 MB of history (20 commits of a 10 MB file), the pull that
# applies a 200 MB file already in the clone, the no-op pull after it, and a first
# clone whose tip holds a 200 MB file; each over file:// and smart HTTP on 127.0.0.1
# (git's http-backend behind scripts/git-http-server.py). Peak RSS is GNU time's %M
# (ru_maxrss of the agent alone); each case runs RUNS times (default 3), median shown.
#   scripts/memory-check.sh [RUNS]
#   AGENT=path/to/fleet-agent scripts/memory-check.sh   (another build, e.g. main's)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-3}
scratch=$(mktemp -d /var/tmp/fleet-memory.XXXXXX)
server=
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$scratch"' EXIT
if [ -z "${AGENT:-}" ]; then
  cargo build --release --quiet --manifest-path "$here/Cargo.toml"
fi
agent=${AGENT:-$here/target/release/fleet-agent}
[ -x /usr/bin/time ] || { echo "memory-check: needs GNU time (apt-get install time)" >&2; exit 1; }

g() { git -c user.name=fleet -c user.email=fleet@example.com -c core.compression=0 -c pack.compression=0 "$@"; }
median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

# Two bare repositories: history.git (200 MB of history) and big.git (a 200 MB file,
# first in the tree but not declared: branch `before`; then declared: branch `main`).
mkdir -p "$scratch/srv"
for repo in history big; do
  g init -q --bare "$scratch/srv/$repo.git"
  g -C "$scratch/srv/$repo.git" config receive.unpackLimit 1
  g init -q -b main "$scratch/$repo"
  mkdir -p "$scratch/$repo/roles/big/files"
  # The bounds on file contents (16 MiB a file, 64 MiB a device by default) raised, as a
  # fleet that ships large files does (docs/security.md).
  printf 'format: 1\nsettings: {max_file_bytes: 300000000, max_total_file_bytes: 300000000}\nroles: [big]\n' > "$scratch/$repo/fleet.yml"
done
printf 'resources:\n  - file: {path: /srv/data.bin, source: data.bin}\n' > "$scratch/history/roles/big/role.yml"
for i in $(seq 20); do
  head -c 10000000 /dev/urandom > "$scratch/history/roles/big/files/data.bin"
  g -C "$scratch/history" add -A && g -C "$scratch/history" commit -qm "version $i"
done
g -C "$scratch/history" push -q "$scratch/srv/history.git" main
g -C "$scratch/srv/history.git" repack -adq
printf 'resources: []\n' > "$scratch/big/roles/big/role.yml"
head -c 200000000 /dev/urandom > "$scratch/big/roles/big/files/blob.bin"
g -C "$scratch/big" add -A && g -C "$scratch/big" commit -qm "a big file"
g -C "$scratch/big" push -q "$scratch/srv/big.git" main:before main:main
printf 'resources:\n  - file: {path: /srv/blob.bin, source: blob.bin}\n' > "$scratch/big/roles/big/role.yml"
g -C "$scratch/big" commit -qam "declare it"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 "$here/scripts/git-http-server.py" "$scratch/srv" "$port" 2>/dev/null &
server=$!
for _ in $(seq 50); do
  python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null && break
  sleep 0.1
done

device() { # root url branch
  rm -rf "$1"; mkdir -p "$1/etc/fleet-agent"
  printf 'repo = "%s"\nbranch = "%s"\ndevice_id = "d1"\n' "$2" "$3" > "$1/etc/fleet-agent/agent.toml"
}
measure() { # root -> KiB
  /usr/bin/time -f %M -o "$scratch/rss" "$agent" --root "$1" -q pull >/dev/null
  tail -1 "$scratch/rss"
}
report() { # what values...
  local what=$1; shift
  printf '%-58s median %6s KiB  (runs: %s)\n' "$what" "$(printf '%s\n' "$@" | median)" "$*"
}

for transport in file http; do
  case $transport in
    file) base="file://$scratch/srv" ;;
    http) base="http://127.0.0.1:$port" ;;
  esac
  r=$scratch/root
  clone=() apply=() noop=() bigclone=()
  for _ in $(seq "$runs"); do
    device "$r" "$base/history.git" main
    clone+=("$(measure "$r")")
    # The big file in the clone, not declared; then the commit that declares it.
    g -C "$scratch/srv/big.git" update-ref refs/heads/main refs/heads/before
    device "$r" "$base/big.git" main
    "$agent" --root "$r" -q pull
    g -C "$scratch/big" push -q -f "$scratch/srv/big.git" main:main
    apply+=("$(measure "$r")")
    noop+=("$(measure "$r")")
    device "$r" "$base/big.git" main
    bigclone+=("$(measure "$r")")
  done
  report "$transport: first clone of 200 MB of history" "${clone[@]}"
  report "$transport: the pull that applies a 200 MB file" "${apply[@]}"
  report "$transport: the no-op pull after it" "${noop[@]}"
  report "$transport: first clone whose tip has a 200 MB file" "${bigclone[@]}"
done
