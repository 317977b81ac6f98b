"""Where engines go (engine/resources.py): `engine.replicas: auto`, the check that a request fits the
cluster's nodes, the wait for an autoscaler's GPUs, and the actor options of a replica in its own
placement group. The placement itself on Ray's logical GPUs: tests/e2e/test_placement.py."""

import pytest

from evol_ray.config import ConfigError, load_config
from evol_ray.engine import resources
from evol_ray.engine.resources import (PlacementError, engine_actor_options, engines_fitting, replica_count,
                                       shortfall, wait_until_placeable)


def _engine(*args):
    return load_config(["input.path=x", "output.path=y", "model.source=m", *args]).engine


def test_auto_counts_the_engines_the_nodes_hold_each_on_one_node():
    assert engines_fitting([8], 2) == 4 and engines_fitting([8], 3) == 2
    assert engines_fitting([4, 4], 8) == 0  # a tensor-parallel engine never spans nodes
    assert engines_fitting([2, 3, 1], 1) == 6
    e = _engine("engine.tensor_parallel_size=2")
    assert e.replicas == "auto"  # the default
    assert replica_count(e, "gpu", [4, 4]) == 4
    assert replica_count(e, "cpu", [4]) == 1  # one CPU engine: it takes the machine's cores
    assert replica_count(_engine("engine.backend=openai", "engine.endpoint.base_url=http://127.0.0.1:1/v1",
                                 "engine.endpoint.model=m"), "endpoint", [8]) == 1
    assert replica_count(_engine("engine.replicas=3"), "gpu", [1]) == 3  # a number is taken as given


def test_auto_with_no_gpu_node_fails_naming_the_keys():
    e = _engine("engine.tensor_parallel_size=4")
    with pytest.raises(PlacementError, match=r"engine.replicas=auto .*engine.tensor_parallel_size=4.*\[2, 2\]"
                                             r".*engine.wait_for_gpus_s"):
        replica_count(e, "gpu", [2, 2])


def test_shortfall_names_the_keys_and_says_why():
    e = _engine("engine.tensor_parallel_size=2")
    assert shortfall(e, 2, [4]) is None
    why = shortfall(e, 3, [4])
    assert "engine.replicas=3" in why and "engine.tensor_parallel_size=2" in why and "6 GPUs" in why
    assert "hold 2 engines" in why
    assert "no node has 4 GPUs (the most on one node: 2)" in shortfall(_engine("engine.tensor_parallel_size=4"), 1, [2, 2])


def test_wait_returns_when_an_autoscaler_adds_the_gpus_and_fails_at_its_deadline(monkeypatch):
    nodes = iter([[], [], [4], [4]])  # GPU workers appear on the third look
    monkeypatch.setattr(resources, "node_gpus", lambda: next(nodes))
    monkeypatch.setattr(resources.time, "sleep", lambda s: None)
    wait_until_placeable(_engine("engine.tensor_parallel_size=2", "engine.wait_for_gpus_s=600"), 2)

    clock = iter(range(0, 10_000, 100))
    monkeypatch.setattr(resources.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(resources, "node_gpus", lambda: [])
    with pytest.raises(PlacementError, match=r"engine.replicas=1 .*\(waited 300 s\)"):
        wait_until_placeable(_engine("engine.wait_for_gpus_s=300"), 1)
    # no wait given (a fixed-size cluster): fails at the first look
    looks = []
    monkeypatch.setattr(resources, "node_gpus", lambda: looks.append(1) or [1])
    with pytest.raises(PlacementError):
        wait_until_placeable(_engine(), 2)
    assert len(looks) == 1


def test_a_replica_in_its_own_group_takes_its_bundle_zero_and_captures_its_workers():
    from ray.util.placement_group import PlacementGroup
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    group = object.__new__(PlacementGroup)  # never scheduled: options only
    opts = engine_actor_options(_engine("engine.tensor_parallel_size=2"), "gpu", group)
    s = opts["scheduling_strategy"]
    assert isinstance(s, PlacementGroupSchedulingStrategy) and s.placement_group is group
    assert s.placement_group_bundle_index == 0 and s.placement_group_capture_child_tasks
    assert "num_gpus" not in opts  # the engine's workers hold the GPUs, in the group's GPU bundles


@pytest.mark.parametrize("value", ["two", "0", "-1", "1.5"])
def test_replicas_is_auto_or_a_positive_number(value):
    with pytest.raises(ConfigError, match=r"engine.replicas.*expected auto"):
        _engine(f"engine.replicas={value}")
