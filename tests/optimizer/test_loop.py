"""The optimizing loop end to end, on real parts: a trained tiny teacher served as a remote
OpenAI-compatible endpoint (its own Serve app), a pretrained tiny student base, the optimizer
actor, Ray Train fine-tunes, the registry, Parquet rows, and the official clients.

One story, asserted at every transition: requests are answered by the teacher and recorded →
a first fine-tune on too few rows fails the gate (task stays on the teacher) → more rows → a
retrain passes the gate → the student answers (teacher off the request path, same seed same
text) → tenants stay isolated → the teacher changes (drift) → shadow agreement drops → the task
rolls back to the teacher → the teacher goes down → clear 5xx, nothing recorded.
"""

from __future__ import annotations

import random
import time

import httpx
import openai
import pytest

from llmvm_ray.client import Client, LLMVMClientError

pytestmark = pytest.mark.ray

KEY_A = "sk-tenant-a"
KEY_B = "sk-tenant-b"
FIRST_RUN_EXAMPLES = 8  # train rows at the first fine-tune: too few, the gate must fail
GROWTH = 12.0  # the retrain waits for 12x the rows (~100 train rows: the recipe needs >= 64)


def _start_loop(root, serve_port, teacher_dir, student_dir, name, train_overrides, optimizer=None):
    """Deploy a teacher app (a remote OpenAI-compatible endpoint) and the optimizing app."""
    from ray import serve

    from llmvm_ray.config import load_config
    from llmvm_ray.serve.builder import build_app
    from llmvm_ray.serve.deploy import ServiceRunner

    teacher_app = f"{name}-teacher"

    def deploy_teacher(model_dir):
        cfg = load_config(
            overrides={
                "storage_path": str(root / "teacher-storage"),
                "optimizer": {"enabled": False},
                "serve": {
                    "port": serve_port,
                    "app_name": teacher_app,
                    "route_prefix": f"/{teacher_app}",
                },
                "models": [{"name": "teacher", "model_uri": str(model_dir), "num_cpus": 0.5}],
            }
        )
        serve.run(build_app(cfg), name=teacher_app, route_prefix=f"/{teacher_app}")

    deploy_teacher(teacher_dir)
    # 1 row in 4 is held out: the first fine-tune sees FIRST_RUN_EXAMPLES train rows.
    config = load_config(
        overrides={
            "storage_path": str(root / "storage"),
            "registry": {"actor_name": f"{name}-registry"},
            "serve": {
                "port": serve_port,
                "app_name": name,
                "route_prefix": f"/{name}",
                "api_keys": [KEY_A, KEY_B],
            },
            "teacher": {
                "base_url": f"http://127.0.0.1:{serve_port}/{teacher_app}/v1",
                "model": "teacher",
                "max_retries": 0,
                "timeout_s": 30,
            },
            "optimizer": {
                "student_model": "student",
                "min_train_examples": FIRST_RUN_EXAMPLES,
                "holdout_fraction": 0.25,
                "min_holdout": 2,
                "retrain_growth": GROWTH,
                "gate_threshold": 0.9,
                "shadow_rate": 1.0,
                "min_shadow_samples": 4,
                "shadow_window": 6,
                "drift_threshold": 0.75,
                "flush_rows": 8,
                "flush_interval_s": 0.3,
                "default_max_tokens": 16,
                "train_overrides": train_overrides,
                **(optimizer or {}),
            },
            "train": {"resources_per_worker": {"CPU": 0.5}},
            "models": [{"name": "student", "model_uri": str(student_dir), "num_cpus": 0.5}],
        }
    )
    runner = ServiceRunner(config, shutdown_ray=False).start()
    return runner, deploy_teacher, teacher_app


QUICK_TRAINING = {"method": "lora", "max_steps": 4, "batch_size": 4}


@pytest.fixture(scope="module")
def quick_models(tmp_path_factory):
    """A briefly trained teacher (writes date-like answers) and an untrained student that
    cannot match it: built once for the quick tests."""
    from llmvm_ray.dev.tiny import build_tiny_model, make_teacher

    root = tmp_path_factory.mktemp("quick-models")
    make_teacher(root / "teacher", "date", steps=60)
    build_tiny_model(root / "student", seed=2)
    return root / "teacher", root / "student"


