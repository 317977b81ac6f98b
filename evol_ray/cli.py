"""`evol-ray` command line: `run` a job, `show-config` to print the resolved config."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from evol_ray.config import ConfigError, load_config, to_yaml


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="evol-ray",
        description="Evol-Instruct (WizardLM) on Ray Data with vLLM engines.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (("run", "run the evolution rounds"),
                           ("show-config", "print the resolved config and exit")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("args", nargs="*", metavar="CONFIG.yaml | dotted.key=value",
                       help="config files and overrides, applied in order (later wins)")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cfg = load_config(ns.args)
    except ConfigError as e:
        print(f"evol-ray: config error: {e}", file=sys.stderr)
        return 2
    if ns.command == "show-config":
        print(to_yaml(cfg), end="")
        return 0

    from evol_ray.run import RunError, format_summary, run
    from evol_ray.seeds import InputError

    try:
        summary = run(cfg)
    except (InputError, RunError) as e:
        print(f"evol-ray: error: {e}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
