"""Under trio, and anyio on either backend: cancel scopes, trio's waits, one FIFO account.

The behaviour suite runs under trio too (the ``mode`` and ``async_mode`` fixtures);
these are the cases that only trio has: a cancellation from outside that must stay
`trio.Cancelled`, `trio.move_on_after` around a waiting policy, `MockClock`, anyio.
No test sleeps for real: the policies' time is a `FakeClock`, trio's a `MockClock`
with ``autojump_threshold=0`` (it jumps ahead whenever every task is blocked).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

pytest.importorskip("trio")
pytest.importorskip("anyio")

import anyio
import anyio.lowlevel
import trio
import trio.testing

import resilience as rs
from resilience.testing import FakeClock


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    """``trio.run`` on a MockClock that jumps ahead whenever every task is blocked."""
    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def ok() -> str:
    return "ok"


# -- Timeout -------------------------------------------------------------------------------------


def test_a_timeout_cancels_the_call_at_its_deadline_on_trios_clock() -> None:
    """The system clock's deadline is a cancel scope's on trio's clock: a MockClock moves it."""
    timeout = rs.Timeout(5, name="users")
    events: list[rs.events.TimeoutEvent] = []
    timeout.subscribe(events.append)
    seen: list[BaseException] = []

    async def slow() -> str:
        try:
            await trio.sleep(60)
        except trio.Cancelled as cancelled:
            seen.append(cancelled)
            raise
        return "late"

    async def main() -> float:
        with pytest.raises(rs.TimeoutExceeded) as caught:
            await timeout.acall(slow)
        assert (caught.value.name, caught.value.seconds) == ("users", 5)
        assert caught.value.__cause__ is seen[0]
        return float(trio.current_time())

    assert run(main) == pytest.approx(5)
    assert [event.name for event in events] == ["users"]


def test_a_call_that_ends_in_time_keeps_its_result_and_its_deadline() -> None:
    timeout = rs.Timeout(5)

    async def quick() -> float | None:
        await trio.sleep(1)
        return rs.current().remaining()

    async def main() -> None:
        left = await timeout.acall(quick)
        assert left is not None
        assert 0 < left <= 5
        await trio.sleep(10)  # nothing of the timeout is left to cancel us later

    run(main)


def test_an_outside_cancel_stays_cancelled_never_converted_retried_counted_or_swallowed() -> None:
    """A cancel scope around the pipeline cancels the call: trio.Cancelled all the way out."""
    clock = FakeClock()
    attempts: list[int] = []
    events: list[object] = []
    breaker = rs.CircuitBreaker(consecutive_failures=1, clock=clock)
    pipeline = (
        rs.Pipeline.builder()
        .add(rs.Fallback(value="substitute", on=Exception))
        .add(rs.Retry(3, backoff=0, on=Exception, clock=clock))
        .add(rs.Timeout(30, clock=clock))
        .add(breaker)
        .add(rs.Bulkhead(1))
        .build()
    )
    for layer in pipeline.layers:
        layer.subscribe(events.append)

    async def hangs() -> None:
        attempts.append(rs.current().attempt)
        await trio.sleep_forever()

    async def main() -> None:
        with trio.move_on_after(1) as scope:
            await pipeline.acall(hangs)
        assert scope.cancelled_caught  # the Cancelled reached the scope that made it

    run(main)
    assert attempts == [1]  # not retried
    assert breaker.state is rs.CircuitState.CLOSED  # not counted
    assert breaker.metrics().failures == 0
    assert events == []  # no timeout, retry, fallback or breaker event
    bulkhead = pipeline.layers[-1]
    assert isinstance(bulkhead, rs.Bulkhead)
    assert bulkhead.available == 1  # its slot is back


