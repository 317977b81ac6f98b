"""The Kubernetes manifests under k8s/: schema-valid, consistent with each other, with the
Dockerfile, with pyproject.toml and with jobs/.

RayJob and RayCluster are checked against KubeRay's own CRDs (v1.7.0, in ../shared/kuberay, test-only
files), with every object schema that lists `properties` closed, as KubeRay's generator and
kubeconform's strict mode do, so that a misspelled field is an error rather than ignored. Secret
and ConfigMap are checked against Kubernetes' schemas shipped by `kubernetes-validate` (strict).
"""

from __future__ import annotations

import copy
import functools
import re
import shlex
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement

from evol_ray.config import load_config

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
KUBERAY = REPO.parent / "shared" / "kuberay"
CRD_FILES = {"RayJob": "ray.io_rayjobs.yaml", "RayCluster": "ray.io_rayclusters.yaml"}
CORE_KINDS = {"Secret", "ConfigMap"}
KUBERNETES_VERSION = "1.33"  # the API version the core objects are checked against
needs_crds = pytest.mark.skipif(
    not all((KUBERAY / f).is_file() for f in CRD_FILES.values()),
    reason=f"KubeRay CRDs not found in {KUBERAY} (test-only files, outside the project)",
)
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def manifests() -> list:
    """(file name, object) for every Kubernetes object in k8s/*.yaml."""
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for obj in yaml.load_all(path.read_text(), Loader=Loader):
            if obj is not None:
                out.append((path.name, obj))
    return out


def the(kind: str) -> dict:
    [obj] = [o for _, o in manifests() if o["kind"] == kind]
    return obj


