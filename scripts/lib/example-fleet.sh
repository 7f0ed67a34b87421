# shellcheck shell=bash disable=SC2034  # sets server and url for the sourcing script
# Sourced by the scripts that need the example fleet as a served git repository.
# serve_example_fleet SCRATCH: makes examples/fleet a bare repository with branches main
# and production in SCRATCH/srv/fleet.git and serves it with git's http-backend on a
# free port of 127.0.0.1. Sets `server` (the server's pid, for the caller's cleanup)
# and `url`; the server logs its requests to SCRATCH/http.log.
serve_example_fleet() {
  local scratch=$1 top
  top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  git init -q -b main "$scratch/work"
  cp -r "$top/examples/fleet/." "$scratch/work/"
  git -C "$scratch/work" add -A
  git -C "$scratch/work" -c user.name=fleet-agent -c user.email=fleet-agent@example.com commit -qm fleet
  git clone -q --bare "$scratch/work" "$scratch/srv/fleet.git"
  git -C "$scratch/srv/fleet.git" branch production main
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  python3 "$top/scripts/git-http-server.py" "$scratch/srv" "$port" 2>"$scratch/http.log" &
  server=$!
  url="http://127.0.0.1:$port/fleet.git"
  # Ready when it answers.
  for _ in $(seq 50); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "the git server on port $port did not start" >&2
  return 1
}