def test_a_cancel_from_outside_before_the_deadline_is_not_a_timeout() -> None:
    """Cancelled by a sibling task, the Timeout layer lets trio's Cancelled through."""
    timeout = rs.Timeout(10)
    outcome: list[str] = []

    async def call(scope_box: list[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            scope_box.append(scope)
            try:
                await timeout.acall(trio.sleep_forever)
            except rs.TimeoutExceeded:
                outcome.append("timeout")
            except trio.Cancelled:
                outcome.append("cancelled")
                raise

    async def main() -> None:
        box: list[trio.CancelScope] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, box)
            await trio.testing.wait_all_tasks_blocked()
            box[0].cancel()

    run(main)
    assert outcome == ["cancelled"]


def test_nested_timeouts_report_the_deadline_that_passed() -> None:
    clock = FakeClock(auto_advance=False)
    outer = rs.Timeout(1, clock=clock, name="outer")
    inner = rs.Timeout(5, clock=clock, name="inner")
    tight = rs.Timeout(1, clock=clock, name="tight")
    loose = rs.Timeout(5, clock=clock, name="loose")
    fired: list[str | None] = []
    for layer in (outer, inner, tight, loose):
        layer.subscribe(lambda event: fired.append(event.name))

    async def expect(name: str, call: Callable[[], Awaitable[Any]]) -> None:
        async with trio.open_nursery() as nursery:

            async def advance() -> None:
                await trio.testing.wait_all_tasks_blocked()
                clock.advance(1)

            nursery.start_soon(advance)
            with pytest.raises(rs.TimeoutExceeded) as caught:
                await call()
            assert caught.value.name == name

    async def main() -> None:
        await expect("outer", lambda: outer.acall(inner.acall, trio.sleep_forever))
        await expect("tight", lambda: loose.acall(tight.acall, trio.sleep_forever))

    trio.run(main)
    assert fired == ["outer", "tight"]  # only the layer whose deadline it was


def test_nested_timeouts_on_trios_clock() -> None:
    async def main() -> float:
        with pytest.raises(rs.TimeoutExceeded) as caught:
            await rs.Timeout(3, name="outer").acall(
                rs.Timeout(7, name="inner").acall, trio.sleep, 60
            )
        assert caught.value.name == "outer"
        return float(trio.current_time())

    assert run(main) == pytest.approx(3)


def test_a_retry_over_a_timeout_retries_each_expiry() -> None:
    clock = FakeClock()
    pipeline = rs.Pipeline(
        [rs.Retry(3, on=rs.TimeoutExceeded, backoff=2, clock=clock), rs.Timeout(1)]
    )
    attempts: list[int] = []

    async def hangs() -> None:
        attempts.append(rs.current().attempt)
        await trio.sleep_forever()

    async def main() -> None:
        with pytest.raises(rs.TimeoutExceeded):
            await pipeline.acall(hangs)

    run(main)
    assert attempts == [1, 2, 3]
    assert clock.sleeps == [2.0, 2.0]  # the retry's waits, on its own clock


def test_deadlines_on_different_clocks_compose_under_trio() -> None:
    """An outer Timeout on a FakeClock, an inner one on the system clock: the earlier wins."""
    clock = FakeClock(auto_advance=False)
    outer = rs.Timeout(1, clock=clock, name="outer")
    inner = rs.Timeout(30, name="inner")
    seen: list[float | None] = []

    async def hangs() -> None:
        seen.append(rs.current().remaining())
        await trio.sleep_forever()

    async def main() -> None:
        async with trio.open_nursery() as nursery:

            async def advance() -> None:
                await trio.testing.wait_all_tasks_blocked()
                clock.advance(1)

            nursery.start_soon(advance)
            with pytest.raises(rs.TimeoutExceeded) as caught:
                await outer.acall(inner.acall, hangs)
            assert caught.value.name == "outer"

    run(main)
    assert seen == [1.0]  # the inner layer kept the outer's, earlier, deadline


def test_a_sync_layer_inside_that_stopped_at_our_deadline_is_our_timeout() -> None:
    """Sync code inside an async Timeout under trio: the cooperative inner layer stops at
    the outer deadline, and the layer whose deadline it was reports it."""
    clock = FakeClock()
    outer = rs.Timeout(1, clock=clock, name="outer")
    inner = rs.Timeout(5, clock=clock, name="inner")
    fired: list[str | None] = []
    for layer in (outer, inner):
        layer.subscribe(lambda event: fired.append(event.name))

    async def blocking() -> None:
        inner.call(clock.sleep, 2)  # sync: nothing can cancel it before it returns

    async def main() -> None:
        with pytest.raises(rs.TimeoutExceeded) as caught:
            await outer.acall(blocking)
        assert caught.value.name == "outer"

    trio.run(main)
    assert fired == ["outer"]


def test_a_call_that_swallows_its_cancellation_keeps_its_result() -> None:
    clock = FakeClock()

    async def stubborn() -> str:
        try:
            await clock.asleep(5)  # past the deadline: the Timeout cancels it
        except trio.Cancelled:
            return "finished anyway"
        return "never cancelled"

    async def main() -> str:
        return str(await rs.Timeout(1, clock=clock).acall(stubborn))

    assert trio.run(main) == "finished anyway"


# -- the waits: Retry, FaultInjector, Throttle, Bulkhead --------------------------------------


def test_retry_and_injected_latency_sleep_with_trio() -> None:
    """On the system clock, a retry's backoff and an injected latency are trio.sleep: trio's
    clock (here a MockClock) moves by exactly what was slept."""
    failures = [ConnectionError("once"), ConnectionError("twice")]

    async def flaky() -> str:
        if failures:
            raise failures.pop()
        return "ok"

    retry = rs.Retry(3, backoff=rs.backoff.constant(10))
    injector = rs.FaultInjector(latency=4)

    async def main() -> None:
        assert await retry.acall(flaky) == "ok"
        assert trio.current_time() == pytest.approx(20)
        assert await injector.acall(ok) == "ok"
        assert trio.current_time() == pytest.approx(24)

    run(main)


def test_move_on_after_around_a_waiting_throttle_takes_no_token() -> None:
    """A task waiting for tokens, cancelled by trio.move_on_after: it leaves the queue with
    nothing, and the next waiter is served in its place."""
    clock = FakeClock(auto_advance=False)
    throttle = rs.Throttle(1, burst=2, max_wait=None, clock=clock)
    throttle.acquire(2)

    async def main() -> None:
        with trio.move_on_after(5) as scope:
            await throttle.acall(ok)  # waits for a token on the fake clock, which stands still
        assert scope.cancelled_caught
        assert throttle.queued == 0
        clock.advance(1)
        assert throttle.available == 1  # the token that came is still there
        assert await throttle.acall(ok) == "ok"
        assert throttle.available == 0

    run(main)


def test_a_wait_on_the_system_clock_is_cut_short_by_its_grant() -> None:
    """A waiter with a time limit on the system clock waits in a trio cancel scope; the
    release of a slot wakes it long before."""
    bulkhead = rs.Bulkhead(1, max_queue=1, max_wait=30)
    results: list[str] = []

    async def call() -> None:
        results.append(await bulkhead.acall(ok))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            with bulkhead:
                nursery.start_soon(call)
                await trio.testing.wait_all_tasks_blocked()
                assert bulkhead.queued == 1
        assert results == ["ok"]

    trio.run(main)
    assert (bulkhead.queued, bulkhead.available) == (0, 1)


def test_bulkhead_slots_come_back_on_cancel_while_running_and_while_queued() -> None:
    bulkhead = rs.Bulkhead(1, max_queue=2)
    entered: list[str] = []

    async def work(name: str) -> None:
        entered.append(name)
        await trio.sleep_forever()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bulkhead.acall, work, "running")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(bulkhead.acall, work, "queued")
            await trio.testing.wait_all_tasks_blocked()
            assert (bulkhead.in_flight, bulkhead.queued) == (1, 1)
            nursery.cancel_scope.cancel()
        assert (bulkhead.in_flight, bulkhead.queued, bulkhead.available) == (0, 0, 1)
        assert entered == ["running"]

    trio.run(main)


