"""Report, diversity and scoring logic on a hand-made run output: no Ray, no engine (a scripted
double rates difficulty). The real run, real engine and Chromium are in tests/e2e/test_report.py."""

import asyncio
import functools
import base64
import io
import json
import re
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from evol_ray import columns as C
from evol_ray import config as cfgmod
from evol_ray.analysis import diversity, report, report_html, runread, score
from evol_ray.cli import main
from evol_ray.config import ConfigError, load_config
from evol_ray.engine.client_stage import RowStage

SEEDS = [f"Seed question number {i} about {w}." for i, w in enumerate(["rivers", "tax law", "proteins",
                                                                         "chess", "jazz", "volcanoes"])]


def _row(r, i, parent_id, parent_text, status, reason, op, text):
    return {C.ID: f"r{r}-{i}", C.PARENT_ID: parent_id, C.ROOT_ID: f"seed-{i}", C.ROUND: r, C.OP: op,
            C.INSTRUCTION: text, C.RESPONSE: None if text is None else f"An answer of {r + 3} words here.",
            C.PARENT_INSTRUCTION: parent_text, C.PARENT_RESPONSE: "seed answer",
            C.STATUS: status, C.REASON: reason, C.ERROR: "boom" if status == C.ERROR_STATUS else None,
            C.PROMPT_TOKENS: 10, C.GENERATED_TOKENS: 5, C.ENGINE_SECONDS: 0.5}


# Round 1 keeps rows 0-3, drops row 4 as a duplicate (a status and reason this report never heard
# of: a later stage's), and row 5 fails in the engine. Round 2 evolves from the round-1 pool.
OUTCOMES = {
    1: [(C.KEPT, None, "deepen"), (C.KEPT, None, "breadth"), (C.KEPT, None, "deepen"),
        (C.KEPT, None, "concretize"), ("duplicate", "near_duplicate", "deepen"),
        (C.ERROR_STATUS, C.R_ENGINE_ERROR, "breadth")],
    2: [(C.KEPT, None, "add_reasoning"), (C.ELIMINATED, C.R_NO_GAIN, "deepen"), (C.KEPT, None, "deepen"),
        (C.ELIMINATED, C.R_SORRY, "breadth"), (C.KEPT, None, "concretize"), (C.KEPT, None, "deepen")],
}


def _manifest(r, rows, files):
    kept = [x for x in rows if x[C.STATUS] == C.KEPT]
    return {"round": r, "complete": True, "config_hash": "abc", "rows_in": len(rows), "rows_kept": len(kept),
            "status_counts": dict(Counter(x[C.STATUS] for x in rows)),
            "reason_counts": dict(Counter(x[C.REASON] for x in rows if x[C.REASON])),
            "op_counts": dict(Counter(x[C.OP] for x in rows if x[C.OP])),
            "op_kept_counts": dict(Counter(x[C.OP] for x in kept if x[C.OP])),
            "prompt_tokens": 10 * len(rows), "generated_tokens": 5 * len(rows), "row_engine_seconds": 3.0,
            "wall_seconds": 12.5, "engine": {"startup_s": 4.0, "busy_share": 0.5}, "files": files}


def make_run(out, rounds=2, extra=()):
    """A finished 2-round run as run.py lays it out; round 1 split into two files."""
    cfg = load_config(["input.path=seeds.jsonl", f"output.path={out}", "model.source=m",
                       f"evolution.rounds={rounds}", "report.sample_size=4", "report.min_sample_size=4",
                       "report.lineages=2",
                       "storage.options.secret=hunter2", *extra])
    out.mkdir(parents=True)
    (out / "config.yaml").write_text(cfgmod.to_yaml(cfg))
    pool = [(f"seed-{i}", t) for i, t in enumerate(SEEDS)]
    for r in (1, 2):
        rows = []
        for i, ((pid, ptext), (status, reason, op)) in enumerate(zip(pool, OUTCOMES[r])):
            text = None if status == C.ERROR_STATUS else f"{ptext} Also {op} it in round {r}, case {i}."
            rows.append(_row(r, i, pid, ptext, status, reason, op, text))
        (out / f"round_{r}").mkdir()
        files = ["a.parquet", "b.parquet"] if r == 1 else ["a.parquet"]
        parts = [rows[:3], rows[3:]] if r == 1 else [rows]
        for f, part in zip(files, parts):
            pq.write_table(pa.Table.from_pylist(part, schema=C.ROUND_SCHEMA), out / f"round_{r}" / f)
        (out / f"round_{r}" / "manifest.json").write_text(json.dumps(_manifest(r, rows, files)))
        pool = [(x[C.ID], x[C.INSTRUCTION]) if x[C.STATUS] == C.KEPT else (x[C.PARENT_ID], x[C.PARENT_INSTRUCTION])
                for x in rows]
    return cfg


