"""Auto Evol-Instruct (`evolution.auto`): its config (operation `auto` alone, hashes, errors naming
the key), its prompts (the recipe's in-depth frame around the method), the pure parts (failure
counts, the choice and its ties, the optimizer's reply cleaned, the feedback), the dev draw and
split, and the optimizer loop with a scripted engine: the lowest failure rate wins, ties go to the
incumbent and then the lower candidate, common sampling seeds per dev row, committed steps reused."""

import asyncio
import copy

import pyarrow as pa
import pytest

from evol_ray import columns as C
from evol_ray import config as cfgmod
from evol_ray.config import ConfigError, load_config, load_saved_config
from evol_ray.engine.base import Completion
from evol_ray.evolve import auto, prompts, recipes
from evol_ray.pipeline import method
from tests.fakes import proposal_for

BASE = ["input.path=x", "output.path=y", "model.source=m", "elimination.judge_threshold=0.5", "elimination.coherence.enabled=false"]
AUTO = BASE + ["evolution.auto.enabled=true"]


def pool(n, prefix="s"):
    return pa.table({C.ID: [f"{prefix}{i}" for i in range(n)], C.ROOT_ID: [f"{prefix}{i}" for i in range(n)],
                     C.INSTRUCTION: [f"Describe the habitat of animal number {i} of the forest." for i in range(n)],
                     C.RESPONSE: [None] * n}, schema=C.POOL_SCHEMA)


# --- config --------------------------------------------------------------------------------------

def test_auto_on_makes_auto_the_only_weighted_operation_of_any_recipe():
    for name, recipe in recipes.RECIPES.items():
        ev = load_config(AUTO + [f"evolution.recipe={name}"]).evolution
        assert ev.op_weights[prompts.AUTO_OP] == 1.0
        assert all(ev.op_weights[op] == 0.0 for op in recipe.ops)
        assert ev.templates.methods[prompts.AUTO_OP] == prompts.INITIAL_METHOD
        assert recipes.op_template(ev, prompts.AUTO_OP)[0] == "evolution.templates.depth"
    mixed = load_config(AUTO + ["evolution.op_weights.breadth=0.5"]).evolution.op_weights
    assert (mixed["breadth"], mixed[prompts.AUTO_OP], mixed["deepen"]) == (0.5, 1.0, 0.0)


def test_auto_off_leaves_hash_alone_and_on_changes_it_but_not_by_the_chosen_method():
    off = load_config(BASE)
    assert not any(k.startswith("evolution.auto.") for k in cfgmod.result_values(off))
    assert cfgmod.config_hash(off) == cfgmod.config_hash(load_config(BASE + ["evolution.auto.steps=5"]))
    on = load_config(AUTO)
    assert cfgmod.config_hash(on) != cfgmod.config_hash(off)
    assert cfgmod.config_hash(load_config(AUTO + ["evolution.auto.steps=5"])) != cfgmod.config_hash(on)
    rounds = method.rounds_config(on, {C.CHOSEN: {C.METHOD: "Add a table the answer must use."}})
    assert rounds.evolution.templates.methods[prompts.AUTO_OP] == "Add a table the answer must use."
    assert cfgmod.config_hash(rounds) == cfgmod.config_hash(on)
    assert on.evolution.templates.methods[prompts.AUTO_OP] == prompts.INITIAL_METHOD  # a copy was changed
    saved = load_saved_config(cfgmod.to_container(on), "config.yaml")
    assert cfgmod.config_hash(saved) == cfgmod.config_hash(on)


