"""The agents on real parts: an optimizing service (tiny local teacher and student on Ray
Serve), agent runs in Ray actors, the knowledge-tool server, over HTTP.

The tiny model is untrained, so its decisions are noise: these tests pin the plumbing, not
accuracy — every run ends (answer or "don't know") with a trace whose model calls went
through ``/v1/complete`` (teacher, one optimizer task per decision step, recorded), through
the pool's actors, with bad input refused as 4xx naming the field.
"""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.ray

KEY = "sk-agents"


@pytest.fixture(scope="module")
def agent_service(ray_session, serve_port, knowledge, tmp_path_factory):
    from llmvm_ray.config import load_config
    from llmvm_ray.dev.tiny import build_tiny_model
    from llmvm_ray.serve.deploy import ServiceRunner

    root = tmp_path_factory.mktemp("agents-service")
    # Long enough positions for the steps' contexts (instructions + tool list).
    model = build_tiny_model(root / "tiny", max_position_embeddings=2048, seed=3)
    config = load_config(
        overrides={
            "storage_path": str(root / "storage"),
            "registry": {"actor_name": "test-agents-registry"},
            "serve": {
                "port": serve_port,
                "app_name": "test-agents",
                "route_prefix": "/test-agents",
                "api_keys": [KEY],
            },
            "teacher": {"model": "teacher"},
            "optimizer": {"student_model": "student", "min_train_examples": 1000},
            "agents": {
                "allow_private_networks": True,  # the knowledge-tool server is on loopback
                "pool_size": 1,
                "runs_per_actor": 4,
                "max_model_calls": 8,
                "step_max_tokens": 8,
            },
            "models": [
                {"name": "teacher", "model_uri": str(model), "num_cpus": 0.25},
                {"name": "student", "model_uri": str(model), "num_cpus": 0.25},
            ],
        }
    )
    runner = ServiceRunner(config, shutdown_ray=False).start()
    tools = [t.model_dump() for t in knowledge.tools()[:2]]
    with httpx.Client(
        base_url=runner.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120
    ) as http:
        yield http, tools, runner.url, config
    runner.stop()


@pytest.mark.parametrize("agent", ["rebel", "backward", "flat"])
def test_agent_run_over_http_goes_through_the_optimizer(agent_service, agent):
    http, tools, _, _ = agent_service
    question = "What is the capital of the birthplace of Rumi?"
    r = http.post("/v1/agents/runs", json={"agent": agent, "question": question, "tools": tools})
    assert r.status_code == 200, r.text
    run = r.json()
    assert run["object"] == "agent.run" and run["agent"] == agent
    assert run["question"] == question
    assert run["status"] in ("answered", "dont_know")
    if run["status"] == "dont_know":
        assert run["reason"] and run["events"][-1]["kind"] == "give_up"
    calls = run["model_calls"]
    assert 1 <= len(calls) <= 8
    assert all(c["served_by"] == "teacher" and c["task_id"] for c in calls)
    # One optimizer task per decision step (the context), whatever the question.
    by_step: dict[str, set[str]] = {}
    for c in calls:
        by_step.setdefault(c["step"], set()).add(c["task_id"])
    task_ids = set().union(*by_step.values())
    steps_of = {t: {s for s, ids in by_step.items() if t in ids} for t in task_ids}
    assert all(len(s) == 1 for s in steps_of.values())
    listed = {t["id"] for t in http.get("/v1/tasks").json()["data"]}
    assert task_ids <= listed


