#!/usr/bin/env python3
"""A fleet in a box: N fleet-agent processes (each its own --root, state directory and
device id) polling one real git server (scripts/git-server.sh: nginx + fcgiwrap + git
http-backend on 127.0.0.1), with the systemd timer's schedule compressed: one minute of
the timer is MINUTE seconds here. Each device polls every 10 + u*10 minutes (u fixed
per device in [0, 1), as the unit's RandomizedDelaySec= with FixedRandomDelay=true),
at a random phase; a run is never started while the device's previous one is running.

Scenarios, for each protocol (the server speaking v2, or v0 only) and each ref count
(1 branch, or 5,000 refs: 2,500 branches and 2,500 tags besides it):
  steady   no-op polls for STEADY minutes: server CPU time per poll, bytes on the wire
           per poll, poll latency (p50/p99, the agent's wall time), server peak memory
           (CPU and memory from the server's cgroups, which hold nginx, fcgiwrap and
           every git process they start: scripts/git-server.sh usage);
  commit   a commit is pushed: the time until every device has applied it;
  outage   (1 ref only) the server stops for OUTAGE minutes while a commit is pushed,
           then comes back: the peak request rate after its return (1 s and 1-minute
           windows) against the cap, and the time until every device has applied it.
The cap (docs/performance.md): a device polls at most once per timer run and its runs
are at least 10 minutes apart, so a fleet of N sends at most N polls in any 10 minutes
(N/600 polls/s); backoff (src/sync/backoff.rs) only removes polls.

    scripts/fleet_sim.py --agent BIN --work DIR [--agents N] [--minute S]
                         [--protocols v2,v0] [--refs 1,5000] [--outage v2,v0]
Prints one line per figure and writes DIR/results.json; exits non-zero when the fleet
did not converge or the rate went over the cap. Bounded: every phase has a time limit.
"""
import argparse
import heapq
import json
import os
import random
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "git-server.sh")


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout


class Server:
    def __init__(self, work, port):
        self.dir = os.path.join(work, "server")
        self.root = os.path.join(work, "srv")
        self.port = port
        self.url = f"http://127.0.0.1:{port}/fleet.git"
        self.log = os.path.join(self.dir, "access.log")

    def start(self, proto):
        sh(SERVER, "start", self.dir, self.root, str(self.port), proto)

    def stop(self):
        sh(SERVER, "stop", self.dir)

    def pids(self):
        return [int(p) for p in sh(SERVER, "pids", self.dir).split()]

    def usage(self, reset=False):
        """CPU seconds and peak memory (bytes) of the server's cgroups: nginx, fcgiwrap
        and every git process they started, also those that have exited."""
        out = sh(SERVER, "usage", self.dir, *(["reset"] if reset else [])).split()
        return (int(out[0]) / 1e9, int(out[1])) if len(out) == 2 else (float("nan"), 0)

    def requests(self, since, until=1e18):
        out = []
        with open(self.log) as f:
            for line in f:
                w = line.split()
                t = float(w[0])
                if since <= t < until:
                    poll = w[2].endswith("/info/refs") and w[7] == '"version=2"'
                    out.append((t, w[1], w[2], int(w[3]), int(w[4]), int(w[5]), float(w[6]), poll,
                                w[7] == '"version=2"'))
        return out


def make_repo(work, agents):
    src = os.path.join(work, "src")
    os.makedirs(os.path.join(src, "roles/sim"), exist_ok=True)
    with open(os.path.join(src, "roles/sim/role.yml"), "w") as f:
        f.write("description: the simulated fleet's one file\nresources:\n"
                "  - file:\n      path: /etc/fleet-sim/version\n"
                "      content: \"{{ version }}\\n\"\n")
    write_version(src, 0)
    sh("git", "init", "-q", "-b", "main", src)
    commit(src, "fleet")
    sh("git", "clone", "-q", "--bare", src, os.path.join(work, "srv/fleet.git"))
    sh("git", "-C", src, "remote", "add", "origin", os.path.join(work, "srv/fleet.git"))


