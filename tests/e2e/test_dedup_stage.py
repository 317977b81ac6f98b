"""The round and final checks (quality filters, then dedup) as Ray Data stages on local Ray, over
generated round-like data: no engine needed, the full pipeline's e2e covers the wiring into rounds."""

import pyarrow as pa
import pytest
import ray

from evol_ray.checks import where as cleanup
from evol_ray import columns as C
from evol_ray.checks import dedup as dedup_mod
from evol_ray.checks import dedup_pass2
from evol_ray.config import load_config
from evol_ray.pipeline.round import count_files
from evol_ray.io.storage import list_files, locate

pytestmark = pytest.mark.e2e


def sentence(i, extra=""):
    topic = " ".join(f"word{(i * 37 + k * 11) % 1009}" for k in range(14))  # unlike any other i
    return f"Describe item {i}, {topic}, in plain words{extra}."


def attempts(n, round_no, text_of):
    rows = [{C.ID: f"r{round_no}-{i}", C.PARENT_ID: f"p{i}", C.ROOT_ID: f"s{i}", C.ROUND: round_no,
             C.OP: "deepen", C.INSTRUCTION: text_of(i), C.RESPONSE: f"Answer number {i} with detail.",
             C.PARENT_INSTRUCTION: f"seed {i}", C.PARENT_RESPONSE: "x", C.STATUS: C.KEPT}
            for i in range(n)]
    return pa.Table.from_pylist(rows, schema=C.ROUND_SCHEMA)


@pytest.fixture(scope="module", params=["one_process", "one_task", "joins"])
def checked(request, ray_local, tmp_path_factory):
    """Small data is deduped in one process on the driver; `one_task` makes the same data take
    Ray Data's hash shuffle over several partitions, then pass 2 and the clusters in one Ray
    task (big rounds); `joins` does pass 2 in two hash joins (rounds whose candidates' signatures
    pass CHECK_BYTES)."""
    with pytest.MonkeyPatch.context() as mp:
        if request.param != "one_process":
            mp.setattr(dedup_mod, "LOCAL_BYTES", 0)
            mp.setattr(dedup_mod, "KEY_ROWS_PER_PARTITION", 200)
        if request.param == "joins":
            mp.setattr(dedup_mod, "CHECK_BYTES", 0)
            mp.setattr(dedup_pass2, "PASS2_BYTES_PER_PARTITION", 512)  # several partitions in every join
        yield _checked(tmp_path_factory)


def _checked(tmp_path_factory):
    cfg = load_config(["input.path=s.json", "output.path=o", "model.source=m"])
    seeds = ray.data.from_arrow(pa.table({
        C.ID: [f"s{i}" for i in range(40)], C.ROOT_ID: [f"s{i}" for i in range(40)],
        C.INSTRUCTION: [f"Seed question {i}: how do tides and the moon relate, step {i}?" for i in range(40)],
        C.RESPONSE: ["a"] * 40,
    }))
    earlier = ray.data.from_arrow(attempts(60, 1, sentence))
    # round 2: rows 0-9 repeat round 1 (case/punctuation changed), 10-19 near-repeat it, 20-24
    # repeat a seed, 25-29 fail a quality rule, the rest are new
    def round2(i):
        if i < 10:
            return sentence(i).upper().replace(",", " ;")
        if i < 20:
            return sentence(i, extra=" please")
        if i < 25:
            return f"SEED question {i}: how do tides and the moon relate, step {i}?"
        if i < 30:
            return "Tiny?"
        return f"A wholly new task {i}: plan a garden for a rainy climate with {i} plants."
    now = ray.data.from_arrow(attempts(80, 2, round2))
    out = cleanup.round_checks(now, cfg, seeds, [earlier])
    dest = tmp_path_factory.mktemp("round")
    out.write_parquet(str(dest))
    loc = locate(str(dest), cfg.storage)
    return cfg, {r[C.ID]: r for r in out.take_all()}, count_files(loc, list_files(loc))


def test_rows_are_marked_never_dropped_and_counted(checked):
    _, rows, counts = checked
    assert len(rows) == counts["rows"] == 80 == sum(counts["status_counts"].values())
    assert counts["reason_counts"] == {C.R_DUPLICATE: 15, C.R_NEAR_DUPLICATE: 10, C.R_INSTRUCTION_LENGTH: 5}
    assert counts["status_counts"] == {C.KEPT: 50, C.ELIMINATED: 30}


def test_duplicates_point_at_the_earlier_row(checked):
    _, rows, _ = checked
    for i in range(10):
        assert (rows[f"r2-{i}"][C.REASON], rows[f"r2-{i}"][C.DUPLICATE_OF]) == (C.R_DUPLICATE, f"r1-{i}")
    for i in range(10, 20):
        assert (rows[f"r2-{i}"][C.REASON], rows[f"r2-{i}"][C.DUPLICATE_OF]) == (C.R_NEAR_DUPLICATE, f"r1-{i}")
    for i in range(20, 25):
        assert rows[f"r2-{i}"][C.DUPLICATE_OF] == f"s{i}"
    assert all(rows[f"r2-{i}"][C.DUPLICATE_OF] is None for i in range(25, 80))