@pytest.mark.parametrize("override,key", [
    ("evolution.auto.dev_size=0", "evolution.auto.dev_size"),
    ("evolution.auto.steps=-1", "evolution.auto.steps"),
    ("evolution.auto.candidates=0", "evolution.auto.candidates"),
    ("evolution.auto.batch_size=0", "evolution.auto.batch_size"),
    ("evolution.auto.templates.method=' '", "evolution.auto.templates.method"),
    ("evolution.auto.templates.optimizer='Improve {method}'", "evolution.auto.templates.optimizer"),
    ("evolution.auto.templates.analysis='{method} {evolved} {colour}'", "evolution.auto.templates.analysis"),
    ("evolution.templates.methods.auto='Make it harder.'", "evolution.templates.methods.auto"),
    ("evolution.templates.ops.auto='Rewrite {instruction}'", "evolution.templates.ops.auto"),
])
def test_bad_auto_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config(AUTO + [override])


# --- prompts ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("recipe", list(recipes.RECIPES))
def test_auto_prompt_is_the_recipes_in_depth_frame_around_the_method(recipe):
    cfg = load_config(AUTO + [f"evolution.recipe={recipe}"])
    p = recipes.evolve_prompt(cfg.evolution, prompts.AUTO_OP, "Sort a list of numbers.", "Add a memory bound.")
    assert "Add a memory bound." in p and prompts.INITIAL_METHOD not in p
    assert p.rstrip().endswith(prompts.REWRITTEN_MARKER) and prompts.ORIGINAL_MARKER in p
    assert "10 to 20 words" in p and "Keep every" in p and "rewriter" in p
    default = recipes.evolve_prompt(cfg.evolution, prompts.AUTO_OP, "Sort a list of numbers.")
    assert prompts.INITIAL_METHOD in default
    braces = recipes.evolve_prompt(cfg.evolution, prompts.AUTO_OP, "x", "Use a dict like {'a': 1}.")
    assert "{'a': 1}" in braces  # a method's braces are text, never a template field


def test_analysis_and_optimizer_templates_hold_their_fields():
    a = prompts.ANALYSIS_TEMPLATE.format(method="M", instruction="I", evolved="E", outcome="O")
    assert all(f"\n{x}\n" in a or f": {x}" in a for x in "MIEO")
    o = prompts.OPTIMIZER_TEMPLATE.format(method="M", feedback="F")
    assert "\nM\n" in o and "\nF\n" in o and "improved method only" in o


# --- pure parts ------------------------------------------------------------------------------------

def test_failure_counts_rate_every_method_over_all_its_dev_rows_errors_included():
    got = auto.failure_counts([(C.KEPT, None), (C.ELIMINATED, C.R_NO_GAIN), (C.ELIMINATED, C.R_SORRY),
                               (C.ERROR_STATUS, C.R_ENGINE_ERROR), (C.KEPT, None)])
    assert (got[C.EVALUATED], got[C.FAILED], got[C.ERRORS]) == (5, 3, 1)
    assert got[C.FAILURE_RATE] == 0.6
    assert got["reason_counts"] == {C.R_ENGINE_ERROR: 1, C.R_NO_GAIN: 1, C.R_SORRY: 1}
    # a method whose rows mostly error cannot look better than one measured on every row
    erratic = auto.failure_counts([(C.ERROR_STATUS, C.R_ENGINE_ERROR)] * 7 + [(C.KEPT, None)])
    steady = auto.failure_counts([(C.ELIMINATED, C.R_NO_GAIN)] * 3 + [(C.KEPT, None)] * 5)
    assert auto.choose([steady[C.FAILURE_RATE], erratic[C.FAILURE_RATE]]) == 0
    assert auto.failure_counts([])[C.FAILURE_RATE] is None


def test_choose_takes_the_lowest_rate_and_breaks_ties_toward_the_lower_index():
    assert auto.choose([0.5, 0.25, 0.75]) == 1
    assert auto.choose([0.25, 0.5, 0.25]) == 0  # the incumbent keeps its place on a tie
    assert auto.choose([0.5, 0.25, 0.25]) == 1
    assert auto.choose([1.0, None]) == 0  # a method never tried never wins, even over 1.0