def test_a_slot_granted_to_a_task_cancelled_before_it_ran_goes_to_the_next() -> None:
    bulkhead = rs.Bulkhead(1, max_queue=2)
    ran: list[str] = []

    async def work(name: str) -> None:
        ran.append(name)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            first = trio.CancelScope()

            async def call_first() -> None:
                with first:
                    await bulkhead.acall(work, "first")

            with bulkhead:
                nursery.start_soon(call_first)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(bulkhead.acall, work, "second")
                await trio.testing.wait_all_tasks_blocked()
                assert bulkhead.queued == 2
            first.cancel()  # granted the slot on the way out of `with`, but never ran
        assert ran == ["second"]
        assert (bulkhead.available, bulkhead.queued) == (1, 0)

    trio.run(main)


def test_threads_and_trio_tasks_share_one_fifo_account() -> None:
    """A thread holds the slot; a trio task waits in the queue; the thread's release wakes it."""
    bulkhead = rs.Bulkhead(1, max_queue=1)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with bulkhead:
            holding.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    assert holding.wait(30)
    results: list[str] = []

    async def call() -> None:
        results.append(await bulkhead.acall(ok))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()
            assert (bulkhead.in_flight, bulkhead.queued) == (1, 1)
            release.set()  # the thread gives its slot back: to the trio task, from the thread
            await trio.to_thread.run_sync(thread.join, 30)
        assert results == ["ok"]

    trio.run(main)
    assert bulkhead.available == 1


