"""vLLM behind the engine seam: `VLLMGenerator` holds one `AsyncLLM` (continuous batching), and
`engine_args` are its settings, kept apart so they can be checked without starting an engine.
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import math
import os
import uuid
from typing import Optional

from evol_ray.config import EngineConfig, ModelConfig, SamplingConfig
from evol_ray.engine.base import FIRST_TOKENS, FORCED, Completion, PromptTooLong, read_choices
from evol_ray.engine.models import resolve_source
from evol_ray.engine.vllm_stats import VllmStats, stat_logger_factory


CPU_BLOCK_SIZE = 32
GREEDY_CHOICE = SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=16)  # engine.choice_scoring=forced


def engine_args(model: ModelConfig, engine: EngineConfig, device: str, seed: int,
                pooling: bool = False) -> dict:
    """Keyword arguments for vLLM's `AsyncEngineArgs`, kept apart so they can be checked without
    starting an engine. `pooling`: an embedding engine (vLLM's pooling runner; a generative model
    is converted to embed with its last token's hidden state)."""
    args = dict(
        model=resolve_source(model.source),
        tokenizer=resolve_source(model.tokenizer or model.source),
        dtype=model.dtype,
        load_format=model.load_format,
        trust_remote_code=model.trust_remote_code,
        tensor_parallel_size=engine.tensor_parallel_size,
        max_num_seqs=engine.max_num_seqs,
        enforce_eager=engine.enforce_eager,
        seed=seed,
        gpu_memory_utilization=engine.gpu_memory_utilization,
        disable_log_stats=True,
        # Requests share long prefixes (a template, then the row's text): the verdict and rating
        # requests of `score_choices` read them from the cache.
        enable_prefix_caching=True,
    )
    if device == "cpu":
        # A fixed KV cache size: the CPU build's share of memory subtracts the process's RSS.
        args["kv_cache_memory_bytes"] = int(engine.cpu_kv_cache_gib * 2**30)
        # The CPU build's default block of 128 tokens is longer than most shared prefixes (the
        # judge template and the chat preamble are about 75 tokens): nothing was ever reused.
        # At 32, 58% of the judge's prompt tokens came from the cache (bench/judge.py).
        args["block_size"] = CPU_BLOCK_SIZE
    if model.max_model_len:
        args["max_model_len"] = model.max_model_len
    if pooling:
        args["runner"] = "pooling"
    if engine.tensor_parallel_size > 1:
        # The engine actor was placed in a placement group with the GPUs it needs;
        # vLLM's Ray executor starts its workers inside that group.
        args["distributed_executor_backend"] = "ray"
    args.update(engine.extra_args)
    return args


class VLLMGenerator:
    """vLLM's `AsyncLLM`: every coroutine that awaits `generate` joins the engine's running batch."""

    def __init__(self, model: ModelConfig, engine: EngineConfig, device: str, seed: int,
                 pooling: bool = False) -> None:
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "1")
        from transformers import AutoTokenizer
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.tokenizer = AutoTokenizer.from_pretrained(
            resolve_source(model.tokenizer or model.source), trust_remote_code=model.trust_remote_code
        )
        # vLLM's statistics of every engine step, for the round manifests (its default loggers stay off)
        self.vllm_stats = VllmStats()
        self.engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_args(model, engine, device, seed, pooling)),
                                                stat_loggers=[stat_logger_factory(self.vllm_stats)])
        # the context length the engine took (the model's own when model.max_model_len is null)
        self.max_model_len = getattr(getattr(self.engine, "model_config", None), "max_model_len", None) \
            or model.max_model_len
        # engine.request_seeds: vLLM draws a seeded request's noise one request at a time; off by
        # default, the engine-wide seed applies. The CPU build fails a seeded request whose sampled
        # token is discarded during chunked prefill ("CPU Generator does not use offset"): refused
        # there before the engine starts (preflight.check_request_seeds).
        self._per_request_seed = engine.request_seeds and device == "gpu"
        self._ids = itertools.count()
        self._prefix = uuid.uuid4().hex[:8]
        self.choice_scoring = engine.choice_scoring
        self._choice_tokens: dict = {}
        # every request's prompt tokens and those read from the prefix cache (benchmarks read them)
        self.counts = {"requests": 0, "prompt_tokens": 0, "cached_tokens": 0}

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
        text = self.chat_prompt(prompt)
        self._check_fits(len(self.tokenizer(text).input_ids), sampling.max_tokens)
        final = await self._request(text, params)
        o = final.outputs[0]
        return Completion(o.text, len(final.prompt_token_ids or ()), len(o.token_ids))

    async def score_choices(self, prompt, choices):
        """Log-probabilities of `choices` as the answer, by `engine.choice_scoring` (`base.TextGenerator`)."""
        if self.choice_scoring == FIRST_TOKENS:
            return await self._first_tokens(prompt, choices)
        if self.choice_scoring == FORCED:
            c = await self.generate(prompt, GREEDY_CHOICE, seed=0, choices=choices)
            return {x: (0.0 if x == c.text else -math.inf) for x in choices}
        return await self._whole_answer(prompt, choices)

    async def _first_tokens(self, prompt, choices):
        """One request of one token, its log-probabilities asked for exactly the choices' next
        tokens (`SamplingParams.logprob_token_ids`), at each point where the choices part ways
        (`base.read_choices`); the prompt's prefix comes from the cache."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        head = self.tokenizer(self.chat_prompt(prompt), add_special_tokens=False).input_ids
        key = tuple(choices)
        if key not in self._choice_tokens:
            self._choice_tokens[key] = {c: self.tokenizer(c, add_special_tokens=False).input_ids for c in choices}
        tokens = self._choice_tokens[key]
        self._check_fits(len(head), max(len(t) for t in tokens.values()))

        async def read(prefix, candidates):
            params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=list(candidates))
            out = await self._request(TokensPrompt(prompt_token_ids=head + prefix), params)
            lps = out.outputs[0].logprobs[0]
            return {t: lps[t].logprob for t in candidates}

        return await read_choices(tokens, read)

    async def _whole_answer(self, prompt, choices):
        """Each choice is appended to the chat prompt as the assistant's whole answer, closed by
        the tokenizer's end-of-sequence token (the end of an assistant turn in chat models), and
        vLLM returns the log-probability of every prompt token (`prompt_logprobs=0`); the choice's
        is the sum over its tokens. One request per choice, all in flight at once; they share
        the prompt's prefix."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        head = self.tokenizer(self.chat_prompt(prompt), add_special_tokens=False).input_ids
        end = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)

        tails = {c: self.tokenizer(c, add_special_tokens=False).input_ids + end for c in choices}
        self._check_fits(len(head), max(len(t) for t in tails.values()))

        async def one(choice: str) -> float:
            ids = head + tails[choice]
            out = await self._request(TokensPrompt(prompt_token_ids=ids), params)
            return sum(out.prompt_logprobs[i][ids[i]].logprob for i in range(len(head), len(ids)))

        scores = await asyncio.gather(*(one(c) for c in choices))
        return dict(zip(choices, scores))

    async def embed(self, text):
        """The engine's (normalized) embedding of `text`: an engine started with `pooling`."""
        from vllm import PoolingParams

        self._check_fits(len(self.tokenizer(text).input_ids), 0)
        final = None
        async for out in self.engine.encode(text, PoolingParams(task="embed"),
                                            request_id=f"{self._prefix}-{next(self._ids)}"):
            final = out
        return [float(x) for x in final.outputs.data]

    def _check_fits(self, prompt_tokens: int, answer_tokens: int) -> None:
        if self.max_model_len and prompt_tokens + answer_tokens > self.max_model_len:
            raise PromptTooLong(f"prompt of {prompt_tokens} tokens + {answer_tokens} for the answer > "
                                f"model.max_model_len {self.max_model_len}; no request sent")

    async def _request(self, prompt, params):
        final = None
        async for out in self.engine.generate(prompt, params, request_id=f"{self._prefix}-{next(self._ids)}"):
            final = out
        if final is None:
            raise RuntimeError("the engine returned no output")
        self.counts["requests"] += 1
        self.counts["prompt_tokens"] += len(final.prompt_token_ids or ())
        self.counts["cached_tokens"] += final.num_cached_tokens or 0
        return final

    def shutdown(self, grace_s: Optional[float] = None) -> None:
        """End the engine. `grace_s`: how long vLLM's engine processes may take to exit before
        they are killed (None: vLLM's default, 5 s)."""
        self.engine.shutdown(timeout=grace_s)


def actor_engine(model: ModelConfig, engine: EngineConfig, device: str, seed: int,
                 pooling: bool = False) -> VLLMGenerator:
    """A `VLLMGenerator` for an engine actor, ended at once when the actor's process exits.

    The run ends its engine actors when it is done with them, when every request has returned: the
    engine has nothing left to lose. Left to themselves, vLLM's engine core and worker would take about
    5 s to exit on the CPU build (garbage collections that free what process exit frees anyway),
    and this process about 2.5 s, on the cores the next work needs, while the actor still holds
    its CPU reservation. So at exit vLLM's processes are killed without a grace period, and this
    process finishes at the lowest CPU priority."""
    gen = VLLMGenerator(model, engine, device, seed, pooling)
    atexit.register(_end_at_exit, gen)
    return gen


def _end_at_exit(gen: VLLMGenerator) -> None:
    gen.shutdown(grace_s=0)
    os.nice(19)