@pytest.fixture
def run_dir(tmp_path):
    out = tmp_path / "out"
    return out, make_run(out)


def test_distinct_n_counts_unique_ngrams_over_all():
    assert diversity.distinct_n(["a b a b"], 1) == 0.5
    assert diversity.distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert diversity.distinct_n(["", None], 1) == 0.0
    assert diversity.distinct_n(["The cat", "the CAT"], 1) == 0.5  # lower-cased words


def test_near_duplicates_found_and_distinct_texts_not():
    base = "write a short poem about the sea at night with three stanzas and a rhyme"
    texts = [base, base + " please", "explain how a compiler parses arithmetic expressions step by step",
             "list five countries in south america and their capitals"]
    assert diversity.near_duplicate_flags(texts, 0.7) == [True, True, False, False]
    d = diversity.diversity(texts, 0.7)
    assert d["near_duplicate_share"] == 0.5 and d["rows"] == 4


def test_figures_match_manifests_and_files(run_dir):
    out, cfg = run_dir
    loc, saved = runread.open_run(str(out))
    fig = report.collect(loc, saved)
    assert fig["rounds"] == [1, 2] and fig["rounds_missing"] == []
    assert "duplicate" in fig["statuses"] and "near_duplicate" in fig["reasons"]  # read, not hard-coded
    r1, r2 = fig["per_round"]
    assert (r1["rows_in"], r1["kept"], r1["status_counts"]["duplicate"]) == (6, 4, 1)
    assert r1["reason_counts"] == {"near_duplicate": 1, C.R_ENGINE_ERROR: 1}
    assert r1["op_survival"] == {"deepen": 2 / 3, "breadth": 0.5, "concretize": 1.0}
    assert r2["kept"] == 4 and r1["mismatches"] == [] == r2["mismatches"]
    assert fig["lengths"]["instruction"]["0"]["rows"] == 6  # seeds, read from round 1's parents
    assert fig["lengths"]["instruction"]["1"]["rows"] == 4 and fig["lengths"]["response"]["2"]["rows"] == 4
    assert fig["lengths"]["response"]["2"]["median"] == 6  # "An answer of 5 words here." = 6 words
    assert fig["diversity"]["sample_size"] == 4
    assert set(fig["diversity"]["by_round"]) == {"0", "1", "2"}
    assert fig["difficulty"] is None


def test_a_manifest_that_disagrees_with_its_files_is_flagged(run_dir):
    out, cfg = run_dir
    m = json.loads((out / "round_2" / "manifest.json").read_text())
    m["status_counts"][C.KEPT] += 1
    (out / "round_2" / "manifest.json").write_text(json.dumps(m))
    fig = report.collect(*runread.open_run(str(out)))
    assert fig["per_round"][0]["mismatches"] == []
    assert any(p.startswith("status_counts: manifest") for p in fig["per_round"][1]["mismatches"])


def test_lineage_follows_each_root_from_seed_to_last_round(run_dir):
    out, cfg = run_dir
    fig = report.collect(*runread.open_run(str(out)))
    assert len(fig["lineage"]) == 2
    for chain in fig["lineage"]:
        i = int(chain["root_id"].split("-")[1])
        steps = chain["steps"]
        assert [s["round"] for s in steps] == [0, 1, 2]
        assert steps[0]["instruction"] == SEEDS[i] and steps[0]["status"] == "seed"
        assert (steps[1]["status"], steps[1]["op"]) == OUTCOMES[1][i][0:3:2]
        assert (steps[2]["status"], steps[2]["reason"]) == OUTCOMES[2][i][:2]


