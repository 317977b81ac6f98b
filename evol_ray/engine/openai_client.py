"""Any OpenAI-compatible server behind the engine seam (`engine.backend=openai`): `vllm serve`,
SGLang, TGI, a hosted API.

`OpenAIGenerator` sends each request with the `openai` package's async client, whose retries are
exponential backoff with jitter on connection errors, timeouts, 408/409/429 and 5xx, honouring
Retry-After (`engine.endpoint.max_retries`, `timeout_s`); at most `max_in_flight` requests per
stage actor are in flight. A server still failing after its retries, or refusing the key or the
model, is `EngineUnavailable`: the round stops and a rerun resumes it. A prompt over the server's
context length is `PromptTooLong`, that row's named reason.

Choices (the judge's Equal / Not Equal, the gate's Yes / No, the scorer's 1..10), by
`engine.choice_scoring`:
  * `first_tokens`: one request of one token whose log-probabilities are asked for exactly the
    choices' first tokens (vLLM's `logprob_token_ids` request field, the token ids from the
    server's own `/tokenize`); where choices share a first token, one more request with it
    written as the start of the assistant's turn (`engine.base.read_choices`). A vLLM server.
  * `whole_answer`: each choice as the assistant's whole answer, its probability read from the
    prompt's log-probabilities (vLLM's `prompt_logprobs` request field, with the chat template
    rendering the assistant turn closed): the tokens after the head (the prompt up to the
    assistant's turn, whose length one extra 1-token request gives) are the choice and the end
    of the turn. Exact, as the vllm backend's; no prefix bias.
  * `forced`: one greedy answer forced to a choice, by `engine.endpoint.forced_choice`:
    `guided` (the server's guided decoding: `structured_outputs: {"choice": [...]}` in the
    body, as vLLM reads it), `json_schema` (the standard `response_format` with an enum) or
    `parse` (plain text matched to a choice, asked again when it matches none). The result is
    a distribution with all its mass on the chosen answer.

`preflight` runs before any Ray work: a wrong URL, model name or key fails the run at once,
naming `engine.endpoint.*`. The key is read from the environment variable named by
`engine.endpoint.api_key_env`; it never reaches config, logs, manifests or errors.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import os
import re
from typing import Dict, List, Optional, Sequence

from evol_ray.config import Config, EndpointConfig
from evol_ray.config_checks import ConfigError
from evol_ray.engine.base import (FIRST_TOKENS, FORCED, WHOLE_ANSWER, Completion, EngineUnavailable, PromptTooLong,
                                  read_choices)

PARSE_TRIES = 3
CHOICE_MAX_TOKENS = 16
_CONTEXT = re.compile(r"context length|maximum context|too long|max_model_len|prompt is too long", re.I)


class ChoiceError(RuntimeError):
    """A forced choice the server's answer did not match (after `PARSE_TRIES`): that row's error."""


class Secret(str):
    """The API key: a str that never shows itself in a repr or a log line."""

    def __repr__(self) -> str:
        return "'***'"


def api_key(ep: EndpointConfig) -> Secret:
    """The key from the environment variable `engine.endpoint.api_key_env`, or "EMPTY" (what
    servers started without a key accept)."""
    return Secret(os.environ.get(ep.api_key_env) or "EMPTY")


def redact(text: str, key: str) -> str:
    """`text` without the key, nor anything shaped like an API key."""
    if key and key != "EMPTY":
        text = text.replace(key, "***")
    return re.sub(r"\b(sk|pk|key)-[A-Za-z0-9_\-]{6,}", r"\1-***", text)


def match_choice(text: str, choices: Sequence[str]) -> Optional[str]:
    """The choice a plain answer names: the whole answer (trimmed of quotes, punctuation and
    case), else the longest choice it starts with as a whole word ("10." is "10", not "1")."""
    t = text.strip().strip("\"'`*.:!").strip().casefold()
    by_norm = {c.casefold(): c for c in choices}
    if t in by_norm:
        return by_norm[t]
    starts = [c for c in by_norm if re.match(re.escape(c) + r"(?![\w])", t)]
    return by_norm[max(starts, key=len)] if starts else None


def one_hot(choices: Sequence[str], chosen: str) -> Dict[str, float]:
    return {c: (0.0 if c == chosen else -math.inf) for c in choices}


class OpenAIGenerator:
    """A `TextGenerator` on an OpenAI-compatible server's chat completions (and embeddings)."""

    def __init__(self, ep: EndpointConfig, key: Optional[Secret] = None, choice_scoring: str = FIRST_TOKENS,
                 request_seeds: bool = False) -> None:
        from openai import AsyncOpenAI

        self.ep = ep
        self.request_seeds = request_seeds
        self._key = key if key is not None else api_key(ep)
        self.client = AsyncOpenAI(base_url=ep.base_url, api_key=str(self._key), timeout=ep.timeout_s,
                                  max_retries=ep.max_retries)
        self._sem: Optional[asyncio.Semaphore] = None
        self.choice_scoring = choice_scoring
        self._choice_tokens: dict = {}

    async def _call(self, create, **kw):
        import openai

        if self._sem is None:
            self._sem = asyncio.Semaphore(self.ep.max_in_flight)
        async with self._sem:
            try:
                return await create(model=self.ep.model, **kw)
            except openai.BadRequestError as e:
                msg = redact(str(e), self._key)
                if _CONTEXT.search(msg):
                    raise PromptTooLong(f"the server refused the prompt: {msg[:500]}") from None
                raise RuntimeError(f"the server refused the request: {msg[:500]}") from None
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
                raise EngineUnavailable(
                    f"engine.endpoint at {self.ep.base_url} refused model {self.ep.model!r} or the key "
                    f"in ${self.ep.api_key_env}: {e.status_code} {redact(str(e), self._key)[:300]}") from None
            except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as e:
                raise EngineUnavailable(
                    f"engine.endpoint.base_url {self.ep.base_url}: still failing after "
                    f"engine.endpoint.max_retries={self.ep.max_retries} retries "
                    f"({type(e).__name__}: {redact(str(e), self._key)[:200]})") from None

    def _seed(self, seed: int) -> dict:
        """The request's `seed` field, with `engine.request_seeds` on."""
        return {"seed": seed} if self.request_seeds else {}

    async def _chat(self, messages: List[dict], **kw):
        return await self._call(self.client.chat.completions.create, messages=messages, **kw)

    async def generate(self, prompt, sampling, *, seed, choices=None) -> Completion:
        if choices:
            return await self._forced(prompt, list(choices), seed)
        r = await self._chat([{"role": "user", "content": prompt}], temperature=sampling.temperature,
                             top_p=sampling.top_p, max_tokens=sampling.max_tokens, **self._seed(seed))
        return Completion(r.choices[0].message.content or "", r.usage.prompt_tokens, r.usage.completion_tokens)

    async def score_choices(self, prompt, choices) -> Dict[str, float]:
        if self.choice_scoring == FORCED:
            c = await self._forced(prompt, list(choices), seed=0)
            return one_hot(choices, c.text)
        if self.choice_scoring == FIRST_TOKENS:
            return await self._first_tokens(prompt, list(choices))
        user = {"role": "user", "content": prompt}
        head = await self._chat([user], max_tokens=1, temperature=0.0)
        n_head = head.usage.prompt_tokens

        async def one(choice: str) -> float:
            r = await self._chat([user, {"role": "assistant", "content": choice}], max_tokens=1, temperature=0.0,
                                 extra_body={"prompt_logprobs": 0, "add_generation_prompt": False,
                                             "continue_final_message": False})
            lps = prompt_logprobs_of(r)
            if lps is None:
                raise EngineUnavailable("engine.choice_scoring=whole_answer: the server returned no "
                                        "prompt_logprobs; set engine.choice_scoring=forced")
            return sum(_token_logprob(x) for x in lps[n_head:] if x)

        scores = await asyncio.gather(*(one(c) for c in choices))
        return dict(zip(choices, scores))

    async def _server(self, path: str, body: dict) -> dict:
        """POST to the server's own (not OpenAI's) API at its root: vLLM's /tokenize, /detokenize."""
        import httpx

        root = re.sub(r"/v1/?$", "", self.ep.base_url.rstrip("/"))
        async with httpx.AsyncClient(timeout=self.ep.timeout_s) as http:
            r = await http.post(f"{root}{path}", json={"model": self.ep.model, **body},
                                headers={"Authorization": f"Bearer {self._key}"})
        if r.status_code != 200:
            raise EngineUnavailable(f"engine.choice_scoring=first_tokens: {root}{path} answered {r.status_code} "
                                    "(a vLLM server has it); set engine.choice_scoring=whole_answer or forced")
        return r.json()

    async def _first_tokens(self, prompt: str, choices: List[str]) -> Dict[str, float]:
        key = tuple(choices)
        if key not in self._choice_tokens:
            got = await asyncio.gather(*(self._server("/tokenize", {"prompt": c, "add_special_tokens": False})
                                         for c in choices))
            self._choice_tokens[key] = {c: g["tokens"] for c, g in zip(choices, got)}
        user = {"role": "user", "content": prompt}

        async def read(prefix, candidates):
            messages, extra = [user], {}
            if prefix:  # the shared start of some choices, written as the start of the answer
                text = (await self._server("/detokenize", {"tokens": prefix}))["prompt"]
                messages = [user, {"role": "assistant", "content": text}]
                extra = {"add_generation_prompt": False, "continue_final_message": True}
            r = await self._chat(messages, max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=1,
                                 extra_body={"logprob_token_ids": list(candidates), "return_tokens_as_token_ids": True,
                                             **extra})
            found = {int(x.token.split(":", 1)[1]): x.logprob for x in r.choices[0].logprobs.content[0].top_logprobs
                     if x.token.startswith("token_id:")}
            missing = [t for t in candidates if t not in found]
            if missing:
                raise EngineUnavailable(f"engine.choice_scoring=first_tokens: the server returned no log-probability "
                                        f"for tokens {missing} (vLLM's logprob_token_ids); set "
                                        "engine.choice_scoring=whole_answer or forced")
            return found

        return await read_choices(self._choice_tokens[key], read)

    async def _forced(self, prompt: str, choices: List[str], seed: int) -> Completion:
        """One greedy answer that is one of `choices` (`engine.endpoint.forced_choice`)."""
        how = self.ep.forced_choice
        listed = ", ".join(choices)
        for attempt in range(PARSE_TRIES):
            kw: dict = {"max_tokens": CHOICE_MAX_TOKENS, "temperature": 0.0 if attempt == 0 else 0.7,
                        **self._seed(seed + attempt)}
            text = prompt
            if how == "guided":
                kw["extra_body"] = {"structured_outputs": {"choice": choices}}
            elif how == "json_schema":
                kw["max_tokens"] = CHOICE_MAX_TOKENS + 16
                kw["response_format"] = {"type": "json_schema", "json_schema": {
                    "name": "choice", "strict": True,
                    "schema": {"type": "object", "properties": {"answer": {"type": "string", "enum": choices}},
                               "required": ["answer"], "additionalProperties": False}}}
                text = f'{prompt}\n\nReply in JSON as {{"answer": ...}} with one of: {listed}.'
            else:
                text = f"{prompt}\n\nReply with exactly one of: {listed}."
            r = await self._chat([{"role": "user", "content": text}], **kw)
            reply = r.choices[0].message.content or ""
            if how == "json_schema":
                try:
                    reply = str(json.loads(reply).get("answer", ""))
                except (ValueError, AttributeError):
                    reply = ""
            chosen = reply if (how == "guided" and reply in choices) else match_choice(reply, choices)
            if chosen is not None:
                return Completion(chosen, r.usage.prompt_tokens, r.usage.completion_tokens)
        raise ChoiceError(f"no answer among {listed} after {PARSE_TRIES} tries "
                          f"(engine.endpoint.forced_choice={how}); last reply {reply[:80]!r}")

    async def embed(self, text: str) -> List[float]:
        r = await self._call(self.client.embeddings.create, input=text)
        return list(r.data[0].embedding)


