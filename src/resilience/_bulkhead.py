"""`Bulkhead`: cap the calls in flight to one dependency, with a short FIFO queue."""

from __future__ import annotations

import contextvars
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from . import _shells, _shells_sync
from ._backend import Backend, Unavailable, check_backend
from ._clock import Clock, validate_clock, wait_future
from ._context import VAR, child, effective_deadline, remaining
from ._errors import BulkheadFullError, DeadlineCut
from ._events import AdmissionEvent
from ._middleware import AsyncEndpoint, Endpoint, Middleware, terminal
from ._pool import WorkerPool, hand_off
from ._slots import Admission, Slots
from ._validate import integer, optional_name
from ._validate import seconds as _seconds

__all__ = ["Bulkhead", "BulkheadEvent", "BulkheadMetrics"]

logger = logging.getLogger("resilience")

Isolation = Literal["thread"]

_UNSET: Any = object()


@dataclass(frozen=True, slots=True)
class BulkheadEvent(AdmissionEvent):
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
    shared: bool = field(default=False, repr=False)
    """True when ``in_flight`` and ``available`` were read from a backend shared by
    processes (the fleet's slots)."""


class Bulkhead(Admission, Middleware):
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
    _read_only = frozenset(
        {
            "max_concurrent",
            "max_queue",
            "max_wait",
            "isolation",
            "retry_after",
            "backend",
            "clock",
            "name",
        }
    )

    def __init__(
        self,
        max_concurrent: int,
        *,
        max_queue: int = 0,
        max_wait: float | timedelta | None = None,
        isolation: Isolation | None = None,
        retry_after: float | timedelta | None = None,
        backend: Backend | None = None,
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
        self.backend = check_backend(backend, self.name, "Bulkhead")
        self._shared: Any = None
        self._held: contextvars.ContextVar[tuple[str, ...]] | None = None
        if self.backend is not None:
            if isolation is not None:
                raise ValueError(
                    "a Bulkhead with a backend cannot also have isolation='thread' (yet): "
                    "isolate the calls in an inner Bulkhead without a backend"
                )
            self._shared = self.backend.attach(self.kind, self.name or "", self)
            self._held = contextvars.ContextVar(f"resilience.bulkhead.{self.name}", default=())

    def update(
        self,
        *,
        max_concurrent: int = _UNSET,
        max_queue: int = _UNSET,
        max_wait: float | timedelta | None = _UNSET,
    ) -> None:
        """Change the limit, the queue's length or ``max_wait``, atomically, from any thread.

        A higher limit lets waiters in at once. A lower one takes back free
        slots; slots held by running calls above it are taken back as those
        calls end, and until then no new call starts. Calls already waiting
        keep their places even if the queue is now shorter.
        """
        limit = (
            self.max_concurrent
            if max_concurrent is _UNSET
            else integer(max_concurrent, "max_concurrent", minimum=1)
        )
        queue = (
            self.max_queue if max_queue is _UNSET else integer(max_queue, "max_queue", minimum=0)
        )
        wait = self.max_wait if max_wait is _UNSET else max_wait
        wait = None if wait is None else _seconds(wait, "max_wait", allow_zero=True)
        slots = self._slots
        with slots.mutex:
            slots.resize(limit)
            self._set(max_concurrent=limit, max_queue=queue, max_wait=wait)
            pool = self._pool
            if pool is not None:
                pool.max_workers = limit

    # -- description and observation --------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "max_concurrent": self.max_concurrent,
            "max_queue": self.max_queue,
            "max_wait": self.max_wait,
        }
        if self.isolation is not None:
            out["isolation"] = self.isolation
        if self.backend is not None:
            out["backend"] = repr(self.backend)
        return out

    def __repr__(self) -> str:
        label = self._repr_name
        extra = f", max_queue={self.max_queue}" if self.max_queue else ""
        if self.max_wait is not None:
            extra += f", max_wait={self.max_wait:g}"
        if self.isolation is not None:
            extra += f", isolation={self.isolation!r}"
        return f"Bulkhead({label}max_concurrent={self.max_concurrent}{extra})"

    @property
    def available(self) -> int:
        """Free slots now."""
        return self._slots.available()

    def metrics(self) -> BulkheadMetrics:
        """A consistent snapshot of the slots, the queue and the refusals.

        With a backend, ``in_flight`` and ``available`` are the fleet's, read
        from it (one round trip); the queue and the refusals are this process's.
        """
        slots = self._slots
        shared = self._shared
        if shared is not None:
            try:
                holders = shared.holders()
            except Unavailable:
                pass
            else:
                with slots.mutex:
                    queued, rejected = slots.queue.waiting, slots.rejected
                free = max(0, self.max_concurrent - holders)
                return BulkheadMetrics(holders, free, queued, rejected, True)
        with slots.mutex:
            return BulkheadMetrics(
                in_flight=slots.in_flight(),
                available=slots.available(),
                queued=slots.queue.waiting,
                rejected=slots.rejected,
            )

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

    def _waited_event(self, seconds: float) -> BulkheadEvent:
        return BulkheadEvent(self.name, "waited", seconds)

    def _acquire(self) -> None:
        if self._slots.queue.count or not self._slots.take_free():
            self._admit()

    async def _aacquire(self) -> None:
        if self._slots.queue.count or not self._slots.take_free():
            await self._aadmit()

    def __enter__(self) -> None:
        """``with bulkhead:`` holds a slot for the block (or raises `BulkheadFullError`)."""
        self._acquire()
        if self._held is not None:
            try:
                member = self._fleet_take()
            except BaseException:
                self._slots.release()
                raise
            self._enter_fleet(member)

    def __exit__(self, *exc_info: object) -> None:
        if self._held is not None:
            self._exit_fleet()
        self._slots.release()

    async def __aenter__(self) -> None:
        """``async with bulkhead:`` holds a slot for the block."""
        await self._aacquire()
        if self._held is not None:
            try:
                member = await self._afleet_take()
            except BaseException:
                self._slots.release()
                raise
            self._enter_fleet(member)

    async def __aexit__(self, *exc_info: object) -> None:
        if self._held is not None:
            self._exit_fleet()
        self._slots.release()

    # -- slots shared by processes (``backend=``) -------------------------------------------

    def _enter_fleet(self, member: str) -> None:
        assert self._held is not None
        self._held.set((*self._held.get(), member))

    def _exit_fleet(self) -> None:
        assert self._held is not None
        held = self._held.get()
        if held:
            self._held.set(held[:-1])
            self._shared.release(held[-1])

    def _give_up(self) -> float | None:
        """Until when a call may wait for a slot of the fleet (None: it may not wait)."""
        if not self.max_queue:
            return None
        limit = float("inf") if self.max_wait is None else self.max_wait
        left = remaining(VAR.get())
        if left is not None:
            limit = min(limit, max(0.0, left))
        return self.clock.monotonic() + limit if limit > 0 else None

    def _fleet_take(self) -> str:
        """A slot of the fleet for this thread (its member), or the refusal raised.

        Called with this process's slot held, which the caller gives back if this raises.
        """
        started = self.clock.monotonic()
        give_up = self._give_up()
        try:
            member = self._shared.take(give_up)
        except Unavailable as problem:
            return self._fleet_failed(problem)
        return self._fleet_answer(member, None if give_up is None else started)

    async def _afleet_take(self) -> str:
        """`_fleet_take` for this task."""
        started = self.clock.monotonic()
        give_up = self._give_up()
        try:
            member = await self._shared.atake(give_up)
        except Unavailable as problem:
            return self._fleet_failed(problem)
        return self._fleet_answer(member, None if give_up is None else started)

    def _fleet_answer(self, member: str | None, started: float | None) -> str:
        """The member admitted, or the refusal of a call that waited since ``started``
        (None: it was not allowed to wait)."""
        if member is not None:
            return member
        slots = self._slots
        with slots.mutex:
            slots.rejected += 1
        waited = 0.0 if started is None else self.clock.monotonic() - started
        raise self._rejection(waited)

    def _fleet_failed(self, problem: Unavailable) -> str:
        """The backend failed: admit uncounted (``"local"``: this process's slots still
        cap it; ``"open"``), or refuse (``"closed"``)."""
        shared = self._shared
        action = shared.on_backend_error
        shared.failed("acquire", problem, action)
        if action == "closed":
            raise shared.refusal(problem) from problem.error
        return ""

    def _fleet(self, next: Endpoint) -> Endpoint:
        take, release = self._fleet_take, self._shared.release

        def fleet(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            member = take()
            try:
                return next(fn, args, kwargs)
            finally:
                release(member)

        return fleet

    def _afleet(self, next: AsyncEndpoint) -> AsyncEndpoint:
        take, release = self._afleet_take, self._shared.release

        async def fleet(
            fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            member = await take()
            try:
                return await next(fn, args, kwargs)
            finally:
                release(member)

        return fleet

    # -- the shells: the slot's fast path inline, the queue out of line --------------------

    def wrap(self, next: Endpoint, /) -> Endpoint:
        if self.isolation == "thread":
            return self._wrap_isolated(next)
        if self._shared is not None:
            next = self._fleet(next)
        return self._shell(_shells_sync, next, self._admit)  # type: ignore[no-any-return]

    def awrap(self, next: AsyncEndpoint, /) -> AsyncEndpoint:
        if self._shared is not None:
            next = self._afleet(next)
        return self._shell(_shells, next, self._aadmit)  # type: ignore[no-any-return]

    def _shell(self, shells: Any, next: Any, admit: Any) -> Any:
        direct = next is terminal  # innermost: call the function without the extra hop
        return shells.bulkhead(next, direct, self._slots, admit)

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
                inner = child(raw, deadline, clock)
                future = hand_off(workers(), inner, next, fn, args, kwargs, give_back)
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
