"""Checks that every command line in jobs/ parses with the binary: each container's
args in the Kubernetes manifests (with the container's environment, Secret values
replaced by placeholders) and each command of the crontab (with its variables).

usage: check_jobs.py BINARY JOBS_DIR
"""
import os
import shlex
import subprocess
import sys
from pathlib import Path

import yaml  # installed with kubernetes-validate

PLACEHOLDER = {"DATABASE_URL": "postgres://placeholder@localhost:5432/placeholder"}


def check(binary, where, args, env):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("PROVIDER_", "PASS_", "DATABASE_URL"))}
    full_env.update(env)
    done = subprocess.run([binary, "check-args", *args], env=full_env, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"FAIL {where}: otp-reconcile {' '.join(args)}\n{done.stderr}", file=sys.stderr)
        return False
    print(f"ok   {where}: otp-reconcile {' '.join(args)}")
    return True


def containers(doc):
    spec = doc.get("spec", {})
    if doc.get("kind") == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec.get("template", {}).get("spec", {}).get("containers", [])


def main(binary, jobs):
    ok = True
    for path in sorted(Path(jobs).glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            for c in containers(doc or {}):
                env = {e["name"]: e.get("value", PLACEHOLDER.get(e["name"], "placeholder")) for e in c.get("env", [])}
                args = [*c.get("command", [])[1:], *c.get("args", [])]
                ok &= check(binary, f"{path.name} {doc['metadata']['name']}/{c['name']}", args, env)
    crontab = Path(jobs) / "crontab"
    env = {}
    for n, line in enumerate(crontab.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" in line.split()[0]:
            key, value = line.split("=", 1)
            env[key] = PLACEHOLDER.get(key, value)
            continue
        words = shlex.split(line.split(">>")[0])[6:]  # five time fields and the user
        args = words[words.index("otp-reconcile") + 1:]
        ok &= check(binary, f"crontab line {n}", args, env)
    return ok


if __name__ == "__main__":
    sys.exit(0 if main(sys.argv[1], sys.argv[2]) else 1)
