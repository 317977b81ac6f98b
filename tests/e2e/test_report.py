"""End to end: a real two-round run of the tiny model (real Ray Data, real vLLM on CPU), scored by
the run's own config switch, then `evol-ray report`; the figures are checked against the manifests
and the Parquet files, and the HTML is opened in headless Chromium. A second run writes to s3://
(moto server) and is scored and reported from there with the CLI."""

import base64
import io
import json
import re
import shutil
import subprocess
from collections import Counter

import pyarrow.parquet as pq
import pytest
from PIL import Image

from evol_ray import columns as C
from evol_ray.cli import main
from evol_ray.config import load_config
from evol_ray.pipeline.driver import run
from tests.conftest import tiny_overrides
from tests.e2e.test_pipeline import N_SEEDS, write_seeds

pytestmark = pytest.mark.e2e

SCORE_SAMPLE = 6
PLOTS = ["survival", "operations", "lengths", "diversity", "difficulty"]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, tiny_model, ray_local):
    d = tmp_path_factory.mktemp("report-run")
    out = d / "out"
    cfg = load_config(tiny_overrides(tiny_model, write_seeds(d / "seeds.jsonl"), out)
                      + ["score.enabled=true", f"score.sample_size={SCORE_SAMPLE}", "report.lineages=4"])
    summary = run(cfg)
    return out, summary


@pytest.fixture(scope="module")
def reported(local_run):
    out, summary = local_run
    assert main(["report", str(out)]) == 0
    return out, json.loads((out / "report" / "figures.json").read_text())


def _round_rows(out, r):
    m = json.loads((out / f"round_{r}" / "manifest.json").read_text())
    return m, pq.read_table([str(out / f"round_{r}" / f) for f in m["files"]]).to_pylist()


def check_figures(fig, manifests, rows_by_round, final_rows, scores):
    """The figures of a report against the run's own manifests and Parquet rows."""
    assert fig["rounds"] == sorted(manifests) == [1, 2] and fig["rounds_missing"] == []
    for pr in fig["per_round"]:
        r, m, rows = pr["round"], manifests[pr["round"]], rows_by_round[pr["round"]]
        assert pr["mismatches"] == []
        assert pr["rows_in"] == m["rows_in"] == len(rows) == sum(pr["status_counts"].values())
        assert pr["status_counts"] == m["status_counts"] == dict(Counter(x[C.STATUS] for x in rows))
        assert pr["reason_counts"] == m["reason_counts"] == dict(Counter(x[C.REASON] for x in rows if x[C.REASON]))
        assert sum(pr["reason_counts"].values()) == pr["rows_in"] - pr["kept"]
        assert pr["op_counts"] == dict(Counter(x[C.OP] for x in rows if x[C.OP]))
        kept = [x for x in rows if x[C.STATUS] == C.KEPT]
        assert pr["kept"] == len(kept)
        assert pr["op_kept_counts"] == dict(Counter(x[C.OP] for x in kept))
        assert pr["generated_tokens"] == m["generated_tokens"] == sum(x[C.GENERATED_TOKENS] for x in rows) > 0
        assert fig["lengths"]["instruction"][str(r)]["rows"] == len(kept)
        assert fig["lengths"]["response"][str(r)]["rows"] == sum(x[C.RESPONSE] is not None for x in kept)
    seeds = [x for x in rows_by_round[1] if x[C.STATUS] != C.INVALID_INPUT]
    assert fig["lengths"]["instruction"]["0"]["rows"] == len(seeds)
    assert fig["final"]["rows"] == final_rows
    n, least = fig["diversity"]["sample_size"], fig["diversity"]["min_sample_size"]
    counts = [len(seeds)] + [fig["per_round"][i]["kept"] for i in (0, 1)]
    assert n == min([200] + [c for c in counts if c >= least])
    for g, d in fig["diversity"]["by_round"].items():
        assert d is None or (d["rows"] == n and 0 < d["distinct_1"] <= 1 and 0 <= d["near_duplicate_share"] <= 1)
    for chain in fig["lineage"]:
        assert [s["round"] for s in chain["steps"]] == [0, 1, 2]
        for s in chain["steps"][1:]:
            row = [x for x in rows_by_round[s["round"]] if x[C.ROOT_ID] == chain["root_id"]]
            assert len(row) == 1 and (row[0][C.STATUS], row[0][C.OP]) == (s["status"], s["op"])
    dif = fig["difficulty"]
    assert dif["rounds"] == [0, 1, 2]
    by_round = Counter(x[C.ROUND] for x in scores)
    for g, want in [(0, len(seeds))] + [(r, fig["per_round"][r - 1]["kept"]) for r in (1, 2)]:
        d = dif["by_round"][str(g)]
        assert d["rows"] == by_round[g] == min(SCORE_SAMPLE, want)
        assert d["rated"] + d["errors"] == d["rows"] and d["errors"] == 0
    assert all(1 <= x[C.DIFFICULTY] <= 10 and len(x[C.DIFFICULTY_PROBS]) == 10 for x in scores)
    hist = Counter(int(round(x[C.DIFFICULTY])) for x in scores)
    total = Counter()
    for d in dif["by_round"].values():
        total.update({int(k): v for k, v in d["histogram"].items()})
    assert +total == hist
    assert fig["plots"] == sorted(PLOTS)


