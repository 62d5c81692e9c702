"""Tests of `resilience.Throttle`: the bucket, the FIFO queue, deadlines, sync and async alike."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import math
import threading
from datetime import timedelta
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import modes
import resilience as rs
from modes import (
    create_task,
    gather,
    run_plain,
    task_cancelled,
)
from resilience._backend import Backend, Unavailable
from resilience.testing import FakeClock


async def take(mode: str, throttle: rs.Throttle, cost: float = 1, **kwargs: Any) -> None:
    """acquire() or aacquire() according to ``mode``."""
    if mode == "sync":
        throttle.acquire(cost, **kwargs)
    else:
        await throttle.aacquire(cost, **kwargs)


class WatchedClock(FakeClock):
    """A manual FakeClock that tells the test when a thread blocks waiting for tokens."""

    def __init__(self, start: float = 0.0) -> None:
        super().__init__(start, auto_advance=False)
        self.blocked = threading.Semaphore(0)

    def sleep(self, seconds_: float) -> None:
        self.blocked.release()  # the head of the queue sleeps until its tokens are there
        super().sleep(seconds_)

    def wait_future(self, future: concurrent.futures.Future[Any], deadline: float) -> None:
        self.blocked.release()  # the others wait for their turn
        super().wait_future(future, deadline)


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock that advances instantly when slept on, started far from 0: the bucket
    counts time from its own birth, and a clock at 0 would hide a sign turned around."""
    return FakeClock(1000.0)


async def settle() -> None:
    """Let the event loop run what is ready (timers fired by the fake clock, woken waiters)."""
    await modes.settle(5)


def ok() -> str:
    return "ok"


def usable_from_another_thread(throttle: rs.Throttle) -> bool:
    """Whether another thread can still change the throttle: nothing left it locked."""
    done = threading.Event()

    def update() -> None:
        throttle.update(max_wait=throttle.max_wait)
        done.set()

    threading.Thread(target=update, daemon=True).start()
    return done.wait(10)


