"""`Hedge`: start another attempt when the first is slow; the first good answer wins.

Hedged requests (Dean and Barroso, "The Tail at Scale", CACM 2013) cut tail
latency: send a second copy of a request that has not answered within, say,
the 95th percentile of recent latencies, and use whichever answers first.
The extra load is small (about 5 % for a p95 delay) and the slow tail
mostly disappears. Polly v8's hedging strategy and failsafe-go's
HedgePolicy are the models here, modes included.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import heapq
import itertools
import math
import threading
from asyncio import _get_running_loop, current_task
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from ._budget import RetryBudget
from ._clock import SYSTEM_CLOCK, Clock, call_at, validate_clock
from ._context import ATTEMPT, VAR
from ._events import ResilienceEvent
from ._middleware import AsyncEndpoint, Endpoint, Middleware, notify
from ._retry import _matcher, _show
from ._validate import Matcher, callable_or_none, integer, optional_name
from ._validate import seconds as _seconds

__all__ = ["Hedge", "HedgeEvent", "LatencyPercentile"]

Mode = Literal["latency", "parallel", "fallback"]
_MODES = ("latency", "parallel", "fallback")


@dataclass(frozen=True, slots=True)
class HedgeEvent(ResilienceEvent):
    """Sent when a hedged attempt starts."""

    name: str | None
    """The Hedge's name."""
    attempt: int
    """The attempt being started: 2 for the first hedge."""
    reason: str
    """``"delay"`` (the earlier attempts were slow), ``"failure"`` or ``"parallel"``."""

    event = "hedge_started"


