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
                 fail_on=None, context=None, evolve_phrases=(prompts.ORIGINAL_MARKER,), coherent="Yes"):
        self.evolved, self.verdict, self.answer, self.fail_on = evolved, verdict, answer, fail_on
        self.coherent = coherent  # the coherence gate's answer, "Yes" or "No" (or a callable of the prompt)
        self.context, self.evolve_phrases = context, evolve_phrases
        self.calls: list[tuple[str, str]] = []

    @staticmethod
    def _text(v, prompt):
        return v(prompt) if callable(v) else v

    async def score_choices(self, prompt, choices):
        if prompts.COHERENT_YES in choices:
            said = self._text(self.coherent, prompt)
            self.calls.append(("coherence", prompt))
            return {c: (-0.01 if c == said else -6.0) for c in choices}
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


class CalibrationScripted:
    """A picklable scripted engine whose LLM decisions have a known accuracy (for the calibration's
    tests on real Ray): the judge gives P(Equal) `high` to the pairs of `equal` (parent, evolution)
    texts and `low` to the rest, except those in `wrong` (swapped); the coherence gate gives
    P(incoherent) 0.9 to the texts in `incoherent`, else 0.2. Rewrites, answers: plain prose."""

    def __init__(self, equal=(), wrong=(), incoherent=(), high=0.9, low=0.6):
        self.equal, self.wrong, self.incoherent = set(map(tuple, equal)), set(map(tuple, wrong)), set(incoherent)
        self.high, self.low = high, low

    async def score_choices(self, prompt, choices):
        import math

        if prompts.JUDGE_EQUAL in choices:
            first = prompt.split("First instruction:\n")[1].split("\n\nSecond instruction:")[0]
            second = prompt.split("Second instruction:\n")[1].split("\n\nAnswer with")[0]
            pair = tuple(sorted((first, second)))
            p = self.high if (pair in self.equal) != (pair in self.wrong) else self.low
            return {prompts.JUDGE_EQUAL: math.log(p), prompts.JUDGE_NOT_EQUAL: math.log(1 - p)}
        p = 0.9 if any(t in prompt for t in self.incoherent) else 0.2
        return {prompts.COHERENT_NO: math.log(p), prompts.COHERENT_YES: math.log(1 - p)}

    async def generate(self, prompt, sampling, *, seed, choices=None):
        if prompts.ORIGINAL_MARKER in prompt:
            parent = prompt.split(prompts.ORIGINAL_MARKER + "\n")[1].split("\n\n")[0]
            text = f"{parent} Answer in exactly three numbered steps."
        else:
            text = "First, gather the facts. Second, compare them. Third, state the conclusion."
        return Completion(text, prompt_tokens=len(prompt.split()), generated_tokens=len(text.split()))
