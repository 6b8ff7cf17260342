"""The config tree: sources and their priority, validation errors, masking, generated docs."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmvm_ray.config import Config, load_config, render_reference
from llmvm_ray.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_valid_and_documented():
    config = load_config()
    assert config.serve.port == 3002 and config.serve.host == "127.0.0.1"
    assert config.optimizer.max_train_examples == 2000
    assert config.synthesis.example_delim == "<END>"
    for name, field in Config.model_fields.items():
        assert field.description, f"{name} has no description"


def test_toml_then_env_then_overrides(tmp_path, monkeypatch):
    path = tmp_path / "llmvm.toml"
    path.write_text(
        """
storage_path = "/data"
[serve]
port = 9000
host = "0.0.0.0"
[[models]]
name = "tiny"
model_uri = "/models/tiny"
adapters = { dates = "/adapters/dates" }
"""
    )
    monkeypatch.setenv("LLMVM_SERVE__PORT", "9100")
    config = load_config(path, overrides={"serve": {"host": "127.0.0.1"}})
    assert config.storage_path == "/data"
    assert config.serve.port == 9100  # env beats the file
    assert config.serve.host == "127.0.0.1"  # overrides beat env
    assert config.model("tiny").adapters == {"dates": "/adapters/dates"}


def test_config_file_from_env(tmp_path, monkeypatch):
    path = tmp_path / "c.toml"
    path.write_text("[serve]\nport = 4242\n")
    monkeypatch.setenv("LLMVM_CONFIG", str(path))
    assert load_config().serve.port == 4242


@pytest.mark.parametrize(
    "text, needle",
    [
        ("[serve]\nport = 70000\n", "serve.port"),
        ("[serve]\nprot = 1\n", "serve.prot"),
        ("[[models]]\nname = 'a'\n", "models.0.model_uri"),
        ("[[models]]\nname='a'\nmodel_uri='x'\n[[models]]\nname='a'\nmodel_uri='y'\n", "duplicate"),
        ("serve = [", "not valid TOML"),
    ],
)
def test_bad_config_names_the_field(tmp_path, text, needle):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert needle in info.value.message


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


def test_bad_env_value(monkeypatch):
    monkeypatch.setenv("LLMVM_SERVE__PORT", "not-a-port")
    with pytest.raises(ConfigError, match="serve.port"):
        load_config()


def test_secrets_are_masked(monkeypatch):
    monkeypatch.setenv("LLMVM_SERVE__API_KEYS", '["sk-secret-1"]')
    monkeypatch.setenv("LLMVM_TEACHER__API_KEY", "sk-teacher")
    config = load_config()
    assert config.serve.api_keys[0].get_secret_value() == "sk-secret-1"
    shown = str(config.masked())
    assert "sk-secret-1" not in shown and "sk-teacher" not in shown


def test_overrides_keep_secrets_from_other_sources(monkeypatch):
    monkeypatch.setenv("LLMVM_SERVE__API_KEYS", '["k1"]')
    config = load_config(overrides={"serve": {"port": 1234}})
    assert config.serve.port == 1234
    assert [k.get_secret_value() for k in config.serve.api_keys] == ["k1"]


def test_generated_reference_is_fresh():
    """docs/configuration.md is generated; regenerate with `llmvm config docs`."""
    doc = ROOT / "docs" / "configuration.md"
    assert doc.read_text() == render_reference(), "stale: run `llmvm config docs`"


def test_key_value_options_parse_json_values_and_name_the_option_when_malformed():
    from llmvm_ray.config import parse_assignments
    from llmvm_ray.errors import ConfigError

    parsed = parse_assignments(["lr=0.002", 'targets=["q_proj"]', "name=run a", "x=="], "--p")
    assert parsed == {"lr": 0.002, "targets": ["q_proj"], "name": "run a", "x": "="}
    assert parse_assignments(["n=3"], "--metadata", as_json=False) == {"n": "3"}
    with pytest.raises(ConfigError, match=r"--set 'oops': expected KEY=VALUE \(hint\)"):
        parse_assignments(["oops"], "--set", hint=" (hint)")
    with pytest.raises(ConfigError, match="--p '=1'"):
        parse_assignments(["=1"], "--p")