# -- construction -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"rate": 0}, ValueError, r"^rate must be > 0"),
        ({"rate": -5}, ValueError, r"^rate must be > 0"),
        ({"rate": math.nan}, ValueError, r"^rate must be a finite number"),
        ({"rate": math.inf}, ValueError, r"^rate must be a finite number"),
        ({"rate": "10"}, TypeError, r"^rate must be a number"),
        ({"rate": True}, TypeError, r"^rate must be a number"),
        ({"rate": 10, "per": 0}, ValueError, r"^per must be > 0"),
        ({"rate": 10, "per": "1s"}, TypeError, r"^per must be a number of seconds"),
        ({"rate": 10, "burst": 0}, ValueError, r"^burst must be > 0"),
        ({"rate": 10, "burst": math.nan}, ValueError, r"^burst must be a finite"),
        ({"rate": 10, "max_wait": -1}, ValueError, r"^max_wait must be >= 0"),
        ({"rate": 10, "max_wait": math.inf}, ValueError, r"^max_wait must be finite"),
        ({"rate": 10, "max_wait": "1"}, TypeError, r"^max_wait must be a number"),
        ({"rate": 10, "cost": -1}, ValueError, r"^cost must be >= 0"),
        ({"rate": 10, "cost": "big"}, TypeError, r"^cost must be a number"),
        ({"rate": 10, "burst": 2, "cost": 3}, ValueError, r"^cost must be <= burst \(2\)"),
        ({"rate": 10, "clock": object()}, TypeError, r"^clock must provide"),
        ({"rate": 10, "name": 1}, TypeError, r"^name must be a str"),
        ({"rate": 1e-320}, ValueError, r"^rate must give a token at least every"),
        ({"rate": 1e-300, "per": 1e300}, ValueError, r"^rate must give a token"),
        ({"rate": 1, "per": 1e10, "burst": 1e300}, ValueError, r"^rate must give a token"),
        ({"rate": 1e200, "burst": 1e-200}, ValueError, r"^rate must give a token"),
        ({"rate": 10, "initial_tokens": 11}, ValueError, r"^initial_tokens must be <= burst"),
        ({"rate": 10, "initial_tokens": -1}, ValueError, r"^initial_tokens must be >= 0"),
    ],
)
def test_bad_arguments_fail_at_construction(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    """Every bad argument is refused by the constructor, naming the parameter and its range."""
    with pytest.raises(error, match=message):
        rs.Throttle(**kwargs)


def test_defaults_settings_and_repr() -> None:
    """The default burst is one period's quota (at least 1); settings and repr show it all."""
    throttle = rs.Throttle(100, name="api")
    assert throttle.burst == 100
    assert throttle.settings() == {
        "rate": 100.0,
        "per": 1.0,
        "burst": 100.0,
        "max_wait": 0.0,
        "cost": 1.0,
    }
    assert repr(throttle) == "Throttle('api', rate=100, per=1, burst=100, max_wait=0)"
    assert throttle.describe()["kind"] == "throttle"
    slow = rs.Throttle(1, per=timedelta(minutes=1), max_wait=None, cost=len)
    assert slow.burst == 1
    assert slow.per == 60.0
    assert repr(slow) == "Throttle(rate=1, per=60, burst=1, max_wait=None, cost=len)"
    assert rs.Throttle(0.5).burst == 1.0
    assert rs.Throttle(10, burst=3, max_wait=timedelta(milliseconds=250)).max_wait == 0.25


async def test_initial_tokens_give_a_strict_start(mode: str, clock: FakeClock) -> None:
    """initial_tokens=0: the first second admits the rate, not the burst on top of it."""
    throttle = rs.Throttle(4, initial_tokens=0, clock=clock)
    assert throttle.available == 0
    assert throttle.settings()["initial_tokens"] == 0
    with pytest.raises(rs.ThrottledError):
        await run_plain(mode, throttle, ok)
    clock.advance(1)
    for _ in range(4):
        assert await run_plain(mode, throttle, ok) == "ok"
    with pytest.raises(rs.ThrottledError):
        await run_plain(mode, throttle, ok)


def test_an_async_cost_function_is_refused() -> None:
    """A cost function must be plain: a coroutine function would never give a number."""

    async def cost(data: bytes) -> float:
        return len(data)

    with pytest.raises(TypeError, match=r"^cost must be a plain function"):
        rs.Throttle(10, cost=cost)  # type: ignore[arg-type]


# -- runtime updates and read-only settings ----------------------------------------------


def test_settings_are_read_only() -> None:
    """Assigning a setting used to be accepted and change nothing: now it says how to change it."""
    throttle = rs.Throttle(100)
    for attribute in ("rate", "per", "burst", "max_wait", "cost", "name", "clock"):
        with pytest.raises(AttributeError, match=rf"^Throttle.{attribute} is read-only; use"):
            setattr(throttle, attribute, 5)
    assert throttle.rate == 100


async def test_update_changes_the_rate_and_keeps_the_tokens(mode: str, clock: FakeClock) -> None:
    """update(rate=...) keeps what the bucket holds and refills at the new rate from now on."""
    throttle = rs.Throttle(10, burst=10, clock=clock)
    for _ in range(6):
        await run_plain(mode, throttle, ok)
    assert throttle.available == pytest.approx(4)
    throttle.update(rate=1)
    assert throttle.available == pytest.approx(4)
    assert (throttle.rate, throttle.burst) == (1.0, 10.0)  # a burst given stays
    for _ in range(4):
        await run_plain(mode, throttle, ok)
    with pytest.raises(rs.ThrottledError) as refused:
        await run_plain(mode, throttle, ok)
    assert refused.value.retry_after == pytest.approx(1.0)  # one token a second now
    clock.advance(3)
    assert throttle.available == pytest.approx(3)
    throttle.update(burst=2)  # fewer tokens than held: the bucket is cut to the new burst
    assert throttle.available == pytest.approx(2)
    assert throttle.settings()["burst"] == 2


def test_a_default_burst_follows_a_new_rate_and_a_given_one_stays() -> None:
    """The default burst is the rate: update(rate=) moves it; a burst given keeps it."""
    clock = FakeClock()
    following = rs.Throttle(10, clock=clock)
    following.update(rate=50)
    assert following.burst == 50
    following.update(rate=20)  # and again: it keeps following
    assert following.burst == 20
    following.update(burst=5)
    following.update(rate=100)
    assert following.burst == 5
    fixed = rs.Throttle(10, burst=3, clock=clock)
    fixed.update(rate=100, per=2)
    assert (fixed.rate, fixed.per, fixed.burst) == (100.0, 2.0, 3.0)


def test_update_checks_like_the_constructor() -> None:
    """Bad values are refused, naming the parameter, and leave the throttle as it was."""
    throttle = rs.Throttle(10, cost=4)
    with pytest.raises(ValueError, match=r"^rate must be > 0"):
        throttle.update(rate=0)
    with pytest.raises(ValueError, match=r"^cost must be <= burst \(3\)"):
        throttle.update(burst=3)
    with pytest.raises(ValueError, match=r"^max_wait must be >= 0"):
        throttle.update(max_wait=-1)
    with pytest.raises(TypeError):
        throttle.update(rates=5)  # type: ignore[call-arg]
    assert (throttle.settings()["rate"], throttle.burst) == (10, 10)


async def test_update_of_max_wait_reaches_built_chains(mode: str, clock: FakeClock) -> None:
    """A chain built before update(max_wait=...) waits (or stops waiting) as told."""
    throttle = rs.Throttle(1, burst=1, clock=clock)
    pipeline = rs.Pipeline([throttle])
    await run_plain(mode, pipeline, ok)
    with pytest.raises(rs.ThrottledError):
        await run_plain(mode, pipeline, ok)
    throttle.update(max_wait=5)
    assert await run_plain(mode, pipeline, ok) == "ok"  # waited its second on the fake clock
    assert clock.sleeps == [1.0]


async def test_update_serves_waiters_whose_tokens_are_there(async_mode: str) -> None:
    """update() serves the queue: a waiter whose tokens are due is granted by it at once,
    before its own timer has woken it."""
    clock = FakeClock(1000.0, auto_advance=False)
    throttle = rs.Throttle(1, burst=2, max_wait=None, clock=clock)
    throttle.acquire(2)
    task = create_task(throttle.aacquire(1))
    await settle()
    assert throttle.queued == 1
    clock.advance(1)  # its token is there; the waiter has not run since
    throttle.update(max_wait=5)
    assert throttle.queued == 0
    await task
    assert throttle.available == 0


def test_update_is_atomic_under_threads() -> None:
    """Threads calling while another keeps changing the rate: every call is admitted or
    refused cleanly, and tokens are never negative nor above the burst."""
    throttle = rs.Throttle(1e6, burst=1000)
    stop = threading.Event()
    problems: list[BaseException] = []

    def caller() -> None:
        while not stop.is_set():
            try:
                throttle.call(ok)
            except rs.ThrottledError:
                pass
            except BaseException as exc:  # pragma: no cover - the failure this test is for
                problems.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for i in range(300):
            throttle.update(rate=1e6 if i % 2 else 10.0, burst=1000 if i % 3 else 500)
            available = throttle.available
            assert 0.0 <= available <= throttle.burst
    finally:
        stop.set()  # even when an assertion fails: the callers must not outlive the test
        for thread in threads:
            thread.join(30)
    assert not any(thread.is_alive() for thread in threads), "a caller thread never stopped"
    assert problems == []


# -- the bucket ------------------------------------------------------------------------


async def test_admits_a_burst_then_rejects_with_retry_after(mode: str, clock: FakeClock) -> None:
    """A full bucket admits ``burst`` calls at once; the next is refused, saying when to retry."""
    throttle = rs.Throttle(2, burst=3, clock=clock, name="api")
    for _ in range(3):
        assert await run_plain(mode, throttle, ok) == "ok"
    reached: list[int] = []
    with pytest.raises(rs.ThrottledError) as caught:
        await run_plain(mode, throttle, reached.append, 1)
    assert reached == []  # nothing downstream ran
    assert caught.value.retry_after == 0.5
    assert caught.value.name == "api"
    assert str(caught.value) == "throttle 'api' is out of tokens: a token in 0.5s"
    assert isinstance(caught.value, rs.RejectedError)
    assert clock.sleeps == []  # max_wait=0: refused at once, no waiting
    assert throttle.rejected == 1


async def test_refills_continuously_up_to_the_burst(mode: str, clock: FakeClock) -> None:
    """Tokens come back at rate/per a second, never more than burst of them."""
    throttle = rs.Throttle(10, per=2, burst=2, clock=clock)  # 5 tokens a second
    for _ in range(2):
        await run_plain(mode, throttle, ok)
    assert throttle.available == 0
    clock.advance(0.1)
    assert throttle.available == pytest.approx(0.5)
    with pytest.raises(rs.ThrottledError) as caught:
        await run_plain(mode, throttle, ok)
    assert caught.value.retry_after == pytest.approx(0.1)
    clock.advance(0.1)
    await run_plain(mode, throttle, ok)
    clock.advance(3600)
    assert throttle.available == 2  # capped: an idle hour saves only a burst
    for _ in range(2):
        await run_plain(mode, throttle, ok)
    with pytest.raises(rs.ThrottledError):
        await run_plain(mode, throttle, ok)


async def test_a_fixed_cost_per_call(mode: str, clock: FakeClock) -> None:
    """cost=2 takes two tokens per call."""
    throttle = rs.Throttle(4, burst=4, cost=2, clock=clock)
    await run_plain(mode, throttle, ok)
    await run_plain(mode, throttle, ok)
    with pytest.raises(rs.ThrottledError) as caught:
        await run_plain(mode, throttle, ok)
    assert caught.value.retry_after == 0.5
    assert "2 tokens in 0.5s" in str(caught.value)


async def test_a_cost_function_of_the_arguments(mode: str, clock: FakeClock) -> None:
    """cost=len charges each call by its argument: bytes per second."""
    throttle = rs.Throttle(100, burst=100, cost=len, clock=clock)
    assert await run_plain(mode, throttle, len, b"x" * 60) == 60
    with pytest.raises(rs.ThrottledError) as caught:
        await run_plain(mode, throttle, len, b"x" * 50)
    assert caught.value.retry_after == pytest.approx(0.1)
    assert await run_plain(mode, throttle, len, b"x" * 40) == 40


@pytest.mark.parametrize(
    ("result", "error", "message"),
    [
        (-1, ValueError, r"^the cost function's result must be >= 0"),
        ("x", TypeError, r"^the cost function's result must be a number"),
        (11, ValueError, r"^the cost function's result must be <= burst \(10\)"),
    ],
)
async def test_a_bad_cost_from_the_function_is_refused(
    mode: str, result: object, error: type[Exception], message: str
) -> None:
    """A cost function returning nonsense fails the call, naming what went wrong."""
    throttle = rs.Throttle(10, cost=lambda: result)  # type: ignore[arg-type, return-value]
    with pytest.raises(error, match=message):
        await run_plain(mode, throttle, ok)
    assert throttle.available == 10


async def test_zero_cost_is_always_admitted_when_nobody_waits(mode: str, clock: FakeClock) -> None:
    """A call that costs nothing passes an empty bucket."""
    throttle = rs.Throttle(1, cost=lambda n: n, clock=clock)
    await run_plain(mode, throttle, abs, 1)
    assert await run_plain(mode, throttle, abs, 0) == 0


# -- waiting ------------------------------------------------------------------------------


async def test_max_wait_waits_for_the_tokens(mode: str, clock: FakeClock) -> None:
    """With max_wait, a call that can have its tokens in time waits for them."""
    throttle = rs.Throttle(2, burst=1, max_wait=1, clock=clock)
    await run_plain(mode, throttle, ok)
    assert await run_plain(mode, throttle, ok) == "ok"
    assert clock.sleeps == [0.5]
    assert clock.monotonic() == 1000.5


async def test_beyond_max_wait_is_refused_at_once(mode: str, clock: FakeClock) -> None:
    """A call whose tokens would come later than max_wait does not wait in vain."""
    throttle = rs.Throttle(1, burst=1, max_wait=0.5, clock=clock)
    await run_plain(mode, throttle, ok)
    with pytest.raises(rs.ThrottledError) as caught:
        await run_plain(mode, throttle, ok)
    assert caught.value.retry_after == 1.0
    assert "later than it may wait (0.5s)" in str(caught.value)
    assert clock.sleeps == []


async def test_endless_max_wait_stops_at_the_deadline(mode: str, clock: FakeClock) -> None:
    """max_wait=None waits as long as needed, but never past the call's deadline."""
    throttle = rs.Throttle(1, burst=1, max_wait=None, clock=clock)
    await run_plain(mode, throttle, ok)
    pipeline = rs.Pipeline([rs.Timeout(0.5, clock=clock), throttle])
    with pytest.raises(rs.ThrottledError) as caught:
        await run_plain(mode, pipeline, ok)
    assert caught.value.retry_after == 1.0
    assert "past the call's deadline (0.5s left)" in str(caught.value)
    assert clock.sleeps == []
    assert await run_plain(mode, rs.Pipeline([rs.Timeout(5, clock=clock), throttle]), ok) == "ok"
    assert clock.sleeps == [1.0]
    assert await run_plain(mode, throttle, ok) == "ok"  # no deadline at all
    assert clock.sleeps == [1.0, 1.0]


async def test_a_deadline_of_exactly_max_wait_refuses_as_max_wait(
    mode: str, clock: FakeClock
) -> None:
    """The refusal names the call's deadline only when it is shorter than max_wait."""
    throttle = rs.Throttle(1, per=4, burst=1, max_wait=2, clock=clock)
    await run_plain(mode, throttle, ok)
    with pytest.raises(rs.ThrottledError) as caught:
        await run_plain(mode, rs.Pipeline([rs.Timeout(2, clock=clock), throttle]), ok)
    assert (
        str(caught.value) == "throttle is out of tokens: a token in 4s, later than it may wait (2s)"
    )


async def test_a_past_deadline_refuses_any_wait(mode: str, clock: FakeClock) -> None:
    """A deadline already gone leaves no time to wait, whatever max_wait says."""
    throttle = rs.Throttle(1, burst=1, max_wait=10, clock=clock)
    outer = rs.Timeout(1, clock=clock)

    def late() -> str:
        clock.advance(2)  # the outer deadline passes inside the call
        throttle.try_acquire()  # and the token that came back meanwhile is spent
        return str(throttle.call(ok))

    async def alate() -> str:
        clock.advance(2)
        throttle.try_acquire()
        return str(await throttle.acall(asyncio.sleep, 0, "x"))

    async def through_outer() -> None:
        if mode == "sync":
            outer.call(late)
        else:
            await outer.acall(alate)

    with pytest.raises(rs.ThrottledError, match=r"past the call's deadline \(0s left\)"):
        await through_outer()
    assert clock.sleeps == []


async def test_waiters_are_served_first_come_first_served(mode: str) -> None:
    """A small request does not overtake a big one queued before it (aiolimiter's would)."""
    clock = WatchedClock()
    throttle = rs.Throttle(1, burst=3, max_wait=None, clock=clock)
    throttle.acquire(3)
    order: list[str] = []

    if mode == "sync":

        def want(name: str, cost: float) -> None:
            throttle.acquire(cost)
            order.append(name)

        threads = [
            threading.Thread(target=want, args=("big", 3)),
            threading.Thread(target=want, args=("small", 1)),
        ]
        for thread in threads:
            thread.start()
            assert clock.blocked.acquire(timeout=30)  # it is in the queue
        clock.advance(1)  # one token: enough for "small", but "big" is first
        assert order == []
        clock.advance(2)
        threads[0].join(30)
        assert order == ["big"]
        assert clock.blocked.acquire(timeout=30)  # "small", now the head, sleeps for its token
        clock.advance(1)
        threads[1].join(30)
    else:

        async def await_(name: str, cost: float) -> None:
            await throttle.aacquire(cost)
            order.append(name)

        tasks = [create_task(await_("big", 3))]
        await settle()  # "big" is in the queue first (trio runs new tasks in any order)
        tasks.append(create_task(await_("small", 1)))
        await settle()
        assert throttle.queued == 2
        clock.advance(1)
        await settle()
        assert order == []
        clock.advance(2)
        await settle()
        assert order == ["big"]
        clock.advance(1)
        await gather(*tasks)
    assert order == ["big", "small"]
    assert throttle.queued == 0


async def test_newcomers_queue_behind_waiters_even_when_tokens_are_there(async_mode: str) -> None:
    """FIFO holds for newcomers too: with someone waiting, try_acquire says no."""
    clock = FakeClock(auto_advance=False)
    throttle = rs.Throttle(1, burst=2, max_wait=None, clock=clock)
    throttle.acquire(2)
    task = create_task(throttle.aacquire(2))
    await settle()
    clock.advance(1)  # one token back, the waiter needs two
    assert not throttle.try_acquire(1)
    assert throttle.rejected == 1
    clock.advance(1)
    await task
    assert throttle.queued == 0


async def test_a_weighted_call_queues_behind_waiters_even_when_tokens_are_there(
    async_mode: str,
) -> None:
    """FIFO holds for calls of their own cost too: with someone waiting, they queue (or are
    refused) rather than take the tokens at once."""
    clock = FakeClock(1000.0, auto_advance=False)
    throttle = rs.Throttle(1, burst=2, cost=lambda n: n, clock=clock)
    throttle.acquire(2)
    task = create_task(throttle.aacquire(2, max_wait=None))
    await settle()
    clock.advance(1)  # one token back, the waiter needs two
    with pytest.raises(rs.ThrottledError):
        throttle.call(abs, 1)
    clock.advance(1)
    await task
    assert throttle.call(abs, 0) == 0


async def test_a_cancelled_head_wakes_the_next_waiter(async_mode: str) -> None:
    """The head leaves without a token; the next one is served at once if it fits."""
    clock = FakeClock(auto_advance=False)
    throttle = rs.Throttle(1, burst=4, max_wait=None, clock=clock)
    throttle.acquire(4)
    clock.advance(1)
    head = create_task(throttle.aacquire(4))
    await settle()  # the head first (trio runs new tasks in any order)
    second = create_task(throttle.aacquire(1))
    await settle()
    assert throttle.queued == 2
    head.cancel()
    await second  # served with the one token there, no clock move needed
    with pytest.raises(task_cancelled(async_mode)):
        await head
    assert throttle.available == 0
    assert throttle.queued == 0


async def test_a_cancelled_head_hands_its_timer_to_the_next(async_mode: str) -> None:
    """When the next waiter cannot be served yet, it sets its own, earlier, timer."""
    clock = FakeClock(auto_advance=False)
    throttle = rs.Throttle(1, burst=4, max_wait=None, clock=clock)
    throttle.acquire(4)
    head = create_task(throttle.aacquire(4))
    await settle()  # the head first (trio runs new tasks in any order)
    second = create_task(throttle.aacquire(2))
    await settle()
    head.cancel()
    await settle()
    clock.advance(2)  # the second's tokens, long before the head's 4 would have come
    await second
    assert head.cancelled()


@pytest.mark.parametrize(("rate", "per"), [(1, 1), (4, 2), (3, 12)])
async def test_a_waiter_granted_then_cancelled_gives_its_tokens_back(
    async_mode: str, rate: float, per: float
) -> None:
    """Tokens are taken only when granted, and a grant the task never used is returned, at
    any rate."""
    clock = WatchedClock(1000.0)
    throttle = rs.Throttle(rate, per=per, burst=2, max_wait=None, clock=clock)
    throttle.acquire(2)
    thread = threading.Thread(target=throttle.acquire, args=(1,))
    thread.start()
    assert clock.blocked.acquire(timeout=30)  # the thread is the head of the queue
    task = create_task(throttle.aacquire(1))
    await settle()
    assert throttle.queued == 2
    clock.advance(2 * per / rate)  # the thread wakes and grants itself and the task...
    thread.join(10)  # ...while this loop is blocked, so the task cannot run yet
    task.cancel()
    with pytest.raises(task_cancelled(async_mode)):
        await task
    assert throttle.available == 1  # the task's token is back in the bucket


async def test_an_interrupted_sync_waiter_takes_no_token() -> None:
    """KeyboardInterrupt while waiting passes through; the bucket keeps its tokens."""

    class InterruptingClock(FakeClock):
        def sleep(self, seconds_: float) -> None:
            raise KeyboardInterrupt

    clock = InterruptingClock()
    throttle = rs.Throttle(1, burst=1, max_wait=5, clock=clock)
    throttle.acquire()
    clock.advance(0.5)
    with pytest.raises(KeyboardInterrupt):
        throttle.call(ok)
    assert throttle.queued == 0
    assert throttle.available == 0.5
    clock.advance(0.5)
    assert throttle.call(ok) == "ok"


async def test_a_waiter_whose_promise_is_broken_is_refused(async_mode: str) -> None:
    """Defensive: if the tokens do not come by the time the queue said, the waiter is refused,
    told when they will come, and the throttle goes on serving."""
    clock = FakeClock(-50.0, auto_advance=False)
    throttle = rs.Throttle(1, burst=1, max_wait=2, clock=clock)
    throttle.acquire()
    task = create_task(throttle.aacquire())
    await settle()
    throttle._bucket.full_at += 1.5  # spent behind the queue's back (never happens in real use)
    clock.advance(1)
    await settle()
    clock.advance(1)
    with pytest.raises(rs.ThrottledError) as caught:
        await task
    assert caught.value.retry_after == 0.5  # due at 2.5 s instead of 1 s; its 2 s are up
    assert str(caught.value) == "throttle is out of tokens: a token in 0.5s"
    assert throttle.queued == 0
    assert throttle.rejected == 1
    assert usable_from_another_thread(throttle)


async def test_calls_meeting_due_waiters_serve_them_first(mode: str) -> None:
    """A call that finds waiters whose tokens are due (not yet woken) serves them, then itself."""
    clock = FakeClock(auto_advance=False)
    throttle = rs.Throttle(1, burst=2, max_wait=None, clock=clock)
    throttle.acquire(2)
    waiter = create_task(throttle.aacquire(1))
    await settle()
    clock.advance(5)  # its timer fired, but the loop has not run it yet: the bucket is full
    assert await run_plain(mode, throttle, ok) == "ok"  # queued behind it, served at once
    assert throttle.queued == 0
    await waiter
    # The waiter, due at 1 s, was charged as if served then (its credit, one token at most):
    # the bucket had refilled by 5 s, so one token is left after both.
    assert throttle.available == 1


def test_contention_for_the_baton_is_waited_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """When a fast path holds the bucket, the slow path spins (yielding) until it is back."""
    throttle = rs.Throttle(10, burst=10, cost=lambda: 1, clock=FakeClock())
    bucket = throttle._bucket
    spins: list[float] = []

    def fast_path_finishes(seconds: float) -> None:
        spins.append(seconds)
        bucket.baton.append(None)  # the other thread gives the bucket back

    monkeypatch.setattr("resilience._throttle.time.sleep", fast_path_finishes)
    bucket.baton.pop()  # as if another thread were in its fast path
    assert throttle.call(ok) == "ok"  # the weighted shell sees the baton gone...
    assert spins == [0]  # ...and the slow path waited for it
    assert throttle.available == 9


def test_an_interrupt_while_waiting_for_the_baton_frees_the_mutex(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """KeyboardInterrupt while spinning passes through and leaves the throttle usable."""
    throttle = rs.Throttle(10)

    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("resilience._throttle.time.sleep", interrupted)
    throttle._bucket.baton.pop()
    with pytest.raises(KeyboardInterrupt):
        throttle.try_acquire()
    throttle._bucket.baton.append(None)
    assert throttle.try_acquire()


async def test_the_fast_path_yields_to_a_busy_bucket(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call that finds the bucket held by another thread goes the slow way, and gets its token."""
    throttle = rs.Throttle(10, burst=10, clock=FakeClock())
    bucket = throttle._bucket
    spins: list[float] = []

    def fast_path_finishes(seconds: float) -> None:
        spins.append(seconds)
        bucket.baton.append(None)  # the other thread gives the bucket back

    monkeypatch.setattr("resilience._throttle.time.sleep", fast_path_finishes)
    bucket.baton.pop()  # as if another thread were in its fast path
    assert await run_plain(mode, throttle, ok) == "ok"
    assert spins == [0]  # the call did not touch the bucket before it was back
    assert throttle.available == 9


@pytest.mark.parametrize("start", [0.0, 3e8, 1e11])
async def test_waiters_are_never_trapped_by_rounding(mode: str, start: float) -> None:
    """Far from zero (a host up for years), a woken waiter is not a rounding error short."""
    clock = FakeClock(start=start)
    throttle = rs.Throttle(3, burst=1, max_wait=None, clock=clock)
    for _ in range(10):
        await take(mode, throttle)
    assert clock.monotonic() - start == pytest.approx(3.0, abs=1e-6 + 4 * math.ulp(start))


def test_a_token_due_within_a_nanosecond_and_four_ulps_is_there() -> None:
    """A wait of up to a nanosecond plus four ulps of the clock's reading counts as none (a
    sleeper woken at the computed instant is not sent back to sleep); a longer one does not."""
    # A token due in exactly a nanosecond: at a billion tokens a second, the bucket is one
    # token short.
    assert rs.Throttle(1e9, burst=1, initial_tokens=0, clock=FakeClock()).try_acquire()
    # Far from zero the clock's ulp is what counts: at 2**36 s it is 2**-16 s.
    ulp = 2.0**-16
    clock = FakeClock(2.0**36)
    throttle = rs.Throttle(1, burst=1, clock=clock)
    assert throttle.try_acquire()  # the next token in 1 s
    clock.advance(1 - 5 * ulp)
    assert not throttle.try_acquire()
    clock.advance(ulp)
    assert throttle.try_acquire()


# -- direct use -------------------------------------------------------------------------------


async def test_try_acquire_acquire_and_aacquire(mode: str, clock: FakeClock) -> None:
    """Tokens for work that is not a call: never blocking, blocking, awaiting."""
    throttle = rs.Throttle(10, burst=10, clock=clock)
    assert throttle.try_acquire(6)
    assert throttle.try_acquire(6) is False
    assert throttle.rejected == 1
    await take(mode, throttle, 4)
    with pytest.raises(rs.ThrottledError):
        await take(mode, throttle, 1)
    await take(mode, throttle, 5, max_wait=1)  # this once, it may wait
    assert clock.sleeps == [0.5]
    await take(mode, throttle, 10, max_wait=None)
    assert clock.sleeps == [0.5, 1.0]
    with pytest.raises(ValueError, match=r"^cost must be <= burst"):
        await take(mode, throttle, 11)
    with pytest.raises(ValueError, match=r"^max_wait must be >= 0"):
        await take(mode, throttle, 1, max_wait=-1)
    with pytest.raises(ValueError, match=r"^cost must be >= 0"):
        throttle.try_acquire(-1)


async def test_context_managers_take_one_token(clock: FakeClock) -> None:
    """``with throttle:`` and ``async with throttle:`` take one token each."""
    throttle = rs.Throttle(1, burst=2, clock=clock)
    with throttle:
        pass
    async with throttle:
        pass
    with pytest.raises(rs.ThrottledError), throttle:
        pass
    with pytest.raises(rs.ThrottledError):
        async with throttle:
            pass


# -- one account for threads and tasks ------------------------------------------------------------


def test_real_threads_share_one_account_exactly() -> None:
    """Eight threads hammering a frozen bucket get exactly its burst, no more, no less."""
    clock = FakeClock(auto_advance=False)
    throttle = rs.Throttle(1, burst=1000, clock=clock)
    admitted: list[int] = []
    barrier = threading.Barrier(8)

    def hammer() -> None:
        barrier.wait(10)
        mine = 0
        for _ in range(300):
            try:
                throttle.call(ok)
            except rs.ThrottledError:
                continue
            mine += 1
        admitted.append(mine)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(admitted) == 1000
    assert throttle.rejected == 8 * 300 - 1000


async def test_threads_and_a_thousand_tasks_share_one_account() -> None:
    """Threads and 1,000 tasks at once on one throttle: every token is counted once."""
    clock = FakeClock(auto_advance=False)
    throttle = rs.Throttle(100, burst=500, max_wait=None, clock=clock)
    thread_admitted: list[int] = []

    def hammer() -> None:
        thread_admitted.append(sum(throttle.try_acquire() for _ in range(100)))

    async def call(i: int) -> int:
        return await throttle.acall(asyncio.sleep, 0, i)

    tasks = [asyncio.create_task(call(i)) for i in range(1000)]
    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    await settle()  # the tasks take tokens or queue while the threads hammer
    for thread in threads:
        await asyncio.to_thread(thread.join, 30)
    await settle()
    at_once = sum(task.done() for task in tasks)
    assert at_once + sum(thread_admitted) == 500  # the burst, shared exactly
    waiting = 1000 - at_once
    assert throttle.queued == waiting
    seconds = 0
    while throttle.queued and seconds < 20:
        clock.advance(1)  # 100 more tokens a second
        seconds += 1
        await settle()
    assert seconds == math.ceil(waiting / 100)
    assert await asyncio.gather(*tasks) == list(range(1000))
    assert throttle.available == pytest.approx(seconds * 100 - waiting, abs=1e-6)


def test_two_event_loops_in_two_threads_share_one_account() -> None:
    """One throttle used from two asyncio.run() loops at once keeps one account."""
    clock = FakeClock()
    throttle = rs.Throttle(10, burst=10, max_wait=None, clock=clock)
    counts: list[int] = []

    async def spend() -> None:
        for _ in range(10):
            await throttle.aacquire()
        counts.append(10)

    threads = [threading.Thread(target=asyncio.run, args=(spend(),)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert counts == [10, 10]
    assert clock.monotonic() == pytest.approx(1.0)  # 20 tokens: a burst of 10 plus 1 s of refill


# -- in pipelines, events, observation ------------------------------------------------------------


async def test_retry_waits_for_the_retry_after_of_a_throttle(mode: str, clock: FakeClock) -> None:
    """A client-side Retry naming ThrottledError waits exactly until the next token."""
    throttle = rs.Throttle(4, burst=1, clock=clock)
    pipeline = rs.Pipeline([rs.Retry(3, on=rs.ThrottledError, backoff=0, clock=clock), throttle])
    assert await run_plain(mode, pipeline, ok) == "ok"
    assert await run_plain(mode, pipeline, ok) == "ok"
    assert clock.sleeps == [0.25]


async def test_events_report_waits_and_refusals(mode: str, clock: FakeClock) -> None:
    """Listeners see each wait and each refusal; admitted calls make no event."""
    throttle = rs.Throttle(1, burst=1, max_wait=1, clock=clock, name="api")
    events: list[rs.events.ThrottleEvent] = []
    throttle.subscribe(events.append)
    await run_plain(mode, throttle, ok)
    await run_plain(mode, throttle, ok)
    clock.advance(0.5)
    with pytest.raises(rs.ThrottledError) as caught:
        await take(mode, throttle, 1, max_wait=0)
    assert events == [
        rs.events.ThrottleEvent("api", "waited", 1.0, 1.0),
        rs.events.ThrottleEvent("api", "rejected", 1.0, 0.5, caught.value),
    ]


async def test_refusals_and_waits_are_logged(
    mode: str, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A refusal is logged at INFO, a wait at DEBUG, on the "resilience" logger."""
    throttle = rs.Throttle(2, burst=1, max_wait=1, clock=clock, name="api")
    caplog.set_level(logging.DEBUG, logger="resilience")
    await run_plain(mode, throttle, ok)
    await run_plain(mode, throttle, ok)
    with pytest.raises(rs.ThrottledError):
        await take(mode, throttle, 1, max_wait=0)
    assert [(record.levelno, record.getMessage()) for record in caplog.records] == [
        (logging.DEBUG, "resilience: Throttle 'api': a call waited 0.5s"),
        (
            logging.INFO,
            "resilience: rejected: throttle 'api' is out of tokens: a token in 0.5s",
        ),
    ]


@pytest.mark.parametrize("cost", [1, lambda: 1], ids=["fixed", "weighted"])
async def test_a_layer_that_is_not_innermost_calls_the_next(
    mode: str, clock: FakeClock, cost: Any
) -> None:
    """Not innermost, the throttle hands the call on to the next layer (each attempt outside it)."""
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(rs.current().attempt)
        if len(attempts) == 1:
            raise ConnectionError
        return "x"

    throttle = rs.Throttle(10, burst=10, cost=cost, clock=clock)
    pipeline = rs.Pipeline([throttle, rs.Retry(2, backoff=0, clock=clock)])
    assert await run_plain(mode, pipeline, flaky) == "x"
    assert attempts == [1, 2]
    assert throttle.available == 9  # one token for the whole retried call


def test_metrics_snapshot() -> None:
    """metrics() shows the tokens, the queue and the refusals at one instant."""
    clock = FakeClock()
    throttle = rs.Throttle(2, burst=4, clock=clock)
    assert throttle.metrics() == rs.metrics.ThrottleMetrics(available=4.0, queued=0, rejected=0)
    assert throttle.metrics().shared is False  # this process's own bucket
    assert repr(throttle.metrics()) == "ThrottleMetrics(available=4.0, queued=0, rejected=0)"
    throttle.try_acquire(3)
    throttle.try_acquire(3)
    clock.advance(0.25)
    assert throttle.metrics() == rs.metrics.ThrottleMetrics(available=1.5, queued=0, rejected=1)


def test_decorator_keeps_the_signature() -> None:
    """Decorating keeps the name, the signature and the async-ness."""
    throttle = rs.Throttle(10)

    @throttle
    def fetch(user_id: int, *, verbose: bool = False) -> int:
        return user_id

    @throttle
    async def afetch(user_id: int) -> int:
        return user_id

    assert fetch(3) == 3
    assert fetch.__name__ == "fetch"
    assert str(inspect.signature(fetch)) == "(user_id: 'int', *, verbose: 'bool' = False) -> 'int'"
    assert inspect.iscoroutinefunction(afetch)
    assert asyncio.run(afetch(4)) == 4


# -- a bucket shared by processes, through a backend of the test's own ---------------------------


class Fleet(Backend):
    """A stand-in for RedisBackend: the fleet's bucket answers from a script (``answers``:
    granted and the wait, per take), and it records what the throttle asks of it."""

    def __init__(self, mode: str = "strict", on_backend_error: Any = "local") -> None:
        self.mode = mode
        self.on_backend_error = on_backend_error
        self.name: str | None = None
        self.answers: list[tuple[bool, float]] = []
        """What the next takes answer; granted at once when empty."""
        self.takes: list[tuple[float, float | None, float]] = []
        """``(cost, max_wait, now)`` of every take."""
        self.fast: list[float] = []
        """The cost of every take_now (local-first)."""
        self.fast_answer = True
        self.given_back: list[float] = []
        self.failures: list[tuple[str, str]] = []
        self.available = 7.0
        self.down: Unavailable | None = None
        """Set: every request fails with it."""

    def attach(self, kind: str, name: str, policy: Any) -> Fleet:
        assert kind == "throttle"
        self.name = name
        return self

    def take(self, cost: float, max_wait: float | None, now: float) -> tuple[bool, float]:
        self.takes.append((cost, max_wait, now))
        if self.down is not None:
            raise self.down
        return self.answers.pop(0) if self.answers else (True, 0.0)

    async def atake(self, cost: float, max_wait: float | None, now: float) -> tuple[bool, float]:
        return self.take(cost, max_wait, now)

    def take_now(self, cost: float) -> bool:
        self.fast.append(cost)
        return self.fast_answer

    def give_back(self, cost: float) -> None:
        self.given_back.append(cost)

    def metrics(self) -> float:
        if self.down is not None:
            raise self.down
        return self.available

    def failed(self, operation: str, problem: Unavailable, action: str) -> None:
        self.failures.append((operation, action))

    def refusal(self, problem: Unavailable) -> rs.BackendUnavailableError:
        return rs.BackendUnavailableError(
            "the fleet is down", name=self.name, retry_after=problem.retry_after
        )

    def __repr__(self) -> str:
        return "Fleet()"


async def test_a_shared_throttle_asks_the_fleet_for_every_call(mode: str) -> None:
    """Each call of a shared throttle takes its tokens from the fleet's bucket (never from its
    own), with its max_wait and the clock's time; a grant that comes at once runs the call."""
    clock = FakeClock(100.0)
    fleet = Fleet()
    throttle = rs.Throttle(1, burst=1, max_wait=2, clock=clock, name="api", backend=fleet)
    assert fleet.name == "api"
    assert throttle.settings()["backend"] == "Fleet()"
    for _ in range(3):  # more calls than the local bucket holds
        assert await run_plain(mode, throttle, ok) == "ok"
    assert fleet.takes == [(1.0, 2.0, 100.0)] * 3
    assert clock.sleeps == []
    assert throttle.rejected == 0
    assert throttle.metrics() == rs.metrics.ThrottleMetrics(7.0, 0, 0, shared=True)
    assert throttle.available == 7.0


async def test_a_shared_throttle_sleeps_the_wait_the_fleet_reserved(mode: str) -> None:
    """A grant after a wait: the call sleeps that long, then runs, and the wait is reported."""
    clock = FakeClock(100.0)
    fleet = Fleet()
    throttle = rs.Throttle(1, max_wait=None, clock=clock, name="api", backend=fleet)
    events: list[rs.events.ThrottleEvent] = []
    throttle.subscribe(events.append)
    fleet.answers = [(True, 0.75)]
    assert await run_plain(mode, throttle, ok) == "ok"
    assert clock.sleeps == [0.75]
    assert fleet.takes == [(1.0, None, 100.0)]
    assert events == [rs.events.ThrottleEvent("api", "waited", 1.0, 0.75)]
    fleet.answers = [(True, 0.0)]
    await take(mode, throttle, 1)
    assert clock.sleeps == [0.75]  # no wait: no sleep, no event
    assert len(events) == 1


async def test_a_shared_throttle_refused_by_the_fleet_raises(mode: str) -> None:
    """The fleet's refusal is the call's: ThrottledError with the fleet's wait as retry_after,
    counted, and the call does not run."""
    clock = FakeClock(100.0)
    fleet = Fleet()
    throttle = rs.Throttle(1, max_wait=0.5, clock=clock, name="api", backend=fleet)
    fleet.answers = [(False, 4.0)]
    reached: list[int] = []
    with pytest.raises(rs.ThrottledError) as caught:
        await run_plain(mode, throttle, reached.append, 1)
    assert reached == []
    assert caught.value.retry_after == 4.0
    assert "later than it may wait (0.5s)" in str(caught.value)
    assert throttle.rejected == 1
    assert clock.sleeps == []
    assert usable_from_another_thread(throttle)
    endless = rs.Throttle(1, max_wait=None, clock=clock, name="api", backend=fleet)
    fleet.answers = [(False, 4.0)]
    with pytest.raises(rs.ThrottledError) as caught:
        await take(mode, endless, 1)
    assert str(caught.value) == "throttle 'api' is out of tokens: a token in 4s"
    assert endless.rejected == 1


async def test_a_shared_throttle_waits_no_longer_than_the_deadline(mode: str) -> None:
    """Under a deadline shorter than max_wait the fleet is told the time left (none once it
    has passed), and its refusal names the deadline; a deadline as long or longer leaves
    max_wait as it is."""
    clock = FakeClock(100.0)
    fleet = Fleet()
    throttle = rs.Throttle(1, max_wait=2, clock=clock, name="api", backend=fleet)

    def within(seconds: float) -> rs.Pipeline:
        return rs.Pipeline([rs.Timeout(seconds, clock=clock), throttle])

    fleet.answers = [(False, 3.0), (True, 0.0), (False, 3.0)]
    with pytest.raises(rs.ThrottledError, match=r"past the call's deadline \(0.5s left\)"):
        await run_plain(mode, within(0.5), ok)
    assert await run_plain(mode, within(5), ok) == "ok"
    with pytest.raises(rs.ThrottledError, match=r"later than it may wait \(2s\)$"):
        await run_plain(mode, within(2), ok)
    endless = rs.Throttle(1, max_wait=None, clock=clock, name="api", backend=fleet)
    assert await run_plain(mode, rs.Pipeline([rs.Timeout(9, clock=clock), endless]), ok) == "ok"

    def late() -> None:
        clock.advance(1)  # the deadline passes inside the outer call
        endless.acquire()

    fleet.answers = [(False, 3.0)]
    with pytest.raises(rs.ThrottledError, match=r"past the call's deadline \(0s left\)"):
        await run_plain(mode, rs.Timeout(0.5, clock=clock), late)
    assert [wait for _, wait, _ in fleet.takes] == [0.5, 2.0, 2.0, 9.0, 0.0]


class Interrupted(Exception):
    """What interrupts a sleep in these tests."""


class InterruptedClock(FakeClock):
    """A fake clock whose sleeps are interrupted."""

    def sleep(self, seconds_: float) -> None:
        raise Interrupted

    async def asleep(self, seconds_: float) -> None:
        raise Interrupted


async def test_a_shared_throttle_gives_back_tokens_of_an_interrupted_wait(mode: str) -> None:
    """A call interrupted while sleeping for the fleet's tokens gives them back unused."""
    fleet = Fleet()
    throttle = rs.Throttle(
        1, burst=3, max_wait=None, clock=InterruptedClock(), name="api", backend=fleet
    )
    fleet.answers = [(True, 1.0)]
    with pytest.raises(Interrupted):
        await take(mode, throttle, 2)
    assert fleet.given_back == [2.0]


@pytest.mark.parametrize("action", ["local", "open", "closed"])
async def test_a_shared_throttle_with_the_fleet_down(mode: str, action: str) -> None:
    """With the backend down a call is decided by this process's bucket ("local"), admitted
    ("open") or refused with BackendUnavailableError ("closed"); each failure is reported."""
    clock = FakeClock(100.0)
    fleet = Fleet(on_backend_error=action)
    throttle = rs.Throttle(1, burst=1, clock=clock, name="api", backend=fleet)
    fleet.down = Unavailable(ConnectionError("no fleet"), 3.0)
    if action == "closed":
        with pytest.raises(rs.BackendUnavailableError) as refused:
            await run_plain(mode, throttle, ok)
        assert refused.value.retry_after == 3.0
        with pytest.raises(rs.BackendUnavailableError):
            throttle.try_acquire()
        assert fleet.failures == [("acquire", "closed")] * 2
        return
    assert await run_plain(mode, throttle, ok) == "ok"
    if action == "local":
        with pytest.raises(rs.ThrottledError):
            await run_plain(mode, throttle, ok)  # the local bucket had one token
        assert not throttle.try_acquire()
        assert throttle.rejected == 2
    else:
        assert await run_plain(mode, throttle, ok) == "ok"
        assert throttle.try_acquire()
        assert throttle.rejected == 0
    assert fleet.failures == [("acquire", action)] * 3
    assert throttle.metrics() == rs.metrics.ThrottleMetrics(
        0.0 if action == "local" else 1.0, 0, throttle.rejected, shared=False
    )


def test_try_acquire_of_a_shared_throttle_asks_the_fleet() -> None:
    """try_acquire takes the fleet's tokens without waiting (max_wait 0); a refusal is counted."""
    clock = FakeClock(100.0)
    fleet = Fleet()
    throttle = rs.Throttle(1, burst=1, clock=clock, name="api", backend=fleet)
    fleet.answers = [(True, 0.0), (True, 0.0), (False, 1.0)]
    assert throttle.try_acquire(1) is True
    assert throttle.try_acquire(1) is True  # the local bucket had only one
    assert throttle.try_acquire(0.5) is False
    assert throttle.rejected == 1
    assert fleet.takes == [(1.0, 0.0, 100.0), (1.0, 0.0, 100.0), (0.5, 0.0, 100.0)]
    assert usable_from_another_thread(throttle)


async def test_a_local_first_shared_throttle_takes_from_its_lease_first(mode: str) -> None:
    """local-first: a call takes from the process's lease at once (take_now); only when the
    lease is out does it ask the fleet. A strict throttle with a cost function asks the fleet
    with each call's cost."""
    clock = FakeClock(100.0)
    fleet = Fleet(mode="local-first")
    throttle = rs.Throttle(1, burst=3, clock=clock, name="api", backend=fleet)
    assert await run_plain(mode, throttle, ok) == "ok"
    assert fleet.fast == [1.0]
    assert fleet.takes == []
    fleet.fast_answer = False
    assert await run_plain(mode, throttle, ok) == "ok"
    assert fleet.takes == [(1.0, 0.0, 100.0)]
    strict = Fleet()
    weighted = rs.Throttle(1, burst=3, cost=len, clock=clock, name="api", backend=strict)
    for _ in range(3):
        assert await run_plain(mode, weighted, len, "ab") == 2
    assert strict.takes == [(2.0, 0.0, 100.0)] * 3
    assert strict.fast == []


# -- accuracy: a window never admits more than burst + rate * t ----------------------------------


class Bucket:
    """The textbook token bucket in exact arithmetic: the model the throttle must match."""

    def __init__(self, rate: Fraction, burst: Fraction) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.last = burst, Fraction(0)

    def take(self, cost: int, now: Fraction) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False


@settings(max_examples=60, deadline=None)
@given(
    rate=st.sampled_from([1, 2, 4, 8, 16]),
    per=st.sampled_from([0.5, 1.0, 2.0]),
    burst=st.integers(min_value=1, max_value=8),
    steps=st.lists(
        st.tuples(st.integers(min_value=0, max_value=16), st.integers(min_value=1, max_value=8)),
        min_size=1,
        max_size=60,
    ),
)
def test_decisions_match_the_model_and_no_window_exceeds_burst_plus_rate(
    rate: int, per: float, burst: int, steps: list[tuple[int, int]]
) -> None:
    """On the fake clock, try_acquire decides as an exact token bucket, so any window of t
    seconds admits at most burst + rate * t tokens."""
    clock = FakeClock()
    throttle = rs.Throttle(rate, per, burst=burst, clock=clock)
    model = Bucket(Fraction(rate) / Fraction(per), Fraction(burst))
    admitted: list[tuple[Fraction, int]] = []
    now = Fraction(0)
    for eighths, cost in steps:
        clock.advance(eighths / 8)
        now += Fraction(eighths, 8)
        cost = min(cost, burst)
        granted = throttle.try_acquire(cost)
        assert granted == model.take(cost, now)
        if granted:
            admitted.append((now, cost))
    per_second = Fraction(rate) / Fraction(per)
    for i, (start, _) in enumerate(admitted):
        total = 0
        for end, cost in admitted[i:]:
            total += cost
            assert total <= burst + per_second * (end - start)


@settings(max_examples=40, deadline=None)
@given(
    rate=st.sampled_from([1, 3, 10]),
    burst=st.integers(min_value=1, max_value=5),
    calls=st.lists(
        st.tuples(st.floats(min_value=0, max_value=2), st.integers(min_value=1, max_value=5)),
        min_size=1,
        max_size=40,
    ),
)
def test_waiting_callers_never_exceed_burst_plus_rate(
    rate: int, burst: int, calls: list[tuple[float, int]]
) -> None:
    """Callers that wait for their tokens (auto-advancing clock) stay within the bound too."""
    clock = FakeClock()
    throttle = rs.Throttle(rate, burst=burst, max_wait=None, clock=clock)
    admitted: list[tuple[float, int]] = []
    for gap, cost in calls:
        clock.advance(gap)
        cost = min(cost, burst)
        throttle.acquire(cost)
        admitted.append((clock.monotonic(), cost))
    for i, (start, _) in enumerate(admitted):
        total = 0
        for end, cost in admitted[i:]:
            total += cost
            assert total <= burst + rate * (end - start) + 1e-6
