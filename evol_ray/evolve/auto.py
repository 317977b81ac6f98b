"""Auto Evol-Instruct (Zeng et al., arXiv 2406.00770): one evolving method that an optimizer LLM
improves from the failures it sees, in place of the recipe's hand-written operations.

The method is the text of `{method}` in the recipe's in-depth frame (`evolution.templates.depth`),
run as the operation `auto` through the round's own chain (`chain.evolve_row`). The frame keeps
what the elimination rules rely on (the rewriter role, non-text parts kept, the growth limit, the
markers a rewrite must not echo), so a candidate can change how instructions are made harder but
cannot drop the instruction or the markers. One optimization step t, from the method e(t-1):

    trajectories: `batch_size` seeds (a mini-batch, never the dev set) evolved with e(t-1), each
                  outcome (kept, or the rule that eliminated it) read by the analysis LLM, which
                  names what went wrong                                   (`trajectory_row`)
    optimization: the optimizer LLM writes `candidates` improved methods from e(t-1) and the
                  feedback, each with its own sampling seed                (`propose_row`)
    evaluation:   every candidate evolves the dev set through the chain and the round's per-row
                  quality rules (`trial_row`); its failure rate is the share of dev rows not kept:
                  eliminated by the run's rules (the judge LLM's verdict among them), or an engine
                  error                                                  (`failure_counts`)
    e(t):         the lowest failure rate among e(t-1) and the candidates; a tie goes to e(t-1),
                  then to the lower candidate number                      (`choose`)

Step 0 evaluates the initial method (`evolution.auto.templates.method`) on the dev set. Every
candidate's trial of a dev row uses the same sampling seeds (common random numbers), which takes
some of the noise out of the difference between two rates (not all: different prompts sample
differently); a text already measured (the incumbent, or a repeated proposal) is not tried again.
In-round dedup is not applied to trials (it compares a round against the others). The chosen
rate is the lowest of several noisy estimates on the set that chose it: optimistic; round 1's
survival of op `auto` is the honest figure (the report shows both). `optimize` is the loop, with the engine pass (`through`) and the step store (`load`, `save`)
given by `pipeline/method.py`: it is pure logic, tested with a scripted engine. The default texts
(the initial method, the analysis and optimizer prompts) are in `prompts.py`, each a config key
under `evolution.auto.templates`.

Engine requests: step 0 up to 4 x dev_size; each later step up to 5 x batch_size (the chain's 4
and one analysis) + candidates + 4 x candidates x dev_size.
"""

from __future__ import annotations

from collections import Counter
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from evol_ray import columns as C
from evol_ray import identity
from evol_ray.config import Config
from evol_ray.checks import quality
from evol_ray.engine.base import TextGenerator, engine_is_dead
from evol_ray.evolve.chain import evolve_row
from evol_ray.evolve.prompts import AUTO_OP

# What the analysis LLM is told about a trajectory's outcome, by reason.
OUTCOMES = {
    C.R_NO_GAIN: "rejected: a judge found it no more complex than the instruction it was given",
    C.R_SORRY: "rejected: the answer to it was a short apology",
    C.R_STOPWORDS: "rejected: the answer to it held only stop words and punctuation",
    C.R_COPIED_PROMPT: "rejected: it copies words of the rewriting prompt",
    C.R_EMPTY_EVOLUTION: "rejected: the rewriter wrote nothing",
    C.R_ANSWERS_PARENT: "rejected: it answers the instruction instead of asking something",
    C.R_BARE_TITLE: "rejected: it is a bare title, not a request",
    C.R_META_TALK: "rejected: it talks about the rewriting instead of being an instruction",
    C.R_NO_CODE: "rejected: the task asks for code and the answer to it has none",
    C.R_NO_NUMBER: "rejected: the answer to the word problem holds no number",
    C.R_PROMPT_TOO_LONG: "rejected: the rewriting prompt was too long for the model",
    C.R_INSTRUCTION_LENGTH: "rejected: it is too short or too long",
    C.R_ANSWER_LENGTH: "rejected: the answer to it is too short or too long",
    C.R_REFUSAL: "rejected: the answer to it is a refusal",
    C.R_REPEATS_INSTRUCTION: "rejected: the answer to it mostly restates it",
    C.R_UNBALANCED_FENCE: "rejected: the answer to it leaves a code block open",
    C.R_NON_PRINTABLE: "rejected: it or its answer holds control characters",
}
NO_PROBLEMS = "no problems"
ORIGIN = "origin"  # summary key: [step, candidate] where a method was first proposed
MEASURED_AS = "measured_as"  # summary key: the candidate whose trials measured a repeated text
TEXT_LIMIT = 1500  # characters of an instruction or rewrite shown to the analysis LLM
NOTE_LIMIT = 300  # characters of one trajectory's feedback passed to the optimizer
FEEDBACK_LIMIT = 3000  # characters of feedback in all


