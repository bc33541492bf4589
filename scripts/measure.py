#!/usr/bin/env python3
"""Runs a command and prints, as JSON on stdout, the CPU it used and the CPU a PostgreSQL
server used meanwhile:

    scripts/measure.py --pg-data-dir DIR -- otp-reconcile run ...

- job_user_s, job_sys_s: the command's own CPU (getrusage of the child, all its threads);
- pg_cpu_s: the server's CPU over the same interval, user + system: every process under
  the postmaster (from /proc) plus what the postmaster collected from backends that
  exited (cutime, cstime), so a backend that ends with the command is still counted;
- pg_autovacuum_cpu_s, pg_background_cpu_s: the part of it spent by autovacuum workers,
  and by the server's own processes (checkpointer, WAL writer, background writer...),
  read every 5 ms (an autovacuum worker that exits loses at most its last 5 ms here);
- pg_backend_cpu_s: the rest, the client connections' (backends') CPU: what the
  command's statements cost the server (an upper bound, by that same 5 ms);
- wall_s.

The command's stdout and stderr pass through (stdout to stderr, so the JSON stays alone).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time

TICK = os.sysconf("SC_CLK_TCK")


def stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        # the command name may hold spaces: the fields after it start past the last ')'
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): utime=14, stime=15, cutime=16, cstime=17, ppid=4
    return int(fields[1]), [int(x) for x in fields[11:15]]


def server_cpu(postmaster):
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid, (utime, stime, cutime, cstime) = stat(int(entry))
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(entry) == postmaster:
            total += utime + stime + cutime + cstime
        elif ppid == postmaster:
            total += utime + stime
    return total / TICK


def kind(pid):
    """backend, autovacuum or background, from the process title."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            title = f.read().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    if not title.startswith("postgres: "):
        return None  # just forked: still the postmaster's command line, no title yet
    if "autovacuum worker" in title:
        return "autovacuum"
    if "(" in title or "[local]" in title:
        return "backend"
    return "background"


class Sampler(threading.Thread):
    """The latest CPU (ticks) seen of each non-backend server process, every 5 ms."""

    def __init__(self, postmaster):
        super().__init__(daemon=True)
        self.postmaster = postmaster
        self.seen = {}  # pid -> (kind, ticks when first seen, ticks when last seen)
        self.done = threading.Event()

    def sample(self):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            try:
                ppid, (utime, stime, _, _) = stat(pid)
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            if ppid != self.postmaster:
                continue
            if pid not in self.seen:
                k = kind(pid)
                if k is None or k == "backend":
                    continue
                self.seen[pid] = (k, utime + stime, utime + stime)
            else:
                k, first, _ = self.seen[pid]
                self.seen[pid] = (k, first, utime + stime)

    def run(self):
        while not self.done.wait(0.005):
            self.sample()

    def used(self, which, started):
        """Ticks used by processes of kind `which` since sampling began; a process
        running at the start counts from there (`started`: pid -> ticks then)."""
        total = 0
        for pid, (k, _, last) in self.seen.items():
            if k == which:
                # a process started meanwhile used all its CPU in the interval
                total += last - started.get(pid, 0)
        return total / TICK


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pg-data-dir", required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    with open(os.path.join(args.pg_data_dir, "postmaster.pid")) as f:
        postmaster = int(f.readline())

    sampler = Sampler(postmaster)
    sampler.sample()
    started = {pid: last for pid, (_, _, last) in sampler.seen.items()}
    sampler.start()
    before_pg = server_cpu(postmaster)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    rc = subprocess.call(command, stdout=sys.stderr)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # a backend's CPU reaches the postmaster's cutime once it is reaped: wait a moment
    time.sleep(0.3)
    after_pg = server_cpu(postmaster)
    sampler.done.set()
    sampler.join()
    sampler.sample()
    autovacuum = sampler.used("autovacuum", started)
    background = sampler.used("background", started)
    json.dump(
        {
            "rc": rc,
            "wall_s": wall,
            "job_user_s": after.ru_utime - before.ru_utime,
            "job_sys_s": after.ru_stime - before.ru_stime,
            "pg_cpu_s": after_pg - before_pg,
            "pg_autovacuum_cpu_s": autovacuum,
            "pg_background_cpu_s": background,
            "pg_backend_cpu_s": max(0.0, after_pg - before_pg - autovacuum - background),
        },
        sys.stdout,
    )
    print()
    sys.exit(rc)


if __name__ == "__main__":
    main()