def write_version(src, n):
    with open(os.path.join(src, "fleet.yml"), "w") as f:
        f.write(f"format: 1\nvars:\n  version: {n}\nroles:\n  - sim\n")


def commit(src, message):
    sh("git", "-C", src, "add", "-A")
    sh("git", "-C", src, "-c", "user.name=sim", "-c", "user.email=sim@example.com",
       "commit", "-qm", message)


def push_version(work, n):
    src = os.path.join(work, "src")
    write_version(src, n)
    commit(src, f"version {n}")
    sh("git", "-C", src, "push", "-q", "origin", "main")


def set_refs(work, count):
    """Adds (or removes) the extra branches and tags of the 5,000-refs scenario."""
    bare = os.path.join(work, "srv/fleet.git")
    tip = sh("git", "-C", bare, "rev-parse", "main").strip()
    lines = []
    for i in range(2500):
        for kind in ("heads/feature", "tags/v"):
            name = f"refs/{kind}-{i:04d}"
            lines.append(f"create {name} {tip}" if count > 1 else f"delete {name}")
    subprocess.run(["git", "-C", bare, "update-ref", "--stdin"], input="\n".join(lines) + "\n",
                   text=True, check=count > 1, capture_output=True)
    sh("git", "-C", bare, "pack-refs", "--all")


class Fleet:
    def __init__(self, args, server):
        self.args = args
        self.server = server
        self.m = args.minute
        rnd = random.Random(18)
        self.devices = []
        for i in range(args.agents):
            root = os.path.join(args.work, f"dev/{i:04d}")
            os.makedirs(os.path.join(root, "etc/fleet-agent"), exist_ok=True)
            with open(os.path.join(root, "etc/fleet-agent/agent.toml"), "w") as f:
                f.write(f'repo = "{server.url}"\nbranch = "main"\n'
                        f'device_id = "sim-{i:04d}"\ndevice_type = "sim"\n'
                        f"[http]\ntimeout_secs = 20\ndeadline_secs = 60\n"
                        f"backoff_base_secs = {max(1, round(self.m))}\n"
                        f"backoff_max_secs = {max(1, round(10 * self.m))}\n")
            self.devices.append({"root": root, "period": (10 + 10 * rnd.random()) * self.m})
        self.rnd = rnd

    def version(self, d):
        try:
            return int(open(os.path.join(d["root"], "etc/fleet-sim/version")).read())
        except (OSError, ValueError):
            return -1

    def spawn(self, d):
        """Starts one run; its pid is reaped by wait4 (for its resource usage), so no
        Popen object may reap it first."""
        quiet = [(os.POSIX_SPAWN_OPEN, fd, "/dev/null", os.O_WRONLY, 0) for fd in (1, 2)]
        return os.posix_spawn(self.args.agent, [self.args.agent, "--root", d["root"], "-q", "pull"],
                              os.environ, file_actions=quiet)

    def first_pulls(self, parallel=4):
        """The first clone of every device, a few at a time (not measured)."""
        todo = list(self.devices)
        running = []
        while todo or running:
            while todo and len(running) < parallel:
                running.append(self.spawn(todo.pop()))
            os.waitpid(running.pop(0), 0)

    def run(self, seconds, on_tick=None, want=None):
        """Runs the timers for `seconds` (or until every device has version `want`,
        then stops at once). Returns the runs: (start, end, exit code, cpu, device)."""
        start = time.time()
        # Each device keeps its phase across calls (a timer that never restarts).
        for d in self.devices:
            d.setdefault("next", start + self.rnd.random() * d["period"])
            while d["next"] < start:
                d["next"] += d["period"]
        queue = [(d["next"], i) for i, d in enumerate(self.devices)]
        heapq.heapify(queue)
        running, runs = {}, []
        reached = {}
        while time.time() - start < seconds:
            now = time.time()
            if on_tick:
                on_tick(now - start)
            while queue and queue[0][0] <= now:
                at, i = heapq.heappop(queue)
                d = self.devices[i]
                if i not in running.values():
                    running[self.spawn(d)] = i
                    d["started"] = now
                d["next"] = at + d["period"]
                heapq.heappush(queue, (d["next"], i))
            while True:
                try:
                    pid, status, ru = os.wait4(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                i = running.pop(pid, None)
                if i is None:
                    continue
                d = self.devices[i]
                end = time.time()
                runs.append((d["started"], end, os.waitstatus_to_exitcode(status),
                             ru.ru_utime + ru.ru_stime, i))
                if want is not None and i not in reached and self.version(d) >= want:
                    reached[i] = end
            if want is not None and len(reached) == len(self.devices):
                break
            time.sleep(0.003)
        for p in list(running):
            try:
                os.waitpid(p, 0)
            except ChildProcessError:
                pass
        return runs, reached


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))] if v else float("nan")