class LatencyPercentile:
    """A hedging delay that follows a percentile of recent latencies (p95 by default).

    ``Hedge(delay=LatencyPercentile(95))`` hedges the calls slower than 95 %
    of the last ``window`` successful attempts, the rule of "The Tail at
    Scale". Until ``minimum`` latencies are known it answers ``initial``.
    Thread-safe; the percentile is recomputed at most every ``window // 10``
    new samples, so the hot path reads a number.
    """

    def __init__(
        self,
        percentile: float = 95.0,
        *,
        window: int = 1000,
        minimum: int = 20,
        initial: float = 0.05,
    ) -> None:
        if isinstance(percentile, bool) or not isinstance(percentile, int | float):
            raise TypeError(f"percentile must be a number, got {type(percentile).__name__}")
        if not 0 < percentile < 100:
            raise ValueError(f"percentile must be between 0 and 100 (exclusive), got {percentile}")
        self.percentile = float(percentile)
        self.window = integer(window, "window", minimum=1)
        self.minimum = integer(minimum, "minimum", minimum=1)
        self.initial = _seconds(initial, "initial", allow_zero=True)
        self._samples: deque[float] = deque(maxlen=self.window)
        self._current = self.initial
        self._fresh = 0
        self._every = max(1, self.window // 10)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self._current

    def record(self, seconds: float) -> None:
        """Add the latency of an attempt that answered."""
        with self._lock:
            self._samples.append(seconds)
            self._fresh += 1
            if len(self._samples) >= self.minimum and (
                self._fresh >= self._every or len(self._samples) == self.minimum
            ):
                self._fresh = 0
                ordered = sorted(self._samples)
                index = min(len(ordered) - 1, math.ceil(self.percentile / 100 * len(ordered)) - 1)
                self._current = ordered[max(0, index)]

    def __repr__(self) -> str:
        return f"LatencyPercentile({self.percentile:g}, window={self.window})"


class Hedge(Middleware):
    """Start another attempt when the earlier ones have not answered after ``delay``.

    The first acceptable outcome wins and the other attempts are cancelled.
    *Acceptable* is as in `Retry`: an exception that ``on`` matches, or a
    result that ``on_result`` rejects, is a failed attempt; any other
    exception ends the call at once (it is not worth hedging), and so does a
    good result. When every attempt has failed, the last failure is the
    outcome.

    ``mode``, as Polly's hedging modes:

    - ``"latency"`` (default): a hedge starts when ``delay`` passes with no
      answer, or at once when an attempt fails;
    - ``"parallel"``: all ``1 + max_hedges`` attempts start together;
    - ``"fallback"``: a hedge starts only when an attempt fails.

    ``delay`` is seconds, a function returning seconds (read for each
    hedge), or a `LatencyPercentile`, which also learns from the attempts'
    latencies. With a ``budget`` (`RetryBudget`), each call deposits once
    and each hedge must withdraw first; a refused hedge is not started.

    Each attempt runs in its own copy of the call context:
    ``resilience.current().attempt`` is 1 for the first attempt and 2, 3...
    for the hedges, so layers inside (a CircuitBreaker counts each attempt;
    a Bulkhead gives each its slot) and your function can tell them apart.

    Async attempts are tasks; the losers are cancelled, and awaited, before
    the call returns, so their slots and connections are back. Under trio
    (and anyio's trio backend) every attempt, the first included, is a task
    of a nursery that the call opens. Sync attempts
    run on a pool of ``max_workers`` threads (the caller waits): a thread
    cannot be stopped, so the losers are left to finish in the pool and
    their outcomes are dropped. Hedge only idempotent work: every attempt
    may reach the server.
    """

    kind = "hedge"
    _read_only = frozenset(
        {"max_hedges", "mode", "on", "on_result", "budget", "clock", "max_workers", "name"}
    )

    def __init__(
        self,
        delay: float | timedelta | Callable[[], float] = 0.05,
        *,
        max_hedges: int = 1,
        mode: Mode = "latency",
        on: Matcher = Exception,
        on_result: Callable[[Any], bool] | None = None,
        on_hedge: Callable[[HedgeEvent], object] | None = None,
        budget: RetryBudget | None = None,
        max_workers: int = 32,
        clock: Clock | None = None,
        name: str | None = None,
    ) -> None:
        if callable(delay):
            self.delay: float | Callable[[], float] = delay
        else:
            self.delay = _seconds(delay, "delay", allow_zero=True)
        self.max_hedges = integer(max_hedges, "max_hedges", minimum=1)
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {', '.join(map(repr, _MODES))}, got {mode!r}")
        self.mode: Mode = mode
        self.on = on
        self._failed = _matcher(on)
        self.on_result = callable_or_none(on_result, "on_result")
        self.on_hedge = callable_or_none(on_hedge, "on_hedge")
        if budget is not None and not isinstance(budget, RetryBudget):
            raise TypeError(f"budget must be a RetryBudget or None, got {type(budget).__name__}")
        self.budget = budget
        self.max_workers = integer(max_workers, "max_workers", minimum=1)
        self.clock = validate_clock(clock)
        self.name = optional_name(name)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._loop_timers: _Timers | None = None
        self._learns = callable(getattr(self.delay, "record", None))

    def settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {"delay": self.delay, "max_hedges": self.max_hedges}
        out["mode"] = self.mode
        out["on"] = self.on
        if self.on_result is not None:
            out["on_result"] = self.on_result
        if self.budget is not None:
            out["budget"] = self.budget
        return out

    def __repr__(self) -> str:
        delay = self.delay if callable(self.delay) else f"{self.delay:g}"
        return (
            f"Hedge({self._repr_name}delay={delay}, max_hedges={self.max_hedges}, "
            f"mode={self.mode!r}, on={_show(self.on)})"
        )

    # -- decisions, with no I/O ----------------------------------------------------------

    def _wait(self) -> float | None:
        """Seconds to wait before the next hedge; None: only a failure starts one."""
        if self.mode == "fallback":
            return None
        if self.mode == "parallel":
            return 0.0
        delay = self.delay
        return max(0.0, float(delay())) if callable(delay) else delay

    def _may_hedge(self, attempt: int, reason: str) -> bool:
        """Whether attempt number ``attempt`` (2, 3...) may start; announce it if so."""
        budget = self.budget
        if budget is not None and not budget.try_withdraw():
            return False
        event = HedgeEvent(self.name, attempt, reason)
        if self.on_hedge is not None:
            notify(self.on_hedge, event, f"the on_hedge listener of Hedge{self._label}")
        if self._listeners:
            self._emit(event)
        return True

    def _judge(self, error: BaseException | None, result: Any) -> bool:
        """True when the outcome ends the call; False when it is a failed attempt."""
        if error is not None:
            return not (isinstance(error, Exception) and self._failed(error))
        check = self.on_result
        return check is None or not check(result)

    def _learn(self, seconds: float) -> None:
        """Tell an adaptive delay how long a call took to its answer (hedged or not).

        The whole call's time, not the winning attempt's: a slow first attempt
        that a hedge beat still shows as a slow call, so the percentile sees
        the tail it is meant to cut (learning only the winners' times would
        put the p95 among the fast answers, and hedge 5 % of those too).
        """
        record = getattr(self.delay, "record", None)
        if record is not None:
            record(seconds)

    @staticmethod
    def _attempt_context(attempt: int) -> contextvars.Context:
        """A copy of the caller's context whose call record says ``attempt``."""
        raw = list(VAR.get())
        raw[ATTEMPT] = attempt
        context = contextvars.copy_context()
        context.run(VAR.set, raw)
        return context

    # -- async ------------------------------------------------------------------------------

    def awrap(self, next: AsyncEndpoint, /) -> AsyncEndpoint:
        hedge = self

        async def hedged(
            fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            if _get_running_loop() is None:  # trio: the attempts are tasks of a nursery
                return await _TrioRace(hedge, next, fn, args, kwargs).run()
            return await _AsyncRace(hedge, next, fn, args, kwargs).run()

        return hedged

    def _timers(self, loop: asyncio.AbstractEventLoop) -> _Timers:
        """The deadlines of this hedge's calls on ``loop`` (one loop at a time, usually)."""
        timers = self._loop_timers
        if timers is None or timers.loop is not loop:
            timers = self._loop_timers = _Timers(loop, self.clock)
        return timers

    # -- sync -------------------------------------------------------------------------------

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        pool = self._pool
        if pool is None:
            with self._pool_lock:
                pool = self._pool
                if pool is None:
                    pool = self._pool = concurrent.futures.ThreadPoolExecutor(
                        self.max_workers, thread_name_prefix=f"resilience-hedge-{self.name or ''}"
                    )
        return pool

    def wrap(self, next: Endpoint, /) -> Endpoint:
        hedge = self

        def hedged(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            return _SyncRace(hedge, next, fn, args, kwargs).run()

        return hedged

    def close(self) -> None:
        """Stop the sync attempts' thread pool (it is made again if needed)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


class _Timers:
    """The hedging deadlines of one event loop: a heap, and one loop timer for the earliest.

    A call adds its deadline and, when it ends before it, leaves it there:
    the timer finds the call done and drops it. So a call that answers in
    time costs a push on a heap, not a timer made and cancelled.
    """

    __slots__ = ("armed", "clock", "handle", "heap", "loop", "order", "queue")

    def __init__(self, loop: asyncio.AbstractEventLoop, clock: Clock) -> None:
        self.loop = loop
        self.clock = clock
        self.queue: deque[tuple[float, _AsyncRace]] = deque()
        """Deadlines in the order they come: those of a constant delay (the cheap case)."""
        self.heap: list[tuple[float, int, _AsyncRace]] = []
        """Deadlines that may come out of order: those of a delay that changes."""
        self.order = itertools.count()
        self.handle: Any = None
        self.armed = math.inf

    def add(self, when: float, race: _AsyncRace) -> None:
        queue = self.queue
        if not queue or queue[-1][0] <= when:
            queue.append((when, race))
        else:
            heapq.heappush(self.heap, (when, next(self.order), race))
        if when < self.armed:
            self._arm(when)

    def _arm(self, when: float) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.armed = when
        self.handle = call_at(self.clock, when, self._fire, self.loop)

    def _fire(self) -> None:
        self.handle = None
        self.armed = math.inf
        queue, heap = self.queue, self.heap
        now = self.clock.monotonic()
        while queue and queue[0][0] <= now:
            race = queue.popleft()[1]
            if race.inline:
                race._on_delay()
        while heap and heap[0][0] <= now:
            race = heapq.heappop(heap)[2]
            if race.inline:
                race._on_delay()
        earliest = min(queue[0][0] if queue else math.inf, heap[0][0] if heap else math.inf)
        if earliest < math.inf:
            self._arm(earliest)


class _AsyncRace:
    """One hedged async call.

    The first attempt runs inline, in the caller's own task, with a timer for
    the delay: a call that answers in time costs a timer and nothing else.
    When the timer fires the hedges start as tasks; if one of them ends the
    call while the first attempt still runs, it cancels the caller's task,
    which this race catches (and takes back with ``uncancel``) to return the
    hedge's outcome. From the first attempt's end on, the remaining attempts
    are raced as tasks (`_race`).
    """

    __slots__ = (
        "args",
        "attempts",
        "caller",
        "decided",
        "fn",
        "hedge",
        "inline",
        "interrupted",
        "kwargs",
        "last",
        "next",
        "started",
        "t0",
    )

    def __init__(
        self,
        hedge: Hedge,
        next: AsyncEndpoint,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.hedge, self.next, self.fn, self.args, self.kwargs = hedge, next, fn, args, kwargs
        self.attempts: dict[asyncio.Task[Any], float] = {}
        self.started = 0
        self.inline = False
        self.interrupted = False
        self.decided: tuple[BaseException | None, Any] = (None, None)
        self.last: tuple[BaseException | None, Any] = (None, None)
        self.caller: asyncio.Task[Any] | None = None

    def _launch(self) -> asyncio.Task[Any]:
        self.started += 1
        coroutine = self.next(self.fn, self.args, self.kwargs)
        context = Hedge._attempt_context(self.started)
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(
            coroutine,  # type: ignore[arg-type]
            context=context,
        )
        self.attempts[task] = self.hedge.clock.monotonic()
        return task

    async def run(self) -> Any:
        hedge = self.hedge
        if hedge.budget is not None:
            hedge.budget.deposit()
        caller = current_task()
        self.t0 = now = hedge.clock.monotonic()
        if hedge.mode == "parallel" or caller is None:
            try:
                self._launch()
                return await self._race()
            finally:
                if self.attempts:
                    await self._cancel(None)
        # The first attempt runs inline, in the caller's task.
        clock = hedge.clock
        self.caller = caller
        wait = hedge._wait()
        if wait is not None:
            timers = hedge._loop_timers
            if timers is None or timers.loop is not caller.get_loop():
                timers = hedge._timers(caller.get_loop())
            timers.add(now + wait, self)
        self.started = 1
        self.inline = True
        raw = VAR.get()
        own = type(raw) is list
        if own:
            saved, raw[ATTEMPT] = raw[ATTEMPT], 1
        error: BaseException | None = None
        result: Any = None
        try:
            try:
                result = await self.next(self.fn, self.args, self.kwargs)
            except asyncio.CancelledError:
                if not self.interrupted:
                    raise
            except BaseException as exc:
                error = exc
            finally:
                self.inline = False  # the timer finds the race done: no need to remove it
                if own:
                    raw[ATTEMPT] = saved
            if self.interrupted:
                return self._decided(caller)
            check = hedge.on_result
            if error is None and (check is None or not check(result)):
                if hedge._learns:
                    hedge._learn(clock.monotonic() - now)
                return result
            if hedge._judge(error, result):
                assert error is not None
                raise error
            self.last = (error, result)
            self._hedge_after_failure()
            return await self._race()
        finally:
            if self.attempts:
                await self._cancel(None)

    def _decided(self, caller: asyncio.Task[Any]) -> Any:
        """The outcome a hedge decided while the first attempt ran (which it cancelled)."""
        if caller.uncancel() > 0:
            raise asyncio.CancelledError  # cancelled from outside as well: that wins
        error, result = self.decided
        if error is not None:
            raise error
        return result

    def _hedge_after_failure(self) -> bool:
        hedge = self.hedge
        if (
            self.started < 1 + hedge.max_hedges
            and hedge.mode != "parallel"
            and hedge._may_hedge(self.started + 1, "failure")
        ):
            self._launch().add_done_callback(self._on_hedge_done)
            return True
        return False

    def _on_delay(self) -> None:
        """The delay passed with the first attempt still running: start a hedge."""
        if not self.inline:
            return
        hedge = self.hedge
        limit = 1 + hedge.max_hedges
        if self.started < limit and hedge._may_hedge(self.started + 1, "delay"):
            self._launch().add_done_callback(self._on_hedge_done)
        if self.started < limit and self.caller is not None:
            wait = hedge._wait()
            if wait is not None:
                timers = hedge._timers(self.caller.get_loop())
                timers.add(hedge.clock.monotonic() + wait, self)

    def _on_hedge_done(self, task: asyncio.Task[Any]) -> None:
        """A hedge ended while the first attempt runs: win, or hedge again on failure."""
        if not self.inline or self.interrupted or task.cancelled() or task not in self.attempts:
            return
        self.attempts.pop(task)
        error = task.exception()
        result = None if error is not None else task.result()
        hedge = self.hedge
        try:
            ends = hedge._judge(error, result)
        except Exception as exc:  # an on_result that raises ends the call with its error
            ends, error, result = True, exc, None
        if not ends:
            self.last = (error, result)
            self._hedge_after_failure()
            return
        if error is None:
            hedge._learn(hedge.clock.monotonic() - self.t0)
        self.decided = (error, result)
        self.interrupted = True
        assert self.caller is not None
        self.caller.cancel()

    # -- the rest, as tasks -----------------------------------------------------------------

    async def _race(self) -> Any:
        hedge = self.hedge
        limit = 1 + hedge.max_hedges
        timer: asyncio.Task[None] | None = None
        try:
            while True:
                wait = hedge._wait() if self.started < limit else None
                while (
                    wait == 0.0
                    and self.started < limit
                    and hedge._may_hedge(self.started + 1, "parallel")
                ):
                    self._launch()
                    wait = hedge._wait() if self.started < limit else None
                if wait is not None and wait > 0.0 and timer is None and self.started < limit:
                    timer = asyncio.get_running_loop().create_task(hedge.clock.asleep(wait))
                if not self.attempts:
                    error, result = self.last
                    if error is not None:
                        raise error
                    return result
                waiting: set[asyncio.Future[Any]] = set(self.attempts)
                if timer is not None:
                    waiting.add(timer)
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if timer is not None and timer in done:
                    timer = None
                    if self.started < limit and hedge._may_hedge(self.started + 1, "delay"):
                        self._launch()
                failed = False
                for task in done:
                    if task not in self.attempts:
                        continue
                    self.attempts.pop(task)
                    error = task.exception()
                    result = None if error is not None else task.result()
                    if hedge._judge(error, result):
                        if error is not None:
                            raise error
                        hedge._learn(hedge.clock.monotonic() - self.t0)
                        return result
                    self.last, failed = (error, result), True
                if failed:
                    self._hedge_after_failure()
        finally:
            if timer is not None:
                timer.cancel()
                await asyncio.gather(timer, return_exceptions=True)

    async def _cancel(self, timer: asyncio.Task[None] | None) -> None:
        """Cancel the losers (and the timer), and wait until they have stopped."""
        pending: list[asyncio.Task[Any]] = list(self.attempts)
        self.attempts.clear()
        if timer is not None:
            pending.append(timer)
        if not pending:
            return
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


class _TrioRace:
    """One hedged async call under trio: every attempt a task of one nursery.

    Outcomes come back on a memory channel; the call waits for the next one,
    or for the delay (on the hedge's clock) that starts the next hedge. The
    first outcome that ends the call cancels the nursery, so the losers have
    stopped when the call returns. A cancellation from outside reaches every
    attempt and leaves the call as trio's `Cancelled`.
    """

    __slots__ = ("args", "fn", "hedge", "kwargs", "next")

    def __init__(
        self,
        hedge: Hedge,
        next: AsyncEndpoint,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.hedge, self.next, self.fn, self.args, self.kwargs = hedge, next, fn, args, kwargs

    async def run(self) -> Any:
        import trio

        hedge = self.hedge
        if hedge.budget is not None:
            hedge.budget.deposit()
        clock = hedge.clock
        t0 = clock.monotonic()
        limit = 1 + hedge.max_hedges
        send, receive = trio.open_memory_channel[tuple[BaseException | None, Any]](math.inf)
        started = running = 0
        last: tuple[BaseException | None, Any] = (None, None)
        decided: tuple[BaseException | None, Any] | None = None

        async def attempt() -> None:
            try:
                outcome: tuple[BaseException | None, Any] = (
                    None,
                    await self.next(self.fn, self.args, self.kwargs),
                )
            except Exception as exc:  # control flow and cancellation go to the nursery
                outcome = (exc, None)
            send.send_nowait(outcome)

        try:
            async with trio.open_nursery() as nursery:

                def launch() -> None:
                    nonlocal started, running
                    started += 1
                    running += 1
                    Hedge._attempt_context(started).run(nursery.start_soon, attempt)

                launch()
                due: float | None = None  # when the next hedge starts, if no answer came
                while True:
                    wait = hedge._wait() if started < limit else None
                    while (
                        wait == 0.0
                        and started < limit
                        and hedge._may_hedge(started + 1, "parallel")
                    ):
                        launch()
                        wait = hedge._wait() if started < limit else None
                    if running == 0:  # every attempt failed, and no more may start
                        break
                    if due is None and wait is not None and wait > 0.0 and started < limit:
                        due = clock.monotonic() + wait
                    got: tuple[BaseException | None, Any] | None
                    if due is None:
                        got = await receive.receive()
                    else:
                        got = await _receive_until(clock, receive, due)
                    if got is None:  # the delay passed with no answer
                        due = None
                        if started < limit and hedge._may_hedge(started + 1, "delay"):
                            launch()
                        continue
                    running -= 1
                    error, result = got
                    try:
                        ends = hedge._judge(error, result)
                    except Exception as exc:  # an on_result that raises ends the call
                        ends, error, result = True, exc, None
                    if ends:
                        decided = (error, result)
                        if error is None and hedge._learns:
                            hedge._learn(clock.monotonic() - t0)
                        break
                    last = (error, result)
                    if (
                        started < limit
                        and hedge.mode != "parallel"
                        and hedge._may_hedge(started + 1, "failure")
                    ):
                        launch()
                nursery.cancel_scope.cancel()  # the losers, awaited as the nursery closes
        except BaseExceptionGroup as group:
            raise _one(group) from None
        error, result = last if decided is None else decided
        if error is not None:
            raise error
        return result


async def _receive_until(clock: Clock, receive: Any, due: float) -> Any:
    """The next outcome from ``receive``, or None once ``clock`` reaches ``due``."""
    import trio

    seconds = max(0.0, due - clock.monotonic())
    if clock is SYSTEM_CLOCK:
        with trio.move_on_after(seconds):
            return await receive.receive()
        return None
    got: list[Any] = []
    async with trio.open_nursery() as nursery:

        async def timer() -> None:
            await clock.asleep(seconds)
            nursery.cancel_scope.cancel()

        nursery.start_soon(timer)
        got.append(await receive.receive())
        nursery.cancel_scope.cancel()
    return got[0] if got else None


def _one(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """What a nursery's group of exceptions stands for: trio's Cancelled when all are,
    the exception alone in it, or the group itself."""
    import trio

    errors = group.exceptions
    if all(isinstance(error, trio.Cancelled) for error in errors) or len(errors) == 1:
        return errors[0]
    return group


class _SyncRace:
    """One hedged sync call: its attempts on the hedge's pool; the caller waits."""

    __slots__ = ("args", "attempts", "fn", "hedge", "kwargs", "next", "started", "t0")

    def __init__(
        self,
        hedge: Hedge,
        next: Endpoint,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.hedge, self.next, self.fn, self.args, self.kwargs = hedge, next, fn, args, kwargs
        self.attempts: dict[concurrent.futures.Future[Any], float] = {}
        self.started = 0

    def _launch(self) -> None:
        self.started += 1
        context = Hedge._attempt_context(self.started)
        future = self.hedge._executor().submit(
            context.run, self.next, self.fn, self.args, self.kwargs
        )
        self.attempts[future] = self.hedge.clock.monotonic()

    def _await_any(self, wait: float | None) -> set[concurrent.futures.Future[Any]]:
        """The attempts done within ``wait`` seconds on the hedge's clock (None: no limit)."""
        clock = self.hedge.clock
        if wait is None or clock is SYSTEM_CLOCK:
            done, _ = concurrent.futures.wait(
                self.attempts, timeout=wait, return_when=concurrent.futures.FIRST_COMPLETED
            )
            return done
        timer = self.hedge._executor().submit(clock.sleep, wait)
        done, _ = concurrent.futures.wait(
            [*self.attempts, timer], return_when=concurrent.futures.FIRST_COMPLETED
        )
        done.discard(timer)
        return done

    def run(self) -> Any:
        hedge = self.hedge
        if hedge.budget is not None:
            hedge.budget.deposit()
        limit = 1 + hedge.max_hedges
        last: tuple[BaseException | None, Any] = (None, None)
        self.t0 = hedge.clock.monotonic()
        self._launch()
        while True:
            wait = hedge._wait() if self.started < limit else None
            while (
                wait == 0.0
                and self.started < limit
                and hedge._may_hedge(self.started + 1, "parallel")
            ):
                self._launch()
                wait = hedge._wait() if self.started < limit else None
            done = self._await_any(wait)
            if not done:
                if self.started < limit and hedge._may_hedge(self.started + 1, "delay"):
                    self._launch()
                continue
            failed = False
            for future in done:
                self.attempts.pop(future)
                error = future.exception()
                result = None if error is not None else future.result()
                if hedge._judge(error, result):
                    self._walk_away()
                    if error is None:
                        hedge._learn(hedge.clock.monotonic() - self.t0)
                        return result
                    raise error
                last, failed = (error, result), True
            if (
                failed
                and self.started < limit
                and hedge.mode != "parallel"
                and hedge._may_hedge(self.started + 1, "failure")
            ):
                self._launch()
            if not self.attempts:
                error, result = last
                if error is not None:
                    raise error
                return result

    def _walk_away(self) -> None:
        """Leave the losers: those not started yet never run; the others finish unheard."""
        for future in self.attempts:
            future.cancel()