@pytest.fixture(scope="module")
def quick_loop(ray_session, serve_port, tmp_path_factory, quick_models):
    """Tiny models and a few training steps: every transition up to a gate that must fail,
    in a minute or two."""
    from ray import serve

    from llmvm_ray.dev.tasks import get_task

    root = tmp_path_factory.mktemp("quick-loop")
    runner, deploy_teacher, teacher_app = _start_loop(
        root, serve_port, *quick_models, "quick", QUICK_TRAINING
    )
    yield {
        "url": runner.url,
        "task": get_task("date"),
        "teacher_app": teacher_app,
        "config": runner.config,
    }
    runner.stop()
    serve.delete(teacher_app)


@pytest.fixture(scope="module")
def guided_loop(ray_session, serve_port, tmp_path_factory, quick_models):
    """A validity gate: a student that always writes a valid date under the task's
    constraint passes, so promotion happens after a few training steps."""
    from ray import serve

    from llmvm_ray.dev.tasks import get_task

    runner, _, teacher_app = _start_loop(
        tmp_path_factory.mktemp("guided-loop"),
        serve_port,
        *quick_models,
        "guided",
        QUICK_TRAINING,
        optimizer={"gate_metric": "valid", "gate_threshold": 1.0, "shadow_rate": 0.0},
    )
    yield {"url": runner.url, "task": get_task("date")}
    runner.stop()
    serve.delete(teacher_app)


@pytest.fixture(scope="module")
def failing_loop(ray_session, serve_port, tmp_path_factory, quick_models):
    """Every fine-tune of this app fails inside Ray Train (LoRA on a module the model lacks)."""
    from ray import serve

    from llmvm_ray.dev.tasks import get_task

    runner, _, teacher_app = _start_loop(
        tmp_path_factory.mktemp("failing-loop"),
        serve_port,
        *quick_models,
        "failing",
        {**QUICK_TRAINING, "lora_target_modules": ["no_such_module"]},
    )
    yield {"url": runner.url, "task": get_task("date")}
    runner.stop()
    serve.delete(teacher_app)


@pytest.fixture(scope="module")
def drift_loop(ray_session, serve_port, tmp_path_factory, quick_models):
    """A gate that promotes any student (threshold 0) and shadows every request: the
    untrained student disagrees with the teacher, so the task must roll back."""
    from ray import serve

    from llmvm_ray.dev.tasks import get_task

    runner, _, teacher_app = _start_loop(
        tmp_path_factory.mktemp("drift-loop"),
        serve_port,
        *quick_models,
        "drift",
        QUICK_TRAINING,
        optimizer={"gate_threshold": 0.0, "retrain_growth": 1000.0},
    )
    yield {"url": runner.url, "task": get_task("date")}
    runner.stop()
    serve.delete(teacher_app)


@pytest.fixture(scope="module")
def loop(ray_session, serve_port, tmp_path_factory):
    """A trained teacher (>= 95 % on the task) and a pretrained student base."""
    from ray import serve

    from llmvm_ray.dev.student import STUDENT_LORA_RECIPE, make_student_base
    from llmvm_ray.dev.tasks import get_task
    from llmvm_ray.dev.tiny import build_tiny_model, make_teacher

    root = tmp_path_factory.mktemp("loop")
    task = get_task("date")
    accuracy = make_teacher(root / "teacher", task)
    assert accuracy >= 0.95, accuracy
    build_tiny_model(root / "drifted", seed=5)  # an untrained model: disagrees with everyone
    make_student_base(root / "student")
    runner, deploy_teacher, teacher_app = _start_loop(
        root, serve_port, root / "teacher", root / "student", "loop", STUDENT_LORA_RECIPE
    )
    yield {
        "url": runner.url,
        "task": task,
        "deploy_teacher": deploy_teacher,
        "teacher_app": teacher_app,
        "root": root,
    }
    runner.stop()
    serve.delete(teacher_app)


