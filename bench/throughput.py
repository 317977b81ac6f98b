"""Throughput of evolution rounds: the real pipeline on local Ray against bare vLLM.

    python bench/throughput.py --rows 256 --hidden 512 --layers 4            # CPU, random local model
    python bench/throughput.py --rows 128 --rounds 3 --eager                 # 3 rounds, warm engines
    python bench/throughput.py --rows 64 --rounds 3 --backend openai --eager # against `vllm serve`
    python bench/throughput.py --rows 4096 --model /models/llama-8b --load-format dummy   # a GPU node

With `--rounds R` both sides run R rounds; the bare side keeps its one engine across them and
builds each next pool as the pipeline does (a kept row goes on evolved, any other hands its
parent on). The pipeline's in-round CPU checks (dedup, quality) are off by default, so that both
sides send the same requests and their tokens per second compare the same work (a row the checks
drop would otherwise end the pipeline's chain early while a round still waits for its slowest
row); `--checks` keeps them on (their cost is the commit phase, printed either way). With `--backend openai` the bench starts one `vllm serve` on loopback and both
sides send to it: the pipeline with `engine.backend=openai`, the bare side with the same
`OpenAIGenerator` from one async process without Ray; the server's start-up is outside both, and
its prefix cache is off (else the second side would find the first's prompts cached).

Both sides send the same requests: the bare side runs the very same per-row chain
(`evol_ray.evolve.chain.evolve_row`: evolve, judge, answer, in that dependency order, the same prompts and
sampling parameters, the same seeds) for every row at once on one vLLM `AsyncLLM` in a new Python
process, without Ray. The pipeline side runs one round of `evol_ray.pipeline.driver.run` on a local Ray that is
already up (on a cluster it is), its engine actor a new process.

Printed for both: generated tokens, wall seconds, generated tokens per second, counted two ways:
  * end to end: from the start to the last token written. Both sides start cold: the bare clock
    starts before its interpreter is launched, so both pay for Python, torch and vLLM to load and
    for the engine to start;
  * generation window: from the engine being ready to its last reply (the pipeline's window is its
    engine actor's measured lifetime after start-up).
start_s is, for bare, from launch to the engine being ready; for the pipeline, the engine actor's
constructor (the actor's own process start counts as outside the engine). Also the engine's busy
share and mean requests in flight after start-up. The last line is
`ratio=<r> pipeline_tok_s=<a> bare_tok_s=<b> rows=<N>` with the end-to-end figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from evol_ray import columns as C  # noqa: E402
from evol_ray.evolve.chain import evolve_row  # noqa: E402
from evol_ray.config import load_config  # noqa: E402
from evol_ray.engine.meter import EngineMeter, MeteredGenerator  # noqa: E402
from evol_ray.engine.resources import choose_device  # noqa: E402
from evol_ray.engine.vllm_engine import VLLMGenerator  # noqa: E402

TOPICS = ["sorting algorithms", "photosynthesis", "the French revolution", "compound interest",
          "volcanoes", "unit testing", "the immune system", "supply chains", "jazz harmony",
          "plate tectonics", "hash maps", "urban planning", "bird migration", "tax policy"]
VERBS = ["Explain", "Summarize", "Compare two views on", "Write a short guide to", "List the key facts about",
         "Describe the history of", "Give an example that illustrates"]


def local_device(requested: str) -> str:
    """The bare side runs in this process, without Ray: its device is what this process sees."""
    import torch

    return choose_device(requested, {"GPU": torch.cuda.device_count() if torch.cuda.is_available() else 0})


def write_seeds(path: Path, n: int) -> None:
    with open(path, "w") as f:
        for i in range(n):
            text = f"{VERBS[i % len(VERBS)]} {TOPICS[(i * 7) % len(TOPICS)]} for reader number {i}."
            f.write(json.dumps({"instruction": text}) + "\n")


def build_config(args, model: str, seeds: Path, out: Path):
    overrides = [
        f"input.path={seeds}", f"output.path={out}", f"model.source={model}", f"evolution.rounds={args.rounds}",
        f"model.load_format={args.load_format}", f"engine.device={args.device}",
        f"engine.batch_size={args.batch_size}", f"engine.rows_in_flight={args.rows_in_flight}",
        f"engine.max_num_seqs={args.max_num_seqs}", f"engine.enforce_eager={str(args.eager).lower()}",
        f"evolution.evolve_sampling.max_tokens={args.evolve_tokens}",
        f"evolution.answer_sampling.max_tokens={args.answer_tokens}", f"seed={args.seed}",
        # a threshold given and the gate off: calibration (minutes of the engine) is not in the figures,
        # and a random-weight model could not pass it
        "elimination.judge_threshold=0.5", "elimination.coherence.enabled=false",
        # the seeds' own answers are a phase after the rounds that the bare side does not run
        "output.answer_seeds=false",
    ]
    if args.max_model_len:
        overrides.append(f"model.max_model_len={args.max_model_len}")
    if not args.checks:
        overrides += ["dedup.in_rounds=false", "quality.in_rounds=false"]
    if args.backend == "openai":
        overrides += ["engine.backend=openai", f"engine.endpoint.base_url={args.base_url}",
                      "engine.endpoint.model=bench", f"engine.endpoint.max_in_flight={args.max_num_seqs}"]
    return load_config(overrides + args.set)


def run_bare(cfg) -> dict:
    """Every row's chain at once on one engine, in a new interpreter without Ray: the ceiling the
    pipeline chases. Its clock starts before that interpreter is launched, so, like a bare vLLM
    script and like the pipeline's engine actor, it pays for starting Python and importing torch
    and vLLM (this process has imported torch already, to build the model)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=_bare_process, args=(cfg, time.time(), results))
    proc.start()
    while True:
        try:
            out = results.get(timeout=5)
            break
        except queue.Empty:
            if not proc.is_alive():
                raise SystemExit(f"the bare vLLM process exited with code {proc.exitcode} before reporting")
    proc.join()
    return out