def close_schema(node):
    """A copy of `node` in which every object schema that lists `properties` and has no
    `additionalProperties` (and does not ask to keep unknown fields) refuses unknown fields."""
    if isinstance(node, list):
        return [close_schema(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: close_schema(v) for k, v in node.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.lru_cache(maxsize=None)
def crd_schema(kind: str) -> dict:
    crd = yaml.load((KUBERAY / CRD_FILES[kind]).read_text(), Loader=Loader)
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


@functools.lru_cache(maxsize=None)
def crd_validator(kind: str, closed: bool = True) -> jsonschema.protocols.Validator:
    schema = crd_schema(kind)
    return jsonschema.Draft202012Validator(close_schema(schema) if closed else schema)


def crd_errors(obj: dict, closed: bool = True) -> list:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in crd_validator(obj["kind"], closed).iter_errors(obj)]


def pods(obj: dict) -> dict:
    """{group: pod spec} for the head ("head") and each worker group of a RayJob or RayCluster."""
    spec = obj["spec"]["rayClusterSpec"] if obj["kind"] == "RayJob" else obj["spec"]
    out = {"head": spec["headGroupSpec"]["template"]["spec"]}
    out.update({g["groupName"]: g["template"]["spec"] for g in spec["workerGroupSpecs"]})
    return out


def cluster_spec(obj: dict) -> dict:
    return obj["spec"]["rayClusterSpec"] if obj["kind"] == "RayJob" else obj["spec"]


def pinned(requirement: str) -> str:
    [spec] = Requirement(requirement).specifier
    assert spec.operator == "==", f"{requirement} is not pinned exactly"
    return spec.version


def dockerfile_args() -> dict:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", (K8S / "Dockerfile").read_text(), re.M))


# --- schemas ------------------------------------------------------------------------------------

def test_every_object_is_one_the_tests_check():
    kinds = [obj["kind"] for _, obj in manifests()]
    assert sorted(kinds) == ["ConfigMap", "RayCluster", "RayJob", "Secret"]
    assert all(obj["apiVersion"] == "ray.io/v1" for _, obj in manifests() if obj["kind"] in CRD_FILES)


@needs_crds
@pytest.mark.parametrize("kind", sorted(CRD_FILES))
def test_kuberay_objects_validate_against_the_crds_with_unknown_fields_refused(kind):
    assert crd_errors(the(kind)) == []


@needs_crds
def test_a_misspelled_field_is_caught_only_because_the_schema_is_closed():
    job = copy.deepcopy(the("RayJob"))
    job["spec"]["shutdownAfterJobFinish"] = job["spec"].pop("shutdownAfterJobFinishes")
    assert crd_errors(job, closed=False) == []  # the CRD as published lets it through
    errors = crd_errors(job)
    assert len(errors) == 1 and "shutdownAfterJobFinish" in errors[0]

    # Deep inside the embedded pod template too (a core PodSpec field).
    job = copy.deepcopy(the("RayJob"))
    container = pods(job)["gpu"]["containers"][0]
    container["volumeMount"] = container.pop("volumeMounts")
    assert any("volumeMount" in e for e in crd_errors(job))


@needs_crds
def test_a_wrong_type_or_enum_value_is_caught():
    cluster = copy.deepcopy(the("RayCluster"))
    cluster["spec"]["autoscalerOptions"]["upscalingMode"] = "Eager"
    cluster["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # must be a string
    errors = crd_errors(cluster)
    assert any("upscalingMode" in e for e in errors) and any("num-cpus" in e for e in errors)


@pytest.mark.parametrize("kind", sorted(CORE_KINDS))
def test_core_objects_validate_against_the_kubernetes_schemas(kind):
    kubernetes_validate.validate(the(kind), KUBERNETES_VERSION, strict=True)
    broken = copy.deepcopy(the(kind))
    broken["stringdata" if kind == "Secret" else "datas"] = {"x": "y"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


# --- consistency --------------------------------------------------------------------------------

def test_versions_agree_across_pyproject_dockerfile_and_manifests():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    [ray_req] = [r for r in project["dependencies"] if Requirement(r).name == "ray"]
    [vllm_req] = [r for r in project["optional-dependencies"]["gpu"] if Requirement(r).name == "vllm"]
    args = dockerfile_args()
    assert args["RAY_VERSION"] == pinned(ray_req)
    assert args["VLLM_VERSION"] == pinned(vllm_req)
    # The base image is the official Ray image at that version.
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-py3\d+-gpu$", (K8S / "Dockerfile").read_text(), re.M)
    for kind in CRD_FILES:
        obj = the(kind)
        assert cluster_spec(obj)["rayVersion"] == args["RAY_VERSION"], kind
        images = {c["image"] for p in pods(obj).values() for c in p["containers"]}
        assert images == {f"registry.example.com/evol-ray:{project['version']}"}, kind


def test_rayjob_runs_the_entrypoint_jobs_provides_with_the_configmap_config():
    job = the("RayJob")
    argv = shlex.split(job["spec"]["entrypoint"])
    workdir = re.search(r"^WORKDIR (\S+)$", (K8S / "Dockerfile").read_text(), re.M).group(1)
    assert argv[:2] == ["python", f"{workdir}/jobs/entrypoint.py"]
    assert (REPO / "jobs" / "entrypoint.py").is_file()
    assert re.search(r"^COPY .*\bjobs \./jobs$", (K8S / "Dockerfile").read_text(), re.M)
    from jobs.submit import ENTRYPOINT

    assert ENTRYPOINT == "jobs/entrypoint.py"  # what `ray job submit` runs through jobs/submit.py
    # The config argument is the ConfigMap's key, mounted on the head where the driver runs.
    head = pods(job)["head"]
    [mount] = [m for m in head["containers"][0]["volumeMounts"] if m["name"] == "config"]
    [volume] = [v for v in head["volumes"] if v["name"] == "config"]
    cm = the("ConfigMap")
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    [key] = cm["data"]
    assert argv[2:] == [f"{mount['mountPath']}/{key}"]
    runtime_env = yaml.safe_load((REPO / "jobs" / "runtime_env.yaml").read_text())
    assert yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"] == runtime_env["env_vars"]


def test_configmap_config_is_a_valid_evol_ray_config_that_fits_the_worker_group(tmp_path):
    cm = the("ConfigMap")
    [(key, text)] = cm["data"].items()
    (tmp_path / key).write_text(text)
    cfg = load_config([tmp_path / key])
    assert cfg.engine.device == "gpu" and cfg.input.path.startswith("s3://")
    [gpu] = cluster_spec(the("RayJob"))["workerGroupSpecs"]
    gpus = int(gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    assert int(cfg.engine.replicas) * cfg.engine.tensor_parallel_size <= gpu["maxReplicas"] * gpus
    if gpu["minReplicas"] == 0:  # the engines wait for the autoscaler's GPU workers instead of failing
        assert cfg.engine.wait_for_gpus_s >= 600


@pytest.mark.parametrize("kind", sorted(CRD_FILES))
def test_cpu_only_head_autoscaling_gpu_workers_and_credentials_everywhere(kind):
    obj = the(kind)
    spec = cluster_spec(obj)
    head = pods(obj)["head"]["containers"][0]
    assert "nvidia.com/gpu" not in str(head["resources"])
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert spec["enableInTreeAutoscaling"] is True
    [gpu] = spec["workerGroupSpecs"]
    worker = gpu["template"]["spec"]["containers"][0]
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert gpu["minReplicas"] == 0 < gpu["maxReplicas"]
    secret = the("Secret")["metadata"]["name"]
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(the("Secret")["stringData"])
    for pod in pods(obj).values():
        for c in pod["containers"]:
            assert {"secretRef": {"name": secret}} in c["envFrom"], c["name"]


def test_rayjob_cleans_up_and_its_driver_asks_for_no_gpu():
    spec = the("RayJob")["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert not {"entrypointNumGpus", "entrypointNumCpus", "entrypointResources"} & set(spec)
