"""Bad input and bad config fail at the command line before Ray or any engine starts, and never touch
what an earlier run produced."""

import json
import subprocess
import sys

import pytest

from evol_ray.pipeline import driver as run_mod
from evol_ray.config import load_config
from evol_ray.io.storage import locate


def evol_ray(*args, cwd):
    return subprocess.run([sys.executable, "-m", "evol_ray", "run", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_corrupt_seed_file_fails_before_ray_and_names_it(tmp_path):
    (tmp_path / "seeds").mkdir()
    (tmp_path / "seeds" / "a.parquet").write_bytes(b"PAR1 not really")
    r = evol_ray("input.path=seeds", "output.path=out", "model.source=nowhere", cwd=tmp_path)
    assert r.returncode == 2
    assert "a.parquet: cannot read as parquet" in r.stderr
    assert "Started a local Ray" not in r.stderr + r.stdout
    assert not (tmp_path / "out").exists()


def test_config_error_exit_code_and_message(tmp_path):
    r = evol_ray("input.path=x", "output.path=y", "model.source=m", "evolution.rounds=zero", cwd=tmp_path)
    assert r.returncode == 2 and "config key 'evolution.rounds'" in r.stderr


def _cfg(out, *extra):
    return load_config(["input.path=x", f"output.path={out}", "model.source=m", *extra])


def test_other_config_refused_until_start_over(tmp_path):
    out = tmp_path / "out"
    run_mod.prepare_output(_cfg(out), locate(str(out), _cfg(out).storage))
    (out / "round_1").mkdir()
    (out / "round_1" / "manifest.json").write_text(json.dumps({"complete": True}))
    changed = _cfg(out, "seed=7")
    with pytest.raises(run_mod.RunError, match="keys that differ: seed"):
        run_mod.prepare_output(changed, locate(str(out), changed.storage))
    assert (out / "round_1" / "manifest.json").exists(), "a refused start must not touch the old run"
    restart = _cfg(out, "seed=7", "output.start_over=true")
    run_mod.prepare_output(restart, locate(str(out), restart.storage))
    assert not (out / "round_1").exists()
    assert json.load(open(out / "run.json"))["result_values"]["seed"] == 7
