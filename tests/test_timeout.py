"""Tests of `resilience.Timeout`: construction, cooperative and walk-away sync, and async."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import inspect
import math
import threading
import weakref
from datetime import timedelta
from typing import Any

import pytest

import resilience as rs
from modes import (
    Event,
    cancellation,
    checkpoint,
    create_task,
    forever,
    gather,
    on_asyncio,
    pending_cancellations,
    run_plain,
    settle,
    task_cancelled,
)
from resilience import _context
from resilience.testing import FakeClock

USER_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("USER_VAR", default="unset")


# -- construction -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"seconds": 0}, ValueError, r"^seconds must be > 0"),
        ({"seconds": -1}, ValueError, r"^seconds must be > 0"),
        ({"seconds": math.nan}, ValueError, r"^seconds .*NaN"),
        ({"seconds": math.inf}, ValueError, r"^seconds must be finite"),
        ({"seconds": True}, TypeError, r"^seconds must be a number"),
        ({"seconds": "1"}, TypeError, r"^seconds must be a number"),
        ({"seconds": 1, "sync_mode": "thread"}, ValueError, r"^sync_mode must be"),
        ({"seconds": 1, "max_workers": 0}, ValueError, r"^max_workers"),
        ({"seconds": 1, "max_workers": 1.5}, TypeError, r"^max_workers"),
        ({"seconds": 1, "clock": object()}, TypeError, r"^clock must provide"),
        ({"seconds": 1, "name": 3}, TypeError, r"^name"),
    ],
)
def test_bad_arguments_fail_at_construction(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        rs.Timeout(**kwargs)


def test_accepts_a_timedelta() -> None:
    assert rs.Timeout(timedelta(milliseconds=250)).seconds == 0.25


def test_settings_and_repr_show_the_mode() -> None:
    cooperative = rs.Timeout(1.5)
    walk_away = rs.Timeout(2, sync_mode="walk_away", max_workers=4, name="db")
    assert cooperative.settings() == {"seconds": 1.5, "sync_mode": "cooperative"}
    assert walk_away.settings() == {"seconds": 2.0, "sync_mode": "walk_away", "max_workers": 4}
    assert repr(cooperative) == "Timeout(1.5)"
    assert repr(walk_away) == "Timeout(2, sync_mode='walk_away')"
    assert walk_away.describe()["name"] == "db"
    assert walk_away.busy_workers == 0
    assert walk_away.drain(0) is True  # no pool yet: nothing to wait for


def test_drain_validates_its_timeout() -> None:
    with pytest.raises(ValueError, match=r"^timeout"):
        rs.Timeout(1, sync_mode="walk_away").drain(-1)


# -- cooperative sync ---------------------------------------------------------------


def test_cooperative_call_returns_and_exposes_its_deadline(clock: FakeClock) -> None:
    timeout = rs.Timeout(2, clock=clock)
    seen: list[rs.CallContext] = []

    def work(x: int, *, y: int) -> int:
        seen.append(rs.current())
        return x + y

    assert timeout.call(work, 1, y=2) == 3
    assert seen[0].deadline == 2.0
    assert seen[0].remaining() == 2.0
    assert rs.current().deadline is None


def test_cooperative_late_success_raises(clock: FakeClock) -> None:
    timeout = rs.Timeout(1, clock=clock, name="slow")

    def slow() -> str:
        clock.advance(1.5)
        return "late"

    with pytest.raises(rs.TimeoutExceeded) as caught:
        timeout.call(slow)
    assert caught.value.seconds == 1
    assert caught.value.name == "slow"


def test_cooperative_success_exactly_at_the_deadline_is_late(clock: FakeClock) -> None:
    def at_deadline() -> str:
        clock.advance(1)
        return "late"

    with pytest.raises(rs.TimeoutExceeded):
        rs.Timeout(1, clock=clock).call(at_deadline)


def test_cooperative_errors_pass_unchanged_even_when_late(clock: FakeClock) -> None:
    def late_failure() -> None:
        clock.advance(5)
        raise ConnectionError("down")

    with pytest.raises(ConnectionError, match="down"):
        rs.Timeout(1, clock=clock).call(late_failure)
    assert rs.current().deadline is None


def test_inner_timeout_never_extends_an_outer_one(clock: FakeClock) -> None:
    seen: list[float | None] = []
    pipeline = rs.Pipeline([rs.Timeout(1, clock=clock), rs.Timeout(5, clock=clock)])
    pipeline.call(lambda: seen.append(rs.current().deadline))
    assert seen == [1.0]


def test_a_tighter_inner_timeout_wins_and_the_outer_deadline_comes_back(clock: FakeClock) -> None:
    seen: list[float | None] = []
    inner = rs.Timeout(1, clock=clock)

    def outer_body() -> None:
        seen.append(rs.current().deadline)
        inner.call(lambda: seen.append(rs.current().deadline))
        seen.append(rs.current().deadline)

    rs.Timeout(5, clock=clock).call(outer_body)
    assert seen == [5.0, 1.0, 5.0]


def test_deadlines_on_different_clocks_are_compared_on_one_timeline() -> None:
    """An outer real-clock deadline of an hour does not hide a 5 s inner one on a fake clock."""
    fake = FakeClock(start=1000)
    seen: list[rs.CallContext] = []
    outer = rs.Timeout(3600)
    inner = rs.Timeout(5, clock=fake)
    outer.call(inner.call, lambda: seen.append(rs.current()))
    assert seen[0].deadline == 1005.0
    assert seen[0].clock is fake

    seen.clear()
    tight_outer = rs.Timeout(2, clock=fake)
    loose_inner = rs.Timeout(3600)  # real clock
    tight_outer.call(loose_inner.call, lambda: seen.append(rs.current()))
    assert seen[0].clock is fake  # the outer deadline stays in force
    assert seen[0].remaining() == 2.0


def test_retry_gives_each_attempt_a_fresh_deadline(clock: FakeClock) -> None:
    deadlines: list[float | None] = []

    def slow() -> None:
        deadlines.append(rs.current().deadline)
        clock.advance(2)

    pipeline = rs.Pipeline(
        [
            rs.Retry(3, on=rs.TimeoutExceeded, backoff=0.5, clock=clock),
            rs.Timeout(1, clock=clock),
        ]
    )
    with pytest.raises(rs.TimeoutExceeded):
        pipeline.call(slow)
    assert deadlines == [1.0, 3.5, 6.0]


def test_decorator_keeps_the_function_and_its_kind(clock: FakeClock) -> None:
    timeout = rs.Timeout(1, clock=clock)

    @timeout
    def sync_fn(a: int, b: int = 2) -> int:
        """Add."""
        return a + b

    @timeout
    async def async_fn(a: int) -> int:
        return a

    assert sync_fn(1) == 3
    assert sync_fn.__name__ == "sync_fn"
    assert sync_fn.__doc__ == "Add."
    assert str(inspect.signature(sync_fn)) == "(a: 'int', b: 'int' = 2) -> 'int'"
    assert inspect.iscoroutinefunction(async_fn)
    assert asyncio.run(async_fn(7)) == 7


# -- walk-away sync ------------------------------------------------------------------


def test_walk_away_runs_elsewhere_with_the_callers_context() -> None:
    timeout = rs.Timeout(30, sync_mode="walk_away")
    token = USER_VAR.set("alice")
    try:

        def where() -> tuple[int, str, float | None]:
            return threading.get_ident(), USER_VAR.get(), rs.current().remaining()

        thread_id, user, left = timeout.call(where)
    finally:
        USER_VAR.reset(token)
    assert thread_id != threading.get_ident()
    assert user == "alice"
    assert left is not None
    assert 0 < left <= 30
    assert timeout.drain(10)


def test_walk_away_errors_reach_the_caller() -> None:
    timeout = rs.Timeout(30, sync_mode="walk_away")

    def fail() -> None:
        raise KeyError("missing")

    with pytest.raises(KeyError, match="missing"):
        timeout.call(fail)

    def interrupt() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        timeout.call(interrupt)
    assert timeout.drain(10)
    assert timeout.busy_workers == 0


def _walk_away_call(
    timeout: rs.Timeout, fn: Any, outcome: dict[str, BaseException | str]
) -> threading.Thread:
    """Start a thread that calls ``fn`` through ``timeout`` and records what happened."""

    def caller() -> None:
        try:
            outcome["result"] = timeout.call(fn)
        except BaseException as exc:  # recorded for the test to check
            outcome["error"] = exc

    thread = threading.Thread(target=caller)
    thread.start()
    return thread


def test_walk_away_leaves_at_the_deadline_and_the_call_runs_on() -> None:
    clock = FakeClock(auto_advance=False)
    timeout = rs.Timeout(2, sync_mode="walk_away", max_workers=1, clock=clock, name="legacy")
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def stuck() -> str:
        started.set()
        release.wait()
        finished.set()
        return "too late"

    outcome: dict[str, BaseException | str] = {}
    caller = _walk_away_call(timeout, stuck, outcome)
    assert started.wait(10)
    clock.advance(2)
    caller.join(10)
    error = outcome["error"]
    assert isinstance(error, rs.TimeoutExceeded)
    assert error.seconds == 2
    assert error.name == "legacy"
    assert not finished.is_set()
    assert timeout.busy_workers == 1  # the abandoned call still holds its worker

    with pytest.raises(rs.RejectedError, match="legacy: all 1 walk-away workers are busy"):
        timeout.call(lambda: "no room")

    release.set()
    assert timeout.drain(10)
    assert finished.is_set()
    assert timeout.busy_workers == 0
    assert timeout.call(lambda: "room again") == "room again"


def test_walk_away_respects_an_earlier_outer_deadline() -> None:
    """The walk-away layer leaves at the outer deadline; the outer layer reports it as its own."""
    clock = FakeClock(auto_advance=False)
    outer = rs.Timeout(1, clock=clock, name="outer")
    inner = rs.Timeout(10, sync_mode="walk_away", clock=clock, name="inner")
    fired: list[tuple[str | None, float]] = []
    for layer in (outer, inner):
        layer.subscribe(lambda event: fired.append((event.name, event.seconds)))
    started, release = threading.Event(), threading.Event()
    seen: list[float | None] = []

    def stuck() -> None:
        seen.append(rs.current().deadline)
        started.set()
        release.wait()

    outcome: dict[str, BaseException | str] = {}
    caller = _walk_away_call(outer, lambda: inner.call(stuck), outcome)
    assert started.wait(10)
    clock.advance(1)
    caller.join(10)
    release.set()
    assert seen == [1.0]
    error = outcome["error"]
    assert type(error) is rs.TimeoutExceeded
    assert (error.name, error.seconds) == ("outer", 1.0)  # the deadline that fired
    assert isinstance(error.__cause__, rs.TimeoutExceeded)  # the walk-away layer's exit
    assert fired == [("outer", 1.0)]  # the inner layer's own 10 s never fired
    assert inner.drain(10)


@pytest.mark.parametrize("nested", ["walk-away in walk-away", "no Timeout owns the deadline"])
def test_walk_away_cut_short_by_an_enclosing_deadline(nested: str) -> None:
    """Inside a tighter walk-away layer, or under a deadline no sync Timeout set."""
    clock = FakeClock(auto_advance=False)
    inner = rs.Timeout(10, sync_mode="walk_away", clock=clock, name="inner")
    started, release = threading.Event(), threading.Event()

    def stuck() -> None:
        started.set()
        release.wait()

    outcome: dict[str, BaseException | str] = {}
    if nested == "walk-away in walk-away":
        outer = rs.Timeout(1, sync_mode="walk_away", clock=clock, name="outer")
        caller = _walk_away_call(outer, lambda: inner.call(stuck), outcome)
    else:
        # A deadline that came with the context (as from an async caller),
        # with no cooperative Timeout on this thread to claim it.
        def under_deadline() -> None:
            with rs.tags():
                context = rs.current()
                assert context.deadline is None
                _context.VAR.get()[2] = 1.0
                _context.VAR.get()[3] = clock
                inner.call(stuck)

        caller = _walk_away_call(rs.Pipeline([], name="plain"), under_deadline, outcome)
    assert started.wait(10)
    clock.advance(1)
    caller.join(10)
    release.set()
    error = outcome["error"]
    assert isinstance(error, rs.TimeoutExceeded)
    if nested == "walk-away in walk-away":
        assert (type(error), error.name, error.seconds) == (rs.TimeoutExceeded, "outer", 1.0)
    else:
        assert (error.name, error.seconds) == (None, 1.0)  # not the inner layer's 10 s
        assert "10s" not in str(error)
    assert inner.drain(10)
    if nested == "walk-away in walk-away":
        assert outer.drain(10)


def test_walk_away_pool_counts_are_exact_under_concurrency() -> None:
    timeout = rs.Timeout(30, sync_mode="walk_away", max_workers=4)
    gate = threading.Barrier(4)
    results: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> int:
        gate.wait(10)  # all four run at the same time, each on its own worker
        return i

    def caller(i: int) -> None:
        value = timeout.call(work, i)
        with lock:
            results.append(value)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(results) == [0, 1, 2, 3]
    assert timeout.drain(10)
    assert timeout.busy_workers == 0


def test_walk_away_works_on_the_real_clock() -> None:
    """With the system clock the caller waits on the future itself (no fake hook)."""
    assert rs.Timeout(30, sync_mode="walk_away").call(lambda: 42) == 42


# -- async ---------------------------------------------------------------------------


async def test_async_call_returns_and_exposes_its_deadline(
    clock: FakeClock, async_mode: str
) -> None:
    timeout = rs.Timeout(3, clock=clock)

    async def work(x: int) -> tuple[int, float | None]:
        await checkpoint()
        return x * 2, rs.current().deadline

    assert await timeout.acall(work, 4) == (8, 3.0)
    assert rs.current().deadline is None


async def test_async_call_is_cancelled_at_the_deadline(async_mode: str) -> None:
    clock = FakeClock(auto_advance=False)
    timeout = rs.Timeout(2, clock=clock, name="users")
    cancelled = Event()

    async def hang() -> None:
        try:
            await forever()
        except cancellation(async_mode):
            cancelled.set()
            raise

    task = create_task(timeout.acall(hang))
    await settle()
    clock.advance(2)
    with pytest.raises(rs.TimeoutExceeded) as caught:
        await task
    assert cancelled.is_set()
    assert caught.value.seconds == 2
    assert caught.value.name == "users"
    assert isinstance(caught.value.__cause__, cancellation(async_mode))


async def test_outside_cancellation_stays_a_cancellation(async_mode: str) -> None:
    timeout = rs.Timeout(30)
    started = Event()

    async def hang() -> None:
        started.set()
        await forever()

    task = create_task(timeout.acall(hang))
    await started.wait()
    task.cancel()
    with pytest.raises(task_cancelled(async_mode)):  # trio's: Cancelled reached the task's scope
        await task
    assert task.cancelled()


async def test_cancellation_count_is_balanced_after_a_timeout(async_mode: str) -> None:
    """The caller's task can keep using asyncio.timeout and TaskGroup afterwards (under trio:
    no cancellation is left pending)."""
    clock = FakeClock(auto_advance=False)
    timeout = rs.Timeout(1, clock=clock)
    counts: list[int] = []

    async def body() -> None:
        with pytest.raises(rs.TimeoutExceeded):
            await timeout.acall(forever)
        counts.append(await pending_cancellations())

    task = create_task(body())
    await settle()
    clock.advance(1)
    await task
    assert counts == [0]


async def test_a_call_that_swallows_the_cancellation_keeps_its_result(async_mode: str) -> None:
    clock = FakeClock(auto_advance=False)
    timeout = rs.Timeout(1, clock=clock)
    counts: list[int] = []

    async def stubborn() -> str:
        with contextlib.suppress(cancellation(async_mode)):
            await forever()
        counts.append(await pending_cancellations())
        return "finished anyway"

    async def body() -> tuple[str, int]:
        result = await timeout.acall(stubborn)
        return result, await pending_cancellations()

    task = create_task(body())
    await settle()
    clock.advance(1)
    assert await task == ("finished anyway", 0)
    assert counts == [1]  # the cancellation was pending while the call ran


async def test_an_error_raised_instead_of_the_cancellation_passes_unchanged(
    async_mode: str,
) -> None:
    clock = FakeClock(auto_advance=False)
    timeout = rs.Timeout(1, clock=clock)

    async def converts() -> None:
        try:
            await forever()
        except cancellation(async_mode):
            raise ConnectionResetError("closed while cancelling") from None

    async def body() -> int:
        with pytest.raises(ConnectionResetError):
            await timeout.acall(converts)
        return await pending_cancellations()

    task = create_task(body())
    await settle()
    clock.advance(1)
    assert await task == 0


async def test_nested_async_timeouts_each_report_their_own(async_mode: str) -> None:
    clock = FakeClock(auto_advance=False)
    outer = rs.Timeout(1, clock=clock, name="outer")
    inner = rs.Timeout(5, clock=clock, name="inner")

    async def call() -> None:
        await outer.acall(inner.acall, forever)

    task = create_task(call())
    await settle()
    clock.advance(1)
    with pytest.raises(rs.TimeoutExceeded) as caught:
        await task
    assert caught.value.name == "outer"

    tight_inner = rs.Timeout(1, clock=clock, name="tight")
    loose_outer = rs.Timeout(5, clock=clock, name="loose")
    seen: list[float | None] = []

    async def hang() -> None:
        seen.append(rs.current().deadline)
        await forever()

    now = clock.monotonic()
    task = create_task(loose_outer.acall(tight_inner.acall, hang))
    await settle()
    clock.advance(1)
    with pytest.raises(rs.TimeoutExceeded) as caught:
        await task
    assert caught.value.name == "tight"
    assert seen == [now + 1]


async def test_async_retry_over_timeout_retries_each_expiry(async_mode: str) -> None:
    clock = FakeClock(auto_advance=False)
    attempts: list[int] = []
    pipeline = rs.Pipeline(
        [rs.Retry(3, on=rs.TimeoutExceeded, backoff=0, clock=clock), rs.Timeout(1, clock=clock)]
    )

    async def hang() -> None:
        attempts.append(rs.current().attempt)
        await forever()

    task = create_task(pipeline.acall(hang))
    for _ in range(3):
        await settle(5)
        clock.advance(1)
    with pytest.raises(rs.TimeoutExceeded):
        await task
    assert attempts == [1, 2, 3]


async def test_many_concurrent_tasks_time_out_exactly(async_mode: str) -> None:
    clock = FakeClock(auto_advance=False)
    timeout = rs.Timeout(1, clock=clock)
    release = Event()

    async def maybe_hang(i: int) -> int:
        if i % 2:
            await forever()
        await release.wait()
        return i

    tasks = [create_task(timeout.acall(maybe_hang, i)) for i in range(200)]
    await settle()
    clock.advance(1)
    for _ in range(3):
        await settle()
    release.set()
    results = await gather(*tasks, return_exceptions=True)
    timed_out = [r for r in results if isinstance(r, rs.TimeoutExceeded)]
    assert len(timed_out) == 200  # every task was still waiting when the deadline passed

    tasks = [create_task(timeout.acall(maybe_hang, i)) for i in range(200)]
    await settle()
    for _ in range(3):
        await settle()
    clock.advance(1)
    results = await gather(*tasks, return_exceptions=True)
    assert [r for r in results if isinstance(r, int)] == list(range(0, 200, 2))
    assert sum(isinstance(r, rs.TimeoutExceeded) for r in results) == 100


def test_idle_walk_away_workers_exit() -> None:
    """Workers with nothing to do leave after idle_seconds, so dropped policies leak no threads."""
    from resilience._pool import WorkerPool

    pool = WorkerPool(3, "idle-test", idle_seconds=0.01)
    all_running = threading.Barrier(4)  # three workers and this thread

    def job(i: int) -> int:
        all_running.wait(10)
        return i * 2

    futures = [pool.submit(job, i) for i in range(3)]
    all_running.wait(10)
    # Listed while all three are busy: none can have left yet.
    workers = [t for t in threading.enumerate() if t.name == "resilience-idle-test"]
    assert len(workers) == 3
    assert [f.result(10) for f in futures] == [0, 2, 4]
    for worker in workers:
        worker.join(10)
    assert not any(worker.is_alive() for worker in workers)
    assert pool.threads == 0
    assert pool.submit(lambda: "again").result(10) == "again"  # a new worker starts


# -- the layer whose deadline it was reports it -------------------------------------------------


def test_nested_sync_timeouts_the_earlier_deadline_reports() -> None:
    """Outer 1 s around inner 5 s, a 6 s call: the outer's error and event, not the inner's."""
    clock = FakeClock()
    outer = rs.Timeout(1, clock=clock, name="outer")
    inner = rs.Timeout(5, clock=clock, name="inner")
    fired: list[str | None] = []
    for layer in (outer, inner):
        layer.subscribe(lambda event: fired.append(event.name))
    with pytest.raises(rs.TimeoutExceeded) as caught:
        outer.call(inner.call, clock.sleep, 6)
    assert (type(caught.value), caught.value.name, caught.value.seconds) == (
        rs.TimeoutExceeded,
        "outer",
        1,
    )
    assert fired == ["outer"]


def test_a_cooperative_timeout_under_a_deadline_nobody_owns_raises_it_unnamed() -> None:
    """A deadline in the context with no sync Timeout to report it: an unnamed TimeoutExceeded."""
    clock = FakeClock()
    inner = rs.Timeout(5, clock=clock, name="inner")
    with rs.tags():
        _context.VAR.get()[2] = 2.0
        _context.VAR.get()[3] = clock
        with pytest.raises(rs.TimeoutExceeded) as caught:
            inner.call(clock.sleep, 6)
    assert (caught.value.name, caught.value.seconds) == (None, 2.0)


async def test_nested_async_timeouts_report_only_the_outer_event() -> None:
    """Outer 1 s, inner 5 s, same task: the outer raises and is the only one to send an event."""
    clock = FakeClock(auto_advance=False)
    outer = rs.Timeout(1, clock=clock, name="outer")
    inner = rs.Timeout(5, clock=clock, name="inner")
    fired: list[str | None] = []
    for layer in (outer, inner):
        layer.subscribe(lambda event: fired.append(event.name))

    async def body() -> int:
        with pytest.raises(rs.TimeoutExceeded) as caught:
            await outer.acall(inner.acall, asyncio.Event().wait)
        assert caught.value.name == "outer"
        task = asyncio.current_task()
        assert task is not None
        return task.cancelling()

    task = asyncio.create_task(body())
    await asyncio.sleep(0)
    clock.advance(1)
    assert await task == 0  # every cancellation the layers made was taken back
    assert fired == ["outer"]


# -- a chain run where no call set a context -----------------------------------------------------


class WithoutContext(rs.Middleware):
    """A custom layer that runs the rest of the chain without the caller's context:
    on a thread of its own (sync), in a task with an empty context (async)."""

    def wrap(self, next: Any) -> Any:
        def endpoint(fn: Any, args: Any, kwargs: Any) -> Any:
            outcome: list[Any] = []

            def run() -> None:
                try:
                    outcome.append(next(fn, args, kwargs))
                except BaseException as exc:
                    outcome.append(exc)

            worker = threading.Thread(target=run)
            worker.start()
            worker.join(10)
            if isinstance(outcome[0], BaseException):
                raise outcome[0]
            return outcome[0]

        return endpoint

    def awrap(self, next: Any) -> Any:
        async def endpoint(fn: Any, args: Any, kwargs: Any) -> Any:
            if on_asyncio():
                empty = contextvars.Context()
                return await asyncio.create_task(next(fn, args, kwargs), context=empty)
            import trio

            outcome: list[Any] = []

            async def run() -> None:
                try:
                    outcome.append(await next(fn, args, kwargs))
                except Exception as exc:
                    outcome.append(exc)

            async with trio.open_nursery() as nursery:
                # A trio task starts in a copy of its spawner's context: spawn it from an
                # empty one.
                contextvars.Context().run(nursery.start_soon, run)
            if isinstance(outcome[0], Exception):
                raise outcome[0]
            return outcome[0]

        return endpoint


@pytest.mark.parametrize("inner", ["timeout", "retry"])
async def test_timeout_and_retry_work_in_a_chain_run_outside_any_call(
    inner: str, mode: str
) -> None:
    """They give the call a context of their own instead of writing into the empty one."""
    clock = FakeClock()
    seen: list[tuple[int, float | None]] = []
    failures = [ConnectionError("once")]

    def flaky() -> str:
        context = rs.current()
        seen.append((context.attempt, context.deadline))
        if failures:
            raise failures.pop()
        return "ok"

    layer = rs.Timeout(2, clock=clock) if inner == "timeout" else rs.Retry(2, backoff=0)
    pipeline = rs.Pipeline([WithoutContext(), layer])
    if inner == "timeout":
        with pytest.raises(ConnectionError):
            await run_plain(mode, pipeline, flaky)
        assert await run_plain(mode, pipeline, flaky) == "ok"
        assert seen == [(1, 2.0), (1, 2.0)]
    else:
        assert await run_plain(mode, pipeline, flaky) == "ok"
        assert len(seen) == 2
        assert seen[1][0] == 2  # the retry runs in a context of its own


async def test_an_async_timeout_reports_a_deadline_a_sync_layer_inside_stopped_at() -> None:
    """Sync code blocking the loop inside an async Timeout: the inner sync layer stops at the
    outer deadline, and the async layer whose deadline it was reports it."""
    clock = FakeClock()
    outer = rs.Timeout(1, clock=clock, name="outer")
    inner = rs.Timeout(5, clock=clock, name="inner")
    fired: list[str | None] = []
    for layer in (outer, inner):
        layer.subscribe(lambda event: fired.append(event.name))

    async def blocking() -> None:
        inner.call(clock.sleep, 2)  # sync, so nothing cancels it before it returns

    async def body() -> int:
        with pytest.raises(rs.TimeoutExceeded) as caught:
            await outer.acall(blocking)
        assert (type(caught.value), caught.value.name) == (rs.TimeoutExceeded, "outer")
        task = asyncio.current_task()
        assert task is not None
        return task.cancelling()

    assert await asyncio.create_task(body()) == 0
    assert fired == ["outer"]


async def test_a_timeout_around_a_task_group_reports_its_own_deadline() -> None:
    """Children with looser Timeouts of their own: the outer layer's error, not a group."""
    clock = FakeClock(auto_advance=False)
    outer = rs.Timeout(1, clock=clock, name="outer")
    fired: list[str | None] = []
    outer.subscribe(lambda event: fired.append(event.name))

    async def fan_out() -> None:
        async with asyncio.TaskGroup() as group:
            for _ in range(2):
                group.create_task(rs.Timeout(5, clock=clock).acall(asyncio.Event().wait))

    task = asyncio.create_task(outer.acall(fan_out))
    for _ in range(3):
        await asyncio.sleep(0)
    clock.advance(1)
    with pytest.raises(rs.TimeoutExceeded) as caught:
        await task
    assert (type(caught.value), caught.value.name) == (rs.TimeoutExceeded, "outer")
    assert fired == ["outer"]


