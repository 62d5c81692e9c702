"""`Bulkhead`: cap the calls in flight to one dependency, with a short FIFO queue."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any, Literal

from ._clock import Clock, validate_clock, wait_future
from ._context import VAR, Raw, effective_deadline, remaining
from ._errors import BulkheadFullError, DeadlineCut
from ._middleware import AsyncEndpoint, Endpoint, Middleware, terminal
from ._pool import WorkerPool
from ._validate import integer, optional_name
from ._validate import seconds as _seconds
from ._waiters import Waiter, WaiterQueue, await_turn, wait_turn

__all__ = ["Bulkhead", "BulkheadEvent", "BulkheadMetrics"]

logger = logging.getLogger("resilience")

Isolation = Literal["thread"]


@dataclass(frozen=True, slots=True)
class BulkheadEvent:
    """Sent to the bulkhead's listeners when a call waited for a slot or was refused."""

    name: str | None
    """The bulkhead's name."""
    outcome: Literal["waited", "rejected"]
    seconds: float
    """Seconds the call spent in the queue (0 for a call refused at once)."""
    error: BulkheadFullError | None = None
    """The refusal, for "rejected"."""


@dataclass(frozen=True, slots=True)
class BulkheadMetrics:
    """A snapshot of a `Bulkhead`."""

    in_flight: int
    """Calls holding a slot now (with thread isolation: running on the pool)."""
    available: int
    """Free slots now: ``max_concurrent - in_flight``."""
    queued: int
    """Calls waiting for a slot."""
    rejected: int
    """Calls refused since the bulkhead was made (full queue, or no slot in time)."""


class Slots:
    """The bulkhead's core: slot accounting and its FIFO queue, no I/O.

    The free slots are items in a `deque`: taking one is an atomic ``pop``,
    giving it back an atomic ``append``, so the fast path needs no lock.
    The mutex guards the queue only. A call that gives a slot back while
    somebody waits hands it on under the mutex (`hand_over`), and a waiter
    that joins the queue serves it once more after joining, so a slot given
    back in between is never left idle. It is the `Gate` of its
    `WaiterQueue`.
    """

    __slots__ = ("clock", "free", "mutex", "queue", "rejected")

    def __init__(self, size: int, clock: Clock) -> None:
        self.clock = clock
        self.free: deque[None] = deque([None] * size)
        self.mutex = threading.Lock()
        self.queue = WaiterQueue(self)
        self.rejected = 0

    def lock(self) -> None:
        self.mutex.acquire()

    def unlock(self) -> None:
        self.mutex.release()

    def take(self, cost: float, now: float) -> bool:
        try:
            self.free.pop()
        except IndexError:
            return False
        return True

    def ready_at(self, cost: float, now: float) -> None:
        return None  # only a release can tell

    def give_back(self, cost: float, now: float) -> None:
        self.free.append(None)

    def hand_over(self) -> None:
        """A slot came back while calls wait: give it to the first of them."""
        self.mutex.acquire()
        try:
            self.queue.serve(0.0)
        finally:
            self.mutex.release()

    def release(self) -> None:
        """Give a slot back (from any thread, with or without waiters)."""
        self.free.append(None)
        if self.queue.count:
            self.hand_over()