@pytest.mark.parametrize("reply,method", [
    ("Improved method: Step 1: add a constraint.", "Step 1: add a constraint."),
    ("  \"Step 1: add a constraint.\"  ", "Step 1: add a constraint."),
    ("**Improved Method**:\nStep 1: add a constraint.", "Step 1: add a constraint."),
    ("Step 1: add a constraint. Step 2: check it.", "Step 1: add a constraint. Step 2: check it."),
    ("Improved method:", ""),
    ("", ""),
])
def test_clean_method(reply, method):
    assert auto.clean_method(reply) == method


def test_feedback_keeps_failures_and_problems_with_their_outcome_and_skips_clean_kept_rows():
    rows = [{C.STATUS: C.KEPT, C.REASON: None, C.FEEDBACK: "No problems."},
            {C.STATUS: C.ELIMINATED, C.REASON: C.R_NO_GAIN, C.FEEDBACK: "It only restates the task."},
            {C.STATUS: C.KEPT, C.REASON: None, C.FEEDBACK: "It dropped the table."},
            {C.STATUS: C.ERROR_STATUS, C.REASON: C.R_ENGINE_ERROR, C.FEEDBACK: None},
            {C.STATUS: C.ELIMINATED, C.REASON: C.R_COPIED_PROMPT, C.FEEDBACK: None}]
    lines = auto.feedback_text(rows).splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("1. (rejected: a judge found it no more complex") and "restates" in lines[0]
    assert lines[1].startswith("2. (accepted") and "dropped the table" in lines[1]
    assert lines[2] == f"3. ({auto.OUTCOMES[C.R_COPIED_PROMPT]})"
    assert auto.feedback_text(rows[:1]) == "No problems were found."
    many = [{C.STATUS: C.ELIMINATED, C.REASON: C.R_SORRY, C.FEEDBACK: "x" * 1000}] * 50
    assert len(auto.feedback_text(many)) <= auto.FEEDBACK_LIMIT


def test_the_draw_skips_blank_seeds_and_does_not_depend_on_blocks():
    t = pool(40)
    t = pa.concat_tables([t, pa.table({C.ID: ["blank", "none"], C.ROOT_ID: ["blank", "none"],
                                       C.INSTRUCTION: ["   ", None], C.RESPONSE: [None, None]},
                                      schema=C.POOL_SCHEMA)])
    whole = method.smallest_keys(t, 10, seed=3)
    assert whole.num_rows == 10 and not {"blank", "none"} & set(whole[C.ID].to_pylist())
    in_blocks = method.smallest_keys(pa.concat_tables(
        [method.smallest_keys(t.slice(i, 7), 10, 3) for i in range(0, t.num_rows, 7)]), 10, 3)
    assert in_blocks[C.ID].to_pylist() == whole[C.ID].to_pylist()
    assert method.smallest_keys(t, 10, seed=4)[C.ID].to_pylist() != whole[C.ID].to_pylist()


def test_split_with_no_steps_or_no_rows():
    dev, batches = method.split(pool(5), dev_size=8, batch_size=4, steps=0)
    assert dev.num_rows == 5 and batches == []
    dev, batches = method.split(pool(0), dev_size=8, batch_size=4, steps=2)
    assert dev.num_rows == 0 and [b.num_rows for b in batches] == [0, 0]


def test_split_gives_disjoint_dev_and_batches_and_cycles_the_rest():
    dev, batches = method.split(pool(14), dev_size=8, batch_size=4, steps=3)
    ids = lambda t: t[C.ID].to_pylist()  # noqa: E731
    assert ids(dev) == [f"s{i}" for i in range(8)]
    assert [ids(b) for b in batches] == [["s8", "s9", "s10", "s11"], ["s12", "s13", "s8", "s9"],
                                         ["s10", "s11", "s12", "s13"]]
    dev, batches = method.split(pool(5), dev_size=8, batch_size=4, steps=1)
    assert dev.num_rows == 5 and set(ids(batches[0])) <= set(ids(dev))  # no rest: from the dev set


# --- the loop, with a scripted engine ------------------------------------------------------------

