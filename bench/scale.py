"""Scale: the whole pipeline on synthetic seeds, with a zero-cost generator behind the engine seam.

    python bench/scale.py --rows 100000                      # one node, 2 rounds
    python bench/scale.py --rows 1000000 --rounds 2 --growth # a warm-up, N/10, then N: `growth`
    python bench/scale.py --rows 20000 --nodes 2             # a local two-node Ray cluster
    python bench/scale.py --rows 200000 --store s3           # output on a loopback S3 server, 20 ms a request

Seeds (`bench/synthetic.py`: a planted share of exact and near duplicates) go through the real
driver (`evol_ray.pipeline.driver.run`: read, unique seeds, pool, engine stage, attempts, commit,
quality and dedup against earlier rounds and seeds, next pool, final set) on Ray, with
`SyntheticGenerator` in the engine actors instead of vLLM. What it costs per row is then what the
pipeline costs around the model.

With `--store s3` the output goes to an S3-protocol server on loopback (moto's server, in a process
of its own) that waits `--s3-delay-ms` before answering each request (loopback has no latency; a
store in the same region has some), and every stage also prints the requests it made.

Printed per stage and per round: seconds, rows/s, driver peak RSS and its private part (USS: RSS
less the shared pages, such as the object store's the driver has read), object store peak (all nodes)
and bytes spilled during the stage; then the invariants (every row accounted for in every round,
final = kept, the planted duplicates found; a broken one exits 1); the last line is
`rows=<N> rounds=<R> seconds=<s> rows_per_s=<x> driver_peak_rss_mb=<m> growth=<g> commit_s=<c> attempt_files=<f>`
(the commit phases' seconds and the engine phases' result files, all rounds), where growth
is (seconds per row at N) / (seconds per row at N/10), both measured here when `--growth` is given
(else `growth=nan`). With `--growth` a warm-up run (N/100 rows, at least 1,000) goes first and is
not compared: the first run in a process pays Ray's worker start-up and the driver's one-time
memory (library pages, code paths reached once), so a cold N/10 run would make growth, and its
RSS the baseline for the RSS at N, look better than they are. Driver RSS is this process's alone
(psutil); the object store figures are Ray's own (`get_memory_info_reply`, what
`ray memory --stats-only` prints).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
from typing import Dict, List

import psutil

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(BENCH), BENCH]  # this checkout's evol_ray, not an installed one

import ray  # noqa: E402

from evol_ray import columns as C  # noqa: E402
from evol_ray.checks import where  # noqa: E402
from evol_ray.config import load_config  # noqa: E402
from evol_ray.io import commit, layout  # noqa: E402
from evol_ray.io import seeds as seeds_mod  # noqa: E402
from evol_ray.io.storage import locate  # noqa: E402
from evol_ray.pipeline import driver  # noqa: E402
from evol_ray.pipeline import round as round_mod  # noqa: E402

import synthetic  # noqa: E402

ray.cloudpickle.register_pickle_by_value(synthetic)

MB = 1 << 20


class Sampler:
    """Samples the driver's RSS every 50 ms and the object store (used, spilled) every 0.5 s."""

    def __init__(self) -> None:
        self.samples: List[tuple] = []  # (t, rss, store_used, spilled, uss)
        self._uss, self._last_full = 0, 0.0
        self.load: List[float] = []  # the 1-minute load average, every 0.5 s
        self._stop = threading.Event()
        self._state = None
        self._store = (0, 0)

    def _store_stats(self):
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        if self._state is None:
            self._state = get_state_from_address(ray.get_runtime_context().gcs_address)
        s = get_memory_info_reply(self._state, timeout_seconds=5).store_stats
        return s.object_store_bytes_used, s.spilled_bytes_total

    def _run(self) -> None:
        me, last = psutil.Process(), 0.0
        while not self._stop.is_set():
            now = time.perf_counter()
            if now - last >= 0.5:
                with contextlib.suppress(Exception):
                    self._store = self._store_stats()
                self.load.append(os.getloadavg()[0])
                last = now
            if now - self._last_full >= 1.0:  # private memory: smaps is slower to read, once a second
                with contextlib.suppress(Exception):
                    self._uss = me.memory_full_info().uss
                self._last_full = now
            self.samples.append((now, me.memory_info().rss, *self._store, self._uss))
            self._stop.wait(0.05)

    def start(self) -> "Sampler":
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._t.join()

    def window(self, t0: float, t1: float) -> Dict[str, float]:
        before = [s for s in self.samples if s[0] < t0]
        # a stage shorter than the sampling interval: the samples on either side of it
        inside = ([s for s in self.samples if t0 <= s[0] <= t1]
                  or before[-1:] + [s for s in self.samples if s[0] > t1][:1])
        spilled0 = before[-1][3] if before else 0
        return {"rss_mb": max(s[1] for s in inside) / MB, "store_mb": max(s[2] for s in inside) / MB,
                "spilled_mb": (inside[-1][3] - spilled0) / MB, "uss_mb": max(s[4] for s in inside) / MB}