def test_html_is_self_contained_and_every_plot_decodes(run_dir):
    out, cfg = run_dir
    (out / "round_1" / "a.parquet").unlink()  # never read twice: rewrite with hostile text
    rows = [_row(1, 0, "seed-0", SEEDS[0], C.KEPT, None, "deepen", "<script>alert(1)</script> tell")]
    rows += [_row(1, i, f"seed-{i}", SEEDS[i], *OUTCOMES[1][i], f"x {i}") for i in (1, 2)]
    pq.write_table(pa.Table.from_pylist(rows, schema=C.ROUND_SCHEMA), out / "round_1" / "a.parquet")
    text = report.report(str(out), ["report.lineages=6"])  # every root, the hostile one too
    page = (out / "report" / "report.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert not re.search(r"(src|href)=\"(?!data:)", page), "nothing loaded from outside the file"
    srcs = re.findall(r'<img id="plot-(\w+)"[^>]*src="data:image/png;base64,([^"]+)"', page)
    assert [n for n, _ in srcs] == ["survival", "operations", "lengths", "diversity"]
    for _, b64 in srcs:
        img = Image.open(io.BytesIO(base64.b64decode(b64)))
        img.load()
        assert img.width > 200 and img.height > 200
        assert len(img.convert("RGB").getcolors(maxcolors=1 << 20)) > 10
    figures = json.loads((out / "report" / "figures.json").read_text())
    assert figures["plots"] == sorted(n for n, _ in srcs) and "_lengths" not in figures
    assert "round 1: in 6, kept 4 (67%)" in text and "near_duplicate 1" in text
    assert "difficulty: not scored" in text


def test_missing_round_is_reported_not_hidden(tmp_path):
    out = tmp_path / "out"
    make_run(out, rounds=3)
    fig = report.collect(*runread.open_run(str(out)))
    assert fig["rounds"] == [1, 2] and fig["rounds_missing"] == [3]


def test_rounds_below_the_minimum_are_not_measured_and_do_not_shrink_the_others(tmp_path):
    # 6 seeds, 4 kept rows per round: with a minimum of 5 only the seeds are measured, on all 6
    # rows (not on 4, which the smallest round would force without the minimum).
    out = tmp_path / "out"
    make_run(out, extra=["report.sample_size=6", "report.min_sample_size=5"])
    loc, saved = runread.open_run(str(out))
    fig = report.collect(loc, saved)
    div = fig["diversity"]
    assert div["sample_size"] == 6 and div["min_sample_size"] == 5
    assert div["by_round"]["0"]["rows"] == 6
    assert div["by_round"]["1"] is None and div["by_round"]["2"] is None
    page = report_html.render_html(fig, report.plots.render_all(fig, fig["_lengths"]))
    assert "(fewer than 5 kept rows)" in page and "6 rows per round" in page


def test_no_round_big_enough_measures_nothing(tmp_path):
    out = tmp_path / "out"
    make_run(out, extra=["report.sample_size=20", "report.min_sample_size=20"])
    loc, saved = runread.open_run(str(out))
    fig = report.collect(loc, saved)
    assert fig["diversity"]["sample_size"] is None
    assert all(v is None for v in fig["diversity"]["by_round"].values())
    page = report_html.render_html(fig, report.plots.render_all(fig, fig["_lengths"]))
    assert "no round has 20 kept rows to measure" in page


def test_open_run_drops_masked_secrets_and_applies_overrides(run_dir):
    out, cfg = run_dir
    assert "***" in (out / "config.yaml").read_text()
    loc, saved = runread.open_run(str(out), ["report.sample_size=9", "storage.region=eu-west-1"])
    assert "secret" not in saved.storage.options
    assert saved.report.sample_size == 9 and saved.storage.region == "eu-west-1"
    assert saved.evolution.rounds == 2 and saved.model.source == "m"