def _bare_process(cfg, t0: float, results) -> None:
    import pyarrow.json as pj

    from evol_ray.io.seeds import to_pool

    pool = to_pool(pj.read_json(cfg.input.path), cfg.input).to_pylist()
    if cfg.engine.backend == "openai":
        from evol_ray.engine.openai_client import OpenAIGenerator

        gen = OpenAIGenerator(cfg.engine.endpoint)
    else:
        gen = VLLMGenerator(cfg.model, cfg.engine, local_device(cfg.engine.device), cfg.seed)
    ready = time.time()
    meter = EngineMeter()
    metered = MeteredGenerator(gen, meter)

    async def all_rounds():
        nonlocal pool
        done = []
        for r in range(1, cfg.evolution.rounds + 1):
            out = await asyncio.gather(*(evolve_row(metered, row, r, cfg) for row in pool))
            done += out
            by_id = {row[C.ID]: row for row in pool}
            pool = [{C.ID: x[C.ID], C.ROOT_ID: x[C.ROOT_ID], C.INSTRUCTION: x[C.INSTRUCTION],
                     C.RESPONSE: x[C.RESPONSE]} if x[C.STATUS] == C.KEPT else by_id[x[C.PARENT_ID]]
                    for x in out if x[C.STATUS] != C.INVALID_INPUT]
        return done

    rows = asyncio.run(all_rounds())
    end = time.time()
    snap = meter.snapshot()
    if hasattr(gen, "shutdown"):
        gen.shutdown()
    tokens = sum(r[C.GENERATED_TOKENS] for r in rows)
    results.put({"tokens": tokens, "wall_s": end - t0, "gen_s": end - ready, "startup_s": ready - t0,
                 "busy_share": snap["busy_share"], "mean_in_flight": snap["mean_in_flight"],
                 "errors": sum(r[C.STATUS] == C.ERROR_STATUS for r in rows)})