def steady(fleet, server, label, results):
    m = fleet.m
    t0, (cpu0, _) = time.time(), server.usage(reset=True)
    runs, _ = fleet.run(fleet.args.steady * m)
    t1, (cpu1, peak) = time.time(), server.usage()
    reqs = server.requests(t0, t1 + 1)
    polls = sum(1 for r in reqs if r[7])
    served = [r[6] * 1000 for r in reqs]
    wire = sum(r[4] + r[5] for r in reqs)
    lat = [(e - s) * 1000 for s, e, code, _, _ in runs if code == 0]
    r = {
        "polls": polls,
        "requests": len(reqs),
        "server_cpu_ms_per_poll": round((cpu1 - cpu0) * 1000 / max(polls, 1), 2),
        "bytes_per_poll": round(wire / max(polls, 1)),
        "request_bytes_per_poll": round(sum(r[4] for r in reqs) / max(polls, 1)),
        "response_bytes_per_poll": round(sum(r[5] for r in reqs) / max(polls, 1)),
        "latency_ms_p50": round(pct(lat, 50), 1),
        "latency_ms_p99": round(pct(lat, 99), 1),
        "server_request_ms_p50": round(pct(served, 50), 1),
        "server_request_ms_p99": round(pct(served, 99), 1),
        "agent_cpu_ms_per_poll": round(sum(c for *_, c, _ in runs) * 1000 / max(len(runs), 1), 2),
        "server_peak_memory_kib": peak // 1024,
        "polls_per_s": round(polls / (t1 - t0), 1),
        "failed_runs": sum(1 for _, _, code, _, _ in runs if code != 0),
    }
    results[label + " steady"] = r
    print(f"{label} steady: " + ", ".join(f"{k} {v}" for k, v in r.items()), flush=True)


