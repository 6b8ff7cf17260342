"""LoRA adapters: mixed batches, on-demand loading, LRU eviction, reloads, bad adapters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from llmvm_ray.engine import AdapterRef, Engine
from llmvm_ray.errors import InvalidRequestError
from tests.engine.helpers import long_sample, model_config, req, texts


def ref(adapters: dict[str, Path], name: str, as_name: str | None = None) -> AdapterRef:
    return AdapterRef(as_name or name, str(adapters[name]))


@pytest.fixture()
def fresh_engine(tiny_llama: Path) -> Engine:
    """An engine of its own (adapter state changes), holding at most 2 adapters."""
    return Engine(model_config(Path(tiny_llama), max_adapters_per_replica=2))


def test_mixed_adapter_batch_rows_equal_running_alone(
    engine: Engine, lora_adapters: dict[str, Path]
) -> None:
    alpha, beta = ref(lora_adapters, "alpha"), ref(lora_adapters, "beta")
    seed, _ = long_sample(engine)
    requests = [
        req("base", temperature=0, max_tokens=10),
        req("alpha", temperature=0, max_tokens=10, adapter=alpha),
        req("beta", temperature=0, max_tokens=10, adapter=beta),
        req("alpha-sampled", seed=seed, max_tokens=10, adapter=alpha),
        req("base-sampled", seed=seed, max_tokens=10),
    ]
    alone = {r.request_id: texts(engine.generate([r]))[r.request_id] for r in requests}
    assert texts(engine.generate(requests)) == alone
    assert texts(engine.generate(requests[::-1])) == alone
    # the adapters really change the model, and differently
    assert len({alone["base"][0], alone["alpha"][0], alone["beta"][0]}) == 3
    assert alone["alpha-sampled"] != alone["base-sampled"]
    results = engine.generate(requests[:2])
    assert [r.adapter for r in results] == [None, "alpha"]


def test_base_rows_are_unchanged_by_loaded_adapters(
    tiny_llama: Path, lora_adapters: dict[str, Path]
) -> None:
    engine = Engine(model_config(Path(tiny_llama)))
    base = req("base", temperature=0, max_tokens=10)
    before = texts(engine.generate([base]))
    engine.load_adapter(ref(lora_adapters, "alpha"))
    assert texts(engine.generate([base])) == before
    engine.unload_adapter("alpha")
    assert engine.loaded_adapters() == []
    assert texts(engine.generate([base])) == before


def test_lru_eviction(fresh_engine: Engine, lora_adapters: dict[str, Path]) -> None:
    alpha, beta, gamma = (ref(lora_adapters, n) for n in ("alpha", "beta", "gamma"))
    fresh_engine.generate([req("a", adapter=alpha, max_tokens=2)])
    fresh_engine.generate([req("b", adapter=beta, max_tokens=2)])
    assert fresh_engine.loaded_adapters() == ["alpha", "beta"]
    fresh_engine.generate([req("a", adapter=alpha, max_tokens=2)])  # alpha is now most recent
    fresh_engine.generate([req("c", adapter=gamma, max_tokens=2)])
    assert fresh_engine.loaded_adapters() == ["alpha", "gamma"]  # beta was least recent
    fresh_engine.load_adapter(beta)
    assert fresh_engine.loaded_adapters() == ["gamma", "beta"]


def test_evicted_adapter_gives_the_same_text_when_reloaded(
    fresh_engine: Engine, lora_adapters: dict[str, Path]
) -> None:
    alpha = ref(lora_adapters, "alpha")
    request = req("a", seed=5, max_tokens=10, adapter=alpha)
    first = texts(fresh_engine.generate([request]))
    fresh_engine.load_adapter(ref(lora_adapters, "beta"))
    fresh_engine.load_adapter(ref(lora_adapters, "gamma"))
    assert "alpha" not in fresh_engine.loaded_adapters()
    assert texts(fresh_engine.generate([request])) == first


def test_batch_with_more_adapters_than_slots(
    fresh_engine: Engine, engine: Engine, lora_adapters: dict[str, Path]
) -> None:
    requests = [
        req(name, temperature=0, max_tokens=8, adapter=ref(lora_adapters, name))
        for name in ("alpha", "beta", "gamma")
    ]
    expected = {r.request_id: texts(engine.generate([r]))[r.request_id] for r in requests}
    assert texts(fresh_engine.generate(requests)) == expected
    assert len(fresh_engine.loaded_adapters()) == 2


def test_same_name_new_path_reloads(fresh_engine: Engine, lora_adapters: dict[str, Path]) -> None:
    v1 = ref(lora_adapters, "alpha", as_name="task")
    v2 = ref(lora_adapters, "beta", as_name="task")
    out_v1 = texts(fresh_engine.generate([req("x", temperature=0, max_tokens=10, adapter=v1)]))
    out_v2 = texts(fresh_engine.generate([req("x", temperature=0, max_tokens=10, adapter=v2)]))
    assert out_v1 != out_v2
    assert fresh_engine.loaded_adapters() == ["task"]
    direct = texts(
        fresh_engine.generate(
            [req("x", temperature=0, max_tokens=10, adapter=ref(lora_adapters, "beta"))]
        )
    )
    assert out_v2 == direct


def test_unload_is_idempotent(fresh_engine: Engine, lora_adapters: dict[str, Path]) -> None:
    fresh_engine.load_adapter(ref(lora_adapters, "alpha"))
    fresh_engine.load_adapter(ref(lora_adapters, "beta"))
    fresh_engine.unload_adapter("alpha")
    fresh_engine.unload_adapter("alpha")
    fresh_engine.unload_adapter("never-loaded")
    assert fresh_engine.loaded_adapters() == ["beta"]
    fresh_engine.unload_adapter("beta")
    fresh_engine.unload_adapter("beta")
    assert fresh_engine.loaded_adapters() == []
    assert fresh_engine.generate([req("x", max_tokens=3)])[0].choices[0].completion_tokens <= 3


def test_adapter_from_a_uri(
    fresh_engine: Engine, engine: Engine, lora_adapters: dict[str, Path]
) -> None:
    uri = AdapterRef("alpha", Path(lora_adapters["alpha"]).as_uri())  # file:///...
    request = req("x", temperature=0, max_tokens=10)
    expected = texts(
        engine.generate(
            [req("x", temperature=0, max_tokens=10, adapter=ref(lora_adapters, "alpha"))]
        )
    )
    got = fresh_engine.generate([req("x", temperature=0, max_tokens=10, adapter=uri)])
    assert texts(got) == expected
    assert texts(fresh_engine.generate([request])) != expected


def test_missing_or_invalid_adapters_are_rejected(
    fresh_engine: Engine, lora_adapters: dict[str, Path], tmp_path: Path
) -> None:
    not_lora = tmp_path / "not-lora"
    shutil.copytree(lora_adapters["alpha"], not_lora)
    config = json.loads((not_lora / "adapter_config.json").read_text())
    (not_lora / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "IA3"}))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{not json")
    wrong_shapes = tmp_path / "wrong"
    shutil.copytree(lora_adapters["alpha"], wrong_shapes)
    (wrong_shapes / "adapter_model.safetensors").write_bytes(b"garbage")
    for path in (tmp_path / "missing", tmp_path, not_lora, broken):
        request = req("x", adapter=AdapterRef("bad", str(path)))
        with pytest.raises(InvalidRequestError) as info:
            fresh_engine.validate(request)
        assert info.value.param == "model"
        with pytest.raises(InvalidRequestError):
            fresh_engine.generate([request])
    base = req("base", temperature=0, max_tokens=10)
    before = texts(fresh_engine.generate([base]))
    for loaded in ([], ["alpha"]):  # failing as the first adapter, and beside another one
        with pytest.raises(InvalidRequestError) as info:
            fresh_engine.load_adapter(AdapterRef("bad", str(wrong_shapes)))
        assert info.value.param == "model"
        assert fresh_engine.loaded_adapters() == loaded
        assert texts(fresh_engine.generate([base])) == before  # no half-loaded layers left
        fresh_engine.load_adapter(ref(lora_adapters, "alpha"))
    fresh_engine.unload_adapter("alpha")
    with pytest.raises(InvalidRequestError):
        fresh_engine.validate(req("x", adapter=AdapterRef("__base__", str(lora_adapters["alpha"]))))
    # nothing half-loaded is left behind, and the engine still works
    assert fresh_engine.loaded_adapters() == []
    fresh_engine.generate([req("ok", max_tokens=2, adapter=ref(lora_adapters, "alpha"))])
    assert fresh_engine.loaded_adapters() == ["alpha"]


def test_adapter_events_reach_the_hook(tiny_llama: Path, lora_adapters: dict[str, Path]) -> None:
    """Loads and every way an adapter leaves are reported (the replica's metrics use them)."""
    events: list[tuple[str, int]] = []
    engine = Engine(
        model_config(Path(tiny_llama), max_adapters_per_replica=2),
        on_adapter_event=lambda kind, loaded, seconds: events.append((kind, loaded)),
    )
    engine.load_adapter(ref(lora_adapters, "alpha"))
    engine.load_adapter(ref(lora_adapters, "beta"))
    engine.generate([req("g", temperature=0, max_tokens=2, adapter=ref(lora_adapters, "gamma"))])
    engine.load_adapter(ref(lora_adapters, "alpha", as_name="gamma"))  # new path, same name
    engine.unload_adapter("beta")
    engine.unload_adapter("beta")  # idempotent: nothing more to report
    assert events == [
        ("load", 1),
        ("load", 2),
        ("lru", 1),  # alpha, least recently used, makes room for gamma
        ("load", 2),
        ("replaced", 1),
        ("load", 2),
        ("unload", 1),
    ]


def test_the_engine_client_loads_and_unloads_adapters_ahead_of_traffic(
    tiny_llama: Path, lora_adapters: dict[str, Path]
) -> None:
    """The contract's adapter calls: loaded before any request names it, the text the same
    as an on-demand load's, freed again."""
    import asyncio

    from llmvm_ray.engine import build_engine

    client = build_engine(model_config(tiny_llama, engine_process="off"))
    alpha = ref(lora_adapters, "alpha")

    async def main() -> tuple[list[str], str, list[str]]:
        await client.load_adapter(alpha)
        loaded = await client.loaded_adapters()
        result = await client.generate(req("a", seed=3, adapter=alpha))
        await client.unload_adapter("alpha")
        await client.unload_adapter("alpha")  # idempotent
        return loaded, result.choices[0].text, await client.loaded_adapters()

    loaded, text, after = asyncio.run(main())
    client.close()
    fresh = build_engine(model_config(tiny_llama, engine_process="off"))
    on_demand = asyncio.run(fresh.generate(req("b", seed=3, adapter=alpha)))
    fresh.close()
    assert loaded == ["alpha"] and after == []
    assert text == on_demand.choices[0].text
