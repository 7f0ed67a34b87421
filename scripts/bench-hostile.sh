#!/usr/bin/env bash
# Hostile fleet repositories against the loader's bounds (docs/security.md, "Bounded
# work"): two nested loops in a template, a template that renders 1 GB, a 200 MB YAML
# scalar; then what the default bounds allow at most: an 8 MiB YAML file, a 16 MiB
# file, a template of nearly 1,000,000 steps. Each runs `plan --repo` on a scratch
# root under /usr/bin/time -v, with a time limit; prints exit code (2: a plan with
# changes), wall time, peak RSS and the agent's first problem line.
#   scripts/bench-hostile.sh                    (this tree's release build)
#   AGENT=path/to/fleet-agent scripts/bench-hostile.sh   (another build, e.g. main's)
#   LIMIT=300 scripts/bench-hostile.sh          (seconds before a case is killed; 120)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
limit=${LIMIT:-120}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
if [ -z "${AGENT:-}" ]; then
  cargo build --release --quiet --manifest-path "$here/Cargo.toml"
fi
agent=${AGENT:-$here/target/release/fleet-agent}

fleet() { # dir: a fleet whose one role `h` every device uses
  mkdir -p "$1/roles/h/templates" "$1/group_vars"
  printf 'format: 1\nroles: [h]\n' > "$1/fleet.yml"
  printf 'groups:\n  all-devices:\n    devices: ["*"]\n' > "$1/inventory.yml"
}

fleet "$scratch/loops"
printf 'resources:\n  - file: {path: /etc/h, template: loops.j2}\n' > "$scratch/loops/roles/h/role.yml"
printf '{%% for i in range(10000) %%}{%% for j in range(10000) %%}{%% endfor %%}{%% endfor %%}\n' \
  > "$scratch/loops/roles/h/templates/loops.j2"

fleet "$scratch/big-render"
printf 'resources:\n  - file: {path: /etc/h, template: big.j2}\n' > "$scratch/big-render/roles/h/role.yml"
printf '{%% for i in range(10) %%}{{ "x" * 100000000 }}{%% endfor %%}\n' \
  > "$scratch/big-render/roles/h/templates/big.j2"

fleet "$scratch/big-yaml"
printf 'resources: []\n' > "$scratch/big-yaml/roles/h/role.yml"
{ printf 'vars:\n  blob: "'; head -c 200000000 /dev/zero | tr '\0' 'x'; printf '"\n'; } \
  > "$scratch/big-yaml/group_vars/all.yml"

# At the default bounds, just under each.
fleet "$scratch/yaml-8MiB"
printf 'resources: []\n' > "$scratch/yaml-8MiB/roles/h/role.yml"
{ printf 'vars:\n  hosts:\n'; for i in $(seq 190000); do printf '    - 7b2e9c14-0a6d-4e8f-%012d\n' "$i"; done; } \
  > "$scratch/yaml-8MiB/group_vars/all.yml"
fleet "$scratch/file-16MiB"
mkdir -p "$scratch/file-16MiB/roles/h/files"
printf 'resources:\n  - file: {path: /etc/h, source: blob}\n' > "$scratch/file-16MiB/roles/h/role.yml"
head -c $((16 * 1024 * 1024)) /dev/urandom > "$scratch/file-16MiB/roles/h/files/blob"
fleet "$scratch/steps-1M"
printf 'resources:\n  - file: {path: /etc/h, template: loops.j2}\n' > "$scratch/steps-1M/roles/h/role.yml"
printf '{%% for i in range(300) %%}{%% for j in range(1000) %%}{%% endfor %%}{%% endfor %%}\n' \
  > "$scratch/steps-1M/roles/h/templates/loops.j2"

mkdir -p "$scratch/root"
for case in loops big-render big-yaml yaml-8MiB file-16MiB steps-1M; do
  set +e
  /usr/bin/time -v timeout "$limit" "$agent" --root "$scratch/root" plan --repo "$scratch/$case" \
    > "$scratch/out" 2> "$scratch/err"
  code=$?
  set -e
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$scratch/err")
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$scratch/err")
  first=$(grep -m1 -E '^  (roles/|group_vars/|fleet.yml|inventory.yml)' "$scratch/err" || true)
  [ "$code" = 124 ] && first="killed after ${limit}s"
  printf '%-10s exit %-3s wall %-8s peak RSS %7s KiB  %s\n' "$case" "$code" "$wall" "$rss" "$first"
done
