"""Submit an evol-ray run to a Ray cluster: a thin wrapper around `ray job submit`.

    RAY_ADDRESS=http://head:8265 python jobs/submit.py conf/local.yaml output.path=s3://bucket/run1
    python jobs/submit.py --address http://127.0.0.1:8265 --no-wait conf/local.yaml evolution.rounds=4

Config files and `dotted.key=value` overrides are passed through unchanged to `jobs/entrypoint.py`,
which runs on the cluster as the job's driver; a relative config path is relative to the uploaded
working directory. The config is checked there, at the start of the job, before any engine starts:
a config error fails the job within seconds and `ray job logs ID` shows it.

Token authentication (on by default since Ray 2.59): the token is taken from `--auth-token-file`,
`$RAY_AUTH_TOKEN`, `$RAY_AUTH_TOKEN_PATH` or `~/.ray/auth_token` (where `ray start --head` writes
it), and `RAY_AUTH_MODE=token` is set for `ray job submit` when a token is found. One request to
the job server comes first: a missing or refused token, or a server that cannot be reached, stops
the submission with a message that says which and what to set (exit status 2).

The submission id is printed first (and is the only line on stdout before `ray job submit`'s own
output), so scripts can capture it even with `--no-wait`. Exit status: that of `ray job submit`
(with waiting: 0 when the job succeeded, 1 when it failed).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from a checkout: evol_ray sits beside jobs/
from evol_ray import ray_auth  # noqa: E402  (no Ray import: only the token lookup)
ENTRYPOINT = "jobs/entrypoint.py"  # relative to the working directory, which is uploaded as is
RUNTIME_ENV = REPO / "jobs" / "runtime_env.yaml"


def new_submission_id() -> str:
    """Readable and unique: the time of submission plus a random suffix."""
    return f"evol-ray-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def build_command(address: str, submission_id: str, working_dir: str, runtime_env: str,
                  run_args: List[str], no_wait: bool) -> List[str]:
    """The `ray job submit` command line. The driver asks for no CPU or GPU (Ray's defaults for an
    entrypoint), so it runs on a CPU-only head; the engine actors ask for the GPUs."""
    ray = shutil.which("ray") or "ray"
    cmd = [ray, "job", "submit", "--address", address, "--submission-id", submission_id,
           "--working-dir", working_dir, "--runtime-env", runtime_env]
    if no_wait:
        cmd.append("--no-wait")
    return cmd + ["--", "python", ENTRYPOINT, *run_args]


def parse(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="jobs/submit.py",
        description="Submit an evol-ray run with `ray job submit`. Config files and dotted.key=value "
                    "overrides are passed to the job's `evol-ray run`.",
    )
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="the cluster's job server, e.g. http://head:8265 (default: $RAY_ADDRESS)")
    p.add_argument("--working-dir", default=str(REPO),
                   help="directory uploaded as the job's working directory (default: the repository)")
    p.add_argument("--runtime-env", default=str(RUNTIME_ENV),
                   help="runtime environment YAML (default: jobs/runtime_env.yaml)")
    p.add_argument("--submission-id", default=None, help="default: evol-ray-<time>-<random>")
    p.add_argument("--auth-token-file", default=None,
                   help="a file holding the cluster's Ray auth token (default: $RAY_AUTH_TOKEN, "
                        "$RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, as Ray looks for it)")
    p.add_argument("--no-wait", action="store_true",
                   help="return once submitted instead of streaming the logs until the job ends")
    p.add_argument("run_args", nargs="+", metavar="CONFIG.yaml | dotted.key=value",
                   help="config files and overrides, applied in order (later wins)")
    ns = p.parse_args(argv)
    if not ns.address:
        p.error("no cluster address: set RAY_ADDRESS (e.g. http://head:8265) or pass --address")
    if not Path(ns.working_dir).is_dir():
        p.error(f"--working-dir {ns.working_dir}: not a directory")
    if not (Path(ns.working_dir) / ENTRYPOINT).is_file():
        p.error(f"--working-dir {ns.working_dir}: has no {ENTRYPOINT}, so the job could not start")
    if not Path(ns.runtime_env).is_file():
        p.error(f"--runtime-env {ns.runtime_env}: not found")
    if ns.auth_token_file and not Path(ns.auth_token_file).is_file():
        p.error(f"--auth-token-file {ns.auth_token_file}: not found")
    return ns


def main(argv: Optional[List[str]] = None) -> int:
    ns = parse(argv)
    env = dict(os.environ)
    if ns.auth_token_file:
        env["RAY_AUTH_TOKEN_PATH"] = ns.auth_token_file
    source = ray_auth.use_token_if_found(env)  # token auth (Ray's default) where a token is found
    problem = ray_auth.check_job_server(ns.address, env)
    if problem:
        print(f"jobs/submit.py: not submitted: {problem}", file=sys.stderr)
        return 2
    submission_id = ns.submission_id or new_submission_id()
    print(f"submission id: {submission_id}", flush=True)
    if source:
        print(f"auth: token from {source}", file=sys.stderr)
    cmd = build_command(ns.address, submission_id, ns.working_dir, ns.runtime_env, ns.run_args, ns.no_wait)
    code = subprocess.call(cmd, env=env)
    print(f"logs: ray job logs --address {ns.address} {submission_id}   "
          f"status: ray job status --address {ns.address} {submission_id}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