def test_a_half_open_trial_cancelled_from_outside_gives_its_permit_back() -> None:
    clock = FakeClock()
    breaker = rs.CircuitBreaker(
        consecutive_failures=1, half_open_calls=1, open_seconds=5, clock=clock
    )

    async def fails() -> None:
        raise ConnectionError("down")

    async def main() -> None:
        with pytest.raises(ConnectionError):
            await breaker.acall(fails)
        clock.advance(5)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(breaker.acall, trio.sleep_forever)  # the only trial
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(rs.CircuitOpenError):
                await breaker.acall(ok)  # the trial holds the one permit
            nursery.cancel_scope.cancel()  # the trial is cancelled from outside
        assert breaker.state is rs.CircuitState.HALF_OPEN  # not counted either way
        assert await breaker.acall(ok) == "ok"  # its permit came back: a new trial runs
        assert breaker.state is rs.CircuitState.CLOSED

    run(main)


def test_adaptive_limiter_counts_a_trio_cancellation_as_a_drop() -> None:
    clock = FakeClock()
    limiter = rs.AdaptiveLimiter(initial_limit=4, clock=clock)

    async def main() -> None:
        with trio.move_on_after(1):
            await limiter.acall(trio.sleep_forever)

    run(main)
    assert limiter.in_flight == 0
    assert limiter.metrics().dropped == 1


def test_a_sync_wait_in_a_trio_task_is_refused_not_a_deadlock() -> None:
    bulkhead = rs.Bulkhead(1, max_queue=1)

    async def main() -> None:
        async with bulkhead:
            with pytest.raises(RuntimeError, match="runs an event loop"):
                bulkhead.call(lambda: None)  # would block the trio thread for good
        assert bulkhead.queued == 0

    trio.run(main)


# -- Hedge --------------------------------------------------------------------------------------


def test_hedge_races_its_attempts_in_a_nursery() -> None:
    """Under trio every attempt is a task of the call's nursery: the first good answer wins,
    the losers are cancelled (their bulkhead slots back) before the call returns."""
    bulkhead = rs.Bulkhead(4)
    pipeline = rs.Pipeline([rs.Hedge(0.5, max_hedges=2), bulkhead])
    cancelled: list[int] = []

    async def service() -> str:
        attempt = rs.current().attempt
        try:
            await trio.sleep({1: 10, 2: 10, 3: 0.1}[attempt])
        except trio.Cancelled:
            cancelled.append(attempt)
            raise
        return f"attempt {attempt}"

    async def main() -> float:
        assert await pipeline.acall(service) == "attempt 3"
        assert bulkhead.in_flight == 0
        return float(trio.current_time())

    assert run(main) == pytest.approx(1.1, abs=0.01)  # hedges at 0.5 s and 1 s; the third answers
    assert sorted(cancelled) == [1, 2]


