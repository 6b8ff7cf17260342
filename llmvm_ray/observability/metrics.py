"""Prometheus metrics through Ray's metrics API (``ray.util.metrics``).

Why Ray's API and not a ``prometheus_client`` registry per process: every Serve replica,
actor and job records into its own process, and Ray's metrics agent on each node exports all
of them on that node's metrics export port (``ray start --metrics-export-port``, or
``ray.config.metrics_export_port`` for a local Ray), where Prometheus scrapes them with
Ray's own service discovery. A replica-local ``/metrics`` only ever showed the one replica
that answered the scrape.

Exported names: Ray prefixes every custom metric with ``ray_`` and counters get ``_total``
(``llmvm_requests`` is scraped as ``ray_llmvm_requests_total``); every series also carries
Ray's ``WorkerId``, ``NodeAddress``, ``SessionName`` labels, so dashboards ``sum by`` the
labels below. ``exported_name`` gives the scraped name of a metric defined here.

Metric objects are created per process, by the classes below, in the replica or actor that
records (never at import): each class is instantiated once in its owner's ``__init__``.
Recording never raises: a metrics problem must not fail a request, a fine-tune or a batch.
Labels stay low-cardinality: no tenants, task ids, prompts or raw request paths.

Histograms: Ray (2.60) exports ``_bucket`` and ``_count`` exactly but computes ``_sum`` from
bucket midpoints (``open_telemetry_metric_recorder.py``), so ``_sum / _count`` is only as
precise as the buckets; use ``histogram_quantile`` over ``_bucket`` for latencies.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from llmvm_ray.protocol import LLMVMMetadata

logger = logging.getLogger(__name__)

# Seconds. Requests on CPU range from milliseconds to minutes (long generations).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# Fine-tunes and queue waits: seconds to hours.
FINETUNE_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)
# Loading an adapter (local folder or object store copy).
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# One synthesis batch: a few teacher calls to thousands.
BATCH_BUCKETS = (0.1, 0.5, 1, 5, 15, 30, 60, 300, 900, 3600, 14400)

Kind = Literal["counter", "gauge", "histogram"]

# Every metric this package records: name -> (kind, label keys, description). The single
# list the recording classes, the Grafana dashboard test and the docs draw from.
METRICS: dict[str, tuple[Kind, tuple[str, ...], str]] = {
    # -- HTTP ingress (one set per ingress replica) ------------------------------------------
    "llmvm_requests": (
        "counter",
        ("application", "endpoint", "model", "status"),
        "HTTP API requests by route, model (base model, `llmvm`, `none` or `unknown`) and "
        "status code.",
    ),
    "llmvm_request_latency_seconds": (
        "histogram",
        ("application", "endpoint", "model", "served_by"),
        "End-to-end latency of answered generation requests (to the last token).",
    ),
    "llmvm_time_to_first_token_seconds": (
        "histogram",
        ("application", "endpoint", "model"),
        "Time from a streamed request's arrival to its first generated token.",
    ),
    "llmvm_tokens": (
        "counter",
        ("application", "model", "served_by", "kind"),
        "Tokens of answered requests; kind is prompt (in) or completion (out).",
    ),
    # -- the optimizer actor (one per application) -----------------------------------------
    "llmvm_optimizer_answers": (
        "counter",
        ("application", "route"),
        "Optimizing requests answered, by route (teacher or student).",
    ),
    "llmvm_teacher_calls_saved": (
        "counter",
        ("application",),
        "Teacher calls avoided because a promoted student answered.",
    ),
    "llmvm_teacher_tokens_saved": (
        "counter",
        ("application",),
        "Tokens the teacher did not process because a student answered.",
    ),
    "llmvm_teacher_cost_saved": (
        "counter",
        ("application",),
        "Estimated teacher cost avoided: tokens saved x optimizer.teacher_cost_per_1k_tokens.",
    ),
    "llmvm_optimizer_shadow_checks": (
        "counter",
        ("application", "agree"),
        "Shadow comparisons of student against teacher answers (agree: true or false).",
    ),
    "llmvm_optimizer_rollbacks": (
        "counter",
        ("application",),
        "Tasks rolled back from a student to the teacher on drift.",
    ),
    "llmvm_optimizer_gates": (
        "counter",
        ("application", "result"),
        "Quality gates of new students (result: passed or failed).",
    ),
    "llmvm_optimizer_examples_recorded": (
        "counter",
        ("application", "source"),
        "Training examples recorded, by source (teacher, shadow, synthesis).",
    ),
    "llmvm_optimizer_tasks": (
        "gauge",
        ("application", "route"),
        "Tasks by current route (teacher or student).",
    ),
    # -- fine-tunes (the registry actor, one per cluster) -----------------------------------
    "llmvm_finetunes": (
        "gauge",
        ("registry", "status"),
        "Fine-tunes in the registry (its actor name) by status.",
    ),
    "llmvm_finetune_transitions": (
        "counter",
        ("registry", "status"),
        "Fine-tune status changes, by the status entered.",
    ),
    "llmvm_finetune_duration_seconds": (
        "histogram",
        ("registry", "status"),
        "Duration of finished fine-tunes, start (or creation) to end, by final status.",
    ),
    "llmvm_finetune_queue_seconds": (
        "histogram",
        ("registry",),
        "Time fine-tunes waited QUEUED before they started RUNNING.",
    ),
    # -- adapters on model replicas ---------------------------------------------------------
    "llmvm_adapter_loads": (
        "counter",
        ("application", "model"),
        "LoRA adapters loaded into a replica of base model `model`.",
    ),
    "llmvm_adapter_evictions": (
        "counter",
        ("application", "model", "reason"),
        "LoRA adapters dropped from a replica (reason: lru, replaced or unload).",
    ),
    "llmvm_adapter_load_seconds": (
        "histogram",
        ("application", "model"),
        "Time to load one LoRA adapter (including copying it from storage).",
    ),
    "llmvm_adapters_loaded": (
        "gauge",
        ("application", "model"),
        "LoRA adapters held in memory per replica (sum across replicas).",
    ),
    # -- the decoding loop of model replicas (pushed at each health check) ------------------
    "llmvm_decode_steps": (
        "counter",
        ("application", "model"),
        "Decoding steps (forward passes over the running rows) of base model `model`.",
    ),
    "llmvm_decode_rows": (
        "counter",
        ("application", "model"),
        "Rows decoded, summed over steps: over `llmvm_decode_steps`, the batch occupancy.",
    ),
    "llmvm_prefills": (
        "counter",
        ("application", "model"),
        "Prefill forwards (a batch's start, or requests joining a running batch).",
    ),
    "llmvm_prefill_rows": (
        "counter",
        ("application", "model"),
        "Rows prefilled: over `llmvm_prefills`, the rows per join.",
    ),
    # -- synthesis (see record_synthesis) --------------------------------------------------
    "llmvm_synthesis_requested": (
        "counter",
        ("origin",),
        "Examples asked of the teacher by synthesis.",
    ),
    "llmvm_synthesis_generated": (
        "counter",
        ("origin",),
        "Synthesized examples that parsed (before dedup and filters).",
    ),
    "llmvm_synthesis_kept": (
        "counter",
        ("origin",),
        "Synthesized examples kept and stored after dedup and filters.",
    ),
    "llmvm_synthesis_dropped": (
        "counter",
        ("origin", "reason"),
        "Synthesized examples dropped, by reason (e.g. parse_error, duplicate).",
    ),
    "llmvm_synthesis_teacher_calls": (
        "counter",
        ("origin",),
        "Teacher calls made by synthesis (retries included).",
    ),
    "llmvm_synthesis_batch_seconds": (
        "histogram",
        ("origin",),
        "Wall time of one synthesis batch.",
    ),
}

_BUCKETS = {
    "llmvm_request_latency_seconds": LATENCY_BUCKETS,
    "llmvm_time_to_first_token_seconds": LATENCY_BUCKETS,
    "llmvm_finetune_duration_seconds": FINETUNE_BUCKETS,
    "llmvm_finetune_queue_seconds": FINETUNE_BUCKETS,
    "llmvm_adapter_load_seconds": LOAD_BUCKETS,
    "llmvm_synthesis_batch_seconds": BATCH_BUCKETS,
}


def exported_name(name: str) -> str:
    """The name Prometheus scrapes for metric ``name`` (Ray adds ``ray_``; counters
    ``_total``; histograms are then ``_bucket``/``_sum``/``_count`` series of it)."""
    kind = METRICS[name][0]
    return f"ray_{name}_total" if kind == "counter" else f"ray_{name}"


class _Recorder:
    """Creates the Ray metric objects it is asked for, with default tags, and records
    into them without ever raising."""

    def __init__(self, names: tuple[str, ...], **default_tags: str) -> None:
        from ray.util import metrics as ray_metrics

        self._metrics: dict[str, Any] = {}
        for name in names:
            kind, keys, description = METRICS[name]
            if kind == "counter":
                metric = ray_metrics.Counter(name, description, tag_keys=keys)
            elif kind == "gauge":
                metric = ray_metrics.Gauge(name, description, tag_keys=keys)
            else:
                metric = ray_metrics.Histogram(
                    name, description, boundaries=list(_BUCKETS[name]), tag_keys=keys
                )
            defaults = {k: v for k, v in default_tags.items() if k in keys}
            if defaults:
                metric.set_default_tags(defaults)
            self._metrics[name] = metric

    def inc(self, name: str, value: float = 1.0, **tags: str) -> None:
        if value > 0:  # Ray's counters refuse 0
            self._record(name, "inc", value, tags)

    def set(self, name: str, value: float, **tags: str) -> None:
        self._record(name, "set", value, tags)

    def observe(self, name: str, value: float, **tags: str) -> None:
        self._record(name, "observe", max(0.0, value), tags)

    def _record(self, name: str, method: str, value: float, tags: dict[str, str]) -> None:
        try:
            getattr(self._metrics[name], method)(value, tags={k: str(v) for k, v in tags.items()})
        except Exception:  # noqa: BLE001 - metrics must never fail the work they observe
            logger.warning("could not record metric %s", name, exc_info=True)


# -- HTTP ingress -------------------------------------------------------------------------

# The service names endpoints by the API they serve; metrics label them by route path.
ROUTES = {
    "completions": "/v1/completions",
    "chat": "/v1/chat/completions",
    "complete": "/v1/complete",
}


class ServeMetrics:
    """Requests, latency, time to first token and tokens of one ingress replica."""

    NAMES = (
        "llmvm_requests",
        "llmvm_request_latency_seconds",
        "llmvm_time_to_first_token_seconds",
        "llmvm_tokens",
    )

    def __init__(self, application: str) -> None:
        self._r = _Recorder(self.NAMES, application=application)

    def observe(
        self,
        endpoint: str,
        model: str,
        meta: LLMVMMetadata,
        first_token_at: float | None = None,
        started: float | None = None,
    ) -> None:
        """One answered generation request, as the service sees it: ``endpoint`` is the
        API's short name (``completions``, ``chat``, ``complete``), labelled with its route
        path like ``llmvm_requests``; ``model`` the requested model, labelled by its base
        (adapters are counted by ``served_by``, not one label value each)."""
        first_token_s = None
        if first_token_at is not None and started is not None:
            first_token_s = first_token_at - started
        self.answered(
            ROUTES.get(endpoint, endpoint),
            model.partition(":")[0],
            meta.served_by,
            meta.latency_ms / 1000.0,
            meta.prompt_tokens,
            meta.completion_tokens,
            first_token_s,
        )

    def request(self, endpoint: str, model: str, status: int) -> None:
        """One HTTP request that got a response (any status)."""
        self._r.inc("llmvm_requests", endpoint=endpoint, model=model, status=str(status))

    def answered(
        self,
        endpoint: str,
        model: str,
        served_by: str,
        latency_s: float,
        prompt_tokens: int,
        completion_tokens: int,
        first_token_s: float | None = None,
    ) -> None:
        """One generation request answered in full."""
        r = self._r
        r.observe(
            "llmvm_request_latency_seconds",
            latency_s,
            endpoint=endpoint,
            model=model,
            served_by=served_by,
        )
        r.inc("llmvm_tokens", prompt_tokens, model=model, served_by=served_by, kind="prompt")
        r.inc(
            "llmvm_tokens", completion_tokens, model=model, served_by=served_by, kind="completion"
        )
        if first_token_s is not None:
            r.observe(
                "llmvm_time_to_first_token_seconds", first_token_s, endpoint=endpoint, model=model
            )


# -- the optimizer actor ------------------------------------------------------------------


class OptimizerMetrics:
    """Teacher/student share and savings, shadow checks, gates, rollbacks, recording."""

    NAMES = (
        "llmvm_optimizer_answers",
        "llmvm_teacher_calls_saved",
        "llmvm_teacher_tokens_saved",
        "llmvm_teacher_cost_saved",
        "llmvm_optimizer_shadow_checks",
        "llmvm_optimizer_rollbacks",
        "llmvm_optimizer_gates",
        "llmvm_optimizer_examples_recorded",
        "llmvm_optimizer_tasks",
    )

    def __init__(self, application: str, teacher_cost_per_1k_tokens: float) -> None:
        self._r = _Recorder(self.NAMES, application=application)
        self._cost_per_1k = teacher_cost_per_1k_tokens

    def answered(self, route: str, tokens: int) -> None:
        """One optimizing answer; a student's saves a teacher call and its tokens."""
        self._r.inc("llmvm_optimizer_answers", route=route)
        if route == "student":
            self._r.inc("llmvm_teacher_calls_saved")
            self._r.inc("llmvm_teacher_tokens_saved", tokens)
            self._r.inc("llmvm_teacher_cost_saved", tokens / 1000.0 * self._cost_per_1k)

    def shadow(self, agree: bool) -> None:
        self._r.inc("llmvm_optimizer_shadow_checks", agree=str(agree).lower())

    def rollback(self) -> None:
        self._r.inc("llmvm_optimizer_rollbacks")

    def gate(self, passed: bool) -> None:
        self._r.inc("llmvm_optimizer_gates", result="passed" if passed else "failed")

    def recorded(self, source: str, count: int = 1) -> None:
        self._r.inc("llmvm_optimizer_examples_recorded", count, source=source)

    def tasks(self, by_route: Mapping[str, int]) -> None:
        for route in ("teacher", "student"):
            self._r.set("llmvm_optimizer_tasks", by_route.get(route, 0), route=route)


