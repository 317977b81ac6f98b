"""Recipes: the sets of evolution operations a run chooses from (`evolution.recipe`).

A recipe is plain data: named frames (templates with `{instruction}` and, for a method, `{method}`),
its operations (each fills one frame with one method, at a default weight) and the elimination rules
that fit it (`elimination.<rule>` switched on unless the config says otherwise).

- `general`: WizardLM (arXiv 2304.12244, sec. 3.1): five in-depth methods and in-breadth evolving;
  its texts live in `prompts.py`, and its operation names are the bare names used before recipes.
- `code`: WizardCoder (arXiv 2306.08568, sec. 3): five in-depth heuristics for programming tasks,
  the time/space complexity one at a low weight (the paper asks for it only rarely); adds the rule
  `code_answer` (an answer without code where the task asks for code).
- `math`: WizardMath (arXiv 2308.09583, sec. 3.1): upward evolution (constraints, concretizing,
  more reasoning) and downward evolution (an easier problem, or a new easier one on another topic);
  adds the rule `math_answer` (an answer to a word problem without any number).

Operation names are unique across recipes: `code_*` and `math_*` carry their recipe's prefix.
The wording of every text is this project's own, written from the papers' descriptions.

`evolve_prompt` and `op_order` read a loaded config (`recipes.resolve` has filled in the
recipe's weights, frames and methods under the user's overrides).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence, Tuple

from evol_ray import identity
from evol_ray.evolve import prompts

if TYPE_CHECKING:
    from evol_ray.schema import Config, EvolutionConfig

# The frames a recipe may fill, each a key of `evolution.templates`: a harder rewrite of the
# instruction (in-depth, upward), a new instruction inspired by it (in-breadth), an easier one
# (WizardMath's downward evolution). Frames listed in METHOD_FRAMES must hold `{method}`.
FRAMES = ("depth", "breadth", "downward")
METHOD_FRAMES = ("depth", "downward")
# Recipe rules, each an `elimination.<name>` switch (null: on when the recipe lists it).
RULES = ("code_answer", "math_answer")


@dataclass(frozen=True)
class Operation:
    frame: str  # one of FRAMES: which template this operation fills
    method: str  # the text for `{method}`; "" for a frame without one
    weight: float = 1.0


@dataclass(frozen=True)
class Recipe:
    paper: str
    frames: Mapping[str, str]
    ops: Mapping[str, Operation]  # in the order of the weighted choice
    rules: Tuple[str, ...] = ()


def _forbid_markers(noun: str, new_marker: str, new_words: str) -> str:
    """The sentence that keeps a rewriter from echoing the template (elimination rule 4)."""
    return (f"Do not write the words '{prompts.ORIGINAL_MARKER}', '{new_marker}', 'original instruction' "
            f"or '{new_words}' in your answer. Reply with the {noun} only.\n\n"
            f"{prompts.ORIGINAL_MARKER}\n{{instruction}}\n\n{new_marker}\n")


# --- code: WizardCoder's heuristics, in our words ----------------------------------------------
CODE_DEPTH_TEMPLATE = (
    "You are a programming task rewriter. Rewrite the programming task below into a somewhat harder "
    "one that a skilled programmer could still solve. The rewritten task must be clear and "
    "self-contained, and it must still ask for a working solution.\n"
    "Keep every non-text part of the original, such as code, function signatures, examples, tables "
    "and input or output formats, and keep its input if it has one.\n"
    "Make it harder in this way: {method}\n"
    "Do not make it wordy: the rewritten task may add only 10 to 20 words to the original, not "
    "counting any code that this way of making it harder asks you to include.\n"
    + _forbid_markers("rewritten task", prompts.REWRITTEN_MARKER, "rewritten instruction")
)
CODE_METHODS = {
    "code_constraints": "Add one or two new constraints or requirements that a solution must meet, "
    "in about ten more words.",
    "code_rare_requirement": "Replace one common, everyday requirement of the task with a rarer and "
    "more specific one.",
    "code_reasoning": "If the task can be solved in only a few logical steps, change it so that a "
    "solution needs several more steps of reasoning.",
    "code_misdirection": "Add a short piece of code, presented as a reference, that looks like an "
    "attempt at the task but contains a mistake, so that the solver has to notice the mistake "
    "instead of copying it.",
    "code_complexity": "Require the solution to meet a stricter bound on running time or memory use, "
    "stated in big-O notation.",
}
CODE_WEIGHTS = {"code_complexity": 0.25}  # "rarely" in WizardCoder; the others 1.0

# --- math: WizardMath's upward and downward evolution, in our words -----------------------------
MATH_DEPTH_TEMPLATE = (
    "You are a math problem rewriter. Rewrite the math word problem below into a harder one. The "
    "rewritten problem must still be solvable from the information it gives and have one clear "
    "final answer that a student could work out by hand.\n"
    "Keep every number, formula, table and unit of the original that the problem still needs, and "
    "keep its input if it has one.\n"
    "Make it harder in this way: {method}\n"
    "Do not make it wordy: the rewritten problem may add only 10 to 20 words to the original.\n"
    + _forbid_markers("rewritten problem", prompts.REWRITTEN_MARKER, "rewritten instruction")
)
MATH_DOWNWARD_TEMPLATE = (
    "You are a math problem rewriter. Write an easier math word problem from the problem below, one "
    "that a younger student could solve. It must be solvable from the information it gives and have "
    "one clear final answer.\n"
    "Keep every number, formula, table and unit that you reuse from the original exactly as it is "
    "written there.\n"
    "Make it easier in this way: {method}\n"
    "Keep it short: the easier problem must not be longer than the original.\n"
    + _forbid_markers("easier problem", prompts.NEW_MARKER, "new instruction")
)
MATH_METHODS = {
    "math_constraints": "Add one more condition or constraint that the answer has to respect.",
    "math_concretize": "Replace a general quantity or situation with a more specific one: exact "
    "amounts, named items, units or rates.",
    "math_reasoning": "If it can be solved in one or two steps, rewrite it so that reaching the "
    "answer needs several steps, each using the result of the one before.",
    "math_easier": "Keep the same situation and topic, but make it need fewer steps and use smaller "
    "or rounder numbers.",
    "math_easier_new": "Write a new problem on a different everyday topic that needs a simpler "
    "version of the same kind of calculation.",
}
MATH_DOWNWARD = ("math_easier", "math_easier_new")


def _ops(methods: Mapping[str, str], frame_of, weights: Mapping[str, float]) -> Dict[str, Operation]:
    return {op: Operation(frame_of(op), m, weights.get(op, 1.0)) for op, m in methods.items()}


RECIPES: Dict[str, Recipe] = {
    "general": Recipe(
        paper="WizardLM, arXiv 2304.12244",
        frames={"depth": prompts.DEPTH_TEMPLATE, "breadth": prompts.BREADTH_TEMPLATE},
        ops={**_ops(prompts.METHODS, lambda op: "depth", {}),
             prompts.BREADTH: Operation("breadth", "")},
    ),
    "code": Recipe(
        paper="WizardCoder, arXiv 2306.08568",
        frames={"depth": CODE_DEPTH_TEMPLATE},
        ops=_ops(CODE_METHODS, lambda op: "depth", CODE_WEIGHTS),
        rules=("code_answer",),
    ),
    "math": Recipe(
        paper="WizardMath, arXiv 2308.09583",
        frames={"depth": MATH_DEPTH_TEMPLATE, "downward": MATH_DOWNWARD_TEMPLATE},
        ops=_ops(MATH_METHODS, lambda op: "downward" if op in MATH_DOWNWARD else "depth", {}),
        rules=("math_answer",),
    ),
}


def frame_of(recipe: str, op: str) -> str:
    """The frame an operation fills: the recipe's choice, else (a user's operation) `depth`."""
    known = RECIPES[recipe].ops.get(op)
    return known.frame if known else "depth"


def op_template(ev: EvolutionConfig, op: str) -> Tuple[str, str]:
    """(config key, template) of one operation: its own `templates.ops.<op>`, else its frame."""
    own = ev.templates.ops.get(op)
    if own is not None:
        return f"evolution.templates.ops.{op}", own
    frame = frame_of(ev.recipe, op)
    return f"evolution.templates.{frame}", getattr(ev.templates, frame)


def op_order(ev: EvolutionConfig) -> List[str]:
    """The order of the weighted choice: the recipe's operations, then the user's by name (so two
    YAML files that differ only in key order choose alike, as their config hashes are alike)."""
    ops = RECIPES[ev.recipe].ops
    return [op for op in ops if op in ev.op_weights] + sorted(op for op in ev.op_weights if op not in ops)


def choose_op(seed: int, row_id: str, round_no: int, weights: Mapping[str, float],
              ops: Optional[Sequence[str]] = None) -> str:
    """Weighted choice of an evolution operation from a hash of (seed, row id, round), the
    operations taken in the order `ops` (default: the order of `weights`; the chain passes
    `recipes.op_order`). A zero weight is never chosen."""
    names = [op for op in (weights if ops is None else ops) if weights.get(op, 0) > 0]
    total = sum(weights[op] for op in names)
    x = identity.unit_float("op", seed, row_id, round_no) * total
    acc = 0.0
    for op in names:
        acc += weights[op]
        if x < acc:
            return op
    return names[-1]  # float rounding at the very top of the range


def evolve_prompt(ev: EvolutionConfig, op: str, instruction: str, method: str | None = None) -> str:
    """The rewriter prompt of one operation for one instruction; `method`: another text for its
    `{method}` than the configured one (Auto Evol's candidates)."""
    text = ev.templates.methods.get(op, "") if method is None else method
    return op_template(ev, op)[1].format(instruction=instruction, method=text)


def resolve(cfg: Config) -> None:
    """Fill in what `evolution.recipe` supplies and the config leaves unset: weights (the user's
    win, the user's own operations after the recipe's, by name), frames, methods and the recipe's
    rule switches. With `evolution.auto.enabled`, operation `auto` (weight 1, its method the
    initial one until the run replaces it with the optimized one) and the recipe's at weight 0. Loading a saved, already resolved config again changes nothing."""
    ev, el = cfg.evolution, cfg.elimination
    recipe = RECIPES[ev.recipe]  # a known name: config checks it first
    auto = ev.auto.enabled  # Auto Evol: its one method, the recipe's operations off unless weighted
    user = dict(ev.op_weights)
    if auto:
        user.setdefault(prompts.AUTO_OP, 1.0)
    ev.op_weights = {op: float(user.pop(op, 0.0 if auto else o.weight)) for op, o in recipe.ops.items()}
    ev.op_weights.update((op, user[op]) for op in sorted(user))
    for frame in FRAMES:
        if getattr(ev.templates, frame) is None:
            setattr(ev.templates, frame, recipe.frames.get(frame))
    ev.templates.methods = {**{op: o.method for op, o in recipe.ops.items() if o.method},
                            **({prompts.AUTO_OP: ev.auto.templates.method} if auto else {}),
                            **ev.templates.methods}
    for rule in RULES:
        if getattr(el, rule) is None:
            setattr(el, rule, rule in recipe.rules)
