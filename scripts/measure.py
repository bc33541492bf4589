#!/usr/bin/env python3
"""Runs a command and prints, as JSON on stdout, the CPU it used and the CPU a PostgreSQL
server used meanwhile:

    scripts/measure.py --pg-data-dir DIR -- otp-reconcile run ...

- job_user_s, job_sys_s: the command's own CPU (getrusage of the child, all its threads);
- pg_cpu_s: the server's CPU over the same interval, user + system: every process under
  the postmaster (from /proc) plus what the postmaster collected from backends that
  exited (cutime, cstime), so a backend that ends with the command is still counted;
- wall_s.

The command's stdout and stderr pass through (stdout to stderr, so the JSON stays alone).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pg-data-dir", required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    with open(os.path.join(args.pg_data_dir, "postmaster.pid")) as f:
        postmaster = int(f.readline())

    before_pg = server_cpu(postmaster)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    rc = subprocess.call(command, stdout=sys.stderr)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # a backend's CPU reaches the postmaster's cutime once it is reaped: wait a moment
    time.sleep(0.3)
    after_pg = server_cpu(postmaster)
    json.dump(
        {
            "rc": rc,
            "wall_s": wall,
            "job_user_s": after.ru_utime - before.ru_utime,
            "job_sys_s": after.ru_stime - before.ru_stime,
            "pg_cpu_s": after_pg - before_pg,
        },
        sys.stdout,
    )
    print()
    sys.exit(rc)


if __name__ == "__main__":
    main()
