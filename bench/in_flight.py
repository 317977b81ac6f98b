"""Requests in flight with long-tailed replies: the rows' stage before and after row slots.

    python bench/in_flight.py [--rows 1024] [--rows-in-flight 64] [--batch-size 16]
                              [--latency-ms 40] [--sigma 1.0]

One round of `--rows` synthetic seeds through the whole pipeline (Ray Data, the stage actor, the
commit) on the zero-cost generator of `bench/synthetic.py` in its long-tailed mode: each request
takes a log-normal time (median `--latency-ms`, sigma `--sigma`; at 1.0 one request in 20 takes
over 5x the median), as a GPU engine's replies do when answers' lengths vary. Run twice:

  old  the stage before `engine.rows_in_flight`: a stage actor held rows_in_flight / batch_size
       batches, and a batch's rows came back only when its slowest row had ended;
  new  row slots (`client_stage.RowStage`): a row that ends hands its slot to a waiting row at once.

Printed per stage: the mean requests in flight per stage actor (one engine's) from the engine
phase's start until its last request was sent (`mean_in_flight_sending` of the round manifest),
as a share of the rows in flight asked for, and the engine phase's seconds. Last line:
`asked=<n> old=<x> new=<y> new_share=<y/n>`.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile

import ray

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import synthetic  # noqa: E402
from evol_ray.config import load_config  # noqa: E402
from evol_ray.engine import resources  # noqa: E402
from evol_ray.pipeline import driver  # noqa: E402

STAGES = {"old": 1, "new": resources.BATCHES_PER_FILL}  # batches held per batch of slots


def run_stage(stage: str, args, seeds: str, work: str) -> dict:
    resources.BATCHES_PER_FILL = STAGES[stage]  # read where the stage's arguments are made (here)
    cfg = load_config([
        f"input.path={seeds}", f"output.path={os.path.join(work, stage)}", "model.source=synthetic",
        "evolution.rounds=1", "engine.device=cpu", f"engine.batch_size={args.batch_size}",
        f"engine.rows_in_flight={args.rows_in_flight}", "output.include_seeds=false",
        "output.progress_every_s=0", "elimination.judge_threshold=0.5", "elimination.coherence.enabled=false"])
    factory = functools.partial(synthetic.SyntheticGenerator, latency_s=args.latency_ms / 1000,
                                latency_sigma=args.sigma)
    m = driver.run(cfg, generator_factory=factory)["rounds"][0]
    eng = m["engine"]
    return {"in_flight": eng["mean_in_flight_sending"], "seconds": m["phase_seconds"]["engine"],
            "requests": eng["requests"], "rows": m["rows_in"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1024)
    p.add_argument("--rows-in-flight", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--latency-ms", type=float, default=40.0)
    p.add_argument("--sigma", type=float, default=1.0)
    p.add_argument("--stages", default="old,new")
    args = p.parse_args()
    ray.init(address="local", num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
    got = {}
    with tempfile.TemporaryDirectory(prefix="in-flight-") as work:
        seeds = os.path.join(work, "seeds")
        synthetic.write_seeds(seeds, args.rows, 0.0, 0.0)
        print(f"{args.rows} rows, rows_in_flight {args.rows_in_flight}, batch_size {args.batch_size}, "
              f"latency median {args.latency_ms:.0f} ms, sigma {args.sigma}", flush=True)
        for stage in args.stages.split(","):
            r = got[stage] = run_stage(stage, args, seeds, work)
            print(f"{stage}: mean requests in flight while sending {r['in_flight']:.1f} of {args.rows_in_flight} "
                  f"({r['in_flight'] / args.rows_in_flight:.0%}), engine phase {r['seconds']:.1f} s, "
                  f"{r['requests']} requests for {r['rows']} rows", flush=True)
    ray.shutdown()
    old, new = got.get("old", {}).get("in_flight", float("nan")), got.get("new", {}).get("in_flight", float("nan"))
    print(f"asked={args.rows_in_flight} old={old:.1f} new={new:.1f} new_share={new / args.rows_in_flight:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