def wait_for(predicate, timeout_s=600, poll_s=0.5, what="condition", detail=None):
    """Poll ``predicate`` until truthy; on timeout say what was awaited and, with ``detail``
    (e.g. the task view), the state it was stuck in."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out waiting for {what}" + (f": {detail()}" if detail else ""))


def asker(task, seed=1):
    rng = random.Random(seed)
    prompts = iter(task.sample_split(rng, "train") for _ in range(10_000))

    def ask(client, finetune=True, seed=None):
        source, target = next(prompts)
        r = client.complete(
            task.dynamic_prompt(source), context=task.context, finetune=finetune, seed=seed
        )
        assert r["status"] == 200
        return r, target

    return ask


def first_answers(client, ask, task, url):
    """A task's first two answers: one through LLM-VM's Client, one through the OpenAI
    endpoint (model "llmvm" + the context extension); both from the teacher, one task.
    Returns the first answer, its expected target, the task id and the OpenAI client."""
    first, target = ask(client)
    meta = first["llmvm"]
    assert meta["served_by"] == "teacher" and meta["base_model"] == "teacher"
    oa = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY_A, max_retries=0)
    r = oa.completions.create(
        model="llmvm",
        prompt=task.dynamic_prompt("June 1, 1999"),
        temperature=0,
        max_tokens=16,
        extra_body={"context": task.context, "finetune": True},
    )
    assert r.llmvm["task_id"] == meta["task_id"] and r.llmvm["served_by"] == "teacher"
    return first, target, meta["task_id"], oa


def test_record_train_failing_gate_isolation_and_teacher_down(quick_loop):
    """Recording → fine-tune → a failing gate keeps the task on the teacher; tenants are
    isolated; a dead teacher is a clear 5xx and records nothing."""
    from ray import serve

    task, url = quick_loop["task"], quick_loop["url"]
    a = Client(url=url, api_key=KEY_A, big_model="teacher", small_model="student")
    b = Client(url=url, api_key=KEY_B, big_model="teacher", small_model="student")
    ask = asker(task)
    _, _, task_id, oa = first_answers(a, ask, task, url)
    waits_for = wait_for(lambda: a.task(task_id)["next_fine_tune_waits_for"], what="a reason")
    assert "more training examples" in waits_for, waits_for
    # So does chat: system messages are the context, the user message the dynamic prompt.
    chat = oa.chat.completions.create(
        model="llmvm",
        messages=[
            {"role": "system", "content": task.context},
            {"role": "user", "content": task.dynamic_prompt("July 4, 1976")},
        ],
        temperature=0,
        max_tokens=16,
        extra_body={"finetune": True},
    )
    assert chat.llmvm["task_id"] == task_id and chat.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as bad:
        oa.chat.completions.create(
            model="llmvm",
            messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
        )
    assert bad.value.body["param"] == "messages"
    # Sampling adjustments the optimizer's calls cannot carry are refused, not dropped.
    for field, value in (("frequency_penalty", 0.5), ("logit_bias", {"5": 1})):
        with pytest.raises(openai.BadRequestError) as bad:
            oa.completions.create(
                model="llmvm",
                prompt=task.dynamic_prompt("May 2, 2002"),
                max_tokens=4,
                extra_body={"context": task.context},
                **{field: value},
            )
        assert bad.value.body["param"] == field
    for _ in range(FIRST_RUN_EXAMPLES + 1):
        ask(a)
    view = wait_for(lambda: (t := a.task(task_id))["gate"] and t, what="the gate")
    assert view["examples"]["recorded"] == FIRST_RUN_EXAMPLES + 4
    assert view["examples"]["held_out"] == (FIRST_RUN_EXAMPLES + 4) // 4
    assert view["gate"]["passed"] is False and view["route"] == "teacher"
    assert len(view["fine_tunes"]) == 1
    assert [e["event"] for e in view["events"]][-2:] == ["finetune_started", "gate_failed"]
    assert ask(a)[0]["llmvm"]["served_by"] == "teacher"
    # Tenant isolation: B sees none of A's tasks.
    assert b.tasks() == []
    with pytest.raises(httpx.HTTPStatusError) as info:
        b.task(task_id)
    assert info.value.response.status_code == 404
    rb, _ = ask(b)
    assert rb["llmvm"]["task_id"] != task_id
    # The teacher goes down: a clear 5xx, nothing recorded, the task stays on the teacher.
    serve.delete(quick_loop["teacher_app"])
    before = a.task(task_id)["examples"]["recorded"]
    with pytest.raises(LLMVMClientError) as failure:
        ask(a)
    assert failure.value.status in (502, 503, 504)
    time.sleep(1)
    after = a.task(task_id)
    assert after["examples"]["recorded"] == before and after["route"] == "teacher"


def test_an_adapter_that_fails_to_load_is_never_promoted(quick_loop, tmp_path):
    """The gate runs a new adapter on the live student replica: one that cannot load scores
    0 with the error (so it is never promoted) and leaves the replica serving."""
    import asyncio

    from llmvm_ray.optimizer.actor import OptimizerActor

    broken = tmp_path / "adapter"
    broken.mkdir()
    (broken / "adapter_config.json").write_text(
        '{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}'
    )
    (broken / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    # A second view of the app's optimizer state (tasks and rows from its storage); its gate
    # talks to the app's real student replica.
    optimizer = OptimizerActor(quick_loop["config"])
    state = next(s for s in optimizer.tasks.values() if s.holdout)
    gate = asyncio.run(optimizer._gate(state, "ftjob-broken-adapter", str(broken)))
    assert gate.passed is False and gate.score == 0.0 and gate.examples == state.holdout
    assert gate.error, gate
    r = httpx.post(
        f"{quick_loop['url']}/v1/completions",
        json={"model": "student", "prompt": "Input: x\nOutput:", "max_tokens": 4},
        headers={"Authorization": f"Bearer {KEY_A}"},
        timeout=60,
    )
    assert r.status_code == 200, r.text


def test_a_failed_fine_tune_leaves_the_task_serving(failing_loop):
    task, url = failing_loop["task"], failing_loop["url"]
    a = Client(url=url, api_key=KEY_A, big_model="teacher", small_model="student")
    ask = asker(task, seed=9)
    task_id = ask(a)[0]["llmvm"]["task_id"]
    for _ in range(FIRST_RUN_EXAMPLES + 3):
        ask(a)
    ended = wait_for(
        lambda: next(
            (e for e in a.task(task_id)["events"] if e["event"] == "finetune_ended"), None
        ),
        what="the fine-tune to end",
        detail=lambda: a.task(task_id),
    )
    assert "FAILED" in ended["status"] and ended["error"], ended
    view = a.task(task_id)
    assert view["route"] == "teacher" and view["active_fine_tune"] is None and not view["gate"]
    assert ask(a)[0]["llmvm"]["served_by"] == "teacher"
    # A run that failed trained nothing: the next waits out finetune_retry_s, not for
    # retrain_growth times more rows.
    waits_for = view["next_fine_tune_waits_for"]
    assert "before retrying the fine-tune" in waits_for, waits_for


ISO_DATE = r" [0-9]{4}-[0-9]{2}-[0-9]{2}"


def test_a_guided_task_is_promoted_and_its_student_answers_under_the_constraint(guided_loop):
    """The constraint is part of the task: the teacher answers under it, the gate checks the
    student's validity under it, and once promoted the student decodes under it."""
    import re

    task, url = guided_loop["task"], guided_loop["url"]
    a = Client(url=url, api_key=KEY_A, big_model="teacher", small_model="student")
    rng = random.Random(3)

    def ask(**extra):
        source, _ = task.sample_split(rng, "train")
        r = a.complete(task.dynamic_prompt(source), context=task.context, **extra)
        assert re.fullmatch(ISO_DATE, r["completion"]), r
        return r

    first = ask(finetune=True, guided_regex=ISO_DATE)
    task_id = first["llmvm"]["task_id"]
    assert first["llmvm"]["served_by"] == "teacher"
    for _ in range(FIRST_RUN_EXAMPLES + 3):
        ask(finetune=True, guided_regex=ISO_DATE)
    view = wait_for(lambda: (t := a.task(task_id))["gate"] and t, what="the gate")
    assert view["gate"]["passed"] is True and view["gate"]["metric"] == "valid", view["gate"]
    assert view["route"] == "student"
    for _ in range(3):
        r = ask(guided_regex=ISO_DATE, seed=5)
        assert r["llmvm"]["served_by"] == "student" and r["llmvm"]["task_id"] == task_id
        assert r["llmvm"]["adapter"] == view["adapter"]
    # LLM-VM's own keyword (regex=) reaches the same task.
    assert ask(regex=ISO_DATE)["llmvm"]["task_id"] == task_id
    # Without the constraint it is another task, still on the teacher.
    source, _ = task.sample_split(rng, "train")
    plain = a.complete(task.dynamic_prompt(source), context=task.context)
    assert plain["llmvm"]["task_id"] != task_id and plain["llmvm"]["served_by"] == "teacher"


