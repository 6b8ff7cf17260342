"""The cluster launcher YAMLs and the Serve config file: valid for the tools that read them,
and consistent with the package and with each other. No cluster is started here."""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from llmvm_ray.config import load_config

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
LAUNCHER_YAMLS = ["aws.yaml", "gcp.yaml", "local.yaml"]
# Where cluster/*.yaml put the checkout on a node, and so where LLMVM_CONFIG points.
NODE_CHECKOUTS = ("/home/ray/llmvm-ray/", "$HOME/llmvm-ray/")


def ray_cluster_schema() -> dict:
    """The cluster-config JSON schema shipped inside the installed ``ray`` package."""
    import json

    import ray.autoscaler

    path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    return json.loads(path.read_text())


def load_yaml(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


@pytest.mark.parametrize("name", LAUNCHER_YAMLS)
def test_launcher_yaml_validates_against_rays_schema(name):
    config = load_yaml(name)
    jsonschema.validate(config, ray_cluster_schema())
    # The schema allows anything under provider and node_config; these are ours to check.
    if config["provider"]["type"] != "local":  # local: Ray derives node types from the IPs
        types = config["available_node_types"]
        assert config["head_node_type"] in types
        assert {"head", "gpu_serve", "gpu_train"} <= set(types)
        assert types["gpu_train"]["resources"]["train"] >= 1  # what [train] asks for
        assert types["gpu_serve"]["min_workers"] <= types["gpu_serve"]["max_workers"]
        assert types["gpu_train"]["min_workers"] == 0  # training nodes only on demand


def test_invalid_launcher_yaml_is_rejected():
    """The schema check is not vacuous: a misspelled key fails it."""
    config = load_yaml("aws.yaml")
    config["available_node_types"]["gpu_serve"]["max_worker"] = 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, ray_cluster_schema())


@pytest.mark.parametrize("name", LAUNCHER_YAMLS)
def test_launcher_yaml_installs_this_project_and_points_at_its_config(name):
    config = load_yaml(name)
    mounts = config["file_mounts"]
    assert "." in mounts.values(), "the checkout must be synced to the nodes"
    setup = " ".join(config["setup_commands"])
    assert "torch==2.13.0" in setup and "-e " in setup  # pins from pyproject.toml
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(config[key])
        assert "RAY_AUTH_MODE=disabled" in start  # the same on every Ray process
        if key.startswith("head"):  # jobs get time to cancel cooperatively on `ray job stop`
            assert int(re.search(r"RAY_JOB_STOP_WAIT_TIME_S=(\d+)", start).group(1)) >= 30
        config_path = re.search(r"LLMVM_CONFIG=(\S+)", start).group(1)
        rel = next(config_path[len(p) :] for p in NODE_CHECKOUTS if config_path.startswith(p))
        assert (REPO / rel).is_file(), config_path
        storage = re.search(r"LLMVM_STORAGE_PATH=(\S+)", start).group(1)
        expected = {"aws": "s3://", "gcp": "gs://", "local": "/"}[config["provider"]["type"]]
        assert storage.startswith(expected)


def test_cluster_config_is_valid_and_matches_the_ray_settings():
    config = load_config(CLUSTER / "llmvm.toml")
    assert config.ray.auth_mode == "disabled"  # what the start commands export
    assert config.train.use_gpu and config.train.resources_per_worker["train"] == 1
    assert {m.name for m in config.models} >= {config.teacher.model, config.optimizer.student_model}


def test_serve_config_file_builds_the_same_app_as_llmvm_serve(monkeypatch):
    from ray._common.utils import import_attr
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.schema import ServeDeploySchema

    raw = load_yaml("serve.yaml")
    schema = ServeDeploySchema.parse_obj(raw)  # what `serve deploy` validates
    monkeypatch.setenv("LLMVM_CONFIG", str(CLUSTER / "llmvm.toml"))
    monkeypatch.setenv("LLMVM_SERVE__API_KEYS", '["sk-from-a-secret"]')  # as every recipe sets
    config = load_config()
    assert config.serve.api_keys[0].get_secret_value() == "sk-from-a-secret"
    assert schema.http_options.host == config.serve.host
    assert schema.http_options.port == config.serve.port
    (app,) = schema.applications
    assert app.name == config.serve.app_name and app.route_prefix == config.serve.route_prefix

    built = call_user_app_builder_with_args_if_necessary(import_attr(app.import_path), app.args)
    from ray.serve import Application

    assert isinstance(built, Application)
    # One deployment per configured model plus the ingress, named as `llmvm serve` names them.
    from llmvm_ray.runtime import deployment_name
    from llmvm_ray.serve.builder import build_app

    names = {d.name for d in _deployments(built)}
    assert names == {"ingress"} | {deployment_name(m) for m in config.models}
    assert names == {d.name for d in _deployments(build_app(config))}


def _deployments(app) -> list:
    from ray.serve._private.build_app import build_app as serve_build

    return list(serve_build(app, name="check").deployments)


def test_the_production_config_refuses_to_serve_other_machines_without_keys(monkeypatch):
    from llmvm_ray.errors import ConfigError
    from llmvm_ray.serve.builder import build_app

    monkeypatch.setenv("LLMVM_CONFIG", str(CLUSTER / "llmvm.toml"))
    monkeypatch.delenv("LLMVM_SERVE__API_KEYS", raising=False)
    config = load_config()
    assert config.serve.host == "0.0.0.0" and not config.serve.api_keys
    with pytest.raises(ConfigError) as info:
        build_app(config)
    assert info.value.param == "serve.api_keys" and "allow_unauthenticated" in info.value.message
    config.serve.allow_unauthenticated = True  # the operator's explicit choice
    build_app(config)
    loopback = config.model_copy(deep=True)
    loopback.serve.allow_unauthenticated = False
    loopback.serve.host = "127.0.0.1"
    build_app(loopback)


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml", "local.yaml"])
def test_every_node_of_a_launcher_cluster_gets_the_api_keys(name):
    raw = load_yaml(name)
    keys_file = next(k for k in raw["file_mounts"] if k.endswith("llmvm-api-keys.json"))
    for commands in (raw["head_start_ray_commands"], raw["worker_start_ray_commands"]):
        script = " ".join(commands)
        assert "LLMVM_SERVE__API_KEYS=" in script
        assert keys_file.replace("~", "$HOME") in script