def test_an_outside_cancel_of_a_hedged_call_stays_cancelled() -> None:
    started: list[int] = []

    async def hangs() -> None:
        started.append(rs.current().attempt)
        await trio.sleep_forever()

    pipeline = rs.Pipeline([rs.Retry(3, backoff=0), rs.Hedge(0.1, max_hedges=2)])

    async def main() -> None:
        with trio.move_on_after(1) as scope:
            await pipeline.acall(hangs)
        assert scope.cancelled_caught

    run(main)
    assert started == [1, 2, 3]  # one call: its hedges, then the cancel; nothing retried


def test_an_error_that_is_not_hedged_ends_the_call_under_trio() -> None:
    async def bad() -> None:
        raise KeyError("not worth hedging")

    async def main() -> None:
        with pytest.raises(KeyError):
            await rs.Hedge(0.1, on=ConnectionError).acall(bad)

    trio.run(main)


# -- FakeClock under trio ----------------------------------------------------------------------


def test_fake_clock_asleep_waits_for_advance_under_trio() -> None:
    clock = FakeClock(auto_advance=False)
    woke: list[float] = []

    async def sleeper() -> None:
        await clock.asleep(5)
        woke.append(clock.monotonic())

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sleeper)
            await trio.testing.wait_all_tasks_blocked()
            clock.advance(4)
            await trio.testing.wait_all_tasks_blocked()
            assert woke == []
            await trio.to_thread.run_sync(clock.advance, 1)  # from another thread too
        assert woke == [5.0]

    trio.run(main)


def test_fake_clock_auto_advance_under_trio_yields_and_records() -> None:
    clock = FakeClock()

    async def main() -> None:
        await clock.asleep(3)
        await clock.asleep(0)

    trio.run(main)
    assert (clock.sleeps, clock.monotonic()) == ([3.0, 0.0], 3.0)


def test_a_cancelled_fake_asleep_leaves_no_timer_behind() -> None:
    clock = FakeClock(auto_advance=False)

    async def main() -> None:
        with trio.move_on_after(1) as scope:
            await clock.asleep(5)
        assert scope.cancelled_caught
        assert clock._timers
        assert all(timer.cancelled for _, _, timer in clock._timers)

    run(main)
    clock.advance(5)  # after the run: a live timer would try to reach the finished run


def test_fake_clock_timers_fire_on_the_trio_run_in_time_order() -> None:
    from resilience._aio import running_loop

    clock = FakeClock()
    fired: list[str] = []

    async def main() -> None:
        loop = running_loop()
        for when, name in [(3, "3a"), (1, "1"), (3, "3b"), (5, "5")]:
            clock.call_at(when, lambda name=name: fired.append(name), loop)  # type: ignore[misc]
        clock.advance(3)
        assert fired == []  # run in the trio thread, not inside advance()
        await trio.testing.wait_all_tasks_blocked()
        assert fired == ["1", "3a", "3b"]
        clock.advance(2)
        await trio.testing.wait_all_tasks_blocked()
        assert fired == ["1", "3a", "3b", "5"]

    trio.run(main)