def test_open_run_errors_name_the_path_or_key(tmp_path, run_dir, capsys):
    with pytest.raises(runread.RunReadError, match=rf"{tmp_path}/nowhere: no config.yaml"):
        runread.open_run(str(tmp_path / "nowhere"))
    out, _ = run_dir
    with pytest.raises(ConfigError, match="'report.sample_size'"):
        runread.open_run(str(out), ["report.sample_size=1"])
    with pytest.raises(ConfigError, match="'storage.retries'"):
        runread.open_run(str(out), ["storage.retries=many"])
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "no config.yaml" in capsys.readouterr().err


@pytest.mark.parametrize("override, key", [
    ("score.sample_size=0", "score.sample_size"),
    ("report.min_sample_size=1", "report.min_sample_size"),
    ("report.min_sample_size=500", "report.min_sample_size"),
    ("score.template=no placeholder", "score.template"),
    ("score.model=' '", "score.model"),
    ("report.near_duplicate_threshold=1.5", "report.near_duplicate_threshold"),
    ("report.lineages=-1", "report.lineages"),
])
def test_bad_score_and_report_keys_are_named(override, key):
    with pytest.raises(ConfigError, match=rf"'{re.escape(key)}'"):
        load_config(["input.path=s", "output.path=o", "model.source=m", override])


class Rater:
    """A rater double behind the engine seam: most of its mass on 1 + (words of the question) % 10."""

    def __init__(self):
        self.choices = []

    async def score_choices(self, prompt, choices):
        self.choices.append(tuple(choices))
        if "fail" in prompt:
            raise RuntimeError("engine hiccup")
        q = prompt.split("## Question:\n", 1)[1].split("\n\n## Score:")[0]
        top = str(1 + len(q.split()) % 10)
        return {c: (0.0 if c == top else -9.0) for c in choices}


class PrefixTrap:
    """The trap of a forced choice: the model's first token is "1" with nearly all the mass, and
    after "1" it ends the answer. A grammar over "1".."10" would let it continue into "10";
    scored as whole answers, "1" then the end has the mass, "10" then the end almost none."""

    async def score_choices(self, prompt, choices):
        first = {c[0]: (-0.05 if c[0] == "1" else -7.0) for c in choices}
        return {c: first[c[0]] + (-0.02 if c == "1" else -5.0 if c == "10" else 0.0) for c in choices}


def test_difficulty_is_the_expected_score_not_steered_by_prefixes():
    row = {C.ID: "a", C.ROOT_ID: "a", C.ROUND: 1, C.INSTRUCTION: "What is 2+2?"}
    out = asyncio.run(score.rate_row(PrefixTrap(), row))
    assert out[C.DIFFICULTY] == pytest.approx(1.0, abs=0.5), "mass on '1' must give about 1, not 10"
    probs = out[C.DIFFICULTY_PROBS]
    assert len(probs) == 10 and sum(probs) == pytest.approx(1.0) and probs[0] > 0.5 > probs[9]


def test_expected_score_of_a_spread_distribution():
    import math

    even = {str(i): math.log(0.1) for i in range(1, 11)}
    assert score.expected_score(even)[0] == pytest.approx(5.5)
    two = {str(i): (math.log(0.5) if i in (3, 7) else -50.0) for i in range(1, 11)}
    assert score.expected_score(two)[0] == pytest.approx(5.0, abs=1e-6)


def test_rate_row_scores_one_to_ten_and_keeps_errors_per_row():
    gen = Rater()
    ok = asyncio.run(score.rate_row(gen, {C.ID: "a", C.ROOT_ID: "a", C.ROUND: 1, C.INSTRUCTION: "two words"}))
    assert ok[C.DIFFICULTY] == pytest.approx(3, abs=0.01) and ok[C.ERROR] is None
    assert gen.choices[0] == tuple(str(i) for i in range(1, 11))
    bad = asyncio.run(score.rate_row(gen, {C.ID: "b", C.ROOT_ID: "b", C.ROUND: 1, C.INSTRUCTION: "fail me"}))
    assert bad[C.DIFFICULTY] is None and "engine hiccup" in bad[C.ERROR]


