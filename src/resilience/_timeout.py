"""`Timeout`: bound how long a call may take."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from ._aio import NO_LOOP, trio_loop
from ._clock import SYSTEM_CLOCK, Clock, validate_clock, wait_future
from ._context import CLOCK, DEADLINE, EMPTY, VAR, child, effective_deadline, own_context
from ._deadlines import FINISHED, FIRED, TASK, DeadlineQueues
from ._errors import DeadlineCut, TimeoutExceeded
from ._events import Described, ResilienceEvent
from ._middleware import AsyncEndpoint, Endpoint, Middleware, terminal
from ._pool import WorkerPool, hand_off
from ._validate import integer, optional_name
from ._validate import seconds as _seconds

__all__ = ["Timeout", "TimeoutEvent"]

logger = logging.getLogger("resilience")

SyncMode = Literal["cooperative", "walk_away"]


@dataclass(frozen=True, slots=True)
class TimeoutEvent(ResilienceEvent):
    """Sent to the timeout's listeners when its own deadline fired.

    Only the layer whose deadline it was sends one: an inner Timeout cut
    short by an outer, earlier deadline sends none.
    """

    name: str | None
    """The Timeout's name."""
    seconds: float
    """The limit that fired, in seconds."""
    error: TimeoutExceeded
    """The error raised to the caller."""

    event = "timed_out"

    def describe(self) -> Described:
        return self.event, self.error, {"resilience.timeout.seconds": self.seconds}