class MethodDouble:
    """Rewrites an instruction well only when the method says GOOD (else returns it unchanged, so
    the judge finds no gain); the optimizer's k-th candidate of a step is `proposals[k - 1]`."""

    def __init__(self, cfg, proposals):
        self.cfg, self.proposals = cfg, proposals
        self.calls = []

    async def generate(self, prompt, sampling, *, seed, choices=None):
        if "This is the current method" in prompt:
            kind, text = "optimizer", proposal_for(seed, self.cfg.seed, self.proposals)
        elif "reviewing the work of an instruction rewriter" in prompt:
            kind, text = "analysis", "It is no harder than the instruction it was given."
        elif prompts.ORIGINAL_MARKER in prompt:
            parent = prompt.split(prompts.ORIGINAL_MARKER + "\n")[1].split("\n\n" + prompts.REWRITTEN_MARKER)[0]
            kind, text = "evolve", (f"{parent} Compare two of its neighbours in a table and justify each row."
                                    if "GOOD" in prompt.split(prompts.ORIGINAL_MARKER)[0] else parent)
        else:
            kind, text = "answer", "Animals of the forest live in burrows, trees and under dense shrubs."
        self.calls.append((kind, seed, prompt))
        return Completion(text, prompt_tokens=len(prompt.split()), generated_tokens=len(text.split()))

    async def score_choices(self, prompt, choices):
        first = prompt.split("First instruction:\n")[1].split("\n\nSecond instruction:")[0]
        second = prompt.split("Second instruction:\n")[1].split("\n\nAnswer with")[0]
        equal = first.strip() == second.strip()
        return {prompts.JUDGE_EQUAL: -0.01 if equal else -6.0, prompts.JUDGE_NOT_EQUAL: -6.0 if equal else -0.01}


def through_with(gen):
    def through(fn, table, schema):
        async def rows():
            return [await fn(gen, r) for r in table.to_pylist()]
        return pa.Table.from_pylist(asyncio.run(rows()), schema=schema)
    return through


class Store:
    def __init__(self):
        self.steps = {}

    def load(self, t):
        return copy.deepcopy(self.steps.get(t))

    def save(self, t, summary, tables):
        self.steps[t] = copy.deepcopy(summary)
        self.steps[t]["_tables"] = tables
        return copy.deepcopy(summary)


def run_loop(proposals, steps=1, candidates=3, store=None, dev_n=6, gen=None):
    cfg = load_config(AUTO + [f"evolution.auto.steps={steps}", f"evolution.auto.candidates={candidates}"])
    gen = gen or MethodDouble(cfg, proposals)
    store = store or Store()
    dev, batches = method.split(pool(dev_n + 4 * steps), dev_n, 4, steps)
    out = auto.optimize(cfg, dev, batches, through_with(gen), store.load, store.save)
    return cfg, gen, store, out


def test_the_loop_picks_the_lowest_failure_rate_with_ties_to_the_lower_candidate():
    cfg, gen, store, out = run_loop(["BAD: copy it.", "GOOD: add a table.", "GOOD too: add a table."])
    assert [s[C.STEP] for s in out] == [0, 1]
    assert out[0][C.CHOSEN][C.FAILURE_RATE] == 1.0  # the initial method never says GOOD
    rates = {e[C.CANDIDATE]: e[C.FAILURE_RATE] for e in out[1]["methods"]}
    assert rates == {0: 1.0, 1: 1.0, 2: 0.0, 3: 0.0}
    chosen = out[1][C.CHOSEN]
    assert (chosen[C.CANDIDATE], chosen[C.METHOD], chosen[auto.ORIGIN]) == (2, "GOOD: add a table.", [1, 2])
    assert [e[C.CHOSEN] for e in out[1]["methods"]] == [False, False, True, False]
    assert [e[C.SOURCE] for e in out[1]["methods"]] == ["incumbent", "optimizer", "optimizer", "optimizer"]
    assert out[1]["methods"][1]["reason_counts"] == {C.R_NO_GAIN: 6}
    # the feedback the optimizer saw names the mini-batch's failures
    assert "no more complex" in out[1][C.FEEDBACK] and out[1][C.FEEDBACK].count("\n") == 3
    trials = store.steps[1]["_tables"]["trials"]
    assert trials.num_rows == 3 * 6 and len(set(trials[C.ID].to_pylist())) == 18
    assert set(trials[C.OP].to_pylist()) == {prompts.AUTO_OP}
    # common random numbers: every candidate's trial of a dev row used the same evolve seed
    evolve_seeds = {}
    for kind, seed, prompt in gen.calls:
        if kind == "evolve":
            parent = prompt.split(prompts.ORIGINAL_MARKER + "\n")[1].split("\n\n")[0]
            evolve_seeds.setdefault(parent, set()).add(seed)
    assert all(len(s) == 1 for s in evolve_seeds.values())


