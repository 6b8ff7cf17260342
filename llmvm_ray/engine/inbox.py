"""``RequestInbox``: how requests reach a batch that is already decoding.

A serving layer hands ``Engine.generate`` an inbox along with the requests it starts with;
while that call runs, the serving layer ``put`` s newly arrived requests in, and the decoding
loop takes them at its next step boundary and joins them to the running batch (continuous
batching). The call ends once its rows are done AND its inbox is closed: the serving layer,
which knows what it has handed over and what has come back, closes it when it has nothing
more, so no request can slip in between "the engine decided to stop" and "the caller put one
more". Thread-safe; no Ray and no torch in here.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from llmvm_ray.engine.types import GenerationRequest

# ``reject(request_id, error)``: a request taken from the inbox was invalid (or could not be
# served); it never produces a result, its caller gets ``error`` instead.
Reject = Callable[[str, Exception], None]


class RequestInbox:
    """Requests waiting to join a running ``Engine.generate`` (see module docstring).

    ``max_rows`` caps the rows the running batch holds at once (a request with ``n`` choices
    takes ``n``); requests beyond it wait here, in order, until rows finish.
    """

    def __init__(self, max_rows: int, reject: Reject) -> None:
        if max_rows < 1:
            raise ValueError("max_rows must be >= 1")
        self.max_rows = max_rows
        self.reject = reject
        self._items: deque[GenerationRequest] = deque()
        self._closed = False
        self._changed = threading.Condition()

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, request: GenerationRequest) -> bool:
        """Queue ``request``; False (and nothing queued) if the inbox is closed."""
        with self._changed:
            if self._closed:
                return False
            self._items.append(request)
            self._changed.notify_all()
            return True

    def close(self) -> None:
        """No more requests: the running call ends once its rows are done."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def take(self) -> list[GenerationRequest]:
        """Everything queued, oldest first (without waiting)."""
        with self._changed:
            items = list(self._items)
            self._items.clear()
            return items

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a request is queued or the inbox is closed (or ``timeout`` passes);
        True when there is something to take or the inbox is closed."""
        with self._changed:
            return self._changed.wait_for(lambda: self._items or self._closed, timeout)