def test_complete_with_tools_answers_with_rebel(agent_service):
    http, tools, _, _ = agent_service
    r = http.post(
        "/v1/complete",
        json={"prompt": "What is the capital of Ghana?", "context": "", "tools": tools},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == 200 and isinstance(body["completion"], str) and body["completion"]
    assert body["agent"]["agent"] == "rebel"
    assert body["agent"]["answer"] == body["completion"]
    assert body["agent"]["model_calls"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {"agent": "rebel", "question": "q", "tools": [{"description": "x", "url": "ftp://h/"}]},
            "tools.0.url",
        ),
        ({"agent": "sherlock", "question": "q"}, "agent"),
        ({"agent": "flat"}, "question"),
        ({"agent": "flat", "question": ""}, "question"),
    ],
)
def test_bad_agent_requests_are_4xx_naming_the_field(agent_service, body, param):
    http, _, _, _ = agent_service
    r = http.post("/v1/agents/runs", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_complete_with_invalid_tool_is_400(agent_service):
    http, _, _, _ = agent_service
    bad = {
        "description": "x",
        "url": "http://h/",
        "static_params": {"a": 1},
        "dynamic_params": {"a": "overrides the static one"},
    }
    r = http.post("/v1/complete", json={"prompt": "p", "context": "", "tools": [bad]})
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("tools")


def test_agents_need_the_key(agent_service):
    _, _, url, _ = agent_service
    r = httpx.post(f"{url}/v1/agents/runs", json={"question": "q"})
    assert r.status_code == 401


def test_pool_runs_many_in_parallel_and_survives_a_dead_actor(agent_service, ray_session):
    from llmvm_ray.agents.api import AgentJob, AgentPool, ModelSpec

    http, tools, url, config = agent_service
    spec = ModelSpec(url=url, api_key=KEY, finetune=False)
    agents_config = config.agents.model_copy(update={"max_model_calls": 3})
    pool = AgentPool(agents_config, size=2, runs_per_actor=2)
    try:
        jobs = [
            AgentJob(agent=a, question=f"Where was person {i} born?", tools=tools, model=spec)
            for i, a in enumerate(["flat", "rebel", "backward"] * 2)
        ]
        seen: list[int] = []
        results = pool.run_many(jobs, progress=lambda done, total, _: seen.append(done))
        assert [r.question for r in results] == [j.question for j in jobs]
        assert [r.agent for r in results] == [j.agent for j in jobs]
        assert seen == list(range(1, len(jobs) + 1))
        assert all(r.model_calls and len(r.model_calls) <= 3 for r in results)
        # A killed actor turns its runs into "don't know", not a hang or an exception.
        ray_session.kill(pool.actors[0])
        after = pool.run_many(jobs[:2])
        reasons = [r.reason or "" for r in after]
        assert any(reason.startswith("actor_failed") for reason in reasons)
    finally:
        pool.shutdown()


def test_eval_cli_scores_an_agent_against_the_service(agent_service, tmp_path):
    from typer.testing import CliRunner

    from llmvm_ray.cli import app

    _, _, url, _ = agent_service
    cfg = tmp_path / "agents.toml"
    cfg.write_text(
        "[agents]\nmax_model_calls = 4\nstep_max_tokens = 8\npool_size = 1\nruns_per_actor = 4\n"
    )
    out = tmp_path / "report.json"
    args = ["agent", "eval", "--agent", "flat", "--url", url, "--api-key", KEY]
    args += ["--per-category", "1", "--config", str(cfg), "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (report,) = __import__("json").loads(out.read_text())
    assert report["agent"] == "flat" and report["overall"]["questions"] == 12
    assert len(report["categories"]) == 12
    overall = report["overall"]
    assert 0 <= overall["accuracy"] <= 1
    assert 1 <= overall["model_calls_per_question"] <= 4
    assert "api_key" not in report["model"]
    assert "agent flat: accuracy" in result.stdout


def test_any_openai_compatible_model_can_drive_an_agent(agent_service):
    from llmvm_ray.agents.api import ModelSpec, run_agent
    from llmvm_ray.config import AgentsConfig

    _, tools, url, _ = agent_service
    spec = ModelSpec(kind="openai", url=f"{url}/v1", model="teacher", api_key=KEY)
    config = AgentsConfig(max_model_calls=4, step_max_tokens=8, allow_private_networks=True)
    result = run_agent("Where was Rumi born?", tools, agent="rebel", model=spec, config=config)
    assert result.model_calls and all(c.served_by == "base" for c in result.model_calls)
    assert result.status in ("answered", "dont_know")


def test_llmvm_client_complete_with_tools(agent_service):
    from llmvm_ray.client import Client

    _, tools, url, _ = agent_service
    with Client(url=url, api_key=KEY) as client:
        out = client.complete("Where was Rumi born?", context="", tools=tools)
    assert out["status"] == 200 and out["agent"]["agent"] == "rebel"
    assert out["completion"] == out["agent"]["answer"]