class Timeout(Middleware):
    """Bound the time a call may take; the deadline is set when the call starts.

    The deadline goes into the call context (`resilience.current().deadline`
    and ``.remaining()``), where inner layers and your code see it. An inner
    Timeout never extends an outer one: the earliest deadline wins.

    Async calls are really cancelled at the deadline and the caller gets
    `TimeoutExceeded`, raised only when this layer's own deadline fired (a
    cancellation from elsewhere stays a `CancelledError`). Under trio (and
    anyio's trio backend) the call runs in a cancel scope of its own, and a
    cancellation from outside stays trio's `Cancelled`.

    Python cannot interrupt a running sync function, so sync calls get one of
    two honest modes:

    * ``sync_mode="cooperative"`` (default): the call runs in the caller's
      thread with the deadline in its context. Nothing of this library waits
      past the deadline, and a call that returns after it raises
      `TimeoutExceeded` (its result is dropped). Your code should pass
      ``current().remaining()`` to its I/O.
    * ``sync_mode="walk_away"``: the call runs on this Timeout's own pool of
      at most ``max_workers`` daemon threads, with a copy of the caller's
      context; the caller gets `TimeoutExceeded` at the deadline while the
      call runs on to its end in the background. When every worker is busy
      the call is rejected at once with a `RejectedError`.
    """

    kind = "timeout"
    _read_only = frozenset({"seconds", "sync_mode", "max_workers", "clock", "name"})

    def __init__(
        self,
        seconds: float | timedelta,
        *,
        sync_mode: SyncMode = "cooperative",
        max_workers: int = 16,
        clock: Clock | None = None,
        name: str | None = None,
    ) -> None:
        self.seconds = _seconds(seconds, "seconds")
        if sync_mode not in ("cooperative", "walk_away"):
            raise ValueError(f"sync_mode must be 'cooperative' or 'walk_away', got {sync_mode!r}")
        self.sync_mode: SyncMode = sync_mode
        self.max_workers = integer(max_workers, "max_workers", minimum=1)
        self.clock = validate_clock(clock)
        self.name = optional_name(name)
        self._deadline_queues = DeadlineQueues(self.clock)
        self._pool: WorkerPool | None = None
        self._pool_lock = threading.Lock()

    def settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seconds": self.seconds, "sync_mode": self.sync_mode}
        if self.sync_mode == "walk_away":
            out["max_workers"] = self.max_workers
        return out

    def __repr__(self) -> str:
        extra = ", sync_mode='walk_away'" if self.sync_mode == "walk_away" else ""
        return f"Timeout({self.seconds:g}{extra})"

    @property
    def busy_workers(self) -> int:
        """Walk-away calls still running, including those the caller walked away from."""
        return 0 if self._pool is None else self._pool.busy

    def drain(self, timeout: float | None = None) -> bool:
        """Wait for walk-away calls still running in the background to end.

        Use it at shutdown, or in tests. ``timeout`` is in real seconds (None
        waits for as long as it takes). Returns True when no call is running.
        """
        if timeout is not None:
            timeout = _seconds(timeout, "timeout", allow_zero=True)
        pool = self._pool
        return True if pool is None else pool.drain(timeout)

    def _passed(self, ours: bool, allowed: float = 0.0) -> TimeoutExceeded:
        """Who reports a deadline that passed (docs/design.md): the layer whose deadline it was.

        ``ours``: this layer's own deadline passed, so it reports it: its
        `TimeoutExceeded` (its name, its seconds), logged and sent to its
        listeners. Otherwise an earlier deadline, set outside, stopped the
        call after ``allowed`` seconds: a `DeadlineCut`, which the enclosing
        Timeout that set it turns into its own report.
        """
        if not ours:
            return DeadlineCut(max(0.0, allowed))
        seconds = self.seconds
        error = TimeoutExceeded(seconds, self.name)
        logger.info("resilience: Timeout%s fired after %gs", self._label, seconds)
        if self._listeners:
            self._emit(TimeoutEvent(self.name, seconds, error))
        return error

    def _workers(self) -> WorkerPool:
        with self._pool_lock:
            if self._pool is None:
                self._pool = WorkerPool(self.max_workers, self.name or "timeout")
            return self._pool

    # -- sync ---------------------------------------------------------------

    def wrap(self, next: Endpoint, /) -> Endpoint:
        if self.sync_mode == "walk_away":
            return self._wrap_walk_away(next)
        limit = self.seconds
        passed = self._passed
        clock = self.clock
        monotonic = clock.monotonic
        get = VAR.get
        empty = EMPTY
        deadline_at, clock_at = DEADLINE, CLOCK  # the fields' places, as cells (no global reads)
        direct = next is terminal  # innermost: call the function without the extra hop

        def timeout(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            own = monotonic() + limit
            ctx = get()
            outer = saved = ctx[deadline_at]
            outer_clock = ctx[clock_at]
            if outer is not None and outer_clock is not clock:
                outer = effective_deadline(ctx, clock, own - limit)
            if outer is None or own < outer:
                if ctx is empty:  # run outside any call (a custom layer's own thread)
                    with own_context():
                        return timeout(fn, args, kwargs)
                ctx[deadline_at] = own
                ctx[clock_at] = clock
                try:
                    result = fn(*args, **kwargs) if direct else next(fn, args, kwargs)
                except DeadlineCut as exc:  # a layer inside stopped at a deadline
                    if monotonic() >= own:  # ours, on our own clock
                        raise passed(True) from exc
                    raise
                finally:
                    ctx[deadline_at] = saved
                    ctx[clock_at] = outer_clock
                if monotonic() >= own:
                    raise passed(True)
                return result
            # An earlier deadline is in force: it is the one that can pass, judged
            # on its own clock, and the layer that set it reports it.
            result = fn(*args, **kwargs) if direct else next(fn, args, kwargs)
            if outer_clock.monotonic() >= saved:
                raise passed(False, outer - (own - limit))
            return result

        return timeout

    def _wrap_walk_away(self, next: Endpoint) -> Endpoint:
        limit = self.seconds
        passed = self._passed
        clock = self.clock
        workers = self._workers

        def timeout(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            now = clock.monotonic()
            own = now + limit
            raw = VAR.get()
            outer = effective_deadline(raw, clock, now)
            deadline = own if outer is None or own < outer else outer
            inner = child(raw, deadline, clock)
            future = hand_off(workers(), inner, next, fn, args, kwargs)
            wait_future(clock, future, deadline)
            if future.done():
                if deadline == own and isinstance(future.exception(), DeadlineCut):
                    raise passed(True) from future.exception()  # a walk-away layer inside
                return future.result()
            raise passed(deadline == own, deadline - now)

        return timeout

    # -- async --------------------------------------------------------------

    def awrap(self, next: AsyncEndpoint, /) -> AsyncEndpoint:
        limit, clock, queues, ended = self.seconds, self.clock, self._deadline_queues, self._aended
        monotonic, get, empty = clock.monotonic, VAR.get, EMPTY
        deadline_at, clock_at = DEADLINE, CLOCK  # the fields' places, as cells
        # The C call that tells asyncio from trio: None when no asyncio loop runs.
        get_loop, current_task = asyncio._get_running_loop, asyncio.current_task
        on_trio = self._trio_wrap(next)

        async def timeout(
            fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            # 1. the deadline: ours, or an earlier one already in force
            loop = get_loop()
            if loop is None:
                return await on_trio(fn, args, kwargs)
            task = current_task(loop)
            if task is None:  # pragma: no cover - awaited outside a task (not asyncio)
                raise RuntimeError("resilience.Timeout needs to run inside an asyncio task")
            now = monotonic()
            own = now + limit
            ctx = get()
            outer = saved = ctx[deadline_at]
            outer_clock = ctx[clock_at]
            if outer is not None and outer_clock is not clock:
                outer = effective_deadline(ctx, clock, now)
            tighter = outer is None or own < outer
            if tighter and ctx is empty:  # run outside any call (a custom layer's own task)
                with own_context():
                    return await timeout(fn, args, kwargs)
            # 2. watch it: the loop's deadline queue cancels the task when it passes
            deadlines = queues.last
            if deadlines is None or deadlines.loop is not loop:
                deadlines = queues.for_loop(loop)
            entry = deadlines.add(own, task)
            if tighter:
                ctx[deadline_at] = own
                ctx[clock_at] = clock
            cancelling = task.cancelling()
            try:  # 3. the call, and 4. what its end means
                result = await next(fn, args, kwargs)
            except BaseException as exc:
                ended(exc, entry, task, cancelling, tighter and monotonic() >= own)
                raise
            finally:
                entry[FINISHED] = True  # the timer skips it
                entry[TASK] = None  # and the queue holds nothing of the call any more
                if tighter:
                    ctx[deadline_at] = saved
                    ctx[clock_at] = outer_clock
            if entry[FIRED]:  # the call swallowed our cancellation and returned
                task.uncancel()
            return result

        return timeout

    def _trio_wrap(self, next: AsyncEndpoint) -> AsyncEndpoint:
        """The async shell under trio: the call runs in a cancel scope of its own.

        The scope's deadline is on trio's clock for the system clock (a
        `trio.testing.MockClock` moves it); on another clock with a
        ``call_at`` hook (a `FakeClock`), that clock's timer cancels the scope.
        Only the scope's own cancellation becomes `TimeoutExceeded`: trio
        tells it apart (``cancelled_caught``), and any other stays `Cancelled`.
        """
        limit, clock, passed = self.seconds, self.clock, self._passed
        monotonic, get, empty = clock.monotonic, VAR.get, EMPTY
        deadline_at, clock_at = DEADLINE, CLOCK
        hook = None if clock is SYSTEM_CLOCK else getattr(clock, "call_at", None)

        async def timeout(
            fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            trio = sys.modules.get("trio")
            if trio is None:  # neither asyncio nor trio runs this task
                raise RuntimeError(NO_LOOP)
            now = monotonic()
            own = now + limit
            ctx = get()
            outer = saved = ctx[deadline_at]
            outer_clock = ctx[clock_at]
            if outer is not None and outer_clock is not clock:
                outer = effective_deadline(ctx, clock, now)
            tighter = outer is None or own < outer
            if tighter and ctx is empty:  # run outside any call (a custom layer's own task)
                with own_context():
                    return await timeout(fn, args, kwargs)
            timer = None
            if hook is None:
                scope = trio.CancelScope(deadline=trio.current_time() + limit)
            else:
                run = trio_loop()
                if run is None:  # trio is imported, but does not run this task
                    raise RuntimeError(NO_LOOP)
                scope = trio.CancelScope()
                timer = hook(own, scope.cancel, run)
            if tighter:
                ctx[deadline_at] = own
                ctx[clock_at] = clock
            error: BaseException | None = None
            try:
                with scope:
                    try:
                        result = await next(fn, args, kwargs)
                    except BaseException as exc:
                        if isinstance(exc, DeadlineCut) and tighter and monotonic() >= own:
                            raise passed(True) from exc  # a sync layer inside stopped at ours
                        error = exc
                        raise
            finally:
                if timer is not None:
                    timer.cancel()
                if tighter:
                    ctx[deadline_at] = saved
                    ctx[clock_at] = outer_clock
            if scope.cancelled_caught:  # our deadline cancelled the call
                raise passed(True) from error
            return result

        return timeout

    def _aended(
        self,
        error: BaseException,
        entry: list[Any],
        task: asyncio.Task[Any],
        cancelling: int,
        past_our_deadline: bool,
    ) -> None:
        """An async call raised ``error``: take back our cancellation, say who reports.

        Raises this layer's `TimeoutExceeded` (from ``error``) when it was our
        own deadline: our timer cancelled the task (and no other cancellation
        is pending), or a sync layer inside stopped at our deadline. Returns
        otherwise, and the caller re-raises ``error`` as it is.
        """
        fired = entry[FIRED]
        if isinstance(error, asyncio.CancelledError):
            if fired and task.uncancel() <= cancelling:
                raise self._passed(True) from error
            return
        if fired:
            task.uncancel()
        if isinstance(error, DeadlineCut) and past_our_deadline:
            raise self._passed(True) from error