# -- fine-tunes -----------------------------------------------------------------------------


class FinetuneMetrics:
    """Fine-tune states and durations, recorded by the registry (the one writer of status
    changes, so every transition is seen exactly once)."""

    NAMES = (
        "llmvm_finetunes",
        "llmvm_finetune_transitions",
        "llmvm_finetune_duration_seconds",
        "llmvm_finetune_queue_seconds",
    )

    def __init__(self, registry: str) -> None:
        self._r = _Recorder(self.NAMES, registry=registry)

    def counts(self, by_status: Mapping[str, int], statuses: tuple[str, ...]) -> None:
        """The gauge of runs per status (every status, zeros included)."""
        for status in statuses:
            self._r.set("llmvm_finetunes", by_status.get(status, 0), status=status)

    def transition(
        self,
        status: str,
        created_at: float,
        started_at: float | None,
        finished_at: float | None,
        terminal: bool,
    ) -> None:
        self._r.inc("llmvm_finetune_transitions", status=status)
        if status == "RUNNING" and started_at is not None:
            self._r.observe("llmvm_finetune_queue_seconds", started_at - created_at)
        if terminal and finished_at is not None:
            began = started_at if started_at is not None else created_at
            self._r.observe("llmvm_finetune_duration_seconds", finished_at - began, status=status)


