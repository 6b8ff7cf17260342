"""``EngineProcess``: an ``Engine`` running in a child process, with the Engine's interface.

Why: a batch's decoding loop is Python (transformers' ``generate`` plus our per-row
processors), and on a GPU it is *only* Python: the kernels are tiny and asynchronous, so the
thread that launches them holds the GIL almost all the time. In a Serve replica the same GIL
also runs the replica's request handling (Ray task receipt and serialization, Serve's
bookkeeping, our validation), and every request's handling then stalls the decoding thread.
Measured on an H200, Serve answered about two thirds of the requests/s of the same engine
in-process (benchmarks/RESULTS.md, "On a GPU (issue 2 §8)"). vLLM splits its API server and
engine core into two processes for the same reason. Here the replica keeps its event loop
and batcher, and the child process does nothing but run the engine.

The two sides talk over a private socket pair (``multiprocessing.connection`` framing,
pickled tuples). Parent to child: ``(kind, call_id, args)``. Child to parent:
``("reply", call_id, (ok, value))``, ``("delta", call_id, StreamDelta)`` while a streamed
batch decodes, ``("result", call_id, GenerationResult)`` as each request finishes (before the
batch's reply), ``("rejected", call_id, (request_id, error))`` for an invalid joiner,
``("event", None, args)`` for adapter events. A continuous batch's inbox is mirrored: the
parent forwards what is put into its ``RequestInbox`` as ``("join", call_id, requests)`` and
its closing as ``("close_inbox", call_id, None)`` into the child's own inbox. In the child,
one thread reads messages: ``validate``, ``render_chat`` and ``count_tokens`` are answered
there at once (the Engine does not lock for them), aborts and joiners are noted, adapter
operations get a thread each (the Engine runs them between two decoding steps), and batches
queue for the main thread, so an abort or a joiner is seen while a batch runs.

Lifecycle: the child exits when the parent closes the connection or dies (its end of the
socket pair closes with it), so a killed replica leaves no engine behind. A child that dies
fails the calls in flight with ``ServiceUnavailableError`` and makes ``check`` raise, which
Serve's health check turns into a replica restart.

No Ray in here: ``python -m llmvm_ray.engine.process FD`` is the child's entry point.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from functools import partial
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from llmvm_ray.engine.inbox import RequestInbox
from llmvm_ray.engine.types import AdapterRef, GenerationRequest, GenerationResult, StreamDelta
from llmvm_ray.errors import ServiceUnavailableError

if TYPE_CHECKING:
    from llmvm_ray.config import ModelConfig
    from llmvm_ray.engine.adapters import AdapterEventHook

logger = logging.getLogger(__name__)

# How often a waiting ``generate`` polls ``should_abort`` and forwards new aborts.
_ABORT_POLL_S = 0.02
# Calls the child answers on its reading thread, without waiting for a running batch.
_INLINE = frozenset({"validate", "render_chat", "count_tokens", "stats"})
# Calls the child answers on a thread of their own: the Engine queues them between steps.
_ADAPTER_OPS = frozenset({"load_adapter", "unload_adapter", "loaded_adapters"})


class EngineProcess:
    """The ``Engine`` interface (generate, validate, adapters, ...) served by a child process.

    Every method may be called from any thread. Construction blocks until the child has
    loaded the model; a child that fails to start raises its error here.
    """

    def __init__(
        self, model_config: ModelConfig, on_adapter_event: AdapterEventHook | None = None
    ) -> None:
        parent_sock, child_sock = socket.socketpair()
        # The child imports this package from wherever the parent did (a Ray working_dir,
        # a source checkout), not only from site-packages.
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "llmvm_ray.engine.process", str(child_sock.fileno())],
            pass_fds=(child_sock.fileno(),),
            stdin=subprocess.DEVNULL,
            env=env,
        )
        child_sock.close()
        self._conn = Connection(parent_sock.detach())
        self._send_lock = threading.Lock()
        self._ids = itertools.count()
        self._pending: dict[int, Future] = {}
        self._deltas: dict[int, Callable[[StreamDelta], None]] = {}
        self._results: dict[int, Callable[[GenerationResult], None]] = {}
        self._rejects: dict[int, Callable[[str, Exception], None]] = {}
        self._on_adapter_event = on_adapter_event
        self._dead: str | None = None
        self._send(("start", 0, model_config))
        ready = self._await_start()
        self.model_name: str = ready["model_name"]
        self.max_model_len: int = ready["max_model_len"]
        self._reader = threading.Thread(target=self._read, name="engine-process-reader")
        self._reader.daemon = True
        self._reader.start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    # --- the Engine interface ------------------------------------------------------------
    def generate(
        self,
        requests: list[GenerationRequest],
        on_delta: Callable[[StreamDelta], None] | None = None,
        should_abort: Callable[[str], bool] | None = None,
        on_result: Callable[[GenerationResult], None] | None = None,
        inbox: RequestInbox | None = None,
    ) -> list[GenerationResult]:
        """``Engine.generate`` in the child. ``should_abort`` is polled here (every 20 ms)
        for the requests still decoding, and each newly aborted request is forwarded, so
        the child stops it at its next step. What is put into ``inbox`` is forwarded as soon
        as it arrives."""
        if not requests and inbox is None:
            return []
        waiting = {r.request_id for r in requests}  # not finished: polled for aborts
        lock = threading.Lock()  # ``waiting`` shrinks on the reading thread

        def finished(request_id: str) -> None:
            with lock:
                waiting.discard(request_id)

        def result(value: GenerationResult) -> None:
            finished(value.request_id)
            if on_result is not None:
                on_result(value)

        def reject(request_id: str, error: Exception) -> None:
            finished(request_id)
            assert inbox is not None
            inbox.reject(request_id, error)

        # A continuous batch can run for as long as traffic lasts: its results must come
        # back one by one, or the requests polled for aborts would only ever grow.
        early = on_result is not None or inbox is not None
        call_id, future = self._submit(
            "generate",
            (requests, on_delta is not None, early, inbox.max_rows if inbox else None),
            on_delta,
            result if early else None,
            reject if inbox is not None else None,
        )
        forwarding = inbox is not None
        while True:
            if forwarding:
                assert inbox is not None
                inbox.wait(_ABORT_POLL_S)
                closed = inbox.closed  # read before taking: nothing is put after closing
                joiners = inbox.take()
                if joiners:
                    with lock:
                        waiting.update(r.request_id for r in joiners)
                    self._send(("join", call_id, joiners))
                if closed:
                    self._send(("close_inbox", call_id, None))
                    forwarding = False
                if not future.done():
                    self._forward_aborts(waiting, lock, should_abort)
                    continue
            try:
                return future.result(timeout=_ABORT_POLL_S)
            except FutureTimeout:
                self._forward_aborts(waiting, lock, should_abort)

    def _forward_aborts(
        self,
        waiting: set[str],
        lock: threading.Lock,
        should_abort: Callable[[str], bool] | None,
    ) -> None:
        if should_abort is None:
            return
        with lock:
            polled = list(waiting)
        for request_id in [r for r in polled if should_abort(r)]:
            with lock:
                if request_id not in waiting:
                    continue  # finished meanwhile: nothing to stop
                waiting.discard(request_id)
            self._send(("abort", -1, request_id))

    def validate(self, request: GenerationRequest) -> int:
        return self._call("validate", request)

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        return self._call("render_chat", messages)

    def count_tokens(self, text: str) -> int:
        return self._call("count_tokens", text)

    def stats(self) -> dict[str, int]:
        return self._call("stats")

    def load_adapter(self, ref: AdapterRef) -> None:
        self._call("load_adapter", ref)

    def unload_adapter(self, name: str) -> None:
        self._call("unload_adapter", name)

    def loaded_adapters(self) -> list[str]:
        return self._call("loaded_adapters")

    # --- health and shutdown -------------------------------------------------------------
    def check(self) -> None:
        """Raise ``ServiceUnavailableError`` if the child has died."""
        if self._dead is not None:
            raise ServiceUnavailableError(self._dead)

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the child (it finishes the batch it is running), killing it after
        ``timeout_s``. Idempotent."""
        if self._proc.poll() is None:
            with contextlib.suppress(OSError):
                self._send(("close", -1, None))
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._conn.close()

    # --- plumbing ------------------------------------------------------------------------
    def _call(self, kind: str, *args: Any) -> Any:
        return self._submit(kind, args)[1].result()

    def _submit(
        self,
        kind: str,
        args: Any,
        on_delta: Callable[[StreamDelta], None] | None = None,
        on_result: Callable[[GenerationResult], None] | None = None,
        reject: Callable[[str, Exception], None] | None = None,
    ) -> tuple[int, Future]:
        self.check()
        call_id = next(self._ids)
        future: Future = Future()
        self._pending[call_id] = future
        if on_delta is not None:
            self._deltas[call_id] = on_delta
        if on_result is not None:
            self._results[call_id] = on_result
        if reject is not None:
            self._rejects[call_id] = reject
        try:
            self._send((kind, call_id, args))
        except OSError as exc:
            self._forget(call_id)
            self._pending.pop(call_id, None)
            raise ServiceUnavailableError(f"engine process unreachable: {exc}") from exc
        if self._dead is not None:  # died between the check and the registration
            self._fail_pending()
        return call_id, future

    def _send(self, message: tuple) -> None:
        with self._send_lock:
            self._conn.send(message)

    def _await_start(self) -> dict[str, Any]:
        while not self._conn.poll(1.0):
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"the engine process exited with code {self._proc.returncode} while "
                    "loading the model (its error is in this replica's log)"
                )
        kind, _, payload = self._conn.recv()
        if kind == "failed":
            self._proc.wait()
            raise payload
        return payload

    def _read(self) -> None:
        """The reading thread: route replies, deltas and adapter events until EOF."""
        try:
            while True:
                kind, call_id, payload = self._conn.recv()
                if kind == "reply":
                    ok, value = payload
                    self._forget(call_id)
                    future = self._pending.pop(call_id)
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
                elif kind == "delta":
                    self._deliver(call_id, payload)
                elif kind == "result":
                    on_result = self._results.get(call_id)
                    if on_result is not None:
                        try:
                            on_result(payload)
                        except Exception:  # as in the Engine: the batch goes on
                            logger.exception("on_result failed for %r", payload.request_id)
                elif kind == "rejected":
                    reject = self._rejects.get(call_id)
                    if reject is not None:
                        reject(*payload)
                elif kind == "event" and self._on_adapter_event is not None:
                    try:
                        self._on_adapter_event(*payload)
                    except Exception:  # a metrics hook must not stop the replies
                        logger.exception("adapter event hook failed")
        except (EOFError, OSError):
            pass
        code = self._proc.wait()
        self._dead = f"the engine process exited (code {code})"
        if code != 0:
            logger.error("%s", self._dead)
        self._fail_pending()

    def _deliver(self, call_id: int, delta: StreamDelta) -> None:
        """Hand ``delta`` to its call's consumer; a consumer that raises aborts its request,
        as with an in-process Engine."""
        on_delta = self._deltas.get(call_id)
        if on_delta is None:
            return
        try:
            on_delta(delta)
        except Exception:  # noqa: BLE001 - the consumer's failure ends its request only
            self._send(("abort", -1, delta.request_id))

    def _forget(self, call_id: int) -> None:
        """Drop a finished call's callbacks."""
        self._deltas.pop(call_id, None)
        self._results.pop(call_id, None)
        self._rejects.pop(call_id, None)

    def _fail_pending(self) -> None:
        while self._pending:
            try:
                call_id, future = self._pending.popitem()
            except KeyError:  # emptied by the other thread
                return
            self._forget(call_id)
            with contextlib.suppress(InvalidStateError):
                future.set_exception(ServiceUnavailableError(self._dead or "engine process died"))


