#!/usr/bin/env bash
# Fuzzing (cargo-fuzz, libFuzzer with AddressSanitizer and debug assertions) of the
# loader and the YAML layer (fuzz/, src/fuzz.rs). Each target runs for a bounded time;
# an input that panics or crashes fails the run, and so does one that hangs (libFuzzer's
# -timeout, 10 s of wall time: the run is niced on a shared machine). Then every input
# of the corpus is run again alone, at normal priority, and one that takes over 1 s
# fails the run too; the slowest is printed. A failing input is kept under
# fuzz/artifacts/TARGET/. Seeds: the example fleet, the every-kind fixture and the
# built-in roles, encoded as src/fuzz.rs `decode` reads them; the corpus grows in
# fuzz/corpus/TARGET/ (not committed) and is reused by the next run.
#   scripts/fuzz.sh                 each target for 60 s (what CI runs)
#   scripts/fuzz.sh --long [SECS]   each target for SECS seconds (default 3600)
#   scripts/fuzz.sh --long 600 yaml only the yaml target
#   FUZZ_TARGET_DIR=DIR             build there (CI keeps it between runs)
# Installs a nightly toolchain (when there is none) and cargo-fuzz.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
seconds=60
if [ "${1:-}" = --long ]; then
  shift
  seconds=3600
  if [[ "${1:-}" =~ ^[0-9]+$ ]]; then seconds=$1; shift; fi
fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(loader yaml)

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing a nightly toolchain (libFuzzer needs it)"
  rustup toolchain install nightly --profile minimal
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

seeds=$(mktemp -d)
trap 'rm -rf "$seeds"' EXIT
mkdir -p "$seeds/loader" "$seeds/yaml"
# One seed per fleet: every file, as `decode` reads it (name length, name, content
# length in two bytes little-endian, content); each YAML file also seeds the yaml target.
python3 - "$here" "$seeds" <<'EOF'
import os, struct, sys
top, out = sys.argv[1], sys.argv[2]
def files(root, prefix=""):
    for d, _, names in os.walk(root):
        for n in sorted(names):
            p = os.path.join(d, n)
            yield prefix + os.path.relpath(p, root), open(p, "rb").read()
fleets = {
    "examples": list(files(os.path.join(top, "examples/fleet"))),
    "every-kind": list(files(os.path.join(top, "tests/fixtures/every-kind"))),
}
fleets["builtin-roles"] = fleets["examples"] + list(files(os.path.join(top, "roles"), "roles/"))
for name, fs in fleets.items():
    blob = b"".join(
        bytes([len(p.encode())]) + p.encode() + struct.pack("<H", len(c)) + c
        for p, c in fs if len(p.encode()) < 256 and len(c) < 65536)
    open(os.path.join(out, "loader", name), "wb").write(blob)
    for p, c in fs:
        if p.endswith(".yml"):
            open(os.path.join(out, "yaml", name + "-" + p.replace("/", "_")), "wb").write(c)
EOF

target_dir=${FUZZ_TARGET_DIR:-$here/fuzz/target}
cd "$here/fuzz"
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  echo "== fuzz target $t: ${seconds}s"
  nice -n 10 cargo +nightly fuzz build --target-dir "$target_dir" "$t"
  nice -n 10 cargo +nightly fuzz run --target-dir "$target_dir" "$t" "corpus/$t" "$seeds/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 > "$seeds/$t.log" 2>&1 || true
  grep -E '^(#[0-9]+\s+(INITED|DONE)|stat::|Done|==|SUMMARY)|panicked|Timeout|ERROR' "$seeds/$t.log" || true
  if grep -qE 'ERROR: libFuzzer|panicked|SUMMARY: (Address|libFuzzer)|Test unit written' "$seeds/$t.log"; then
    echo "fuzz target $t failed: see fuzz/artifacts/$t/" >&2
    exit 1
  fi
  grep -q '^Done ' "$seeds/$t.log" || { echo "fuzz target $t did not finish" >&2; exit 1; }
  # Every input of the corpus again, alone: its time (libFuzzer prints it per file).
  bin=$(find "$target_dir" -path "*/release/$t" -type f -perm -u+x | head -n 1)
  find "corpus/$t" -type f -print0 | xargs -0 -n 200 "$bin" -rss_limit_mb=2048 2>&1 |
    awk '/^Executed / {n++; ms=$(NF-1); if (ms > max) {max = ms; slow = $2}}
      END {printf "replayed %d inputs of corpus/%s alone: slowest %d ms (%s)\n", n, t, max, slow; exit (max > 1000)}' t="$t" ||
    { echo "fuzz target $t: an input takes over 1 s" >&2; exit 1; }
done