def test_an_outer_deadline_on_another_clock_is_judged_on_that_clock() -> None:
    """A deadline set on a clock that never moved has not passed, whatever the inner clock says."""
    still = FakeClock(auto_advance=False)  # the outer layer's clock: never advanced
    moving = FakeClock()  # the inner layer's clock: sleeping advances it
    outer = rs.Timeout(0.2, clock=still, name="outer")
    inner = rs.Timeout(5, clock=moving, name="inner")
    assert outer.call(inner.call, lambda: moving.sleep(2) or "done") == "done"
    assert still.monotonic() == 0.0


async def test_finished_calls_beside_a_slow_one_release_their_tasks_and_results() -> None:
    """One slow call under a Timeout beside many fast ones: every fast call's task and result
    is freed as soon as it ends, and the deadline queue stays short (issue: 500 results of
    1 MB kept 501 MB alive until the slow call ended)."""
    timeout = rs.Timeout(10)
    gate = asyncio.Event()

    async def slow() -> None:
        await gate.wait()

    class Result:
        """Stands for a large answer: only its lifetime matters."""

    async def fast() -> Result:
        return Result()

    slow_task = asyncio.create_task(timeout.acall(slow))
    await asyncio.sleep(0)  # the slow call is queued first, at the head
    alive: list[weakref.ref[Any]] = []
    for _ in range(500):
        task = asyncio.create_task(timeout.acall(fast))
        result = await task
        alive += [weakref.ref(task), weakref.ref(result)]
        del task, result
    await asyncio.sleep(0)  # leave the wake-up of the last task, which holds it
    gc.collect()
    assert [i for i, ref in enumerate(alive) if ref() is not None] == []
    queue = timeout._deadline_queues.last
    assert queue is not None
    assert len(queue.queue) <= 2 * 64
    gate.set()
    await slow_task
