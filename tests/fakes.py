"""A scripted test double behind the engine seam, for unit tests of pure logic only."""

from __future__ import annotations

from evol_ray.engine.base import Completion, PromptTooLong
from evol_ray.evolve import prompts


class ScriptedGenerator:
    """Answers by step: the evolve prompt, the judge prompt (choices given) and the answer prompt.

    `evolved`, `verdict` and `answer` are callables of the prompt (or plain strings); every call is
    recorded in `calls` as (step, prompt). A prompt is an evolve prompt when it holds one of
    `evolve_phrases` (by default those of every recipe's templates). The judge reads `score_choices`: nearly all of the
    probability on `verdict`. With `context`, a prompt of more words than `context` minus
    `max_tokens` raises PromptTooLong and is not recorded (as the real engine sends nothing)."""

    def __init__(self, evolved="Describe the migration routes of three birds of Europe in detail.",
                 verdict="Not Equal", answer="Birds migrate along flyways such as the East Atlantic.",
                 fail_on=None, context=None, evolve_phrases=(prompts.ORIGINAL_MARKER,)):
        self.evolved, self.verdict, self.answer, self.fail_on = evolved, verdict, answer, fail_on
        self.context, self.evolve_phrases = context, evolve_phrases
        self.calls: list[tuple[str, str]] = []

    @staticmethod
    def _text(v, prompt):
        return v(prompt) if callable(v) else v

    async def score_choices(self, prompt, choices):
        verdict = self._text(self.verdict, prompt)
        self.calls.append(("judge", prompt))
        if self.fail_on == "judge":
            raise RuntimeError("engine failed during judge")
        return {c: (-0.01 if c == verdict else -6.0) for c in choices}

    async def generate(self, prompt, sampling, *, seed, choices=None):
        if self.context and len(prompt.split()) + sampling.max_tokens > self.context:
            raise PromptTooLong(f"prompt of {len(prompt.split())} tokens > {self.context}")
        if choices:
            step, text = "judge", self._text(self.verdict, prompt)
        elif any(p in prompt for p in self.evolve_phrases):
            step, text = "evolve", self._text(self.evolved, prompt)
        else:
            step, text = "answer", self._text(self.answer, prompt)
        self.calls.append((step, prompt))
        if self.fail_on == step:
            raise RuntimeError(f"engine failed during {step}")
        return Completion(text, prompt_tokens=len(prompt.split()), generated_tokens=len(text.split()))