# -- adapters -------------------------------------------------------------------------------


class AdapterMetrics:
    """Adapter loads and evictions of one model replica (fed by the engine's callback)."""

    NAMES = (
        "llmvm_adapter_loads",
        "llmvm_adapter_evictions",
        "llmvm_adapter_load_seconds",
        "llmvm_adapters_loaded",
    )

    def __init__(self, application: str, model: str) -> None:
        self._r = _Recorder(self.NAMES, application=application, model=model)

    def event(self, kind: str, loaded: int, seconds: float = 0.0) -> None:
        """``kind``: ``load`` or an eviction reason (``lru``, ``replaced``, ``unload``);
        ``loaded``: adapters in memory afterwards."""
        if kind == "load":
            self._r.inc("llmvm_adapter_loads")
            self._r.observe("llmvm_adapter_load_seconds", seconds)
        else:
            self._r.inc("llmvm_adapter_evictions", reason=kind)
        self._r.set("llmvm_adapters_loaded", loaded)


# -- decoding -------------------------------------------------------------------------------


class DecodeMetrics:
    """A model replica's decoding counters (the engine's cumulative ``stats()``), pushed as
    increments since the last reading: the engine keeps no Ray objects, so the replica reads
    it periodically (at each health check) and once more when asked for its info."""

    NAMES = ("llmvm_decode_steps", "llmvm_decode_rows", "llmvm_prefills", "llmvm_prefill_rows")
    _STATS = {  # engine stats key -> metric
        "steps": "llmvm_decode_steps",
        "row_steps": "llmvm_decode_rows",
        "prefills": "llmvm_prefills",
        "prefill_rows": "llmvm_prefill_rows",
    }

    def __init__(self, application: str, model: str) -> None:
        self._r = _Recorder(self.NAMES, application=application, model=model)
        self._last: dict[str, int] = {}

    def update(self, stats: Mapping[str, int]) -> None:
        for key, name in self._STATS.items():
            value = int(stats.get(key, 0))
            self._r.inc(name, value - self._last.get(key, 0))
            self._last[key] = value