class CpuByProcess:
    """CPU seconds used on this machine during the pipeline run, by process kind: the engine's
    (`ray::EngineServer`, vLLM's `VLLM::EngineCore`) and everything beside it (the driver, the stage
    actors, the attempt writers, the stats actor, Ray's own daemons). Sampled every `every_s` from
    /proc (psutil), so a process that ended between two samples misses at most its last interval;
    what a process had used before the run is not counted."""

    def __init__(self, every_s: float = 0.25) -> None:
        import threading

        import psutil

        self.psutil, self.every_s = psutil, every_s
        self.before = {p.pid: self._used(p) for p in psutil.process_iter()}
        self.seen: dict = {}  # pid -> (kind, cpu seconds at the last sample)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def _used(p) -> float:
        try:
            t = p.cpu_times()
            return t.user + t.system
        except Exception:
            return 0.0

    @staticmethod
    def kind(p) -> str:
        try:
            words = p.cmdline()
        except Exception:
            return ""
        first = words[0].split()[0] if words and words[0].strip() else ""
        if p.pid == os.getpid():
            return "driver"
        if first.startswith(("ray::", "VLLM::")):
            return first.split(".")[0]
        for daemon in ("raylet", "gcs_server", "dashboard", "log_monitor", "runtime_env"):
            if any(daemon in w for w in words[:3]):
                return f"ray {daemon}"
        return ""

    def _sample(self) -> None:
        for p in self.psutil.process_iter():
            kind = self.kind(p)  # a Ray worker is `ray::IDLE` until it takes an actor: its role is the last one
            if p.pid in self.seen and kind in ("", "ray::IDLE"):
                kind = self.seen[p.pid][0]
            if kind:
                self.seen[p.pid] = (kind, self._used(p))

    def _loop(self) -> None:
        while not self.stopped.wait(self.every_s):
            self._sample()

    def __enter__(self) -> "CpuByProcess":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._sample()
        self.stopped.set()
        self.thread.join()

    def totals(self) -> dict:
        out: dict = {}
        for pid, (kind, used) in self.seen.items():
            out[kind] = out.get(kind, 0.0) + max(0.0, used - self.before.get(pid, 0.0))
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def run_pipeline(cfg) -> dict:
    import ray

    from evol_ray.pipeline.driver import run

    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        with CpuByProcess() as cpu:
            t0 = time.monotonic()
            summary = run(cfg)
            wall = time.monotonic() - t0
    finally:
        ray.shutdown()
    ms = summary["rounds"]
    engs = [m["engine"] for m in ms]
    gen_s = sum(max(a["lifetime_s"] for a in e["per_actor"].values()) for e in engs)
    busy = sum(e["busy_share"] * max(a["lifetime_s"] for a in e["per_actor"].values()) for e in engs)
    area = sum(e["mean_in_flight"] * max(a["lifetime_s"] for a in e["per_actor"].values()) for e in engs)
    rounds_s = sum(m["wall_seconds"] for m in ms)
    # each round's time outside its generation window (the stage, the writers, the commit, the
    # next pool); round 1's also holds whatever of the engines' start-up it waited for
    outside = [m["wall_seconds"] - max(a["lifetime_s"] for a in e["per_actor"].values()) for m, e in zip(ms, engs)]
    return {"tokens": sum(m["generated_tokens"] for m in ms), "wall_s": wall, "gen_s": gen_s, "outside": outside,
            "startup_s": sum(e.get("startup_s", 0.0) for e in engs),
            "round_s": rounds_s, "phases": {"commit": sum(m["phase_seconds"]["commit"] for m in ms)},
            "final_s": wall - rounds_s, "busy_share": busy / gen_s if gen_s else 0.0,
            "mean_in_flight": area / gen_s if gen_s else 0.0,
            "errors": sum(m["status_counts"].get(C.ERROR_STATUS, 0) for m in ms),
            "requests": sum(e["requests"] for e in engs),
            "vllm": [e.get("vllm") or {} for e in engs],  # vLLM's own statistics, per round
            "cpu": cpu.totals()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--backend", default="vllm", choices=["vllm", "openai"],
                   help="openai: start `vllm serve` on loopback; both sides send to it")
    p.add_argument("--model", help="HF id or directory; default: build a random Llama locally")
    p.add_argument("--hidden", type=int, default=512, help="size of the random local model")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--load-format", default="auto", help="`dummy`: random weights of a real architecture")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rows-in-flight", type=int, default=256, help="engine.rows_in_flight")
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--evolve-tokens", type=int, default=64)
    p.add_argument("--answer-tokens", type=int, default=192)
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--eager", action="store_true", help="enforce_eager (faster start on CPU)")
    p.add_argument("--checks", action="store_true",
                   help="keep the pipeline's in-round dedup and quality checks (it then sends fewer requests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--order", default="bare-first", choices=["bare-first", "pipeline-first"])
    p.add_argument("--only", choices=["bare", "pipeline"], help="run one side (for profiling); no ratio")
    p.add_argument("--set", nargs="*", default=[], help="more dotted.key=value config overrides")
    args = p.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("evol_ray").setLevel(logging.INFO)  # round progress, dedup's phase times

    work = Path(tempfile.mkdtemp(prefix="evol-bench-"))
    model = args.model
    if not model:
        from evol_ray.engine.tiny_model import build_random_llama

        heads = max(args.hidden // 64, 1)
        model = str(build_random_llama(work / "model", hidden=args.hidden, layers=args.layers, heads=heads,
                                       kv_heads=max(heads // 2, 1)))
    seeds = work / "seeds.jsonl"
    write_seeds(seeds, args.rows)
    server = start_server(args, model, work) if args.backend == "openai" else None
    try:
        return measure(args, build_config(args, model, seeds, work / "out"), model)
    finally:
        if server is not None:
            if server.poll() is not None:  # it died under the bench
                print(f"vllm serve exited with code {server.returncode}; its log: {server.log}", file=sys.stderr)
            _kill_group(server)


def start_server(args, model: str, work: Path):
    """`vllm serve` (the module: the CPU wheel's console script does not start) on a free port."""
    import socket
    import subprocess
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args.base_url = f"http://127.0.0.1:{port}/v1"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--served-model-name",
           "bench", "--host", "127.0.0.1", "--port", str(port), "--max-model-len", str(args.max_model_len),
           "--max-num-seqs", str(args.max_num_seqs), "--seed", str(args.seed),
           # both sides send the same prompts to this one server: with prefix caching the second
           # would find the first's prompts cached and run faster for it
           "--no-enable-prefix-caching"]
    if args.eager:
        cmd.append("--enforce-eager")
    log = Path(tempfile.gettempdir()) / f"evol-ray-bench-serve-{port}.log"  # kept after the bench
    # its own session: the bench kills the whole group, engine process included (killing the API
    # server alone leaves its EngineCore running, holding memory and a KV cache)
    proc = subprocess.Popen(cmd, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"},
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    proc.log = log
    end = time.monotonic() + 600
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"vllm serve exited; see {log}")
        try:
            urllib.request.urlopen(f"{args.base_url}/models", timeout=2)
            return proc
        except OSError:
            time.sleep(1)
    _kill_group(proc)
    raise SystemExit("vllm serve did not start in 600 s")


def _kill_group(proc) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def measure(args, cfg, model: str) -> int:
    results = {}
    order = ["bare", "pipeline"] if args.order == "bare-first" else ["pipeline", "bare"]
    loads = [("before", os.getloadavg()[0])]  # the 1-minute load average: is the machine quiet?
    for side in order:
        if args.only in (None, side):
            results[side] = run_bare(cfg) if side == "bare" else run_pipeline(cfg)
            loads.append((f"after {side}", os.getloadavg()[0]))

    print(f"\nrows={args.rows} rounds={args.rounds} backend={args.backend} model={model} "
          f"device={local_device(args.device)} batch_size={args.batch_size} "
          f"rows_in_flight={args.rows_in_flight}")
    print(f"{'':10}{'tokens':>9}{'wall_s':>9}{'tok/s':>9}{'start_s':>9}{'gen_s':>8}{'gen tok/s':>11}"
          f"{'busy':>7}{'in flight':>10}{'errors':>8}")
    for side, r in results.items():
        r["tok_s"] = r["tokens"] / r["wall_s"]
        r["gen_tok_s"] = r["tokens"] / r["gen_s"]
        print(f"{side:10}{r['tokens']:>9}{r['wall_s']:>9.1f}{r['tok_s']:>9.1f}{r['startup_s']:>9.1f}"
              f"{r['gen_s']:>8.1f}{r['gen_tok_s']:>11.1f}{r['busy_share']:>7.1%}{r['mean_in_flight']:>10.1f}"
              f"{r['errors']:>8}")
    if "pipeline" in results:
        a = results["pipeline"]
        print(f"pipeline {a['wall_s']:.1f} s = rounds {a['round_s']:.1f} (generation {a['gen_s']:.1f}, commit phases "
              f"{a['phases']['commit']:.1f}) + outside the rounds {a['final_s']:.1f} (seeds read while the engines "
              f"start, {a['startup_s']:.1f} s; the final set; the engines stopped)")
        later = a["outside"][1:]
        if later:  # round 1's own holds the part of the engines' start-up it waited for
            print(f"fixed cost per round (rounds 2-{args.rounds}: round wall minus its generation window: the "
                  f"stage, the writers, the commit, the next pool): {sum(later) / len(later):.2f} s")
        for r, v in enumerate(a.get("vllm", []), 1):  # what "busy" cannot say on a GPU
            if v:
                hits = "-" if v["prefix_cache_hit_rate"] is None else f"{v['prefix_cache_hit_rate']:.0%}"
                print(f"round {r} vLLM: mean running {v['mean_running']:.1f}, waiting {v['mean_waiting']:.1f}, "
                      f"KV cache {v['mean_kv_cache_usage']:.0%}, prefix-cache hits {hits}, "
                      f"{v['prompt_tokens_per_s']:.0f} prompt + {v['generated_tokens_per_s']:.0f} generated tok/s")
            else:
                print(f"round {r} vLLM: not available (an endpoint whose server has no vLLM /metrics)")
        # on a CPU engine every one of these seconds is taken from the engine's cores
        print(f"CPU seconds during the pipeline's {a['wall_s']:.0f} s, by process: "
              + ", ".join(f"{k} {v:.1f}" for k, v in a["cpu"].items()))
    print("1-minute load average: " + ", ".join(f"{k} {v:.2f}" for k, v in loads))
    if args.only:
        return 0
    a, b = results["pipeline"], results["bare"]
    print(f"generation window ratio={a['gen_tok_s'] / b['gen_tok_s']:.3f}; "
          f"pipeline engine busy {a['busy_share']:.1%} of the round after start-up")
    print(f"pipeline requests {a['requests']}, bare tokens {b['tokens']} vs pipeline {a['tokens']}")
    print(f"ratio={a['tok_s'] / b['tok_s']:.3f} pipeline_tok_s={a['tok_s']:.1f} "
          f"bare_tok_s={b['tok_s']:.1f} rows={args.rows}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
