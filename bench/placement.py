"""Engine placement on GPUs, checked on Ray's logical GPUs: no GPU or vLLM needed.

    python bench/placement.py --gpus 4 --replicas 2 --tp 2
    python bench/placement.py --gpus 4 --replicas auto --tp 2 --second-model

Starts a local Ray with `--gpus` logical GPUs (one node, `--nodes` splits them over several) and
the run's engines (`engine/service.py`'s `VLLMEngines`, the code a run uses) with a stand-in
engine in each engine actor that does what vLLM's Ray executor does for tensor parallelism:
it starts `--tp` GPU worker actors inside the placement group it was scheduled in and keeps them
alive (for `--tp 1` the engine actor holds its one GPU itself). Prints each engine's GPUs, then,
with `--second-model`, starts a second set of engines (`--replicas auto`, as for `score.model`)
the way `engines_for` does, which must not wait for the GPUs the first set holds; then stops
everything and counts the placement groups left. Last line:

    engines_started=<n> gpus_held=<g> seconds=<s> groups=<distinct groups> groups_left=<n>

Exit 0 when every engine started; exit 2 with the run's own message (naming engine.replicas and
engine.tensor_parallel_size) when they cannot all be placed, before any engine starts.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import math
import os
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(BENCH)]  # this checkout's evol_ray, not an installed one

import ray  # noqa: E402


class GpuWorker:
    """What vLLM's Ray executor starts per tensor-parallel rank: one GPU, kept."""

    def gpu_ids(self):
        return [str(g) for g in ray.get_runtime_context().get_accelerator_ids()["GPU"]]


class Ledger:
    """Where each stand-in engine writes the GPUs it holds (a Ray actor, shared by handle)."""

    def __init__(self) -> None:
        self.held: dict = {}

    def put(self, engine: str, gpus: list) -> None:
        self.held[engine] = gpus

    def take(self) -> dict:
        held, self.held = self.held, {}
        return held


class StandInEngine:
    """A `TextGenerator` that holds GPUs the way a vLLM engine in an engine actor does."""

    def __init__(self, tp: int, ledger) -> None:
        if tp > 1:  # the executor's workers, in the actor's placement group (child tasks captured)
            worker = ray.remote(num_gpus=1, num_cpus=0)(GpuWorker)
            self.workers = [worker.remote() for _ in range(tp)]
            self.gpus = sorted(g for ids in ray.get([w.gpu_ids.remote() for w in self.workers]) for g in ids)
        else:
            self.workers = []
            self.gpus = [str(g) for g in ray.get_runtime_context().get_accelerator_ids()["GPU"]]
        ray.get(ledger.put.remote(f"{ray.get_runtime_context().get_node_id()[:8]}:{os.getpid()}", self.gpus))

    async def generate(self, prompt, sampling, *, seed, choices=None):
        """Answers with the GPUs it holds (the bench asks each engine once: it serves)."""
        from evol_ray.engine.base import Completion

        return Completion(f"served on GPUs {','.join(self.gpus)}", 0, 0)

    async def score_choices(self, prompt, choices):
        return {c: -math.log(len(choices)) for c in choices}  # no opinion: uniform

    async def embed(self, text):
        return [float(len(text))]


def engine_gpus(ledger) -> list:
    """Each engine started since the last call: its GPU ids (node-qualified)."""
    return [[f"{name.split(':')[0]}/{g}" for g in gpus] for name, gpus in sorted(ray.get(ledger.take.remote()).items())]


def live_groups() -> int:
    from ray.util.placement_group import placement_group_table

    return sum(1 for g in placement_group_table().values() if g["state"] != "REMOVED")


def stop_cluster(cluster) -> None:
    """End a multi-node test cluster and forget its address: a later `ray.init()` on this machine
    would otherwise try to join it (Ray's temp dir keeps the last head's address)."""
    from ray._common.utils import reset_ray_address

    ray.shutdown()
    cluster.shutdown()
    reset_ray_address()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpus", type=int, default=4, help="logical GPUs of the local Ray")
    ap.add_argument("--nodes", type=int, default=1, help="nodes the GPUs are split over (Ray's cluster_utils)")
    ap.add_argument("--replicas", default="auto", help="engine.replicas: a number or auto")
    ap.add_argument("--tp", type=int, default=1, help="engine.tensor_parallel_size")
    ap.add_argument("--second-model", action="store_true",
                    help="then start a second set of engines (as score.model does) while the first holds its GPUs")
    args = ap.parse_args(argv)

    import functools

    from evol_ray.config import load_config
    from evol_ray.engine import service
    from evol_ray.engine.resources import PlacementError

    per_node = args.gpus // args.nodes
    cpus = 4 * (args.gpus + 2)  # logical: every bundle's CPUs fit, whatever the request
    if args.nodes == 1:
        ray.init(address="local", num_gpus=args.gpus, num_cpus=cpus, logging_level="WARNING",
                 include_dashboard=False)
    else:
        from ray.cluster_utils import Cluster

        cluster = Cluster()
        for _ in range(args.nodes):
            cluster.add_node(num_gpus=per_node, num_cpus=cpus // args.nodes)
        ray.init(address=cluster.address, logging_level="WARNING")
        atexit.register(stop_cluster, cluster)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cfg = load_config(["input.path=x", "output.path=y", "model.source=stand-in", "engine.device=gpu",
                       f"engine.replicas={args.replicas}", f"engine.tensor_parallel_size={args.tp}",
                       "engine.cpus_per_replica=1"])
    ledger = ray.remote(num_cpus=0)(Ledger).remote()
    make = functools.partial(StandInEngine, args.tp, ledger)
    t0 = time.monotonic()
    try:
        engines = service.VLLMEngines(cfg, "gpu", make=make)
        engines.start()
    except PlacementError as e:
        print(f"placement: {e}", file=sys.stderr)
        print(f"engines_started=0 gpus_held=0 seconds={time.monotonic() - t0:.1f}")
        return 2
    held = engine_gpus(ledger)
    seconds = time.monotonic() - t0
    client = engines.generator_factory()  # the stages' client: every engine answers a request

    async def ask_each():
        return await asyncio.gather(*(client.generate("ping", cfg.evolution.answer_sampling, seed=0)
                                      for _ in engines.handles))

    replies = asyncio.run(ask_each())
    print(f"requests answered: {len(replies)} ({'; '.join(sorted({r.text for r in replies}))})")
    for i, g in enumerate(held):
        print(f"engine {i}: GPUs {','.join(g) or '-'}")
    groups = len({g.id for g in engines.groups})
    total = sum(len(g) for g in held)
    distinct = len({x for g in held for x in g})
    assert distinct == total, f"engines share GPUs: {held}"
    if args.second_model:
        second_cfg = load_config(["input.path=x", "output.path=y", "model.source=second", "engine.device=gpu",
                                  "engine.replicas=auto", f"engine.tensor_parallel_size={args.tp}",
                                  "engine.cpus_per_replica=1"])
        second = service.VLLMEngines(second_cfg, "gpu", make=make)
        t1 = time.monotonic()
        service.make_room(second, engines)
        second.start()
        print(f"second set: {len(second.handles)} engine(s) started in {time.monotonic() - t1:.1f} s, "
              f"GPUs {engine_gpus(ledger)}; the first set {'stopped' if not engines.handles else 'kept'}")
        second.stop()
        engines.start()  # the run's engines come back for the next round
        print(f"first set started again: {len(engines.handles)} engine(s)")
    started = len(engines.handles)
    engines.stop()
    print(f"engines_started={started} gpus_held={total} seconds={seconds:.1f} groups={groups} "
          f"groups_left={live_groups()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