def propagate(fleet, label, results, version):
    push_version(fleet.args.work, version)
    t0, (cpu0, _) = time.time(), fleet.server.usage(reset=True)
    runs, reached = fleet.run(4 * 20 * fleet.m, want=version)
    cpu1, peak = fleet.server.usage()
    done = len(reached) == len(fleet.devices)
    secs = max(reached.values()) - t0 if done else float("nan")
    reqs = fleet.server.requests(t0, time.time() + 1)
    # A fetch: libgit2's own refs request and its POST (no Git-Protocol header).
    fetches = [r for r in reqs if r[1] == "POST" and not r[8]]
    polls = sum(1 for r in reqs if r[7])
    noop_ms = results[label + " steady"]["server_cpu_ms_per_poll"]
    fetch_ms = [(e - s) * 1000 for s, e, code, _, i in runs if i in reached and e == reached[i]]
    r = {"reached": len(reached), "of": len(fleet.devices), "seconds": round(secs, 1),
         "timer_minutes": round(secs / fleet.m, 1), "fetches": len(fetches),
         "polls": polls, "server_cpu_s": round(cpu1 - cpu0, 3),
         # What a fetch adds to its poll: libgit2's refs request and the pack.
         "server_cpu_ms_per_fetch": round(((cpu1 - cpu0) * 1000 - polls * noop_ms)
                                          / max(len(fetches), 1), 2),
         "bytes_per_fetch": round(sum(r[4] + r[5] for r in reqs if not r[8])
                                  / max(len(fetches), 1)),
         "updating_run_ms_p50": round(pct(fetch_ms, 50), 1),
         "server_peak_memory_kib": peak // 1024}
    results[label + " commit"] = r
    print(f"{label} commit: " + ", ".join(f"{k} {v}" for k, v in r.items()), flush=True)
    return done


def peak_rate(reqs, window):
    times = sorted(r[0] for r in reqs if r[7])
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] < t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def outage(fleet, server, proto, label, results, version):
    m, n = fleet.m, len(fleet.devices)
    state = {"down": False, "up_at": None}
    down_for = fleet.args.outage_minutes * m

    def tick(elapsed):
        if not state["down"] and state["up_at"] is None and elapsed >= 2 * m:
            server.stop()
            state["down"] = True
            push_version(fleet.args.work, version)
        elif state["down"] and elapsed >= 2 * m + down_for:
            server.start(proto)
            state["down"] = False
            state["up_at"] = time.time()

    t0 = time.time()
    # The outage, then until every device has the commit (at most 4 periods after).
    runs, _ = fleet.run(2 * m + down_for, on_tick=tick)
    tick(2 * m + down_for)
    _, reached = fleet.run(4 * 20 * m, want=version)
    up = state["up_at"]
    reqs = server.requests(up, time.time() + 1)
    during = server.requests(t0 + 2 * m, up)
    done = len(reached) == n
    secs = max(reached.values()) - up if done else float("nan")
    per_s, per_min, per_10 = peak_rate(reqs, 1.0), peak_rate(reqs, m), peak_rate(reqs, 10 * m)
    cap_10 = n
    r = {
        "converged_seconds_after_return": round(secs, 1),
        "converged_timer_minutes": round(secs / m, 1),
        "reached": len(reached),
        "peak_polls_in_1s": per_s,
        "peak_polls_per_timer_minute": per_min,
        "peak_polls_per_10_timer_minutes": per_10,
        "cap_per_10_timer_minutes": cap_10,
        "steady_polls_per_timer_minute": round(n / 15, 1),
        "runs_while_down": sum(1 for r in runs if r[0] >= t0 + 2 * m),
        "runs_while_down_that_reached_the_server": sum(1 for r in during if r[7]),
    }
    results[label + " outage"] = r
    print(f"{label} outage: " + ", ".join(f"{k} {v}" for k, v in r.items()), flush=True)
    return done and per_10 <= cap_10


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agent", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--minute", type=float, default=1.0, help="seconds per timer minute")
    ap.add_argument("--steady", type=float, default=15, help="timer minutes of no-op polls")
    ap.add_argument("--outage-minutes", type=float, default=20)
    ap.add_argument("--protocols", default="v2,v0")
    ap.add_argument("--refs", default="1,5000")
    ap.add_argument("--outage", default="", help="the protocols to run the outage with")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    args.work = os.path.abspath(args.work)
    port = args.port or 20000 + os.getpid() % 20000
    server = Server(args.work, port)
    make_repo(args.work, args.agents)
    os.environ["GIT_SERVER_WORKERS"] = os.environ.get("GIT_SERVER_WORKERS", "4")
    results = {"agents": args.agents, "minute_s": args.minute}
    ok, version = True, 0
    fleet = Fleet(args, server)
    t_all = time.time()
    try:
        for proto in args.protocols.split(","):
            server.start(proto)
            if version == 0:
                fleet.first_pulls()
            for refs in [int(r) for r in args.refs.split(",")]:
                set_refs(args.work, refs)
                label = f"{proto} {refs} refs"
                steady(fleet, server, label, results)
                version += 1
                ok &= propagate(fleet, label, results, version)
            set_refs(args.work, 1)
            if proto in args.outage.split(","):
                version += 1
                ok &= outage(fleet, server, proto, f"{proto} 1 refs", results, version)
            server.stop()
    finally:
        try:
            server.stop()
        except subprocess.CalledProcessError:
            pass
    results["seconds"] = round(time.time() - t_all, 1)
    results["ok"] = ok
    with open(os.path.join(args.work, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(f"fleet-sim: {args.agents} agents, {results['seconds']} s, {'ok' if ok else 'FAILED'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    main()