class Stages:
    """Times named pipeline functions by wrapping them where the pipeline looks them up (this
    process only: nothing in evol_ray knows about it)."""

    def __init__(self, sampler: Sampler, requests=None) -> None:
        self.sampler = sampler
        self.requests = requests  # the S3 server's request counter (a multiprocessing.Value), or None
        self.rows: List[dict] = []
        self.round = 0
        self.depth = 0

    def wrap(self, module, name: str, label: str, rows_of=None):
        fn = getattr(module, name)

        def timed(*args, **kwargs):
            if label == "round":
                self.round = args[2]
            t0, r0 = time.perf_counter(), self._requests()
            self.depth += 1
            try:
                out = fn(*args, **kwargs)
            finally:
                self.depth -= 1
            t1 = time.perf_counter()
            self.rows.append({"stage": label, "round": self.round if label != "seeds" else 0,
                              "t0": t0, "t1": t1, "seconds": t1 - t0, "depth": self.depth,
                              "rows": rows_of(out) if rows_of else None, "requests": self._requests() - r0})
            if label == "round":
                m = out
                eng, com = m["phase_seconds"]["engine"], m["phase_seconds"]["commit"]
                self.rows.append({"stage": "engine phase", "round": m["round"], "t0": t0, "t1": t0 + eng,
                                  "seconds": eng, "depth": 1, "rows": m["rows_in"], "requests": None})
                self.rows.append({"stage": "commit phase", "round": m["round"], "t0": t1 - com, "t1": t1,
                                  "seconds": com, "depth": 1, "rows": m["rows_in"], "requests": None,
                                  "files": m["attempt_files"]})
                self.round = 0
            return out

        setattr(module, name, timed)
        return fn

    def _requests(self) -> int:
        return self.requests.value if self.requests is not None else 0

    def install(self) -> list:
        spots = [(seeds_mod, "load_seeds", "seeds", lambda out: out[1]),
                 (driver, "run_round", "round", lambda m: m["rows_in"]),
                 (driver, "write_final", "final", lambda m: m["rows"]),
                 (round_mod, "count_in_ray", "count files", lambda c: c["rows"]),
                 (where, "round_checks", "quality+dedup", None),
                 (commit, "write_dataset", "write", None),
                 (commit, "move_into", "move files", len),
                 (commit, "readable_parts", "list parts", len)]
        return [(m, n, self.wrap(m, n, label, rows_of)) for m, n, label, rows_of in spots]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve_s3(port: int, delay_s: float, requests) -> None:
    """moto's S3 server (the app its `ThreadedMotoServer` serves), each request answered after
    `delay_s` and counted in `requests`. Runs in a process of its own."""
    import logging

    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request

    app = DomainDispatcherApplication(create_backend_app)

    def delayed(environ, start_response):
        with requests.get_lock():
            requests.value += 1
        time.sleep(delay_s)
        return app(environ, start_response)

    make_server("127.0.0.1", port, delayed, threaded=True).serve_forever()