def outcome_of(row: Dict[str, Any]) -> str:
    """A trajectory's outcome in words, from its `status` and `reason`."""
    if row[C.STATUS] == C.KEPT:
        return "accepted: it passed every check and was answered"
    return OUTCOMES.get(row[C.REASON], f"rejected ({row[C.REASON]})")


def clean_method(text: Optional[str]) -> str:
    """An optimizer's reply -> the method: trimmed, without a leading label such as
    "Improved method:" or surrounding quotes; "" when nothing is left."""
    t = (text or "").strip()
    head, sep, rest = t.partition(":")
    if sep and len(head) <= 30 and "method" in head.lower():
        t = rest.strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "\"'`":
        t = t[1:-1].strip()
    return t


def feedback_text(trajectories: Sequence[Dict[str, Any]]) -> str:
    """The optimizer's feedback: one numbered line per trajectory that failed or that the
    analysis found a problem in, with its outcome; "No problems were found." when none."""
    lines = []
    for row in trajectories:
        note = " ".join((row.get(C.FEEDBACK) or "").split())
        if row[C.STATUS] == C.ERROR_STATUS or (row[C.STATUS] == C.KEPT and (
                not note or note.lower().rstrip(".") == NO_PROBLEMS)):
            continue
        line = f"{len(lines) + 1}. ({outcome_of(row)}) {note[:NOTE_LIMIT]}".rstrip()
        if sum(len(x) + 1 for x in lines) + len(line) > FEEDBACK_LIMIT:
            break
        lines.append(line)
    return "\n".join(lines) or "No problems were found."


def failure_counts(outcomes: Sequence[tuple]) -> Dict[str, Any]:
    """(status, reason) of one candidate's trials -> `evaluated` (dev rows tried), `failed` (not
    kept: eliminated by a rule, or an engine error, which a method can cause too: a prompt too
    long, an answer that times out), `errors` (of the failed, engine errors), the failure rate
    failed / evaluated (None when nothing was tried) and the count of each reason. Every method
    is rated over the same rows: the whole dev set."""
    statuses = [s for s, _ in outcomes]
    failed = len(statuses) - statuses.count(C.KEPT)
    return {C.EVALUATED: len(statuses), C.FAILED: failed, C.ERRORS: statuses.count(C.ERROR_STATUS),
            C.FAILURE_RATE: failed / len(statuses) if statuses else None,
            "reason_counts": dict(sorted(Counter(r for _, r in outcomes if r).items()))}


def choose(rates: Sequence[Optional[float]]) -> int:
    """The index of the lowest failure rate; a tie goes to the lowest index (the incumbent is 0);
    a method never tried (None) never wins."""
    return min(range(len(rates)), key=lambda i: (2.0 if rates[i] is None else rates[i], i))


# --- row functions, run on the engines (`RowStage`) -------------------------------------------

async def trial_row(gen: TextGenerator, row: Dict[str, Any], cfg: Config) -> Dict[str, Any]:
    """A dev or mini-batch row (`id`, `root_id`, `instruction`, `response`, `step`, `candidate`,
    `method`) -> its attempt with `method` as operation `auto` (`columns.TRIAL_SCHEMA`)."""
    out = await evolve_row(gen, row, 0, cfg, op=AUTO_OP, method=row[C.METHOD])
    out.update({C.ID: identity.trial_id(row[C.ID], row[C.STEP], row[C.CANDIDATE]),
                C.STEP: row[C.STEP], C.CANDIDATE: row[C.CANDIDATE]})
    if cfg.quality.in_rounds and out[C.STATUS] == C.KEPT:  # the round's per-row CPU checks too
        t = quality.check(pa.Table.from_pylist([out], schema=C.TRIAL_SCHEMA), cfg.quality)
        out[C.STATUS], out[C.REASON] = t[C.STATUS][0].as_py(), t[C.REASON][0].as_py()
    return out


