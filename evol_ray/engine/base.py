"""The one seam for the model: prompts in, text out.

Everything else in evol-ray talks to a `TextGenerator`. `evol_ray.engine.vllm_engine` puts vLLM's
async engine behind it; unit tests put a test double there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Awaitable, Callable, Dict, List, Optional, Protocol, Sequence

from evol_ray.config import SamplingConfig
from evol_ray.config_checks import CHOICE_SCORING


@dataclass
class Completion:
    text: str
    prompt_tokens: int = 0
    generated_tokens: int = 0


class PromptTooLong(ValueError):
    """A request that cannot fit the model's context (`model.max_model_len`) with room for its
    answer (`max_tokens`): raised by a generator before anything is sent."""


class EngineUnavailable(RuntimeError):
    """The engine cannot serve any more requests (every restart used, a server that stays down
    after its retries, a rejected key): not one row's failure but the stage's, which stops and
    leaves the rows already written for the rerun."""


class TextGenerator(Protocol):
    async def generate(self, prompt: str, sampling: SamplingConfig, *, seed: int,
                       choices: Optional[Sequence[str]] = None) -> Completion:
        """Answer `prompt` as the user turn of a chat. `choices` forces the output to one of them.
        Raises PromptTooLong, sending nothing, when the prompt and `max_tokens` cannot fit."""
        ...

    async def score_choices(self, prompt: str, choices: Sequence[str]) -> Dict[str, float]:
        """The log-probability the model gives each of `choices` as its answer to `prompt`, read
        the way `engine.choice_scoring` says (the verdicts of rule 1, the coherence rating, the
        difficulty and quality scores all come through here):

        * `first_tokens` (the default): one generation request of one token whose
          log-probabilities are asked for exactly the choices' first tokens (`read_choices`);
          where choices share their first token ("1" and "10" for Qwen's tokenizer) one more
          request after it, whose prompt the engine has cached. Prefix cache on.
        * `whole_answer`: each choice scored as the whole answer (its tokens, then the end of the
          turn) from the prompt's log-probabilities: one request per choice, none of them read
          from the prefix cache (vLLM skips it for prompt log-probabilities).
        * `forced`: one greedy answer forced to a choice; all the mass on the one chosen.

        Neither log-probability read can be steered by one option being a prefix of another, as a
        forced choice is ("1" of "10")."""
        ...

    async def embed(self, text: str) -> List[float]:
        """An embedding of `text` (an engine started for embeddings: `select.embedding_model`)."""
        ...


def choice_distribution(logprobs: Dict[str, float]) -> Dict[str, float]:
    """Log-probabilities of a set of choices -> probabilities renormalized over the set."""
    top = max(logprobs.values())
    w = {c: math.exp(lp - top) for c, lp in logprobs.items()}
    total = sum(w.values())
    return {c: x / total for c, x in w.items()}


FIRST_TOKENS, WHOLE_ANSWER, FORCED = CHOICE_SCORING  # engine.choice_scoring

# read(prefix, tokens) -> {token: log-probability}: the model's full-vocabulary log-probability of
# each of `tokens` as the next token of its answer, after it has written `prefix` (token ids).
NextTokenRead = Callable[[List[int], List[int]], Awaitable[Dict[int, float]]]


async def read_choices(tokens: Dict[str, List[int]], read: NextTokenRead) -> Dict[str, float]:
    """The log-probability of each choice (`tokens`: choice -> its answer's token ids), read at the
    tokens where the choices part ways: one `read` when they differ at their first token, one more
    for each group that shares a prefix. A choice that ends where others go on ("1" among "1",
    "10") takes what the others' continuations leave: P("1") x (1 - P("0" | "1")). Renormalized
    over the choices (`choice_distribution`) this equals the whole-answer distribution when the
    model ends its answer right after a choice, and otherwise reads the same decision without
    asking for the end."""
    out: Dict[str, float] = {}

    async def node(prefix: List[int], group: List[str], logp: float) -> None:
        if len(group) == 1:
            out[group[0]] = logp
            return
        at = len(prefix)
        ended = [c for c in group if len(tokens[c]) == at]
        going: Dict[int, List[str]] = {}
        for c in group:
            if len(tokens[c]) > at:
                going.setdefault(tokens[c][at], []).append(c)
        if len(ended) > 1:
            raise ValueError(f"choices {ended} have the same tokens")
        lps = await read(prefix, sorted(going))
        for t, members in going.items():
            await node(prefix + [t], members, logp + lps[t])
        if ended:
            left = 1.0 - sum(math.exp(lps[t]) for t in going)
            out[ended[0]] = logp + (math.log(left) if left > 1e-12 else -27.6)

    await node([], list(tokens), 0.0)
    return out


def engine_is_dead(e: BaseException) -> bool:
    """vLLM raises EngineDeadError for every request once its engine process has died, and the
    stages see `EngineUnavailable`: neither is one row's failure, so neither becomes a row's
    error status."""
    return any(isinstance(x, EngineUnavailable) or type(x).__name__ == "EngineDeadError"
               for x in (e, e.__cause__, e.__context__) if x)