def test_report_figures_match_manifests_and_parquet(local_run, reported, capsys):
    out, summary = local_run
    _, fig = reported
    manifests, rows = {}, {}
    for r in (1, 2):
        manifests[r], rows[r] = _round_rows(out, r)
    assert summary["scores"]["rows"] == len(pq.read_table(out / "scores" / "scores.parquet"))
    scores = pq.read_table(out / "scores" / "scores.parquet").to_pylist()
    check_figures(fig, manifests, rows, summary["final"]["rows"], scores)
    assert manifests[1]["status_counts"].get(C.INVALID_INPUT) == 1 and manifests[1]["rows_in"] == N_SEEDS

    assert main(["report", str(out)]) == 0  # a second report reads the same files the same way
    text = capsys.readouterr().out
    again = json.loads((out / "report" / "figures.json").read_text())
    assert {k: v for k, v in again.items() if k != "generated"} == {k: v for k, v in fig.items() if k != "generated"}
    assert f"round 1: in {N_SEEDS}, kept {fig['per_round'][0]['kept']}" in text and "difficulty mean" in text


def _chromium(*args, cwd):
    return subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={cwd / 'profile'}", "--enable-logging=stderr", "--v=0", *args],
        capture_output=True, text=True, timeout=120, cwd=cwd)


# Appended to a copy of the report: after load, list every image's decoded and laid-out size.
PROBE = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images].map(i => ({id: i.id, complete: i.complete, w: i.naturalWidth,
    h: i.naturalHeight, shown: i.getBoundingClientRect().height}));
  const p = document.createElement('pre'); p.id = 'probe'; p.textContent = JSON.stringify(imgs);
  document.body.appendChild(p); });</script>"""


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="chromium not installed (.ci/run installs Debian's chromium)")
def test_report_opens_in_headless_chromium_with_every_plot(reported, tmp_path):
    out, fig = reported
    page = out / "report" / "report.html"
    shot = tmp_path / "shot.png"
    res = _chromium(f"--screenshot={shot}", "--window-size=1200,3000", page.as_uri(), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    errors = [ln for ln in res.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln
              or "Not allowed to load" in ln or "net::ERR" in ln]
    assert errors == [], errors
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 3000)
    colours = img.getcolors(maxcolors=1 << 24)
    non_white = sum(n for n, c in colours if c != (255, 255, 255)) / (img.width * img.height)
    assert len(colours) > 200 and non_white > 0.05, "the screenshot is blank"

    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    res = _chromium("--dump-dom", "--virtual-time-budget=10000", "--window-size=1200,3000", probe.as_uri(),
                    cwd=tmp_path)
    found = re.search(r'<pre id="probe">(.*?)</pre>', res.stdout, re.S)
    assert found, res.stderr[-2000:]
    images = json.loads(found.group(1).replace("&quot;", '"'))
    assert sorted(i["id"] for i in images) == sorted(f"plot-{p}" for p in PLOTS)
    for i in images:
        assert i["complete"] and i["w"] > 300 and i["h"] > 200 and i["shown"] > 100, i
    for b64 in re.findall(r'src="data:image/png;base64,([^"]+)"', page.read_text()):
        Image.open(io.BytesIO(base64.b64decode(b64))).verify()


@pytest.fixture(scope="module")
def s3_run(s3, tiny_model, ray_local, tmp_path_factory):
    url = s3.make_bucket("evol-report") + "/runs/r1"
    d = tmp_path_factory.mktemp("report-s3")
    cfg = load_config(tiny_overrides(tiny_model, write_seeds(d / "seeds.jsonl"), url) + s3.overrides())
    return url, run(cfg)


def test_score_and_report_of_a_run_on_s3(s3, s3_run, capsys):
    import s3fs

    url, summary = s3_run
    assert main(["score", url, *s3.overrides(), f"score.sample_size={SCORE_SAMPLE}"]) == 0
    assert main(["report", url, *s3.overrides()]) == 0
    text = capsys.readouterr().out
    assert f"{url}/report/report.html" in text
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3.endpoint, "region_name": "us-east-1"})
    base = url.split("://", 1)[1]
    fig = json.loads(fs.cat(f"{base}/report/figures.json"))
    manifests, rows = {}, {}
    for r in (1, 2):
        manifests[r] = json.loads(fs.cat(f"{base}/round_{r}/manifest.json"))
        rows[r] = [x for name in manifests[r]["files"]
                   for x in pq.read_table(fs.open(f"{base}/round_{r}/{name}", "rb")).to_pylist()]
    scores = pq.read_table(fs.open(f"{base}/scores/scores.parquet", "rb")).to_pylist()
    check_figures(fig, manifests, rows, summary["final"]["rows"], scores)
    page = fs.cat(f"{base}/report/report.html").decode()
    assert page.count('src="data:image/png;base64,') == len(PLOTS)