# --- the child ---------------------------------------------------------------------------
class _Aborts:
    """The child's record of aborted requests, kept to the requests it is running.

    An abort can cross a request's result on the socket (the parent polled before the
    result arrived): noted blindly, such ids would stay for the life of the child, and a
    continuous batch can run as long as traffic does. So aborts count only for running
    requests, and a request's abort is forgotten with its result. The reading thread notes
    starts and aborts; the decoding thread asks and finishes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[int, set[str]] = {}  # call id -> its requests not yet finished
        self._aborted: set[str] = set()

    def start(self, call_id: int, request_ids: list[str]) -> None:
        with self._lock:
            self._running.setdefault(call_id, set()).update(request_ids)

    def abort(self, request_id: str) -> None:
        with self._lock:
            if any(request_id in ids for ids in self._running.values()):
                self._aborted.add(request_id)

    def finish(self, call_id: int, request_id: str) -> None:
        with self._lock:
            self._running.get(call_id, set()).discard(request_id)
            self._aborted.discard(request_id)

    def end(self, call_id: int) -> None:
        """The call is over: forget its requests, finished or not."""
        with self._lock:
            self._aborted.difference_update(self._running.pop(call_id, ()))

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._aborted

    def __len__(self) -> int:
        return len(self._aborted)


def _child(conn: Connection) -> None:
    """Load the engine, then serve calls until the parent closes the connection."""
    send_lock = threading.Lock()

    def send(message: tuple) -> None:
        with send_lock:
            conn.send(message)

    def send_error(
        kind: str,
        call_id: int | None,
        exc: BaseException,
        wrap: Callable[[Any], Any] | None = None,
    ) -> None:
        """Send ``exc`` (as ``wrap(exc)``), or a RuntimeError naming it when it does not
        pickle."""
        wrap = wrap or (lambda error: error)
        try:
            send((kind, call_id, wrap(exc)))
        except Exception:  # noqa: BLE001 - pickling failed; the text still helps
            send((kind, call_id, wrap(RuntimeError(f"{type(exc).__name__}: {exc}"))))

    _, _, config = conn.recv()
    try:
        import torch

        from llmvm_ray.engine.engine import Engine

        torch.set_num_threads(max(1, int(config.num_cpus)))
        engine = Engine(config, on_adapter_event=lambda *args: send(("event", None, args)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        send_error("failed", None, exc)
        return
    send(("ready", None, {"model_name": engine.model_name, "max_model_len": engine.max_model_len}))

    aborted = _Aborts()
    inboxes: dict[int, RequestInbox] = {}  # running continuous batches' inboxes
    work: queue.Queue = queue.Queue()

    def forward(kind: str, call_id: int) -> Callable[[Any], None]:
        """A callback sending each value it gets as a ``kind`` message of ``call_id``."""
        return lambda value: send((kind, call_id, value))

    def forward_result(call_id: int, result: GenerationResult) -> None:
        aborted.finish(call_id, result.request_id)
        send(("result", call_id, result))

    def reject(call_id: int, request_id: str, exc: Exception) -> None:
        aborted.finish(call_id, request_id)
        send_error("rejected", call_id, exc, lambda error: (request_id, error))

    def answer(call_id: int, call: Callable[[], Any]) -> None:
        try:
            value = call()
        except Exception as exc:  # noqa: BLE001 - the parent re-raises it in the caller
            send_error("reply", call_id, exc, lambda error: (False, error))
        else:
            send(("reply", call_id, (True, value)))

    def read() -> None:
        try:
            while True:
                kind, call_id, args = conn.recv()
                if kind == "abort":
                    aborted.abort(args)
                elif kind == "close":
                    break
                elif kind in _INLINE:
                    answer(call_id, partial(getattr(engine, kind), *args))
                elif kind in _ADAPTER_OPS:
                    call = partial(getattr(engine, kind), *args)
                    threading.Thread(target=answer, args=(call_id, call), daemon=True).start()
                elif kind in ("join", "close_inbox"):
                    inbox = inboxes.get(call_id)  # gone if its batch failed: ignore
                    if inbox is not None and kind == "join":
                        aborted.start(call_id, [request.request_id for request in args])
                        for request in args:
                            inbox.put(request)
                    elif inbox is not None:
                        inbox.close()
                else:
                    if kind == "generate":  # before any abort or joiner of it arrives
                        aborted.start(call_id, [request.request_id for request in args[0]])
                        if args[3] is not None:
                            inboxes[call_id] = RequestInbox(args[3], partial(reject, call_id))
                    work.put((kind, call_id, args))
        except (EOFError, OSError):
            os._exit(0)  # the parent is gone: nobody is waiting for the batch
        work.put(None)

    threading.Thread(target=read, name="engine-process-reader", daemon=True).start()
    while (job := work.get()) is not None:
        kind, call_id, args = job
        if kind == "generate":
            requests, stream, early, _ = args
            generate = partial(
                engine.generate,
                requests,
                forward("delta", call_id) if stream else None,
                aborted.__contains__,
                partial(forward_result, call_id) if early else None,
                inboxes.get(call_id),
            )
            answer(call_id, generate)
            inboxes.pop(call_id, None)
            aborted.end(call_id)
        else:
            answer(call_id, partial(getattr(engine, kind), *args))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s engine %(levelname)s %(message)s")
    conn = Connection(int(sys.argv[1]))
    try:
        _child(conn)
    finally:
        conn.close()


if __name__ == "__main__":
    main()
