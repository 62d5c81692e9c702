"""A small bounded pool of daemon threads for walk-away timeouts and bulkheads.

`concurrent.futures.ThreadPoolExecutor` joins its threads at interpreter
exit, so one call that never returns would hang the process on the way out.
A walk-away timeout exists for exactly such calls, hence daemon threads here.
A full pool refuses new work at once instead of queueing it, unless the
caller bounds the work itself (a `Bulkhead` hands out a slot per call) and
asks for ``reject_when_busy=False``: then work beyond ``max_workers`` waits
for the next free worker, which is a moment away.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any

from ._context import VAR, Raw
from ._errors import RejectedError

_Work = tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...]]


class WorkerPool:
    """At most ``max_workers`` calls running at once; more are rejected (or queued, if asked)."""

    def __init__(
        self,
        max_workers: int,
        name: str,
        *,
        reject_when_busy: bool = True,
        idle_seconds: float = 30.0,
    ) -> None:
        self.max_workers = max_workers
        self.name = name
        self.reject_when_busy = reject_when_busy
        self.idle_seconds = idle_seconds
        """A worker with nothing to do for this long exits (a new one starts when needed)."""
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._queue: queue.SimpleQueue[_Work] = queue.SimpleQueue()
        self._threads = 0
        self._busy = 0

    @property
    def busy(self) -> int:
        """Calls running now, abandoned ones included."""
        return self._busy

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until no call is running; False if ``timeout`` (real seconds) ran out first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    def submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            if self.reject_when_busy and self._busy >= self.max_workers:
                raise RejectedError(
                    f"{self.name}: all {self.max_workers} walk-away workers are busy "
                    "(calls that timed out may still be running)",
                    name=self.name,
                )
            self._busy += 1
            start = self._threads < self._busy and self._threads < self.max_workers
            if start:
                self._threads += 1
        self._queue.put((future, fn, args))
        if start:
            threading.Thread(target=self._work, name=f"resilience-{self.name}", daemon=True).start()
        return future

    @property
    def threads(self) -> int:
        """Worker threads alive now (idle ones exit after ``idle_seconds``)."""
        return self._threads

    def _work(self) -> None:
        while True:
            try:
                future, fn, args = self._queue.get(timeout=self.idle_seconds)
            except queue.Empty:
                with self._lock:
                    # Leave only while more workers exist than calls to run, so
                    # every call submitted (even one not queued yet) has a worker.
                    if self._threads > self._busy:
                        self._threads -= 1
                        return
                continue
            try:
                if future.set_running_or_notify_cancel():
                    try:
                        value = fn(*args)
                    except BaseException as exc:  # handed to the caller, never swallowed
                        future.set_exception(exc)
                    else:
                        future.set_result(value)
            finally:
                del future, fn, args
                with self._lock:
                    self._busy -= 1
                    if self._busy == 0:
                        self._idle.notify_all()


def hand_off(
    pool: WorkerPool,
    raw: Raw,
    next: Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], Any],
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    done: Callable[[], None] | None = None,
) -> concurrent.futures.Future[Any]:
    """Run ``next(fn, args, kwargs)`` on a worker, in a copy of the caller's context.

    The worker's call record is ``raw`` (its own deadline, say); ``done()``
    runs when the call really ends, on the worker, whether the caller still
    waits for it or not. The walk-away `Timeout` and a thread-isolated
    `Bulkhead` hand their calls over this way.
    """
    context = contextvars.copy_context()
    return pool.submit(context.run, _run_as, raw, next, fn, args, kwargs, done)


def _run_as(
    raw: Raw,
    next: Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], Any],
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    done: Callable[[], None] | None,
) -> Any:
    VAR.set(raw)  # inside a copied context of its own: nothing to restore
    try:
        return next(fn, args, kwargs)
    finally:
        if done is not None:
            done()
