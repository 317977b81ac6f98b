"""The one seam for the model: prompts in, text out.

Everything else in evol-ray talks to a `TextGenerator`. `evol_ray.engine.vllm_engine` puts vLLM's
async engine behind it; unit tests put a test double there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Protocol, Sequence

from evol_ray.config import SamplingConfig


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
        """The log-probability the model gives each of `choices` as its whole answer to `prompt`
        (the choice's tokens, then the end of the answer). Unlike a forced choice this cannot be
        steered by one option being a prefix of another ("1" of "10"): "1" then the end and "1",
        "0" then the end are different, disjoint answers."""
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


def engine_is_dead(e: BaseException) -> bool:
    """vLLM raises EngineDeadError for every request once its engine process has died, and the
    stages see `EngineUnavailable`: neither is one row's failure, so neither becomes a row's
    error status."""
    return any(isinstance(x, EngineUnavailable) or type(x).__name__ == "EngineDeadError"
               for x in (e, e.__cause__, e.__context__) if x)
