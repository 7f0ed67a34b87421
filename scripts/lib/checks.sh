# Check reporting shared by the .deb checks (deb-device-check.sh, arm64-deb-check.sh):
# `ok`, `bad` (sets failed=1) and `expect LABEL WANT CMD...`. Source it, then test
# "$failed" at the end.
failed=0
ok() { printf '  ok    %s\n' "$1"; }
bad() {
  printf '  FAIL  %s\n' "$1"
  failed=1
}
expect() { # LABEL WANT CMD...: CMD's stdout (trimmed) must be WANT
  local label=$1 want=$2 got
  shift 2
  got=$("$@" 2>&1 | tr '\n' ' ' | sed 's/ *$//') || true
  if [ "$got" = "$want" ]; then ok "$label: ${got:-(no output)}"; else bad "$label: got '$got', want '$want'"; fi
}