def test_score_sample_is_seeds_plus_each_rounds_kept_rows(run_dir):
    out, cfg = run_dir
    loc, saved = runread.open_run(str(out), ["score.sample_size=3"])
    manifests, _ = runread.round_manifests(loc, 2)
    t = score.sample(loc, saved, manifests)
    by_round = Counter(t[C.ROUND].to_pylist())
    assert by_round == {0: 3, 1: 3, 2: 3}
    kept_ids = {r: {x[C.ID] for x in pq.read_table(list((out / f"round_{r}").glob("*.parquet"))).to_pylist() if x[C.STATUS] == C.KEPT}
                for r in (1, 2)}
    for x in t.to_pylist():
        assert x[C.ID] in (kept_ids[x[C.ROUND]] if x[C.ROUND] else {f"seed-{i}" for i in range(6)})
    again = score.sample(loc, saved, manifests)
    assert again.equals(t), "the sample is a hash of seed and id, the same on every call"


def test_report_plots_difficulty_from_scores(run_dir):
    out, cfg = run_dir
    loc, saved = runread.open_run(str(out))
    manifests, _ = runread.round_manifests(loc, 2)
    stage = RowStage(Rater, functools.partial(score.rate_row, template=saved.score.template),
                     C.SCORES_SCHEMA, columns=score._COLUMNS)

    async def run_stage(batch):
        return [t async for t in stage(batch)]

    scored = pa.concat_tables(asyncio.run(run_stage(score.sample(loc, saved, manifests))))
    (out / "scores").mkdir()
    pq.write_table(scored, out / "scores" / "scores.parquet")
    (out / "scores" / "manifest.json").write_text(json.dumps(
        {"complete": True, "model": "m", "sample_size": 50, "rounds": [0, 1, 2], "files": ["scores.parquet"]}))
    text = report.report(str(out))
    fig = json.loads((out / "report" / "figures.json").read_text())
    d = fig["difficulty"]["by_round"]
    assert [d[r]["rated"] for r in "012"] == [6, 4, 4]
    assert all(sum(d[r]["histogram"].values()) == d[r]["rated"] for r in "012")
    assert "difficulty" in fig["plots"] and 'id="plot-difficulty"' in (out / "report" / "report.html").read_text()
    assert "difficulty mean" in text



def _zipf_texts(rng, n_texts, words_per_text, vocab=400):
    ranks = np.arange(1, vocab + 1)
    p = (1 / ranks) / (1 / ranks).sum()
    return [" ".join(f"w{i}" for i in rng.choice(vocab, size=words_per_text, p=p)) for _ in range(n_texts)]


def test_diversity_on_an_equal_budget_does_not_measure_length():
    """Two samples drawn from one vocabulary, one with texts 10x longer: plain distinct-1 falls
    with length alone; on the equal budget the two agree."""
    rng = np.random.default_rng(7)
    short, long_ = _zipf_texts(rng, 60, 9), _zipf_texts(rng, 60, 90)
    assert diversity.distinct_n(long_, 1) < 0.6 * diversity.distinct_n(short, 1)  # the bias
    budget = diversity.equal_budget([short, long_])
    assert budget[0] == 9 and budget[1] == 540
    a = diversity.diversity(short, 0.7, budget=budget)["distinct_1"]
    b = diversity.diversity(long_, 0.7, budget=budget)["distinct_1"]
    assert abs(a - b) < 0.08
    assert diversity.diversity(long_, 0.7, budget=budget)["distinct_1_all"] < b


def test_budget_distinct_n_sees_a_less_diverse_sample():
    rng = np.random.default_rng(3)
    varied = _zipf_texts(rng, 50, 20, vocab=2000)
    narrow = _zipf_texts(rng, 50, 20, vocab=40)
    budget = diversity.equal_budget([varied, narrow])
    assert (diversity.budget_distinct_n(narrow, 1, *budget)
            < 0.5 * diversity.budget_distinct_n(varied, 1, *budget))
