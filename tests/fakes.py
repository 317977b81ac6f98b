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


def proposal_for(seed, run_seed, proposals):
    """The optimizer's reply for the request `seed`: its k-th candidate of any step gets
    `proposals[k - 1]` (Auto Evol seeds each candidate's request by step and candidate)."""
    from evol_ray import identity

    for t in range(1, 10):
        for k, text in enumerate(proposals, 1):
            if seed == identity.request_seed(run_seed, f"auto-step-{t}", 0, f"candidate-{k}"):
                return text
    raise AssertionError("an optimizer request with an unexpected seed")


class AutoScripted:
    """A picklable scripted engine for Auto Evol through real Ray (`driver.run(generator_factory=
    functools.partial(AutoScripted, ...))`): a rewrite adds a table to its parent, the judge finds
    gain, answers are plain prose, the analysis names a problem, and the optimizer's k-th
    candidate of a step replies `proposals[k - 1]` (matched by the request seed the loop gives it,
    `seed` being the run's). With `log`, each request's kind is appended to that file, so a test
    can tell whether a rerun sent anything."""

    def __init__(self, seed=0, proposals=("Improved method:",), log=None):
        self.seed, self.proposals, self.log = seed, tuple(proposals), log

    def _note(self, kind):
        if self.log:
            with open(self.log, "a") as f:
                f.write(kind + "\n")

    async def generate(self, prompt, sampling, *, seed, choices=None):
        if "This is the current method" in prompt:
            kind, text = "optimizer", proposal_for(seed, self.seed, self.proposals)
        elif "reviewing the work of an instruction rewriter" in prompt:
            kind, text = "analysis", "It is no harder than the instruction it was given."
        elif prompts.ORIGINAL_MARKER in prompt:
            parent = prompt.split(prompts.ORIGINAL_MARKER + "\n")[1].split("\n\n")[0]
            kind, text = "evolve", f"{parent} Compare two of its cases in a table and justify each row."
        else:
            kind, text = "answer", "A table compares the cases row by row, with a reason for each one."
        self._note(kind)
        return Completion(text, prompt_tokens=len(prompt.split()), generated_tokens=len(text.split()))

    async def score_choices(self, prompt, choices):
        self._note("judge")
        return {c: (-0.01 if c == prompts.JUDGE_NOT_EQUAL else -6.0) for c in choices}
