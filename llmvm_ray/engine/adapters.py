"""LoRA adapters via PEFT: several named adapters on one base model, mixed in one batch.

The base model is wrapped in ONE ``PeftModel`` holding every loaded adapter; ``generate``
then gets ``adapter_names=[...]`` with one entry per row (``"__base__"`` for base rows), so a
batch mixes adapters freely and every row matches running alone, and a mixed batch is faster
than grouping by adapter (shared/ENVIRONMENT.md, "Batching, seeds, adapters"). Nobody calls
``set_adapter`` on the shared model.

At most ``max_loaded`` adapters stay in memory; the least recently used one goes when a new
one is needed. Adapters are addressed by name; the same name with a different path is
reloaded (a newly trained version). Paths may be local folders or ``pyarrow.fs`` URIs
(``s3://``, ``gs://``, ``file://``): remote adapters are copied to a temporary folder, loaded,
and the copy deleted.

Not thread-safe on its own: the ``Engine`` serializes every call with its lock, because a
forward pass reads the same PEFT state that loading and unloading change.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llmvm_ray.engine.types import AdapterRef
from llmvm_ray.errors import InvalidRequestError

logger = logging.getLogger(__name__)

BASE_ADAPTER_NAME = "__base__"  # PEFT's name for "no adapter" in adapter_names
ADAPTER_CONFIG_FILE = "adapter_config.json"
SUPPORTED_PEFT_TYPES = frozenset({"LORA"})  # mixed-adapter batches are a LoRA feature

# ``on_event(kind, loaded, seconds)``: kind is ``load`` or why an adapter left (``lru``,
# ``replaced``, ``unload``); loaded is how many stay in memory; seconds the load time. The
# serving layer turns these into metrics (the engine knows nothing of Ray).
AdapterEventHook = Callable[[str, int, float], None]


class AdapterManager:
    """Loads, evicts and names the adapters of one base model (see module docstring)."""

    def __init__(
        self,
        base_model: Any,
        device: Any,
        max_loaded: int,
        on_event: AdapterEventHook | None = None,
    ) -> None:
        if max_loaded < 1:
            raise ValueError("max_loaded must be >= 1")
        self._on_event = on_event
        self._base = base_model
        self._device = device
        self._max_loaded = max_loaded
        self._peft: Any = None  # the PeftModel, present while at least one adapter is loaded
        self._loaded: OrderedDict[str, str] = OrderedDict()  # name -> path, oldest use first

    @property
    def max_loaded(self) -> int:
        return self._max_loaded

    @property
    def model(self) -> Any:
        """The model to run: the PeftModel when adapters are loaded, else the base model."""
        return self._peft if self._peft is not None else self._base

    def names(self) -> list[str]:
        """Loaded adapter names, least recently used first."""
        return list(self._loaded)

    def check(self, ref: AdapterRef) -> None:
        """Raise InvalidRequestError (param ``model``) unless ``ref`` can be served."""
        _check_name(ref.name)
        if self._loaded.get(ref.name) == ref.path:
            return
        _read_adapter_config(ref.path)

    def ensure(self, refs: Iterable[AdapterRef]) -> None:
        """Make every adapter in ``refs`` loaded (evicting others, never one of ``refs``)."""
        needed = {ref.name: ref for ref in refs}
        if len(needed) > self._max_loaded:
            raise ValueError(f"{len(needed)} adapters needed at once, at most {self._max_loaded}")
        for ref in needed.values():
            self._load(ref, protected=set(needed))

    def load(self, ref: AdapterRef, keep: Iterable[str] = ()) -> None:
        """Load ``ref`` (a no-op when loaded from the same path; it becomes most recent),
        never evicting an adapter named in ``keep``."""
        self._load(ref, protected={ref.name, *keep})

    def unload(self, name: str) -> None:
        """Drop adapter ``name``. Idempotent: unknown names are ignored."""
        self._unload(name, "unload")

    def _unload(self, name: str, reason: str) -> None:
        if name not in self._loaded:
            return
        del self._loaded[name]
        if not self._loaded:
            # PEFT cannot run with zero adapters (it looks up the deleted active one):
            # take the LoRA layers out again and go back to the plain base model.
            self._base = self._peft.unload()
            self._peft = None
        else:
            self._peft.delete_adapter(name)
        logger.info("unloaded adapter %r (%s)", name, reason)
        self._emit(reason)

    def _emit(self, kind: str, seconds: float = 0.0) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(kind, len(self._loaded), seconds)
        except Exception:  # noqa: BLE001 - an observer must not break serving
            logger.warning("adapter event hook failed", exc_info=True)

    def adapter_names(self, rows: Sequence[str | None]) -> list[str] | None:
        """The ``adapter_names`` argument for a batch whose rows use ``rows`` adapters.

        None when no adapter is loaded (the plain base model needs no argument). When one
        is, every row must be named, base rows included, or PEFT would apply the active
        adapter to them.
        """
        if self._peft is None:
            return None
        for name in rows:
            if name is not None:
                self._loaded.move_to_end(name)
        return [name if name is not None else BASE_ADAPTER_NAME for name in rows]

    # --- internals -----------------------------------------------------------------------
    def _load(self, ref: AdapterRef, protected: set[str]) -> None:
        _check_name(ref.name)
        current = self._loaded.get(ref.name)
        if current == ref.path:
            self._loaded.move_to_end(ref.name)
            return
        config = _read_adapter_config(ref.path)  # validate before evicting anything
        if current is not None:
            logger.info("adapter %r moved from %s to %s: reloading", ref.name, current, ref.path)
            self._unload(ref.name, "replaced")
        while len(self._loaded) >= self._max_loaded:
            victim = next((n for n in self._loaded if n not in protected), None)
            if victim is None:
                raise ValueError("every loaded adapter is in use; cannot load another")
            logger.info("evicting adapter %r (least recently used)", victim)
            self._unload(victim, "lru")
        started = time.perf_counter()
        with _local_copy(ref.path) as folder:
            self._load_folder(ref, folder, config)
        self._loaded[ref.name] = ref.path
        logger.info("loaded adapter %r from %s", ref.name, ref.path)
        self._emit("load", time.perf_counter() - started)

    def _load_folder(self, ref: AdapterRef, folder: str, config: dict[str, Any]) -> None:
        """Inject ``ref``'s LoRA layers, then load its weights.

        Two steps (not ``PeftModel.from_pretrained``) so that a failure while loading weights
        (corrupt file, adapter for another base model) happens with ``self._peft`` already set
        and can be undone: ``from_pretrained`` failing would leave half-injected layers in
        the shared base model, silently changing every base row.
        """
        from peft import PeftConfig, PeftModel

        try:
            if self._peft is None:
                peft_config = PeftConfig.from_pretrained(folder)
                peft_config.inference_mode = True
                self._peft = PeftModel(self._base, peft_config, adapter_name=ref.name)
                self._peft.eval()
            self._peft.load_adapter(
                folder,
                adapter_name=ref.name,
                is_trainable=False,
                torch_device=str(self._device),
            )
        except Exception as exc:
            self._discard_partial(ref.name)
            raise InvalidRequestError(
                f"adapter {ref.name!r} at {ref.path} does not fit this model "
                f"(trained for {config.get('base_model_name_or_path')!r}?): {exc}",
                param="model",
            ) from exc

    def _discard_partial(self, name: str) -> None:
        """Undo a failed load so the shared model is left as it was."""
        if self._peft is None or name not in getattr(self._peft, "peft_config", {}):
            return
        if len(self._peft.peft_config) == 1:
            self._base = self._peft.unload()
            self._peft = None
        else:
            self._peft.delete_adapter(name)


def _check_name(name: str) -> None:
    if not name or name == BASE_ADAPTER_NAME:
        raise InvalidRequestError(f"invalid adapter name {name!r}", param="model")


def _is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _local_path(path: str) -> Path:
    return Path(path.removeprefix("file://")).expanduser()


def _read_adapter_config(path: str) -> dict[str, Any]:
    """The adapter's ``adapter_config.json``; InvalidRequestError if it is no LoRA adapter."""
    try:
        if _is_remote(path):
            import pyarrow.fs

            fs, root = pyarrow.fs.FileSystem.from_uri(path)
            with fs.open_input_stream(f"{root.rstrip('/')}/{ADAPTER_CONFIG_FILE}") as stream:
                text = stream.read().decode()
        else:
            text = (_local_path(path) / ADAPTER_CONFIG_FILE).read_text()
    except (OSError, ValueError) as exc:
        raise InvalidRequestError(
            f"no PEFT adapter at {path} (cannot read {ADAPTER_CONFIG_FILE})", param="model"
        ) from exc
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(
            f"{ADAPTER_CONFIG_FILE} at {path} is not valid JSON", param="model"
        ) from exc
    peft_type = config.get("peft_type") if isinstance(config, dict) else None
    if peft_type not in SUPPORTED_PEFT_TYPES:
        raise InvalidRequestError(
            f"adapter at {path} is {peft_type!r}; only LoRA adapters are served", param="model"
        )
    return config


@contextmanager
def _local_copy(path: str) -> Iterator[str]:
    """A local folder with the adapter's files: the folder itself, or a temporary copy of a
    remote one that is deleted afterwards (PEFT keeps the weights in memory)."""
    if not _is_remote(path):
        yield str(_local_path(path))
        return
    import pyarrow.fs

    tmp = tempfile.mkdtemp(prefix="llmvm-adapter-")
    try:
        try:
            pyarrow.fs.copy_files(path, tmp)
        except (OSError, ValueError) as exc:
            raise InvalidRequestError(
                f"cannot copy adapter from {path}: {exc}", param="model"
            ) from exc
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
