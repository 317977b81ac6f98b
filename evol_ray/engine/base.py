"""The one seam for the model: prompts in, text out.

Everything else in evol-ray talks to a `TextGenerator`. `evol_ray.engine.vllm_engine` puts vLLM's
async engine behind it; unit tests put a test double there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, Sequence

from evol_ray.config import SamplingConfig


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


def engine_is_dead(e: BaseException) -> bool:
    """vLLM raises EngineDeadError for every request once its engine process has died: that is
    not one row's failure but the actor's, and the actor must be replaced."""
    return any(type(x).__name__ == "EngineDeadError" for x in (e, e.__cause__, e.__context__) if x)