def prompt_logprobs_of(response) -> Optional[list]:
    """vLLM's `prompt_logprobs` field of a chat completion (an extra field of the OpenAI model)."""
    extra = getattr(response, "model_extra", None) or {}
    return extra.get("prompt_logprobs", getattr(response, "prompt_logprobs", None))


def _token_logprob(entry) -> float:
    """One prompt position's `{token_id: {"logprob": ..., "rank": ..., ...}}`: with
    `prompt_logprobs=0` the prompt's own token is its only entry."""
    v = next(iter(entry.values()))
    return float(v["logprob"] if isinstance(v, dict) else v.logprob)


def endpoint_factory(ep: EndpointConfig, choice_scoring: str = FIRST_TOKENS, request_seeds: bool = False):
    """A picklable factory of `OpenAIGenerator` for the stage actors (the same generator serves
    chat and embeddings), holding the driver's key (as a `Secret`) so workers need not have the
    environment variable."""
    return functools.partial(OpenAIGenerator, ep, api_key(ep), choice_scoring, request_seeds)


def preflight(cfg: Config) -> None:
    """Before Ray: the server answers at `base_url`, accepts the key, serves `model`, and (with
    `choice_scoring=logprobs` and a judge or a scorer) returns prompt log-probabilities. Each
    failure is a ConfigError naming its `engine.endpoint.*` key."""
    import openai

    ep = cfg.engine.endpoint
    key = api_key(ep)
    client = openai.OpenAI(base_url=ep.base_url, api_key=str(key), timeout=min(ep.timeout_s, 30.0), max_retries=1)

    def fail(k: str, problem: str) -> None:
        raise ConfigError(f"config key 'engine.endpoint.{k}': {redact(problem, key)}")

    try:
        served = [m.id for m in client.models.list()]
    except openai.AuthenticationError as e:
        fail("api_key_env", f"the server at {ep.base_url} refused the key in ${ep.api_key_env}"
             f"{'' if ep.api_key_env in os.environ else ' (the variable is not set)'}: {e.status_code}")
    except openai.NotFoundError:
        fail("base_url", f"{ep.base_url} has no /models: expected the OpenAI API root, such as "
             "http://127.0.0.1:8000/v1")
    except openai.APIConnectionError as e:
        fail("base_url", f"no OpenAI-compatible server answered at {ep.base_url} ({type(e).__name__})")
    except openai.APIStatusError as e:
        fail("base_url", f"{ep.base_url}/models answered {e.status_code}")
    if ep.model not in served:
        fail("model", f"{ep.model!r} is not served at {ep.base_url}; served: {', '.join(served) or '(none)'}")
    needs_choices = cfg.elimination.judge or cfg.elimination.coherence.enabled or cfg.score.enabled
    how = cfg.engine.choice_scoring
    if how == WHOLE_ANSWER and needs_choices:
        try:
            r = client.chat.completions.create(
                model=ep.model, messages=[{"role": "user", "content": "Say yes."}, {"role": "assistant", "content": "Yes"}],
                max_tokens=1, extra_body={"prompt_logprobs": 0, "add_generation_prompt": False,
                                          "continue_final_message": False})
        except openai.APIStatusError as e:
            fail_scoring(f"whole_answer: the server refused a prompt_logprobs request ({e.status_code}); "
                         "set engine.choice_scoring=forced")
        if not prompt_logprobs_of(r):
            fail_scoring("whole_answer: the server returns no prompt_logprobs (a vLLM field); set "
                         "engine.choice_scoring=forced")
    if how == FIRST_TOKENS and needs_choices:
        gen = OpenAIGenerator(ep, key, FIRST_TOKENS)
        try:
            asyncio.run(gen.score_choices("Say yes.", ["Yes", "No"]))
        except (EngineUnavailable, openai.APIStatusError) as e:
            fail_scoring(f"first_tokens: {redact(str(e), key)[:300]}")


def fail_scoring(problem: str) -> None:
    raise ConfigError(f"config key 'engine.choice_scoring': {problem}")