def test_final_checks_split_kept_and_removed(checked, ray_local):
    cfg, _, _ = checked
    t = "Write a haiku about autumn leaves falling on a quiet lake"
    final = ray.data.from_arrow(pa.table({
        C.ID: ["b", "a", "c"], C.PARENT_ID: [None, None, "a"], C.ROOT_ID: ["b", "a", "a"],
        C.ROUND: pa.array([0, 0, 1], pa.int32()), C.OP: [None, None, "deepen"],
        C.INSTRUCTION: [t, t + "!", "Something else to write about, at length and in detail."],
        C.RESPONSE: ["x", "x", "y"],
    }))
    out = {r[C.ID]: r for r in cleanup.final_checks(final, cfg).take_all()}
    assert (out["b"][C.REASON], out["b"][C.DUPLICATE_OF]) == (C.R_DUPLICATE, "a")
    assert out["a"][C.STATUS] == out["c"][C.STATUS] == C.KEPT


def test_round_with_nothing_kept_passes_the_checks_unchanged(checked, ray_local):
    """A round where every evolution failed (common with a tiny model) has no items to dedup: the
    hash shuffle must not run on an empty, schema-less input; every row comes back as it was."""
    cfg, _, _ = checked
    table = attempts(12, 3, sentence)
    table = table.set_column(table.schema.get_field_index(C.STATUS), C.STATUS,
                             pa.array([C.ELIMINATED] * 12, pa.string()))
    out = cleanup.round_checks(ray.data.from_arrow(table), cfg, None, []).take_all()
    assert sorted(r[C.ID] for r in out) == sorted(table[C.ID].to_pylist())
    assert {r[C.STATUS] for r in out} == {C.ELIMINATED}
    assert all(r[C.DUPLICATE_OF] is None for r in out)


def _final_table(rows):
    """Final rows from (id, round, instruction, response)."""
    return pa.table({
        C.ID: [r[0] for r in rows], C.PARENT_ID: [None if r[1] == 0 else "p" for r in rows],
        C.ROOT_ID: [r[0] for r in rows], C.ROUND: pa.array([r[1] for r in rows], pa.int32()),
        C.OP: [None if r[1] == 0 else "deepen" for r in rows],
        C.INSTRUCTION: [r[2] for r in rows], C.RESPONSE: [r[3] for r in rows]})


@pytest.mark.parametrize("in_rounds", [True, False])
def test_final_dedup_compares_only_the_seeds_after_deduped_rounds(ray_local, in_rounds):
    """After rounds that deduped their kept rows, only the seeds can still duplicate each other:
    the final dedup compares them alone. Without in-round dedup, it compares every final row."""
    cfg = load_config(["input.path=s.json", "output.path=o", "model.source=m",
                       f"dedup.in_rounds={str(in_rounds).lower()}"])
    t = "Write a haiku about autumn leaves falling on a quiet lake at dusk"
    u = "Summarize the causes of the French revolution for a class of twelve year olds"
    final = ray.data.from_arrow(_final_table([
        ("s1", 0, t, "x"), ("s2", 0, t.upper() + "!", "xx"), ("s3", 0, "Name three rivers in Europe.", "x"),
        ("r1", 1, u, "y"), ("r2", 1, u + " please", "y")]))  # r1/r2: what in-round dedup leaves out
    out = {r[C.ID]: (r[C.STATUS], r[C.REASON], r[C.DUPLICATE_OF]) for r in cleanup.final_checks(final, cfg).take_all()}
    assert out["s1"] == (C.ELIMINATED, C.R_DUPLICATE, "s2")  # the longer answer is kept
    assert out["s2"][0] == out["s3"][0] == out["r1"][0] == C.KEPT
    assert out["r2"] == ((C.KEPT, None, None) if in_rounds else (C.ELIMINATED, C.R_NEAR_DUPLICATE, "r1"))