def test_promotion_shadow_checks_and_rollback_on_disagreement(drift_loop):
    """Promoted → the student answers (same seed, same text) while every answer is shadowed
    to the teacher → agreement falls under the drift threshold → back to the teacher."""
    task, url = drift_loop["task"], drift_loop["url"]
    a = Client(url=url, api_key=KEY_A, big_model="teacher", small_model="student")
    ask = asker(task, seed=5)
    task_id = ask(a)[0]["llmvm"]["task_id"]
    for _ in range(FIRST_RUN_EXAMPLES + 3):
        ask(a)
    view = wait_for(
        lambda: (t := a.task(task_id))["route"] == "student" and t,
        what="promotion",
        detail=lambda: a.task(task_id),
    )
    assert view["gate"]["passed"] is True and view["rollbacks"] == 0
    prompt = task.dynamic_prompt("May 2, 2010")
    same = [a.complete(prompt, context=task.context, seed=11) for _ in range(2)]
    assert all(r["llmvm"]["served_by"] == "student" for r in same)
    assert same[0]["completion"] == same[1]["completion"]
    assert same[0]["llmvm"]["seed"] == 11
    view = wait_for(
        lambda: (ask(a, finetune=False), (t := a.task(task_id))["route"] == "teacher" and t)[1],
        timeout_s=300,
        what="rollback",
    )
    assert view["rollbacks"] == 1
    rollback = view["events"][-1]
    assert rollback["event"] == "rollback" and rollback["agreement"] < 0.75, rollback
    assert ask(a)[0]["llmvm"]["served_by"] == "teacher"


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_record_gate_promote_shadow_rollback(loop):
    task = loop["task"]
    url = loop["url"]
    a = Client(url=url, api_key=KEY_A, big_model="teacher", small_model="student")
    b = Client(url=url, api_key=KEY_B, big_model="teacher", small_model="student")
    ask = asker(task)

    # -- 1. the teacher answers and every answer is recorded ----------------------------
    first, target, task_id, oa = first_answers(a, ask, task, url)
    assert task.score(first["completion"], target)
    for _ in range(FIRST_RUN_EXAMPLES + 2):
        ask(a)

    # -- 2. a first fine-tune on few rows fails the gate: the task stays on the teacher -
    view = wait_for(lambda: (t := a.task(task_id))["gate"] and t, what="first gate")
    assert view["gate"]["passed"] is False and view["route"] == "teacher"
    assert len(view["fine_tunes"]) == 1
    assert ask(a)[0]["llmvm"]["served_by"] == "teacher"

    # -- 3. more rows -> retrain -> the gate passes -> promotion -------------------------
    while len(a.task(task_id)["fine_tunes"]) < 2:  # the retrain starts at GROWTH x the rows
        ask(a)
    view = wait_for(
        lambda: (t := a.task(task_id))["route"] == "student" and t,
        timeout_s=1200,  # a 600-step fine-tune on a busy 2-core machine
        what="promotion",
        detail=lambda: a.task(task_id),
    )
    assert view["gate"]["passed"] is True and view["gate"]["score"] >= 0.9
    assert len(view["fine_tunes"]) == 2
    adapter = view["adapter"]
    assert f"student:{adapter}" in {m.id for m in oa.models.list().data}

    # -- 4. the student answers; same seed, same text -----------------------------------
    correct = 0
    for _ in range(10):
        r, target = ask(a, finetune=False, seed=3)
        assert r["llmvm"]["served_by"] == "student" and r["llmvm"]["adapter"] == adapter
        correct += task.score(r["completion"], target)
    assert correct >= 8
    again = [
        a.complete(
            task.dynamic_prompt("May 2, 2010"), context=task.context, seed=11, temperature=0
        )["completion"]
        for _ in range(2)
    ]
    assert again[0] == again[1]

    # -- 5. tenants are isolated -------------------------------------------------------
    assert b.tasks() == []
    with pytest.raises(httpx.HTTPStatusError) as info:
        b.task(task_id)
    assert info.value.response.status_code == 404
    ob = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY_B, max_retries=0)
    assert f"student:{adapter}" not in {m.id for m in ob.models.list().data}
    with pytest.raises(openai.NotFoundError):
        ob.completions.create(model=f"student:{adapter}", prompt="x", max_tokens=2)
    rb, _ = ask(b)
    assert rb["llmvm"]["served_by"] == "teacher" and rb["llmvm"]["task_id"] != task_id

    # -- 6. the teacher drifts: shadow agreement drops and the task rolls back ---------
    loop["deploy_teacher"](loop["root"] / "drifted")
    wait_for(
        lambda: (ask(a, finetune=False)[0], a.task(task_id)["route"] == "teacher")[1],
        timeout_s=300,
        what="rollback",
    )
    view = a.task(task_id)
    assert view["rollbacks"] == 1
    assert any(e["event"] == "rollback" for e in view["events"])
    assert ask(a)[0]["llmvm"]["served_by"] == "teacher"

    # -- 7. the teacher goes down: a clear 5xx and nothing recorded ---------------------
    from ray import serve

    serve.delete(loop["teacher_app"])
    before = a.task(task_id)["examples"]["recorded"]
    with pytest.raises(LLMVMClientError) as failure:
        ask(a)
    assert failure.value.status in (502, 503, 504)
    time.sleep(1)
    assert a.task(task_id)["examples"]["recorded"] == before