# -- synthesis ------------------------------------------------------------------------------


class SynthesisMetrics:
    """Synthesis yields. Create one per worker/actor/job and call ``record`` per batch."""

    NAMES = (
        "llmvm_synthesis_requested",
        "llmvm_synthesis_generated",
        "llmvm_synthesis_kept",
        "llmvm_synthesis_dropped",
        "llmvm_synthesis_teacher_calls",
        "llmvm_synthesis_batch_seconds",
    )

    def __init__(self) -> None:
        self._r = _Recorder(self.NAMES)

    def record(
        self,
        requested: int,
        kept: int,
        *,
        generated: int | None = None,
        dropped: Mapping[str, int] | None = None,
        teacher_calls: int = 0,
        duration_s: float | None = None,
        origin: str = "batch",
    ) -> None:
        """See ``record_synthesis``."""
        r = self._r
        r.inc("llmvm_synthesis_requested", requested, origin=origin)
        r.inc("llmvm_synthesis_kept", kept, origin=origin)
        if generated is not None:
            r.inc("llmvm_synthesis_generated", generated, origin=origin)
        for reason, count in (dropped or {}).items():
            r.inc("llmvm_synthesis_dropped", count, origin=origin, reason=reason)
        r.inc("llmvm_synthesis_teacher_calls", teacher_calls, origin=origin)
        if duration_s is not None:
            r.observe("llmvm_synthesis_batch_seconds", duration_s, origin=origin)


def record_synthesis(
    requested: int,
    kept: int,
    *,
    generated: int | None = None,
    dropped: Mapping[str, int] | None = None,
    teacher_calls: int = 0,
    duration_s: float | None = None,
    origin: str = "batch",
    metrics: SynthesisMetrics | None = None,
) -> None:
    """Record one synthesis batch's yield.

    ``requested``: examples asked of the teacher; ``kept``: examples that survived parsing,
    dedup and filters and were stored; ``generated``: examples that parsed (before dedup);
    ``dropped``: counts by reason (``parse_error``, ``duplicate``, ``near_duplicate``,
    ``filtered``, ...: a small fixed set, never free text); ``teacher_calls``: calls made,
    retries included; ``duration_s``: the batch's wall time; ``origin``: where the batch
    ran (``batch`` job, ``optimizer``, ``api``: a small fixed set). Pass ``metrics`` (one
    ``SynthesisMetrics`` per process) when recording often; without it each call
    registers the metrics again, which Ray allows (same name, same totals) but costs more.
    """
    (metrics or SynthesisMetrics()).record(
        requested,
        kept,
        generated=generated,
        dropped=dropped,
        teacher_calls=teacher_calls,
        duration_s=duration_s,
        origin=origin,
    )