def test_a_tie_with_the_incumbent_keeps_the_incumbent():
    cfg, gen, store, out = run_loop(["BAD: copy it.", "Also BAD."], candidates=2)
    assert out[1][C.CHOSEN][C.CANDIDATE] == 0
    assert out[1][C.CHOSEN][C.METHOD] == prompts.INITIAL_METHOD
    assert out[1][C.CHOSEN][auto.ORIGIN] == [0, 0]


def test_an_empty_proposal_is_not_tried_and_cannot_win():
    cfg, gen, store, out = run_loop(["Improved method:", "GOOD: add a table."], candidates=2)
    empty = out[1]["methods"][1]
    assert (empty[C.METHOD], empty[C.EVALUATED], empty[C.FAILURE_RATE]) == ("", 0, None)
    assert store.steps[1]["_tables"]["trials"][C.CANDIDATE].to_pylist().count(1) == 0
    assert out[1][C.CHOSEN][C.CANDIDATE] == 2


def test_committed_steps_are_reused_and_a_missing_one_is_redone_with_those_after_it():
    proposals = ["GOOD: add a table.", "BAD."]
    cfg, gen, store, first = run_loop(proposals, steps=2, candidates=2)
    again = MethodDouble(cfg, proposals)
    _, _, _, second = run_loop(proposals, steps=2, candidates=2, store=store, gen=again)
    assert again.calls == [] and [s[C.CHOSEN] for s in second] == [s[C.CHOSEN] for s in first]
    del store.steps[1]
    redo = MethodDouble(cfg, proposals)
    _, _, _, third = run_loop(proposals, steps=2, candidates=2, store=store, gen=redo)
    assert {k for k, _, _ in redo.calls} == {"evolve", "analysis", "optimizer", "answer"}
    assert len([1 for k, _, _ in redo.calls if k == "optimizer"]) == 4  # steps 1 and 2 again
    assert [s[C.CHOSEN] for s in third] == [s[C.CHOSEN] for s in first]


def test_the_report_section_lists_every_candidate_and_the_chosen_method():
    from evol_ray.analysis import plots, sections
    from evol_ray.analysis.report_html import table as _table

    cfg, gen, store, out = run_loop(["BAD: copy it.", "GOOD: add a table."], candidates=2)
    fig = {**method.summary(out), "recipe": "general", "dev_size": 6, "batch_size": 4, "steps": 1,
           "candidates": 2, "wall_seconds": 1.0}
    page = sections.method_html(fig, _table, "<img>", {"round": 1, "op_counts": {"auto": 10},
                                                       "op_kept_counts": {"auto": 3}})
    assert page.count("<tr>") == 1 + 1 + 3  # header, step 0, step 1's incumbent and two candidates
    assert "GOOD: add a table." in page and "no_information_gain 6" in page
    assert "Initial method 100%, chosen 0% (step 1, candidate 2)" in page
    assert "in round 1 it failed 7 of 10 rows (70%)" in page
    assert plots.methods({"method": fig}).startswith(b"\x89PNG")
    assert "Not used" in sections.method_html(None, _table, "")
    from evol_ray.cli import format_summary

    text = format_summary({"output": "runs/x", "rounds": [], "final": {"rows": 0}, "method": fig})
    assert ("auto evol: 1 step(s) on 6 dev seeds; dev-set failure rate 100% initial -> 0% chosen (step 1, "
            "candidate 2; optimistic: the set chose it) in runs/x/method") in text