def start_s3(delay_ms: float):
    """A loopback S3 server with `delay_ms` per request: (process, endpoint, request counter)."""
    import boto3

    for k, v in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench"),
                 ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ[k] = v  # before Ray starts: its workers take the same environment
    ctx = multiprocessing.get_context("spawn")
    requests = ctx.Value("q", 0)
    port = _free_port()
    proc = ctx.Process(target=_serve_s3, args=(port, delay_ms / 1000, requests), daemon=True)
    proc.start()
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="evol-scale")
            break
        except Exception:
            time.sleep(0.1)
    else:
        raise SystemExit(f"the S3 server on {endpoint} did not start")
    return proc, endpoint, requests


def start_ray(nodes: int, store_gib: float):
    """One local node, or a local cluster of `nodes` raylets (ray.cluster_utils.Cluster), each with
    its share of the CPUs and of the object store. Either is a Ray of its own: `address="local"`
    never joins a Ray already running here, and the cluster gets its own temp dir and port, since
    `Cluster` writes its address where a plain `ray.init()` elsewhere on the machine would find
    and join it."""
    cpus = os.cpu_count() or 2
    store = int(store_gib * (1 << 30))
    if nodes <= 1:
        ray.init(address="local", num_cpus=cpus, object_store_memory=store, include_dashboard=False,
                 log_to_driver=False)
        return None
    from ray.cluster_utils import Cluster

    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="er-", dir="/tmp")  # short: socket paths
    per = max(1, cpus // nodes)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": per, "object_store_memory": store // nodes, "include_dashboard": False,
        "gcs_server_port": _free_port()})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=per, object_store_memory=store // nodes)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    return cluster


def check(cfg, n: int, planted: dict, manifests: List[dict], final: dict) -> List[str]:
    """The invariants, from what the run wrote; returns what is broken, in words."""
    out = locate(cfg.output.path, cfg.storage)
    bad = []
    expected = n
    for m in manifests:
        r = m["round"]
        files = layout.round_files(out, m)
        on_disk = layout.row_count(out, files)
        if not (m["rows_in"] == sum(m["status_counts"].values()) == on_disk == expected):
            bad.append(f"round {r}: rows_in {m['rows_in']}, statuses {sum(m['status_counts'].values())}, "
                       f"files {on_disk}, pool {expected}")
        if sum(m["reason_counts"].values()) != m["rows_in"] - m["rows_kept"]:
            bad.append(f"round {r}: reasons do not add up to the rows not kept")
        for reason in (C.R_NO_GAIN, C.R_SORRY, C.R_NEAR_DUPLICATE):
            if not m["reason_counts"].get(reason):
                bad.append(f"round {r}: no {reason} rows (the generator plants them)")
        expected = round_mod.pool_size_after(m)
    dup_seed = manifests[0]["reason_counts"].get(C.R_DUPLICATE_SEED, 0)
    if dup_seed != planted["exact"]:
        bad.append(f"round 1: {dup_seed} duplicate_seed rows, {planted['exact']} planted")
    kept = sum(m["rows_kept"] for m in manifests)
    removed = sum(final["removed_counts"].values())
    if final["rows"] + removed != n - planted["exact"] + kept:
        bad.append(f"final: {final['rows']} rows + {removed} removed != {n - planted['exact']} seeds + {kept} kept")
    gone = [t for t in layout.read_tables(out.join(layout.FINAL), layout.committed_files(
        out.join(layout.FINAL), final, "removed_files"), [C.ROUND, C.REASON])]
    seeds_found = sum(sum(1 for rd, rs in zip(t[C.ROUND].to_pylist(), t[C.REASON].to_pylist())
                          if rd == 0 and rs in C.DEDUP_REASONS) for t in gone)
    if seeds_found < 0.95 * planted["near"]:
        bad.append(f"final: {seeds_found} near-duplicate seeds removed of {planted['near']} planted")
    planted["near_found"] = seeds_found
    return bad


