#!/usr/bin/env bash
# No-op pull with signing on: BIN_A polls without [trust], BIN_B with [trust] and a
# signed tip (an ed25519 key from ssh-keygen, `git commit -S`), interleaved A B A B,
# over smart HTTP and file://. Prints the median time and peak RSS of each
# (docs/signing.md). A no-op poll verifies nothing new, so both should cost the same.
#   scripts/bench-noop-signing.sh BIN_A BIN_B [RUNS]
set -euo pipefail
declare -A bins
bins=([A]="$(realpath "$1")" [B]="$(realpath "$2")"); runs=${3:-10}
here=$(cd "$(dirname "$0")/.." && pwd)
command -v /usr/bin/time >/dev/null || apt-get install -y -qq time >/dev/null
scratch=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$scratch"' EXIT
# shellcheck source=scripts/lib/example-fleet.sh
. "$here/scripts/lib/example-fleet.sh"
serve_example_fleet "$scratch"
ssh-keygen -q -t ed25519 -N "" -C ci -f "$scratch/key"
git clone -q -b production "$scratch/srv/fleet.git" "$scratch/sign"
git -C "$scratch/sign" -c user.name=ci -c user.email=ci@example.com -c gpg.format=ssh \
  -c user.signingkey="$scratch/key" commit -q -S --allow-empty -m "signed tip"
git -C "$scratch/sign" push -q origin production
median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
for proto in http file; do
  [ $proto = http ] && u="$url" || u="file://$scratch/srv/fleet.git"
  for n in A B; do
    root="$scratch/root-$proto-$n"; mkdir -p "$root/etc/fleet-agent"
    printf 'repo = "%s"\nbranch = "production"\ndevice_id = "7b2e9c14-0a6d-4e8f-b1c3-5d7e9f1a3b02"\ndevice_type = "raspberrypi3"\n' "$u" > "$root/etc/fleet-agent/agent.toml"
    if [ $n = B ]; then
      printf '[trust]\nallowed_signers = "/etc/fleet-agent/allowed_signers"\n' >> "$root/etc/fleet-agent/agent.toml"
      echo "ci@example.com $(cut -d' ' -f1,2 "$scratch/key.pub")" > "$root/etc/fleet-agent/allowed_signers"
    fi
    bin=${bins[$n]}; "$bin" --root "$root" -q pull; "$bin" --root "$root" -q pull
  done
  : > "$scratch/A"; : > "$scratch/B"
  for _ in $(seq "$runs"); do
    for n in A B; do
      bin=${bins[$n]}; root="$scratch/root-$proto-$n"
      s=$(date +%s%N); /usr/bin/time -f %M "$bin" --root "$root" -q pull 2> "$scratch/one" >/dev/null; e=$(date +%s%N)
      echo "$(awk -v s="$s" -v e="$e" 'BEGIN{printf "%.2f",(e-s)/1e6}') $(tail -1 "$scratch/one")" >> "$scratch/$n"
    done
  done
  for n in A B; do
    echo "$proto $n: median $(cut -d' ' -f1 "$scratch/$n" | median) ms, median peak RSS $(cut -d' ' -f2 "$scratch/$n" | median) KiB"
  done
done
grep -q '"trusted_commit"' "$scratch/root-file-B/var/lib/fleet-agent/state.json" || { echo "B did not verify" >&2; exit 1; }