def test_a_repeated_or_incumbent_text_is_measured_once():
    cfg, gen, store, out = run_loop(["GOOD: add a table.", " GOOD: add a table. ", prompts.INITIAL_METHOD],
                                    candidates=3)
    entries = {e[C.CANDIDATE]: e for e in out[1]["methods"]}
    trials = store.steps[1]["_tables"]["trials"]
    assert sorted(set(trials[C.CANDIDATE].to_pylist())) == [1]  # only the first GOOD was tried
    assert entries[2][auto.MEASURED_AS] == 1 and entries[2][C.FAILURE_RATE] == entries[1][C.FAILURE_RATE] == 0.0
    assert entries[3][auto.MEASURED_AS] == 0 and entries[3][C.FAILURE_RATE] == 1.0  # the incumbent's
    assert out[1][C.CHOSEN][C.CANDIDATE] == 1


def test_trials_pass_the_rounds_quality_rules_and_the_analysis_hears_of_them():
    cfg = load_config(AUTO + ["evolution.auto.steps=1", "evolution.auto.candidates=1",
                              "evolution.auto.templates.method='GOOD: start here.'"])
    gen = MethodDouble(cfg, ["GOOD: add a table."])
    refusing = gen.generate

    async def generate(prompt, sampling, *, seed, choices=None):
        c = await refusing(prompt, sampling, seed=seed, choices=choices)
        if gen.calls[-1][0] == "answer":
            c.text = "As an AI language model, I will not describe the habitat of that animal for you."
        return c
    gen.generate = generate
    store = Store()
    dev, batches = method.split(pool(10), 6, 4, 1)
    out = auto.optimize(cfg, dev, batches, through_with(gen), store.load, store.save)
    good = out[1]["methods"][1]
    assert good[C.FAILURE_RATE] == 1.0 and good["reason_counts"] == {C.R_REFUSAL: 6}
    analysed = [p for k, _, p in gen.calls if k == "analysis"]
    assert len(analysed) == 4 and all(auto.OUTCOMES[C.R_REFUSAL] in p for p in analysed)
    off = load_config(AUTO + ["quality.in_rounds=false"])
    row = {**pool(1).to_pylist()[0], C.STEP: 1, C.CANDIDATE: 1, C.METHOD: "GOOD: add a table."}
    assert asyncio.run(auto.trial_row(gen, row, off))[C.STATUS] == C.KEPT


def test_a_missing_rate_reads_as_a_dash_wherever_a_rate_is_shown():
    """Rates documented as possibly null (a method never tried) never stop a summary or the report."""
    from evol_ray.analysis import sections
    from evol_ray.analysis.report_html import table as _table
    from evol_ray.cli import format_summary
    from evol_ray.figures import shown

    assert (shown(None), shown(0.25, ".0%"), shown(0.123)) == ("-", "25%", "0.12")
    cfg, gen, store, out = run_loop(["Improved method:", "BAD."], candidates=2)
    fig = {**method.summary(out), "recipe": "general", "dev_size": 6, "batch_size": 4, "steps": 1,
           "candidates": 2, "wall_seconds": 1.0}
    fig["initial_failure_rate"] = None  # as a manifest with no rated method would read
    fig[C.CHOSEN] = {**fig[C.CHOSEN], C.FAILURE_RATE: None}
    page = sections.method_html(fig, _table, "")
    assert "Initial method -, chosen -" in page and "<td>optimizer</td><td>step 1 #1</td><td>-</td>" in page
    text = format_summary({"output": "runs/x", "rounds": [], "final": {"rows": 0}, "method": fig})
    assert "dev-set failure rate - initial -> - chosen" in text