# -- anyio, on either backend -------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_anyio_gets_the_same_on_either_backend(backend: str) -> None:
    """Timeout, Retry, Throttle and Bulkhead waits, and an outside cancel, through anyio."""
    clock = FakeClock()
    failures = [ConnectionError("once")]
    attempts: list[int] = []

    async def flaky() -> str:
        attempts.append(rs.current().attempt)
        await anyio.lowlevel.checkpoint()
        if failures:
            raise failures.pop()
        return "ok"

    pipeline = (
        rs.Pipeline.builder()
        .add(rs.Retry(3, backoff=1, clock=clock))
        .add(rs.Timeout(5))
        .add(rs.Throttle(1, per=2, burst=1, max_wait=10, clock=clock))
        .add(rs.Bulkhead(1, max_queue=1))
        .build()
    )

    other = FakeClock()

    async def cancel_outside(scope: anyio.CancelScope) -> None:
        scope.cancel()  # the scope around the Timeout, not the Timeout's own
        await anyio.sleep(60)

    async def main() -> None:
        assert await pipeline.acall(flaky) == "ok"  # the second attempt waits for a token
        assert attempts == [1, 2]
        with pytest.raises(rs.TimeoutExceeded):
            await rs.Timeout(1, clock=other).acall(other.asleep, 60)
        with anyio.CancelScope() as scope:
            await rs.Timeout(60).acall(cancel_outside, scope)
        assert scope.cancelled_caught  # anyio's own cancellation, not a TimeoutExceeded

    anyio.run(main, backend=backend)
    assert clock.sleeps == [1.0, 1.0]  # the retry's backoff, then the wait for the token


# -- the detection ------------------------------------------------------------------------------


def test_outside_any_event_loop_async_calls_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from resilience import _aio

    with pytest.raises(RuntimeError, match="no running event loop"):
        _aio.running_loop()
    assert not _aio.in_event_loop()
    held = rs.Timeout(1, clock=FakeClock()).acall(ok)  # trio imported, but not running
    with pytest.raises(RuntimeError, match="no running event loop"):
        held.send(None)
    held.close()
    monkeypatch.setitem(sys.modules, "trio", None)  # as if trio had never been imported
    assert _aio.trio_loop() is None
    bounded = ok()
    for coroutine in (
        _aio.sleep(1),
        _aio.after_callbacks(),
        rs.Timeout(1).acall(ok),
        _aio.within(1, bounded),
    ):
        with pytest.raises(RuntimeError, match="no running event loop"):
            coroutine.send(None)
        coroutine.close()
    bounded.close()  # never started: within() refused first


def test_a_trio_loop_that_finished_is_closed() -> None:
    from resilience import _aio

    async def main() -> _aio.TrioLoop:
        loop = _aio.trio_loop()
        assert loop is not None
        assert _aio.trio_loop() is loop  # one per run
        assert "TrioLoop(" in repr(loop)
        return loop

    loop = trio.run(main)
    assert not loop.is_closed()
    with pytest.raises(RuntimeError):
        loop.call_soon_threadsafe(print, "never")
    assert loop.is_closed()
    assert trio.run(main) is not loop  # a new run, a new one


def test_within_raises_timeout_error_under_trio() -> None:
    from resilience import _aio

    async def slow() -> None:
        await trio.sleep(60)

    async def main() -> None:
        assert await _aio.within(5, ok()) == "ok"
        with pytest.raises(TimeoutError):
            await _aio.within(5, slow())
        assert trio.current_time() == pytest.approx(5)

    run(main)


# -- without trio --------------------------------------------------------------------------------


def test_the_library_imports_and_runs_without_trio() -> None:
    """With trio unimportable, every policy works under asyncio (the package never needs it)."""
    script = textwrap.dedent(
        """
        import asyncio, sys
        sys.modules["trio"] = None  # import trio now fails
        import resilience as rs
        from resilience.testing import FakeClock

        async def main():
            clock = FakeClock()
            pipeline = rs.Pipeline([
                rs.Retry(2, backoff=1, clock=clock), rs.Timeout(5, clock=clock),
                rs.Throttle(1, burst=1, max_wait=5, clock=clock), rs.Bulkhead(1),
                rs.FaultInjector(latency=0.5, clock=clock), rs.AdaptiveLimiter(clock=clock),
            ])
            async def ok():
                return "ok"
            assert await pipeline.acall(ok) == "ok"
            assert await pipeline.acall(ok) == "ok"
            try:
                await rs.Timeout(1, clock=clock).acall(clock.asleep, 5)
            except rs.TimeoutExceeded:
                return "trio" not in sys.modules or sys.modules["trio"] is None
        assert asyncio.run(main()) is True
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