async def trajectory_row(gen: TextGenerator, row: Dict[str, Any], cfg: Config) -> Dict[str, Any]:
    """A mini-batch row -> its trial plus the analysis LLM's `feedback` on it
    (`columns.TRAJECTORY_SCHEMA`); an engine error leaves `feedback` null."""
    out = await trial_row(gen, row, cfg)
    out[C.FEEDBACK] = None
    if out[C.STATUS] == C.ERROR_STATUS:
        return out
    prompt = cfg.evolution.auto.templates.analysis.format(
        method=row[C.METHOD], instruction=row[C.INSTRUCTION][:TEXT_LIMIT],
        evolved=(out[C.INSTRUCTION] or "")[:TEXT_LIMIT], outcome=outcome_of(out))
    try:
        seed = identity.request_seed(cfg.seed, row[C.ID], 0, f"auto-analysis-{row[C.STEP]}")
        c = await gen.generate(prompt, cfg.evolution.evolve_sampling, seed=seed)
    except Exception as e:  # one analysis lost: the others still inform the optimizer
        if engine_is_dead(e):
            raise
        out[C.ERROR] = f"analysis: {type(e).__name__}: {e}"[:2000]
        return out
    out[C.PROMPT_TOKENS] += c.prompt_tokens
    out[C.GENERATED_TOKENS] += c.generated_tokens
    out[C.FEEDBACK] = c.text.strip()
    return out


PROPOSAL_SCHEMA = pa.schema([pa.field(C.STEP, pa.int32(), nullable=False),
                             pa.field(C.CANDIDATE, pa.int32(), nullable=False),
                             pa.field(C.METHOD, pa.string()), pa.field(C.ERROR, pa.string()),
                             pa.field(C.PROMPT_TOKENS, pa.int64()), pa.field(C.GENERATED_TOKENS, pa.int64())])


async def propose_row(gen: TextGenerator, row: Dict[str, Any], cfg: Config) -> Dict[str, Any]:
    """(`step`, `candidate`, `method`: the incumbent, `feedback`) -> the optimizer's improved
    `method` (cleaned; "" when it wrote none), or an `error` (`PROPOSAL_SCHEMA`)."""
    out = {C.STEP: row[C.STEP], C.CANDIDATE: row[C.CANDIDATE], C.METHOD: "", C.ERROR: None,
           C.PROMPT_TOKENS: 0, C.GENERATED_TOKENS: 0}
    prompt = cfg.evolution.auto.templates.optimizer.format(method=row[C.METHOD], feedback=row[C.FEEDBACK])
    seed = identity.request_seed(cfg.seed, f"auto-step-{row[C.STEP]}", 0, f"candidate-{row[C.CANDIDATE]}")
    try:
        c = await gen.generate(prompt, cfg.evolution.evolve_sampling, seed=seed)
    except Exception as e:
        if engine_is_dead(e):
            raise
        out[C.ERROR] = f"{type(e).__name__}: {e}"[:2000]
        return out
    out.update({C.METHOD: clean_method(c.text), C.PROMPT_TOKENS: c.prompt_tokens,
                C.GENERATED_TOKENS: c.generated_tokens})
    return out


# --- the loop -----------------------------------------------------------------------------------

# through(fn, table, schema) -> table: every row of `table` through `fn(generator, row)` on the
# engines. load(step) -> the step's committed summary or None; save(step, summary, tables) -> it.
Through = Callable[[Callable, pa.Table, pa.Schema], pa.Table]


def _with(rows: pa.Table, step: int, candidate: int, method: str) -> pa.Table:
    n = rows.num_rows
    return (rows.select(C.POOL_SCHEMA.names)
            .append_column(pa.field(C.STEP, pa.int32()), pa.array([step] * n, pa.int32()))
            .append_column(pa.field(C.CANDIDATE, pa.int32()), pa.array([candidate] * n, pa.int32()))
            .append_column(C.METHOD, pa.array([method] * n, pa.string())))


def _spent(*tables: pa.Table) -> Dict[str, int]:
    return {"prompt_tokens": sum(int(pc.sum(t[C.PROMPT_TOKENS]).as_py() or 0) for t in tables),
            "generated_tokens": sum(int(pc.sum(t[C.GENERATED_TOKENS]).as_py() or 0) for t in tables)}


def evaluate(cfg: Config, step: int, methods: Dict[int, str], dev: pa.Table, through: Through,
             known: Optional[Dict[str, tuple]] = None) -> tuple[pa.Table, Dict[int, Dict[str, Any]]]:
    """Every method (candidate -> text) on every dev row, in one engine pass -> (the trials,
    candidate -> `failure_counts` plus `measured_as`: the candidate whose trials measured that
    text). An empty text is not tried; a text tried once is not tried again, nor one in `known`
    (text -> (candidate, counts): the incumbent's, measured in an earlier step)."""
    known = dict(known or {})
    first: Dict[str, int] = {}
    for k, m in sorted(methods.items()):
        if m.strip() and m.strip() not in known:
            first.setdefault(m.strip(), k)
    table = pa.concat_tables([_with(dev, step, k, m) for m, k in first.items()]) if first else None
    trials = (through(partial(trial_row, cfg=cfg), table, C.TRIAL_SCHEMA) if table is not None
              else C.TRIAL_SCHEMA.empty_table())
    by: Dict[int, list] = {k: [] for k in first.values()}
    for k, s, r in zip(*(trials[c].to_pylist() for c in (C.CANDIDATE, C.STATUS, C.REASON))):
        by[k].append((s, r))
    known.update((m, (k, failure_counts(by[k]))) for m, k in first.items())
    counts = {}
    for k, m in methods.items():
        by_k, got = known.get(m.strip(), (None, failure_counts([])))
        counts[k] = {**got, MEASURED_AS: by_k}
    return trials, counts


