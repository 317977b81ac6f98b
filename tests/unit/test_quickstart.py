"""conf/quickstart.yaml, the README's minimal config: a valid config of at most 15 keys, each with
its comment. (It runs end to end in tests/e2e/test_quickstart.py.)"""

from pathlib import Path

import yaml

from evol_ray.config import load_config

QUICKSTART = Path(__file__).resolve().parents[2] / "conf" / "quickstart.yaml"


def _leaves(node, prefix=""):
    for k, v in node.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def test_quickstart_is_a_valid_config_of_at_most_15_commented_keys():
    cfg = load_config([str(QUICKSTART)])
    assert cfg.model.source == "qwen2.5-coder-1.5b-instruct" and cfg.elimination.judge_threshold == "auto"
    keys = list(_leaves(yaml.safe_load(QUICKSTART.read_text())))
    assert len(keys) <= 15, keys
    lines = [ln for ln in QUICKSTART.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    valued = [ln for ln in lines if not ln.rstrip().endswith(":")]  # a key with its value on the line
    assert valued and all("  # " in ln for ln in valued), [ln for ln in valued if "  # " not in ln]
