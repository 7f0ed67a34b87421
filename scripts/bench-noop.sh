#!/usr/bin/env bash
# Benchmark of the no-op pull (nothing changed upstream, nothing drifted) against the
# example fleet served by smart HTTP on 127.0.0.1 and by file://: wall time and peak
# RSS of each of N runs (/usr/bin/time -v), medians printed; the server's log shows
# that a no-op poll asks for refs only.
#   scripts/bench-noop.sh [RUNS]   (default 10)
#   AGENT=path/to/fleet-agent scripts/bench-noop.sh   (another build, e.g. to compare)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-10}
scratch=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$scratch"' EXIT
if [ -z "${AGENT:-}" ]; then
  cargo build --release --quiet --manifest-path "$here/Cargo.toml"
fi
agent=${AGENT:-$here/target/release/fleet-agent}

. "$(dirname "$0")/lib/example-fleet.sh"
serve_example_fleet "$scratch"

median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

bench() { # name url
  local name=$1 url=$2 root="$scratch/root-$1"
  mkdir -p "$root/etc/fleet-agent"
  printf 'repo = "%s"\nbranch = "production"\ndevice_id = "7b2e9c14-0a6d-4e8f-b1c3-5d7e9f1a3b02"\ndevice_type = "raspberrypi3"\n' "$url" > "$root/etc/fleet-agent/agent.toml"
  "$agent" --root "$root" -q pull
  "$agent" --root "$root" -q pull   # warm: the first no-op
  : > "$scratch/http.log"
  : > "$scratch/times"
  for _ in $(seq "$runs"); do
    # Wall time by the clock around the run (time -v rounds to 10 ms; this includes
    # its own fork and exec, so it slightly overstates the agent's time).
    start=$(date +%s%N)
    /usr/bin/time -v "$agent" --root "$root" -q pull 2> "$scratch/one" >/dev/null
    end=$(date +%s%N)
    ms=$(awk -v s="$start" -v e="$end" 'BEGIN {printf "%.1f", (e-s)/1e6}')
    kib=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$scratch/one")
    echo "$ms $kib" >> "$scratch/times"
  done
  printf '%-6s no-op pull, %s runs: median %s ms, median peak RSS %s KiB (max %s KiB)\n' "$name" "$runs" \
    "$(cut -d' ' -f1 "$scratch/times" | median)" "$(cut -d' ' -f2 "$scratch/times" | median)" \
    "$(cut -d' ' -f2 "$scratch/times" | sort -n | tail -1)"
}

bench http "$url"
echo "http server requests during the $runs no-op runs:"
sed -E 's/^.*"(GET|POST) ([^ ]*) .*$/  \1 \2/' "$scratch/http.log" | sort | uniq -c
bench file "file://$scratch/srv/fleet.git"
if command -v hyperfine >/dev/null; then
  hyperfine -N --warmup 3 --runs "$runs" "$agent --root $scratch/root-http -q pull" "$agent --root $scratch/root-file -q pull"
fi