def test_final_dedup_of_the_seeds_alone_marks_what_comparing_every_row_marks(checked, ray_local):
    """On a final set whose round rows passed in-round dedup (the fixture's round 2 against round 1
    and the seeds), comparing the seeds alone marks exactly what comparing every row marks."""
    cfg, rows, _ = checked
    seeds = [(f"s{i}", 0, f"Seed question {i}: how do tides and the moon relate, step {i}?", "a") for i in range(40)]
    seeds += [("s40", 0, "SEED question 3: how do tides and the moon relate, step 3?", "ab"),
              ("s41", 0, "Seed question 7: how do tides and the moon relate, step 7? Please", "a")]
    kept = [(r[C.ID], r[C.ROUND], r[C.INSTRUCTION], r[C.RESPONSE]) for r in rows.values() if r[C.STATUS] == C.KEPT]
    kept += [(f"r1-{i}", 1, sentence(i), f"Answer number {i} with detail.") for i in range(60)]
    final = ray.data.from_arrow(_final_table(seeds + kept))

    def marks(in_rounds):
        c = load_config(["input.path=s.json", "output.path=o", "model.source=m",
                         f"dedup.in_rounds={str(in_rounds).lower()}"])
        return sorted((r[C.ID], r[C.REASON], r[C.DUPLICATE_OF])
                      for r in cleanup.final_checks(final, c).take_all() if r[C.STATUS] != C.KEPT)

    assert marks(True) == marks(False) == [("s3", C.R_DUPLICATE, "s40"), ("s7", C.R_NEAR_DUPLICATE, "s41")]


def test_empty_signature_blocks_do_not_break_the_shuffle(ray_local, monkeypatch):
    """Signature blocks with no row (the final set's round blocks, where only the seeds are
    compared; a round block with no kept row): Ray Data maps a bundle of empty blocks to one
    empty block without columns, and its hash shuffle's reduce then failed ("Schema at index N
    was different"; the bench at 20k rows). Here every block is its own bundle and its own
    shuffle map task, the way large runs split; the copy in another block is still found."""
    import contextlib

    @contextlib.contextmanager
    def one_block_per_map_task(ds, key_bytes):
        ctx = ds.context
        before, ctx.shuffle_input_batch_bytes = ctx.shuffle_input_batch_bytes, 1
        try:
            yield
        finally:
            ctx.shuffle_input_batch_bytes = before

    monkeypatch.setattr(dedup_mod, "shuffle_map_batches", one_block_per_map_task)
    monkeypatch.setattr(dedup_mod, "KEYS", dedup_mod.Stage(dedup_mod.key_rows, 5))  # a bundle per block
    monkeypatch.setattr(dedup_mod, "KEY_ROWS_PER_PARTITION", 50)
    monkeypatch.setattr(dedup_mod, "LOCAL_BYTES", 0)
    p = dedup_mod.params_from(load_config(["input.path=s.json", "output.path=o", "model.source=m"]).dedup, 0)
    texts = [sentence(i) for i in range(20)] + [sentence(3).upper()]
    sigs = dedup_mod.signature_rows(pa.table({
        C.ID: [f"s{i}" for i in range(21)], C.ROUND: pa.array([0] * 21, pa.int32()), C.INSTRUCTION: texts,
        C.RESPONSE: ["a"] * 20 + ["aa"], C.DEDUP_TARGET: [True] * 21}), p)
    empty = sigs.slice(0, 0)
    blocks = [empty, sigs.slice(0, 10), empty, empty, sigs.slice(10), empty, empty]
    marks = dedup_mod.find_duplicates(ray.data.from_arrow(blocks), p)
    assert marks.to_pylist() == [{C.ID: "s3", C.REASON: C.R_DUPLICATE, C.DUPLICATE_OF: "s20"}]


def test_no_shared_bucket_in_the_shuffle_path_marks_nothing(ray_local, monkeypatch):
    """Rows that resemble nothing, on the shuffle path: pass 1 gives no candidate pair at all, and
    no later step runs on the empty pairs."""
    monkeypatch.setattr(dedup_mod, "LOCAL_BYTES", 0)
    monkeypatch.setattr(dedup_mod, "KEY_ROWS_PER_PARTITION", 50)
    cfg = load_config(["input.path=s.json", "output.path=o", "model.source=m"])
    out = cleanup.round_checks(ray.data.from_arrow(attempts(30, 1, sentence)), cfg, None, []).take_all()
    assert len(out) == 30 and all(r[C.STATUS] == C.KEPT and r[C.DUPLICATE_OF] is None for r in out)


def test_round_counts_in_ray_tasks_are_the_in_process_counts(checked, ray_local, tmp_path, monkeypatch):
    """A round's counts made in Ray tasks (a few files each, added in file order) are what counting
    every file in one process gives."""
    from evol_ray.pipeline import round as round_mod

    import pyarrow.parquet as pq

    rows, files = list(checked[1].values()), []
    for i in range(5):
        files.append(str(tmp_path / f"part-{i}.parquet"))
        pq.write_table(pa.Table.from_pylist(rows[i * 16:(i + 1) * 16], schema=C.ROUND_SCHEMA), files[-1])
    monkeypatch.setattr(round_mod, "COUNT_FILES_PER_TASK", 2)
    loc = locate(str(tmp_path), checked[0].storage)
    assert round_mod.count_in_ray(loc, files) == count_files(loc, files)
    assert count_files(loc, files)["rows"] == 80
