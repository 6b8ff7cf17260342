"""k8s/ manifests: KubeRay kinds and fields, and everything they name exists in the project."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.ops.kuberay import (
    CRD_FILES,
    FIELDS_FILE,
    FREE,
    K8S,
    REPO,
    check_against_crd,
    crd_schema,
    field_paths,
    manifests,
    qualified,
)

NODE_CHECKOUT = "/home/ray/llmvm-ray/"  # where k8s/Dockerfile puts the project
DOCS = manifests()


def known_fields() -> set[str]:
    lines = FIELDS_FILE.read_text().splitlines()
    return {line for line in lines if line and not line.startswith("#")}


def _free_prefixes(kind: str) -> set[str]:
    out = set()
    for line in known_fields():
        if line.startswith(kind + ":") and line.endswith(FREE):
            out.add(line[len(kind) + 1 : -len(FREE)])
    return out


def used_fields(doc: dict) -> set[str]:
    return {qualified(doc["kind"], p) for p in field_paths(doc, _free_prefixes(doc["kind"]))}


def test_every_manifest_is_a_kuberay_resource():
    kinds = {doc["kind"] for _, doc in DOCS}
    assert kinds == {"RayService", "RayJob", "RayCluster"}
    for name, doc in DOCS:
        assert doc["apiVersion"] == "ray.io/v1", name
        assert doc["kind"] in CRD_FILES and doc["metadata"]["name"], name


@pytest.mark.parametrize("name,doc", DOCS, ids=[n for n, _ in DOCS])
def test_manifest_uses_only_fields_kuberay_defines(name, doc):
    unknown = used_fields(doc) - known_fields()
    assert not unknown, f"{name}: fields not verified against KubeRay's CRDs: {sorted(unknown)}"
    crd_dir = os.environ.get("KUBERAY_CRD_DIR")
    if crd_dir:  # the full check, when the CRD files are at hand
        _, errors = check_against_crd(doc, crd_schema(Path(crd_dir), doc["kind"]))
        assert not errors, errors


def test_a_misspelled_field_is_caught():
    _, doc = next((n, d) for n, d in DOCS if n == "rayservice.yaml")
    doc = copy.deepcopy(doc)
    doc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplica"] = 4
    assert used_fields(doc) - known_fields() == {
        "RayService:spec.rayClusterConfig.workerGroupSpecs[].maxReplica"
    }


def _doc(name: str) -> dict:
    return next(d for n, d in DOCS if n == name)


def test_rayservice_runs_the_same_serve_config_as_the_cluster_file():
    from ray.serve.schema import ServeDeploySchema

    service = yaml.safe_load(_doc("rayservice.yaml")["spec"]["serveConfigV2"])
    assert service == yaml.safe_load((REPO / "cluster/serve.yaml").read_text())
    ServeDeploySchema.parse_obj(service)


def test_serve_import_paths_exist():
    import importlib
    import importlib.util

    from ray.serve.schema import ServeDeploySchema

    for name, doc in DOCS:
        if doc["kind"] != "RayService":
            continue
        config = ServeDeploySchema.parse_obj(yaml.safe_load(doc["spec"]["serveConfigV2"]))
        for app in config.applications:
            module, _, attr = app.import_path.partition(":")
            if module.startswith("llmvm_ray"):
                assert callable(getattr(importlib.import_module(module), attr)), name
            else:
                # ray.serve.llm needs vLLM to import; check the installed Ray defines it.
                spec = importlib.util.find_spec(module)
                assert spec and spec.origin, f"{name}: {module} not in the installed Ray"
                assert f"def {attr}(" in Path(spec.origin).read_text(), name


def _entrypoint_script(entrypoint: str) -> tuple[str, list[str]]:
    words = entrypoint.split()
    assert words[0] == "python" and words[1].startswith(NODE_CHECKOUT), entrypoint
    return words[1][len(NODE_CHECKOUT) :], words[2:]


def test_rayjob_entrypoints_exist_and_accept_their_arguments():
    scripts = {}
    for name, doc in DOCS:
        if doc["kind"] == "RayJob":
            script, args = _entrypoint_script(doc["spec"]["entrypoint"])
            assert (REPO / script).is_file(), f"{name}: {script}"
            scripts[script] = args
    assert {"jobs/finetune.py", "jobs/synthesize.py"} <= set(scripts)
    # The arguments parse: each script gets as far as reading its (missing) config file.
    missing = "/nonexistent/llmvm.toml"
    for script, args in scripts.items():
        proc = subprocess.run(
            [sys.executable, script, *args, "--config", missing],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            timeout=120,
        )
        assert proc.returncode == 2, (script, proc)
        assert f"config file not found: {missing}" in proc.stderr, (script, proc)


def _containers(doc: dict) -> list[dict]:
    spec = doc["spec"]
    cluster = spec.get("rayClusterConfig") or spec.get("rayClusterSpec") or spec
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_pods_share_one_config_image_and_ray_version():
    import ray

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    dockerfile = (K8S / "Dockerfile").read_text()
    assert f"rayproject/ray:{ray.__version__}-" in dockerfile
    assert f"COPY --chown=ray:users . {NODE_CHECKOUT.rstrip('/')}" in dockerfile
    for name, doc in DOCS:
        cluster = doc["spec"].get("rayClusterConfig") or doc["spec"].get("rayClusterSpec")
        assert (cluster or doc["spec"])["rayVersion"] == ray.__version__, name
        for container in _containers(doc):
            if "ray-llm" in container["image"]:  # the teacher runs Ray's LLM image
                assert ray.__version__ in container["image"]
                continue
            assert container["image"].endswith(f"/llmvm-ray:{version}"), name
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env["RAY_AUTH_MODE"] == "disabled", name
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert str(Path(env["LLMVM_CONFIG"]).parent) in mounts, name
            assert re.match(r"(s3|gs)://", env["LLMVM_STORAGE_PATH"]), name


def test_training_groups_offer_the_resource_the_train_config_asks_for():
    from llmvm_ray.config import load_config

    wanted = load_config(REPO / "cluster/llmvm.toml").train.resources_per_worker["train"]
    for name in ("rayservice.yaml", "rayjob-finetune.yaml"):
        spec = _doc(name)["spec"]
        cluster = spec.get("rayClusterConfig") or spec.get("rayClusterSpec")
        (group,) = [g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu-train"]
        assert float(group["resources"]["train"]) >= wanted
        assert group["minReplicas"] == 0
