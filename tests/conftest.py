import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A random Llama and its tokenizer built locally: nothing is downloaded."""
    from evol_ray.tiny_model import build_random_llama

    return str(build_random_llama(tmp_path_factory.mktemp("model") / "tiny-llama"))


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the session, with the machine's two CPUs declared explicitly."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def tiny_overrides(model_dir, seeds, out, rounds=2):
    """Config for a fast run of the tiny model through the real engine on CPU."""
    return [
        f"input.path={seeds}", f"output.path={out}", f"model.source={model_dir}",
        "model.max_model_len=4096", "engine.enforce_eager=true", "engine.device=cpu",
        "engine.batch_size=8", "engine.batches_in_flight=4", f"evolution.rounds={rounds}",
        "evolution.evolve_sampling.max_tokens=24", "evolution.answer_sampling.max_tokens=24",
    ]