def run_once(n: int, args, work: str, sampler: Sampler, label: str, s3=None) -> dict:
    seeds_dir, out_dir = os.path.join(work, f"seeds-{n}"), os.path.join(work, f"out-{n}")
    store = []
    if s3 is not None:
        out_dir = f"s3://evol-scale/{label.replace('/', '')}-{n}"
        store = [f"storage.endpoint_url={s3[1]}", "storage.region=us-east-1"]
    ctx = multiprocessing.get_context("spawn")  # the seeds never enter this process's memory
    with ctx.Pool(1) as pool:
        planted = pool.apply(synthetic.write_seeds, (seeds_dir, n, args.exact_share, args.near_share, args.seed))
    cfg = load_config([
        f"input.path={seeds_dir}", f"output.path={out_dir}", "model.source=synthetic", "output.start_over=true",
        f"evolution.rounds={args.rounds}", "engine.device=cpu", f"engine.replicas={args.replicas}",
        f"engine.cpus_per_replica={args.cpus_per_replica}", f"engine.batch_size={args.batch_size}",
        "output.include_seeds=true", f"seed={args.seed}",
        # the synthetic engine's verdicts are drawn, not read from text: nothing to calibrate
        "elimination.judge_threshold=0.5", "elimination.coherence.enabled=false", *store, *args.set])
    # built in each engine actor; the module travels by value, so workers need no bench/ path
    factory = functools.partial(synthetic.SyntheticGenerator, seed=args.seed, clusters=max(10, n // 200))
    stages = Stages(sampler, None if s3 is None else s3[2])
    originals = stages.install()
    t0, load_at = time.perf_counter(), len(sampler.load)
    try:
        summary = driver.run(cfg, generator_factory=factory)
    finally:
        for module, name, fn in originals:
            setattr(module, name, fn)
    secs = time.perf_counter() - t0
    whole = sampler.window(t0, time.perf_counter())
    peak = whole["rss_mb"]
    load = sorted(sampler.load[load_at:]) or [float("nan")]
    print(f"\n== {label}: {n} seeds, {args.rounds} round(s), {secs:.1f} s, {n / secs:,.0f} seed rows/s, "
          f"driver peak RSS {peak:.0f} MB (private {whole['uss_mb']:.0f} MB), load (1 min) {load[0]:.1f}-{load[-1]:.1f}, median "
          f"{load[len(load) // 2]:.1f} on {os.cpu_count()} cores, engine.batch_size {args.batch_size}", flush=True)
    print(f"{'stage':<20}{'round':>6}{'seconds':>9}{'rows':>10}{'rows/s':>11}{'rss_mb':>8}{'uss_mb':>8}"
          f"{'store_mb':>9}{'spill_mb':>9}" + (f"{'s3_req':>8}" if s3 else ""))
    for s in sorted(stages.rows, key=lambda s: (s["t0"], s["depth"])):
        w = sampler.window(s["t0"], s["t1"])
        rate = f"{s['rows'] / s['seconds']:,.0f}" if s["rows"] and s["seconds"] > 0 else "-"
        req = f"{s['requests'] if s['requests'] is not None else '-':>8}" if s3 else ""
        print(f"{'  ' * min(s['depth'], 2) + s['stage']:<20}{s['round']:>6}{s['seconds']:>9.2f}"
              f"{s['rows'] if s['rows'] is not None else '-':>10}{rate:>11}{w['rss_mb']:>8.0f}{w['uss_mb']:>8.0f}"
              f"{w['store_mb']:>9.0f}{w['spilled_mb']:>9.0f}{req}")
    bad = check(cfg, n, planted, summary["rounds"], summary["final"])
    print(f"planted: {planted['exact']} exact and {planted['near']} near duplicate seeds; found "
          f"{summary['rounds'][0]['reason_counts'].get(C.R_DUPLICATE_SEED, 0)} duplicate_seed, "
          f"{planted['near_found']} near seeds removed from final/")
    for m in summary["rounds"]:
        print(f"round {m['round']}: in {m['rows_in']}, kept {m['rows_kept']}, "
              + ", ".join(f"{k} {v}" for k, v in m["reason_counts"].items()))
        req = sum(s["requests"] or 0 for s in stages.rows if s["stage"] == "round" and s["round"] == m["round"])
        print(f"round {m['round']}: {m['attempt_files']} attempt files ({m['attempt_files'] / max(1, m['rows_in']) * 16384:.2f}"
              f" per 16k rows), {len(m['files'])} round files, engine phase {m['phase_seconds']['engine']:.1f} s, "
              f"commit phase {m['phase_seconds']['commit']:.1f} s" + (f", {req} S3 requests" if s3 else ""))
    print(f"final: {summary['final']['rows']} rows, removed {summary['final']['removed_counts']}")
    print("invariants: " + ("ok" if not bad else "BROKEN: " + "; ".join(bad)), flush=True)
    if args.json and label != "warm-up":
        with open(args.json if label == "N" else args.json + ".small", "w") as f:
            json.dump({"rows": n, "seconds": secs, "driver_peak_rss_mb": peak, "planted": planted,
                       "stages": stages.rows, "rounds": summary["rounds"], "final": summary["final"],
                       "broken": bad, "output": out_dir}, f, indent=1, default=str)
    if not args.keep:
        shutil.rmtree(seeds_dir, ignore_errors=True)
        if s3 is None:
            shutil.rmtree(out_dir, ignore_errors=True)
    return {"seconds": secs, "peak": peak, "bad": bad,
            "commit_s": sum(m["phase_seconds"]["commit"] for m in summary["rounds"]),
            "attempt_files": sum(m.get("attempt_files", 0) for m in summary["rounds"])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--nodes", type=int, default=1, help="1: one local Ray; K: a local cluster of K raylets")
    ap.add_argument("--growth", action="store_true", help="also run N/10 first and report growth")
    ap.add_argument("--object-store-gib", type=float, default=4.0)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--cpus-per-replica", type=float, default=0.5)
    ap.add_argument("--batch-size", type=int, default=256,
                    help="engine.batch_size (the default config has 64, sized for real engines: with a zero-cost "
                         "generator a batch takes milliseconds and Ray Data's per-task cost doubles the engine phase)")
    ap.add_argument("--exact-share", type=float, default=0.03)
    ap.add_argument("--near-share", type=float, default=0.03)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="folder for seeds and output (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the seeds and the output")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    ap.add_argument("--set", nargs="*", default=[], help="more config overrides, dotted.key=value")
    ap.add_argument("--store", choices=["local", "s3"], default="local",
                    help="s3: the output on a loopback S3-protocol server (moto), with --s3-delay-ms per request")
    ap.add_argument("--s3-delay-ms", type=float, default=20.0)
    args = ap.parse_args()

    work = args.work or tempfile.mkdtemp(prefix="evol-ray-scale-")
    s3 = start_s3(args.s3_delay_ms) if args.store == "s3" else None
    if s3:
        print(f"s3: moto on {s3[1]}, {args.s3_delay_ms:g} ms per request", flush=True)
    t = time.perf_counter()
    cluster = start_ray(args.nodes, args.object_store_gib)
    nodes = len([x for x in ray.nodes() if x["Alive"]])
    print(f"ray: {nodes} node(s), {ray.cluster_resources().get('CPU', 0):.0f} CPUs, object store "
          f"{args.object_store_gib:g} GiB, started in {time.perf_counter() - t:.1f} s", flush=True)
    sampler = Sampler().start()
    try:
        if args.growth:  # not compared: see the module docstring
            run_once(max(1000, args.rows // 100), args, work, sampler, "warm-up", s3)
        small = run_once(max(1, args.rows // 10), args, work, sampler, "N/10", s3) if args.growth else None
        big = run_once(args.rows, args, work, sampler, "N", s3)
    finally:
        sampler.stop()
        if s3:
            s3[0].terminate()
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
            shutil.rmtree(os.environ["RAY_TMPDIR"], ignore_errors=True)
        if not args.work and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    growth = float("nan")
    if small:
        growth = (big["seconds"] / args.rows) / (small["seconds"] / max(1, args.rows // 10))
        print(f"driver peak RSS at N/10 {small['peak']:.0f} MB, at N {big['peak']:.0f} MB: "
              f"{big['peak'] / small['peak']:.2f}x")
    print(f"rows={args.rows} rounds={args.rounds} seconds={big['seconds']:.1f} "
          f"rows_per_s={args.rows / big['seconds']:.0f} driver_peak_rss_mb={big['peak']:.0f} growth={growth:.2f} "
          f"commit_s={big['commit_s']:.1f} attempt_files={big['attempt_files']}")
    return 1 if big["bad"] or (small and small["bad"]) else 0


if __name__ == "__main__":
    sys.exit(main())