def _run_in_slot(
    release: Callable[[], None],
    raw: Raw,
    next: Endpoint,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """Run on a pool worker inside a copied context; the slot comes back when the call ends."""
    VAR.set(raw)  # a context of its own: nothing to restore
    try:
        return next(fn, args, kwargs)
    finally:
        release()


class Bulkhead(Middleware):
    """Let at most ``max_concurrent`` calls run at once; queue a few, refuse the rest.

    A call that finds every slot taken waits in a FIFO queue of at most
    ``max_queue`` calls (default 0: no queue) for up to ``max_wait`` seconds
    (default None: as long as it takes, but never past the call's
    deadline). Beyond that it is rejected at once with `BulkheadFullError`,
    whose ``retry_after`` is the ``retry_after`` hint given here, if any.

    A slot is always given back: when the call returns or raises, and when
    it is cancelled while running or while queued. One instance keeps one
    account for every thread, task and event loop that uses it.

    With ``isolation="thread"``, sync calls run on the bulkhead's own pool
    of ``max_concurrent`` daemon threads, with a copy of the caller's
    context: the caller waits for the result until the call's deadline (set
    by an outer `Timeout`) and then leaves with `TimeoutExceeded`, while the
    call runs on, holding its slot, on the pool. A hung dependency then
    holds the pool's threads, not the callers'. Async calls always run on
    their event loop.

    ``with bulkhead:`` and ``async with bulkhead:`` hold a slot for a block
    of code.
    """

    kind = "bulkhead"

    def __init__(
        self,
        max_concurrent: int,
        *,
        max_queue: int = 0,
        max_wait: float | timedelta | None = None,
        isolation: Isolation | None = None,
        retry_after: float | timedelta | None = None,
        clock: Clock | None = None,
        name: str | None = None,
    ) -> None:
        self.max_concurrent = integer(max_concurrent, "max_concurrent", minimum=1)
        self.max_queue = integer(max_queue, "max_queue", minimum=0)
        self.max_wait = (
            None if max_wait is None else _seconds(max_wait, "max_wait", allow_zero=True)
        )
        if isolation not in (None, "thread"):
            raise ValueError(f"isolation must be None or 'thread', got {isolation!r}")
        self.isolation: Isolation | None = isolation
        self.retry_after = (
            None if retry_after is None else _seconds(retry_after, "retry_after", allow_zero=True)
        )
        self.clock = validate_clock(clock)
        self.name = optional_name(name)
        self._slots = Slots(self.max_concurrent, self.clock)
        self._pool: WorkerPool | None = None
        self._pool_lock = threading.Lock()

    # -- description and observation --------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "max_concurrent": self.max_concurrent,
            "max_queue": self.max_queue,
            "max_wait": self.max_wait,
        }
        if self.isolation is not None:
            out["isolation"] = self.isolation
        return out

    def __repr__(self) -> str:
        label = f"{self.name!r}, " if self.name else ""
        extra = f", max_queue={self.max_queue}" if self.max_queue else ""
        if self.max_wait is not None:
            extra += f", max_wait={self.max_wait:g}"
        if self.isolation is not None:
            extra += f", isolation={self.isolation!r}"
        return f"Bulkhead({label}max_concurrent={self.max_concurrent}{extra})"

    @property
    def in_flight(self) -> int:
        """Calls holding a slot now."""
        return self.max_concurrent - len(self._slots.free)

    @property
    def available(self) -> int:
        """Free slots now."""
        return len(self._slots.free)

    @property
    def queued(self) -> int:
        """Calls waiting for a slot now."""
        return self._slots.queue.count

    @property
    def rejected(self) -> int:
        """Calls refused since the bulkhead was made."""
        return self._slots.rejected

    def metrics(self) -> BulkheadMetrics:
        """A consistent snapshot of the slots, the queue and the refusals."""
        slots = self._slots
        slots.lock()
        try:
            free = len(slots.free)
            return BulkheadMetrics(
                in_flight=self.max_concurrent - free,
                available=free,
                queued=slots.queue.count,
                rejected=slots.rejected,
            )
        finally:
            slots.unlock()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait for isolated calls still running on the pool, abandoned ones included.

        ``timeout`` is in real seconds (None waits as long as it takes).
        Returns True when none is running. Without isolation there is no pool
        and it returns True at once.
        """
        if timeout is not None:
            timeout = _seconds(timeout, "timeout", allow_zero=True)
        pool = self._pool
        return True if pool is None else pool.drain(timeout)

    # -- admission out of the fast path: take, queue, or refuse --------------------------------

    def _enter(self, loop: asyncio.AbstractEventLoop | None) -> tuple[Waiter | None, float, float]:
        """Take a slot now (no waiter), or join the queue: ``(waiter, now, give_up)``.

        Raises `BulkheadFullError` when the queue is full or nothing may wait.
        """
        slots = self._slots
        slots.lock()
        try:
            queue = slots.queue
            if not queue.count and slots.take(1.0, 0.0):  # a slot came back meanwhile
                return None, 0.0, 0.0
            limit = math.inf if self.max_wait is None else self.max_wait
            left = remaining(VAR.get())
            if left is not None and left < limit:
                limit = max(0.0, left)
            if queue.count < self.max_queue and limit > 0.0:
                waiter = queue.join(1.0, loop)
                now = self.clock.monotonic()
                queue.serve(now)  # a slot given back since we looked is not left idle
                return waiter, now, now + limit
            slots.rejected += 1
        finally:
            slots.unlock()
        raise self._rejection(0.0)

    def _rejection(self, waited: float) -> BulkheadFullError:
        """The refusal of a call that waited ``waited`` seconds (0: refused at once)."""
        label = f"bulkhead {self.name!r}" if self.name else "bulkhead"
        if waited:
            why = f"no slot came free in {waited:.3g}s"
        elif self.max_queue:
            why = f"all {self.max_concurrent} slots are taken and its queue"
            why += f" of {self.max_queue} is full"
        else:
            why = f"all {self.max_concurrent} slots are taken"
        error = BulkheadFullError(
            f"{label} is full: {why}", name=self.name, retry_after=self.retry_after
        )
        logger.info("resilience: rejected: %s", error)
        if self._listeners:
            self._emit(BulkheadEvent(self.name, "rejected", waited, error))
        return error

    def _waited(self, started: float, granted: bool) -> None:
        """After a wait in the queue: report it, or refuse a waiter whose time ran out."""
        if granted and not self._listeners and not logger.isEnabledFor(logging.DEBUG):
            return
        seconds = self.clock.monotonic() - started
        if granted:
            label = f" {self.name!r}" if self.name else ""
            logger.debug("resilience: Bulkhead%s: a call waited %.3gs", label, seconds)
            self._emit(BulkheadEvent(self.name, "waited", seconds))
            return
        slots = self._slots
        slots.lock()
        try:
            slots.rejected += 1
        finally:
            slots.unlock()
        raise self._rejection(seconds)

    def _admit(self) -> None:
        """Take a slot for this thread, waiting in the queue if allowed, or raise."""
        waiter, started, give_up = self._enter(None)
        if waiter is not None:
            slots = self._slots
            self._waited(started, wait_turn(slots.queue, slots, waiter, give_up))

    async def _aadmit(self) -> None:
        """`_admit` for this task."""
        waiter, started, give_up = self._enter(asyncio.get_running_loop())
        if waiter is not None:
            slots = self._slots
            self._waited(started, await await_turn(slots.queue, slots, waiter, give_up))

    def _acquire(self) -> None:
        if self._slots.queue.count or not self._slots.take(1.0, 0.0):
            self._admit()

    async def _aacquire(self) -> None:
        if self._slots.queue.count or not self._slots.take(1.0, 0.0):
            await self._aadmit()

    def __enter__(self) -> None:
        """``with bulkhead:`` holds a slot for the block (or raises `BulkheadFullError`)."""
        self._acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._slots.release()

    async def __aenter__(self) -> None:
        """``async with bulkhead:`` holds a slot for the block."""
        await self._aacquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._slots.release()

    # -- the shells: the slot's fast path inline, the queue out of line --------------------

    def wrap(self, next: Endpoint, /) -> Endpoint:
        if self.isolation == "thread":
            return self._wrap_isolated(next)
        slots = self._slots
        queue = slots.queue
        take = slots.free.pop
        give = slots.free.append
        hand_over = slots.hand_over
        admit = self._admit
        direct = next is terminal  # innermost: call the function without the extra hop

        def bulkhead(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if queue.count:
                admit()
            else:
                try:
                    take()
                except IndexError:
                    admit()
            try:
                return fn(*args, **kwargs) if direct else next(fn, args, kwargs)
            finally:
                give(None)  # Slots.release, inlined
                if queue.count:
                    hand_over()

        return bulkhead

    def _workers(self) -> WorkerPool:
        with self._pool_lock:
            if self._pool is None:
                self._pool = WorkerPool(
                    self.max_concurrent, self.name or "bulkhead", reject_when_busy=False
                )
            return self._pool

    def _wrap_isolated(self, next: Endpoint) -> Endpoint:
        acquire = self._acquire
        release = self._slots.release
        workers = self._workers
        clock = self.clock

        def bulkhead(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            acquire()
            # Given back exactly once, by the worker or here if the hand-off fails.
            held = deque([None])

            def give_back() -> None:
                try:
                    held.pop()
                except IndexError:
                    return
                release()

            try:
                now = clock.monotonic()
                raw = VAR.get()
                deadline = effective_deadline(raw, clock, now)
                inner: Raw = [raw[0], raw[1], deadline, clock, raw[4]]
                context = contextvars.copy_context()
                future = workers().submit(
                    context.run, _run_in_slot, give_back, inner, next, fn, args, kwargs
                )
            except BaseException:
                give_back()
                raise
            if deadline is None:
                return future.result()
            wait_future(clock, future, deadline)
            if future.done():
                return future.result()
            # An enclosing layer's deadline: the layer that set it reports it.
            raise DeadlineCut(max(0.0, deadline - now))

        return bulkhead

    def awrap(self, next: AsyncEndpoint, /) -> AsyncEndpoint:
        slots = self._slots
        queue = slots.queue
        take = slots.free.pop
        give = slots.free.append
        hand_over = slots.hand_over
        admit = self._aadmit
        direct = next is terminal

        async def bulkhead(
            fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            if queue.count:
                await admit()
            else:
                try:
                    take()
                except IndexError:
                    await admit()
            try:
                return await (fn(*args, **kwargs) if direct else next(fn, args, kwargs))
            finally:
                give(None)  # Slots.release, inlined
                if queue.count:
                    hand_over()

        return bulkhead