def _entry(step: int, k: int, source: str, method: str, counts: Dict[str, Any],
           origin: Optional[List[int]] = None) -> Dict[str, Any]:
    """One candidate of a step; `origin`: the [step, candidate] that first proposed its method."""
    return {C.STEP: step, C.CANDIDATE: k, C.SOURCE: source, C.METHOD: method, **counts, C.CHOSEN: False,
            ORIGIN: origin or [step, k]}


def step_zero(cfg: Config, dev: pa.Table, through: Through) -> tuple[dict, Dict[str, pa.Table]]:
    """The initial method on the dev set -> (summary, tables to keep)."""
    method = cfg.evolution.auto.templates.method
    trials, counts = evaluate(cfg, 0, {0: method}, dev, through)
    entry = {**_entry(0, 0, "initial", method, {**counts[0], MEASURED_AS: None}), C.CHOSEN: True}
    return {C.STEP: 0, "methods": [entry], C.CHOSEN: entry, **_spent(trials)}, {"trials": trials}


def step(cfg: Config, t: int, incumbent: dict, batch: pa.Table, dev: pa.Table,
         through: Through) -> tuple[dict, Dict[str, pa.Table]]:
    """Optimization step `t` from `incumbent` (the previous step's chosen entry) -> (summary,
    tables to keep): trajectories and their feedback, the candidates, their trials, the winner."""
    a = cfg.evolution.auto
    traj = through(partial(trajectory_row, cfg=cfg), _with(batch, t, 0, incumbent[C.METHOD]), C.TRAJECTORY_SCHEMA)
    feedback = feedback_text(traj.to_pylist())
    asks = pa.table({C.STEP: pa.array([t] * a.candidates, pa.int32()),
                     C.CANDIDATE: pa.array(range(1, a.candidates + 1), pa.int32()),
                     C.METHOD: [incumbent[C.METHOD]] * a.candidates, C.FEEDBACK: [feedback] * a.candidates})
    proposals = through(partial(propose_row, cfg=cfg), asks, PROPOSAL_SCHEMA).sort_by(C.CANDIDATE)
    methods = dict(zip(proposals[C.CANDIDATE].to_pylist(), proposals[C.METHOD].to_pylist()))
    kept = {k: incumbent[k] for k in (C.EVALUATED, C.FAILED, C.ERRORS, C.FAILURE_RATE, "reason_counts")}
    trials, counts = evaluate(cfg, t, methods, dev, through,
                              known={incumbent[C.METHOD].strip(): (0, kept)})
    entries = [_entry(t, 0, "incumbent", incumbent[C.METHOD], {**kept, MEASURED_AS: None}, incumbent[ORIGIN])]
    entries += [_entry(t, k, "optimizer", methods[k], counts[k]) for k in sorted(methods)]
    best = choose([e[C.FAILURE_RATE] for e in entries])
    entries[best][C.CHOSEN] = True
    summary = {C.STEP: t, C.FEEDBACK: feedback, "methods": entries, C.CHOSEN: entries[best],
               "proposal_errors": [e for e in proposals[C.ERROR].to_pylist() if e],
               **_spent(traj, proposals, trials)}
    return summary, {"trajectories": traj, "proposals": proposals, "trials": trials}


def optimize(cfg: Config, dev: pa.Table, batches: Sequence[pa.Table], through: Through,
             load: Callable[[int], Optional[dict]],
             save: Callable[[int, dict, Dict[str, pa.Table]], dict]) -> List[dict]:
    """Step 0, then `evolution.auto.steps` steps (mini-batch `batches[t - 1]`), each reused when
    `load` has it committed (until one is redone: the steps after it are redone too) -> the
    steps' summaries; the last one's `chosen` is the method."""
    summaries: List[dict] = []
    redone = False
    for t in range(cfg.evolution.auto.steps + 1):
        got = None if redone else load(t)
        if got is None:
            made = step_zero(cfg, dev, through) if t == 0 else step(
                cfg, t, summaries[-1][C.CHOSEN], batches[t - 1], dev, through)
            got, redone = save(t, *made), True
        summaries.append(got)
    return summaries
