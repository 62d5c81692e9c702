"""Tests of `resilience.Bulkhead`: slots, the FIFO queue, isolation, sync and async alike."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import inspect
import itertools
import logging
import math
import pickle
import random
import threading
import tracemalloc
from collections import deque
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

import modes
import resilience as rs
from modes import Event, cancellation, checkpoint, create_task, forever, gather, task_cancelled
from resilience._backend import Unavailable
from resilience._context import EMPTY, VAR, child
from resilience._errors import DeadlineCut
from resilience._slots import Slots
from resilience.stores import Backend
from resilience.testing import FakeClock

USER: contextvars.ContextVar[str] = contextvars.ContextVar("USER", default="nobody")


class WatchedClock(FakeClock):
    """A manual FakeClock that tells the test when a thread blocks in the queue."""

    def __init__(self) -> None:
        super().__init__(auto_advance=False)
        self.blocked = threading.Semaphore(0)

    def wait_future(self, future: concurrent.futures.Future[Any], deadline: float) -> None:
        self.blocked.release()
        super().wait_future(future, deadline)


async def settle() -> None:
    """Let the event loop (asyncio's or trio's) run what is ready."""
    await modes.settle(5)


class Traffic:
    """Calls through one bulkhead that stay in flight until the test lets each one go.

    In sync mode each call is a thread in ``call()``; in async mode, a task in ``acall()``.
    ``start`` returns once the call is running, queued or refused, as the test expects.
    """

    def __init__(self, mode: str, bulkhead: rs.Bulkhead, clock: WatchedClock) -> None:
        self.mode = mode
        self.bulkhead = bulkhead
        self.clock = clock
        self.entered: list[int] = []  # the order in which calls got a slot
        self.outcomes: dict[int, Any] = {}
        self._entered_signal = threading.Semaphore(0)
        self._gates: dict[int, Any] = {}  # threading.Event, asyncio.Event or trio.Event
        self._workers: dict[int, Any] = {}  # a thread, or a task (modes.create_task)

    def _body(self, i: int) -> int:
        self.entered.append(i)
        self._entered_signal.release()
        gate = self._gates[i]
        assert isinstance(gate, threading.Event)
        gate.wait(30)
        return i

    async def _abody(self, i: int) -> int:
        self.entered.append(i)
        gate = self._gates[i]
        assert not isinstance(gate, threading.Event)
        await gate.wait()
        return i

    async def start(self, i: int, expect: str) -> None:
        """Start call ``i``; return when it is "running", "queued" or "rejected"."""
        if self.mode == "sync":
            self._gates[i] = threading.Event()

            def caller() -> None:
                try:
                    self.outcomes[i] = self.bulkhead.call(self._body, i)
                except BaseException as exc:  # recorded for the test
                    self.outcomes[i] = exc

            thread = threading.Thread(target=caller)
            self._workers[i] = thread
            thread.start()
            if expect == "running":
                assert self._entered_signal.acquire(timeout=30)
            elif expect == "queued":
                assert self.clock.blocked.acquire(timeout=30)
            else:
                thread.join(30)
        else:
            self._gates[i] = Event()

            async def caller() -> None:
                try:
                    self.outcomes[i] = await self.bulkhead.acall(self._abody, i)
                except Exception as exc:
                    self.outcomes[i] = exc

            self._workers[i] = create_task(caller())
            await settle()
        state = {"running": i in self.entered, "rejected": i in self.outcomes}
        assert state.get(expect, not state["running"] and not state["rejected"]), expect

    async def let_go(self, i: int, *, then: int | None = None) -> None:
        """Let call ``i`` finish; wait for it, and for call ``then`` to get its slot."""
        self._gates[i].set()
        worker = self._workers[i]
        if isinstance(worker, threading.Thread):
            worker.join(30)
            if then is not None:
                assert self._entered_signal.acquire(timeout=30)
        else:
            await worker
            await settle()
        assert self.outcomes[i] == i
        if then is not None:
            assert then in self.entered

    async def join(self, i: int) -> Any:
        """Wait for call ``i`` to end (without letting it go) and return its outcome."""
        worker = self._workers[i]
        if isinstance(worker, threading.Thread):
            worker.join(30)
        else:
            await worker
        return self.outcomes[i]


# -- construction -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"max_concurrent": 0}, ValueError, r"^max_concurrent must be >= 1"),
        ({"max_concurrent": 1.5}, TypeError, r"^max_concurrent must be an int"),
        ({"max_concurrent": True}, TypeError, r"^max_concurrent must be an int"),
        ({"max_concurrent": 2, "max_queue": -1}, ValueError, r"^max_queue must be >= 0"),
        ({"max_concurrent": 2, "max_queue": "3"}, TypeError, r"^max_queue must be an int"),
        ({"max_concurrent": 2, "max_wait": -1}, ValueError, r"^max_wait must be >= 0"),
        ({"max_concurrent": 2, "max_wait": math.nan}, ValueError, r"^max_wait"),
        ({"max_concurrent": 2, "isolation": "process"}, ValueError, r"^isolation must be"),
        ({"max_concurrent": 2, "retry_after": -1}, ValueError, r"^retry_after must be >= 0"),
        ({"max_concurrent": 2, "clock": FakeClock}, TypeError, r"^clock must provide"),
        ({"max_concurrent": 2, "name": 7}, TypeError, r"^name must be a str"),
    ],
)
def test_bad_arguments_fail_at_construction(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    """Every bad argument is refused by the constructor, naming the parameter and its range."""
    with pytest.raises(error, match=message):
        rs.Bulkhead(**kwargs)


def test_defaults_settings_and_repr() -> None:
    """No queue by default; settings and repr show what was set."""
    plain = rs.Bulkhead(4)
    assert plain.settings() == {"max_concurrent": 4, "max_queue": 0, "max_wait": None}
    assert repr(plain) == "Bulkhead(max_concurrent=4)"
    assert plain.describe()["kind"] == "bulkhead"
    full = rs.Bulkhead(
        8, max_queue=16, max_wait=timedelta(seconds=2), isolation="thread", name="db"
    )
    assert full.settings() == {
        "max_concurrent": 8,
        "max_queue": 16,
        "max_wait": 2.0,
        "isolation": "thread",
    }
    assert (
        repr(full)
        == "Bulkhead('db', max_concurrent=8, max_queue=16, max_wait=2, isolation='thread')"
    )
    assert (full.in_flight, full.available, full.queued, full.rejected) == (0, 8, 0, 0)
    metrics = full.metrics()
    assert metrics.shared is False  # kept in this process, not read from a backend
    assert repr(metrics) == "BulkheadMetrics(in_flight=0, available=8, queued=0, rejected=0)"


# -- slots and the queue -------------------------------------------------------------------


async def test_full_without_a_queue_refuses_at_once(mode: str) -> None:
    """Beyond max_concurrent calls in flight, the next is refused at once; nothing ran."""
    clock = WatchedClock()
    bulkhead = rs.Bulkhead(2, retry_after=0.5, clock=clock, name="db")
    traffic = Traffic(mode, bulkhead, clock)
    await traffic.start(1, "running")
    await traffic.start(2, "running")
    assert bulkhead.metrics() == rs.metrics.BulkheadMetrics(
        in_flight=2, available=0, queued=0, rejected=0
    )
    await traffic.start(3, "rejected")
    error = traffic.outcomes[3]
    assert isinstance(error, rs.BulkheadFullError)
    assert str(error) == "bulkhead 'db' is full: all 2 slots are taken"
    assert (error.name, error.retry_after) == ("db", 0.5)
    assert traffic.entered == [1, 2]
    await traffic.let_go(1)
    await traffic.start(4, "running")
    await traffic.let_go(2)
    await traffic.let_go(4)
    assert bulkhead.metrics() == rs.metrics.BulkheadMetrics(
        in_flight=0, available=2, queued=0, rejected=1
    )


async def test_queued_calls_get_slots_in_arrival_order(mode: str) -> None:
    """Up to max_queue calls wait, first come first served; beyond that, refused."""
    clock = WatchedClock()
    bulkhead = rs.Bulkhead(1, max_queue=2, clock=clock)
    traffic = Traffic(mode, bulkhead, clock)
    await traffic.start(1, "running")
    await traffic.start(2, "queued")
    await traffic.start(3, "queued")
    await traffic.start(4, "rejected")
    assert "its queue of 2 is full" in str(traffic.outcomes[4])
    assert (bulkhead.in_flight, bulkhead.queued, bulkhead.rejected) == (1, 2, 1)
    await traffic.let_go(1, then=2)
    await traffic.let_go(2, then=3)
    await traffic.let_go(3)
    assert traffic.entered == [1, 2, 3]
    assert (bulkhead.in_flight, bulkhead.queued, bulkhead.available) == (0, 0, 1)


async def _one_call_waits(
    mode: str, listener: Callable[[rs.events.BulkheadEvent], None] | None = None
) -> None:
    """Bulkhead "db" of one slot: call 2 waits 1.5 s for call 1's slot, on a clock started at 10
    (so a wait measured from 0 would show)."""
    clock = WatchedClock()
    clock.advance(10)
    bulkhead = rs.Bulkhead(1, max_queue=1, clock=clock, name="db")
    if listener is not None:
        bulkhead.subscribe(listener)
    traffic = Traffic(mode, bulkhead, clock)
    await traffic.start(1, "running")
    await traffic.start(2, "queued")
    clock.advance(1.5)
    await traffic.let_go(1, then=2)
    await traffic.let_go(2)


async def test_a_queued_call_gives_up_after_max_wait(mode: str) -> None:
    """A call that gets no slot within max_wait is refused and leaves the queue."""
    clock = WatchedClock()
    clock.advance(10)  # the wait starts at 10, not at 0
    bulkhead = rs.Bulkhead(1, max_queue=1, max_wait=0.5, clock=clock)
    events: list[rs.events.BulkheadEvent] = []
    bulkhead.subscribe(events.append)
    traffic = Traffic(mode, bulkhead, clock)
    await traffic.start(1, "running")
    await traffic.start(2, "queued")
    clock.advance(0.5)
    error = await traffic.join(2)
    assert isinstance(error, rs.BulkheadFullError)
    assert str(error) == "bulkhead is full: no slot came free in 0.5s"
    assert (bulkhead.queued, bulkhead.rejected, bulkhead.in_flight) == (0, 1, 1)
    assert events == [rs.events.BulkheadEvent(None, "rejected", 0.5, error)]
    await traffic.let_go(1)
    assert bulkhead.available == 1


async def test_waits_are_reported_to_listeners(mode: str) -> None:
    """A call that waited for its slot sends a "waited" event with the time it spent."""
    events: list[rs.events.BulkheadEvent] = []
    await _one_call_waits(mode, events.append)
    assert events == [rs.events.BulkheadEvent("db", "waited", 1.5)]


async def test_waits_are_logged_at_debug_level(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    """With no listener, a call that waited is still logged at DEBUG level, with the time."""
    caplog.set_level(logging.DEBUG, logger="resilience")
    await _one_call_waits(mode)
    waited = [r.getMessage() for r in caplog.records if "waited" in r.getMessage()]
    assert waited == ["resilience: Bulkhead 'db': a call waited 1.5s"]


def test_refusals_are_logged_at_info_level(caplog: pytest.LogCaptureFixture) -> None:
    """A refused call is logged at INFO level with the refusal's message."""
    caplog.set_level(logging.INFO, logger="resilience")
    bulkhead = rs.Bulkhead(1, name="db")
    with bulkhead, pytest.raises(rs.BulkheadFullError):
        bulkhead.call(lambda: None)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, "resilience: rejected: bulkhead 'db' is full: all 1 slots are taken")
    ]


class TickingClock(FakeClock):
    """A FakeClock that moves one second on every read, as if each step took that long."""

    def monotonic(self) -> float:
        self.advance(1)
        return super().monotonic()


async def test_a_call_that_may_not_wait_is_refused_without_joining_the_queue(
    mode: str,
) -> None:
    """max_wait=0: a call that finds no slot is refused at once, as by a full queue, having
    waited 0 s, however the clock moves meanwhile."""
    clock = TickingClock()
    bulkhead = rs.Bulkhead(1, max_queue=1, max_wait=0, clock=clock)
    events: list[rs.events.BulkheadEvent] = []
    bulkhead.subscribe(events.append)
    with bulkhead:
        with pytest.raises(rs.BulkheadFullError) as refused:
            await call_through(mode, bulkhead)
        assert (
            str(refused.value)
            == "bulkhead is full: all 1 slots are taken and its queue of 1 is full"
        )
    assert events == [rs.events.BulkheadEvent(None, "rejected", 0.0, refused.value)]
    assert bulkhead.metrics() == rs.metrics.BulkheadMetrics(0, 1, 0, 1)


async def test_a_queued_sync_call_gives_up_at_its_deadline() -> None:
    """Waiting for a slot never crosses the call's deadline (here a cooperative Timeout's)."""
    clock = WatchedClock()
    bulkhead = rs.Bulkhead(1, max_queue=1, clock=clock)
    pipeline = rs.Pipeline([rs.Timeout(3, clock=clock), bulkhead])
    with bulkhead:  # the only slot is taken
        outcome: list[BaseException] = []

        def caller() -> None:
            try:
                pipeline.call(lambda: None)
            except rs.BulkheadFullError as exc:
                outcome.append(exc)

        thread = threading.Thread(target=caller)
        thread.start()
        assert clock.blocked.acquire(timeout=30)
        clock.advance(3)
        thread.join(30)
    assert "no slot came free in 3s" in str(outcome[0])
    assert (bulkhead.queued, bulkhead.available) == (0, 1)


async def test_a_past_deadline_refuses_to_queue(mode: str) -> None:
    """With the deadline already gone there is no time to wait: refused at once."""
    clock = FakeClock()
    bulkhead = rs.Bulkhead(1, max_queue=5, clock=clock)
    outer = rs.Timeout(1, clock=clock)

    def late() -> None:
        clock.advance(2)
        bulkhead.call(lambda: None)

    async def alate() -> None:
        clock.advance(2)
        await bulkhead.acall(asyncio.sleep, 0)

    async def through_outer() -> None:
        if mode == "sync":
            outer.call(late)
        else:
            await outer.acall(alate)

    with bulkhead, pytest.raises(rs.BulkheadFullError, match="all 1 slots are taken"):
        await through_outer()
    assert bulkhead.rejected == 1


async def test_an_outer_async_timeout_cancels_a_queued_call(async_mode: str) -> None:
    """A queued task cancelled by a Timeout leaves the queue; the Timeout reports it."""
    clock = FakeClock(auto_advance=False)
    bulkhead = rs.Bulkhead(1, max_queue=1, clock=clock)
    pipeline = rs.Pipeline([rs.Timeout(1, clock=clock), bulkhead])
    with bulkhead:
        task = create_task(pipeline.acall(checkpoint))
        await settle()
        assert bulkhead.queued == 1
        clock.advance(1)
        with pytest.raises(rs.TimeoutExceeded):
            await task
        assert (bulkhead.queued, bulkhead.available) == (0, 0)
    assert bulkhead.available == 1


# -- a slot is always given back -----------------------------------------------------------


async def test_slots_come_back_after_errors_and_control_flow(mode: str) -> None:
    """Errors and control flow pass through unchanged, and the slot comes back."""
    bulkhead = rs.Bulkhead(1)

    def fail() -> None:
        raise ConnectionError("down")

    def interrupt() -> None:
        raise KeyboardInterrupt

    async def afail() -> None:
        raise ConnectionError("down")

    async def failing() -> None:
        if mode == "sync":
            bulkhead.call(fail)
        else:
            await bulkhead.acall(afail)

    with pytest.raises(ConnectionError):
        await failing()
    assert bulkhead.available == 1
    with pytest.raises(KeyboardInterrupt):
        bulkhead.call(interrupt)
    assert bulkhead.available == 1


async def test_a_cancelled_running_call_gives_its_slot_back(async_mode: str) -> None:
    """Cancellation while running is not swallowed, and the slot comes back."""
    bulkhead = rs.Bulkhead(1)
    task = create_task(bulkhead.acall(forever))
    await settle()
    assert bulkhead.in_flight == 1
    task.cancel()
    with pytest.raises(task_cancelled(async_mode)):
        await task
    assert bulkhead.available == 1


async def test_a_call_granted_then_cancelled_before_it_ran_gives_its_slot_back(
    async_mode: str,
) -> None:
    """A slot handed to a queued task that is cancelled before it resumes goes to the next."""
    bulkhead = rs.Bulkhead(1, max_queue=2)
    started: list[str] = []

    async def work(name: str) -> None:
        started.append(name)

    with bulkhead:
        first = create_task(bulkhead.acall(work, "first"))
        await settle()  # "first" is in the queue first (trio runs new tasks in any order)
        second = create_task(bulkhead.acall(work, "second"))
        await settle()
        assert bulkhead.queued == 2
    # Leaving the block handed the slot to "first", which has not run yet.
    assert bulkhead.queued == 1
    first.cancel()
    await second
    with pytest.raises(task_cancelled(async_mode)):
        await first
    assert started == ["second"]
    assert (bulkhead.available, bulkhead.queued) == (1, 0)


async def test_thousands_of_random_cancellations_leave_every_slot_free(async_mode: str) -> None:
    """5,000 calls, thousands cancelled at random while queued or running: every slot back."""
    bulkhead = rs.Bulkhead(10, max_queue=500)
    rng = random.Random(20261123)
    running = peak = cancelled_while_running = 0

    async def work() -> None:
        nonlocal running, peak, cancelled_while_running
        running += 1
        peak = max(peak, running)
        try:
            for _ in range(rng.randrange(1, 8)):
                await checkpoint()
        except cancellation(async_mode):
            cancelled_while_running += 1
            raise
        finally:
            running -= 1

    tasks: list[Any] = []
    for _ in range(50):
        batch = [create_task(bulkhead.acall(work)) for _ in range(100)]
        tasks += batch
        for _ in range(rng.randrange(1, 4)):  # every task has reached the bulkhead
            await checkpoint()
        pending = [task for task in tasks if not task.done()]
        for task in rng.sample(pending, min(60, len(pending))):
            task.cancel()
    results = await gather(*tasks, return_exceptions=True)
    cancelled = sum(isinstance(result, task_cancelled(async_mode)) for result in results)
    refused = sum(isinstance(result, rs.BulkheadFullError) for result in results)
    assert cancelled >= 1000
    assert 0 < cancelled_while_running < cancelled  # both while running and while queued
    assert cancelled + refused + results.count(None) == 5000
    assert peak <= 10
    assert bulkhead.metrics() == rs.metrics.BulkheadMetrics(
        in_flight=0, available=10, queued=0, rejected=refused
    )


# -- one account for threads and tasks ---------------------------------------------------


def test_real_threads_never_exceed_the_limit_and_counts_are_exact() -> None:
    """Eight threads, 200 calls each, through 3 slots and a queue: all run, at most 3 at once."""
    bulkhead = rs.Bulkhead(3, max_queue=100)
    lock = threading.Lock()
    running = peak = done = 0

    def work() -> None:
        nonlocal running, peak, done
        with lock:
            running += 1
            peak = max(peak, running)
        with lock:
            running -= 1
            done += 1

    def hammer() -> None:
        for _ in range(200):
            bulkhead.call(work)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert (done, bulkhead.rejected) == (1600, 0)
    assert peak <= 3
    assert (bulkhead.available, bulkhead.queued) == (3, 0)


async def test_threads_and_a_thousand_tasks_share_one_account() -> None:
    """Threads and 1,000 tasks on one bulkhead: never more than its slots, every slot back."""
    bulkhead = rs.Bulkhead(5, max_queue=2000)
    lock = threading.Lock()
    running = peak = 0

    def enter() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)

    def leave() -> None:
        nonlocal running
        with lock:
            running -= 1

    def work() -> None:
        enter()
        leave()

    async def awork(i: int) -> int:
        enter()
        try:
            await asyncio.sleep(0)
        finally:
            leave()
        return i

    def hammer() -> None:
        for _ in range(100):
            bulkhead.call(work)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    tasks = [asyncio.create_task(bulkhead.acall(awork, i)) for i in range(1000)]
    for thread in threads:
        thread.start()
    assert await asyncio.gather(*tasks) == list(range(1000))
    for thread in threads:
        await asyncio.to_thread(thread.join, 60)
    assert peak <= 5
    assert (bulkhead.available, bulkhead.queued, bulkhead.rejected) == (5, 0, 0)


async def test_threads_holding_slots_are_seen_by_tasks() -> None:
    """A slot held in a thread is a slot a task cannot have."""
    bulkhead = rs.Bulkhead(1)
    entered, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with bulkhead:
            entered.set()
            leave.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    assert entered.wait(30)
    with pytest.raises(rs.BulkheadFullError):
        async with bulkhead:
            pass
    leave.set()
    await asyncio.to_thread(thread.join, 30)
    async with bulkhead:
        assert bulkhead.in_flight == 1
    assert bulkhead.available == 1


# -- thread isolation ------------------------------------------------------------------------


def test_isolated_calls_run_on_the_pool_with_the_callers_context() -> None:
    """isolation="thread": the call runs on the bulkhead's own thread, with a copied context."""
    bulkhead = rs.Bulkhead(2, isolation="thread", name="legacy")
    token = USER.set("alice")
    try:
        name, user = bulkhead.call(lambda: (threading.current_thread().name, USER.get()))
    finally:
        USER.reset(token)
    assert name == "resilience-legacy"
    assert user == "alice"
    assert bulkhead.available == 2

    def fail() -> None:
        raise KeyError("missing")

    with pytest.raises(KeyError):
        bulkhead.call(fail)
    assert bulkhead.drain(10)
    assert bulkhead.available == 2


def test_an_isolated_call_is_left_at_the_deadline_and_keeps_its_slot() -> None:
    """The caller leaves at the deadline with TimeoutExceeded; the call runs on, holding a slot.

    The deadline is the Timeout's: it reports it (its name, its event), not the bulkhead.
    """
    clock = FakeClock(auto_advance=False)
    bulkhead = rs.Bulkhead(1, isolation="thread", clock=clock, name="legacy")
    timeout = rs.Timeout(2, clock=clock, name="total")
    fired: list[rs.events.TimeoutEvent] = []
    timeout.subscribe(fired.append)
    pipeline = rs.Pipeline([timeout, bulkhead])
    started, release = threading.Event(), threading.Event()
    seen: list[float | None] = []

    def stuck() -> str:
        seen.append(rs.current().deadline)
        started.set()
        release.wait(30)
        return "late"

    outcome: list[BaseException] = []

    def caller() -> None:
        try:
            pipeline.call(stuck)
        except rs.TimeoutExceeded as exc:
            outcome.append(exc)

    thread = threading.Thread(target=caller)
    thread.start()
    assert started.wait(30)
    clock.advance(2)
    thread.join(30)
    assert type(outcome[0]) is rs.TimeoutExceeded
    assert (outcome[0].seconds, outcome[0].name) == (2.0, "total")
    assert [(event.name, event.seconds) for event in fired] == [("total", 2.0)]
    assert seen == [2.0]
    assert bulkhead.in_flight == 1  # the abandoned call still holds its slot
    with pytest.raises(rs.BulkheadFullError):
        bulkhead.call(lambda: None)
    release.set()
    assert bulkhead.drain(10)
    assert bulkhead.available == 1
    assert bulkhead.call(lambda: "room again") == "room again"


def test_an_isolated_call_left_at_a_deadline_from_outside_reports_the_time_it_had() -> None:
    """With a deadline that no Timeout on the way out will claim (it came with the caller's
    context), the caller leaves with a TimeoutExceeded giving the seconds it had left."""
    clock = FakeClock(auto_advance=False)
    bulkhead = rs.Bulkhead(1, isolation="thread", clock=clock)
    started, release = threading.Event(), threading.Event()
    outcome: list[BaseException] = []

    def stuck() -> None:
        started.set()
        release.wait(30)

    def caller() -> None:
        VAR.set(child(EMPTY, 0.25, clock))  # a deadline 0.25 s away on the bulkhead's clock
        try:
            bulkhead.call(stuck)
        except rs.TimeoutExceeded as exc:
            outcome.append(exc)

    thread = threading.Thread(target=caller)  # a context of its own: VAR is set there only
    thread.start()
    assert started.wait(30)
    clock.advance(0.25)
    thread.join(30)
    assert [(type(error), error.seconds, error.name) for error in outcome] == [
        (DeadlineCut, 0.25, None)
    ]
    release.set()
    assert bulkhead.drain(10)


def test_an_isolated_call_with_a_deadline_is_waited_for_until_it_ends() -> None:
    """Before its deadline the caller waits for the isolated call to end, however long
    that takes in real time, and gets its result."""
    go = threading.Event()

    class ReleasingClock(FakeClock):
        def wait_future(self, future: concurrent.futures.Future[Any], deadline: float) -> None:
            go.set()  # the caller now waits: the call may end
            super().wait_future(future, deadline)

    clock = ReleasingClock(auto_advance=False)
    bulkhead = rs.Bulkhead(1, isolation="thread", clock=clock)

    def slow() -> str:
        assert go.wait(30)
        return "done"

    try:
        outcome = rs.Pipeline([rs.Timeout(5, clock=clock), bulkhead]).call(slow)
    finally:
        go.set()
    assert outcome == "done"
    assert bulkhead.drain(10)


def test_isolated_calls_that_finish_in_time_return_their_result() -> None:
    """With a deadline that does not pass, the caller gets the result."""
    clock = FakeClock(auto_advance=False)
    bulkhead = rs.Bulkhead(1, isolation="thread", clock=clock)
    assert rs.Pipeline([rs.Timeout(5, clock=clock), bulkhead]).call(lambda: 7) == 7
    assert bulkhead.drain(10)


def test_a_failed_hand_off_gives_the_slot_back_once() -> None:
    """If the pool cannot take the call, the slot comes back, exactly once."""
    bulkhead = rs.Bulkhead(1, isolation="thread")

    class Broken(RuntimeError):
        pass

    def refuse() -> Any:
        raise Broken("no threads left")

    bulkhead._workers = refuse  # type: ignore[method-assign]
    with pytest.raises(Broken):
        bulkhead.call(lambda: None)
    assert bulkhead.available == 1


def test_a_slot_is_given_back_once_even_if_both_sides_try() -> None:
    """The worker and a failing hand-off cannot both give the same slot back."""
    bulkhead = rs.Bulkhead(1, isolation="thread")

    class RunsThenFails:
        def submit(self, fn: Callable[..., Any], *args: Any) -> None:
            fn(*args)  # the call runs (and gives its slot back)...
            raise RuntimeError("lost the result")  # ...and the hand-off fails anyway

    bulkhead._workers = RunsThenFails  # type: ignore[assignment,method-assign]
    with pytest.raises(RuntimeError):
        bulkhead.call(lambda: None)
    assert bulkhead.available == 1
    assert bulkhead.drain() is True


@pytest.mark.parametrize("max_queue", [0, 1])
async def test_the_slow_path_takes_a_slot_that_came_back(
    mode: str, max_queue: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slot given back after the fast path missed, before the slow path locked, is taken."""
    bulkhead = rs.Bulkhead(1, max_queue=max_queue)
    events: list[rs.events.BulkheadEvent] = []
    bulkhead.subscribe(events.append)
    bulkhead.__enter__()  # another call holds the only slot: the next fast path misses
    slots = bulkhead._slots
    lock = Slots.lock
    free_when_missed: list[int] = []

    def give_back_then_lock(self: Slots) -> None:
        # The race, made deterministic: the holder ends between the fast path's
        # miss and the slow path's lock (the queue is empty: its slot goes free).
        if self is slots and not free_when_missed:
            free_when_missed.append(bulkhead.available)
            bulkhead.__exit__(None, None, None)
        lock(self)

    monkeypatch.setattr(Slots, "lock", give_back_then_lock)
    if mode == "sync":
        assert bulkhead.call(lambda: "in") == "in"
    else:

        async def inside() -> str:
            await checkpoint()
            return "in"

        assert await bulkhead.acall(inside) == "in"
    assert free_when_missed == [0]  # the fast path had found no slot: the race happened
    assert events == []  # neither refused (max_queue=0) nor served through the queue
    assert bulkhead.metrics() == rs.metrics.BulkheadMetrics(
        in_flight=0, available=1, queued=0, rejected=0
    )


async def test_async_calls_are_not_isolated() -> None:
    """Async calls through an isolating bulkhead run on their event loop, not the pool."""
    bulkhead = rs.Bulkhead(1, isolation="thread")

    async def where() -> int:
        return threading.get_ident()

    assert await bulkhead.acall(where) == threading.get_ident()
    assert bulkhead.drain(0)
    with pytest.raises(ValueError, match=r"^timeout"):
        bulkhead.drain(-1)


def test_an_isolated_bulkhead_without_a_name_names_its_threads_bulkhead() -> None:
    """The pool's threads are called after the bulkhead, or "bulkhead" when it has no name."""
    bulkhead = rs.Bulkhead(1, isolation="thread")
    assert bulkhead.call(lambda: threading.current_thread().name) == "resilience-bulkhead"
    assert bulkhead.drain(10)


def test_a_waiter_handed_the_slot_of_an_ending_isolated_call_is_not_refused_by_the_pool() -> None:
    """The slot of an isolated call comes back while its worker thread is still winding
    down; the waiter handed it must be run by the pool (it waits for the worker), not
    refused as if the pool were full."""
    bulkhead = rs.Bulkhead(1, max_queue=1, isolation="thread")
    slots = bulkhead._slots
    release = Slots.release
    entered, go, handed = threading.Event(), threading.Event(), threading.Event()
    pause = threading.Event()  # never set: a short wait in the bounded loops
    outcomes: dict[str, Any] = {}

    def release_then_wait_for_the_waiter(self: Slots) -> None:
        release(self)
        if self is slots and not handed.is_set():
            handed.set()  # the waiter has the slot: let it reach the pool before this ends
            pool = bulkhead._pool
            assert pool is not None
            for _ in range(3000):  # bounded: at most 30 s
                if pool.busy >= 2 or "second" in outcomes:
                    break
                pause.wait(0.01)

    def call(name: str, fn: Callable[[], Any]) -> None:
        try:
            outcomes[name] = bulkhead.call(fn)
        except BaseException as exc:  # recorded for the test
            outcomes[name] = exc

    def first() -> str:
        entered.set()
        assert go.wait(30)
        return "first"

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Slots, "release", release_then_wait_for_the_waiter)
        threads = [threading.Thread(target=call, args=("first", first))]
        threads[0].start()
        assert entered.wait(30)
        threads.append(threading.Thread(target=call, args=("second", lambda: "second")))
        threads[1].start()
        for _ in range(3000):  # bounded: until the second call waits in the queue
            if bulkhead.queued == 1:
                break
            pause.wait(0.01)
        go.set()
        for thread in threads:
            thread.join(30)
    assert handed.is_set()
    assert outcomes == {"first": "first", "second": "second"}
    assert bulkhead.drain(10)
    assert bulkhead.available == 1


# -- slots shared by processes, through a backend of the test's own --------------------------


class Fleet(Backend):
    """A stand-in for RedisBackend kept in the test: the fleet's slots are a list of members,
    and it records what the bulkhead asks of it."""

    mode = "strict"

    def __init__(
        self, cap: int, clock: FakeClock | None = None, on_backend_error: Any = "local"
    ) -> None:
        self.cap = cap
        self.clock = clock
        self.on_backend_error = on_backend_error
        self.members: list[str] = []
        """Who holds a slot of the fleet (``other`` for another process's calls)."""
        self.gives_up: list[float | None] = []
        """The ``give_up`` of every take: None when the call may not wait."""
        self.released: list[str] = []
        self.failures: list[tuple[str, str]] = []
        self.down: Unavailable | None = None
        """Set: every request fails with it."""
        self._numbers = itertools.count(1)

    def attach(self, kind: str, name: str, policy: Any) -> Fleet:
        assert (kind, name) == ("bulkhead", "db")  # the policy's kind and name
        self.name = name
        return self

    def take(self, give_up: float | None) -> str | None:
        self.gives_up.append(give_up)
        if self.down is not None:
            raise self.down
        if len(self.members) < self.cap:
            member = f"m{next(self._numbers)}"
            self.members.append(member)
            return member
        if give_up is not None and self.clock is not None:  # waits in vain until it gives up
            self.clock.advance(max(0.0, give_up - self.clock.monotonic()))
        return None

    async def atake(self, give_up: float | None) -> str | None:
        return self.take(give_up)

    def release(self, member: str) -> None:
        self.released.append(member)
        if member in self.members:
            self.members.remove(member)

    def holders(self) -> int:
        if self.down is not None:
            raise self.down
        return len(self.members)

    def failed(self, operation: str, problem: Unavailable, action: str) -> None:
        self.failures.append((operation, action))

    def refusal(self, problem: Unavailable) -> rs.BackendUnavailableError:
        return rs.BackendUnavailableError(
            "the fleet is down", name=self.name, retry_after=problem.retry_after
        )


async def call_through(mode: str, bulkhead: rs.Bulkhead) -> Any:
    """A call of nothing through ``bulkhead``: ``call`` in sync mode, else ``acall``."""
    if mode == "sync":
        return bulkhead.call(lambda: "ran")

    async def body() -> str:
        return "ran"

    return await bulkhead.acall(body)


async def test_a_shared_bulkhead_holds_a_slot_of_the_fleet_for_each_call(mode: str) -> None:
    """Each call takes a slot of the fleet (without waiting: no queue) and gives it back."""
    fleet = Fleet(3)
    bulkhead = rs.Bulkhead(2, name="db", backend=fleet)
    seen: list[list[str]] = []
    if mode == "sync":
        assert bulkhead.call(lambda: seen.append(list(fleet.members))) is None
    else:

        async def body() -> None:
            seen.append(list(fleet.members))

        assert await bulkhead.acall(body) is None
    assert (seen, fleet.members, fleet.released, fleet.gives_up) == ([["m1"]], [], ["m1"], [None])
    assert bulkhead.in_flight == 0


async def test_nested_blocks_of_a_shared_bulkhead_give_back_their_own_fleet_slots(
    mode: str,
) -> None:
    """``with bulkhead:`` inside ``with bulkhead:``: each block holds a slot of the fleet and
    gives back its own, the inner one first."""
    fleet = Fleet(3)
    bulkhead = rs.Bulkhead(3, name="db", backend=fleet)
    inside: list[list[str]] = []
    if mode == "sync":
        with bulkhead, bulkhead:
            with bulkhead:
                inside.append(list(fleet.members))
            inside.append(list(fleet.released))
    else:
        async with bulkhead, bulkhead:
            async with bulkhead:
                inside.append(list(fleet.members))
            inside.append(list(fleet.released))
    assert inside == [["m1", "m2", "m3"], ["m3"]]
    assert fleet.released == ["m3", "m2", "m1"]
    assert (fleet.members, bulkhead.in_flight) == ([], 0)


def test_a_shared_bulkhead_reports_the_fleets_slots_and_its_own_refusals() -> None:
    """metrics(): in flight and available are the fleet's (never below 0 available), the
    refusals this process's; with the backend down, the process's own slots."""
    fleet = Fleet(3)
    bulkhead = rs.Bulkhead(2, name="db", backend=fleet)
    events: list[rs.events.BulkheadEvent] = []
    bulkhead.subscribe(events.append)
    assert bulkhead.settings() == {
        "max_concurrent": 2,
        "max_queue": 0,
        "max_wait": None,
        "backend": repr(fleet),
    }
    with bulkhead:
        assert bulkhead.metrics() == rs.metrics.BulkheadMetrics(1, 1, 0, 0, True)
        fleet.members += ["other", "other"]  # two calls of other processes: the fleet is full
        with pytest.raises(rs.BulkheadFullError, match=r"^bulkhead 'db' is full: all 2 slots"):
            bulkhead.call(lambda: None)
        assert [(event.outcome, event.seconds) for event in events] == [("rejected", 0.0)]
        assert bulkhead.metrics() == rs.metrics.BulkheadMetrics(3, 0, 0, 1, True)
        fleet.down = Unavailable(ConnectionError("refused"), 1.0)
        metrics = bulkhead.metrics()
        assert metrics == rs.metrics.BulkheadMetrics(1, 1, 0, 1)
        assert metrics.shared is False
    assert fleet.gives_up == [None, None]
    assert bulkhead.in_flight == 0


async def test_a_shared_call_that_may_wait_gives_up_on_the_fleet_in_time(mode: str) -> None:
    """With a queue, a call waits for the fleet's slot until max_wait; refused then, it
    reports how long it waited, is counted, and gives its own slot back."""
    clock = FakeClock(100.0, auto_advance=False)
    fleet = Fleet(0, clock)
    bulkhead = rs.Bulkhead(2, max_queue=1, max_wait=5, clock=clock, name="db", backend=fleet)
    events: list[rs.events.BulkheadEvent] = []
    bulkhead.subscribe(events.append)
    with pytest.raises(
        rs.BulkheadFullError, match=r"^bulkhead 'db' is full: no slot came free in 5s$"
    ):
        await call_through(mode, bulkhead)
    assert fleet.gives_up == [105.0]
    assert [(event.outcome, event.seconds) for event in events] == [("rejected", 5.0)]
    assert bulkhead.metrics() == rs.metrics.BulkheadMetrics(0, 2, 0, 1, True)
    assert bulkhead.in_flight == 0


@pytest.mark.parametrize(
    ("max_queue", "max_wait", "timeout", "give_up"),
    [
        (0, None, None, None),  # no queue: it may not wait
        (1, 0, None, None),  # no time to wait
        (1, None, 3.0, 103.0),  # the call's deadline
        (1, 5, 3.0, 103.0),  # the deadline comes before max_wait
        (1, 2, 3.0, 102.0),  # max_wait comes before the deadline
        (1, 2, None, 102.0),
        (1, 0.5, None, 100.5),  # less than a second is still time to wait
    ],
)
def test_a_shared_call_waits_for_the_fleet_until_max_wait_or_its_deadline(
    max_queue: int, max_wait: float | None, timeout: float | None, give_up: float | None
) -> None:
    """How long a call may wait for a slot of the fleet: not at all without a queue or time,
    else until max_wait or its deadline, whichever comes first."""
    clock = FakeClock(100.0, auto_advance=False)
    fleet = Fleet(1, clock)
    bulkhead = rs.Bulkhead(
        2, max_queue=max_queue, max_wait=max_wait, clock=clock, name="db", backend=fleet
    )
    policy: Any = bulkhead
    if timeout is not None:
        policy = rs.Pipeline([rs.Timeout(timeout, clock=clock), bulkhead])
    assert policy.call(lambda: "in") == "in"
    assert fleet.gives_up == [give_up]


def test_a_shared_call_whose_deadline_passed_does_not_wait_for_the_fleet() -> None:
    """A deadline already behind leaves no time to wait for the fleet."""
    clock = FakeClock(100.0, auto_advance=False)
    fleet = Fleet(1, clock)
    bulkhead = rs.Bulkhead(2, max_queue=1, clock=clock, name="db", backend=fleet)

    def late() -> str:
        clock.advance(5)  # past the outer deadline, before the bulkhead's turn
        return bulkhead.call(lambda: "in")

    with pytest.raises(rs.TimeoutExceeded):
        rs.Timeout(3, clock=clock).call(late)
    assert fleet.gives_up == [None]


@pytest.mark.parametrize("action", ["local", "open", "closed"])
async def test_a_shared_bulkhead_whose_backend_fails(mode: str, action: str) -> None:
    """The backend fails: "local" and "open" admit the call uncounted by the fleet (its
    member is ""), "closed" refuses it and gives the process's slot back; each failure is
    reported."""
    fleet = Fleet(3, on_backend_error=action)
    fleet.down = Unavailable(ConnectionError("refused"), 2.0)
    bulkhead = rs.Bulkhead(2, name="db", backend=fleet)
    outcomes: list[Any] = []
    for _ in range(2):  # a call, then a block
        try:
            if mode == "sync" and not outcomes:
                outcomes.append(bulkhead.call(lambda: "ran"))
            elif mode == "sync":
                with bulkhead:
                    outcomes.append("ran")
            elif not outcomes:

                async def body() -> str:
                    return "ran"

                outcomes.append(await bulkhead.acall(body))
            else:
                async with bulkhead:
                    outcomes.append("ran")
        except rs.BackendUnavailableError as error:
            outcomes.append(error.retry_after)
        assert bulkhead.in_flight == 0
    assert fleet.failures == [("acquire", action)] * 2
    if action == "closed":
        assert (outcomes, fleet.released) == ([2.0, 2.0], [])
    else:
        assert (outcomes, fleet.released) == (["ran", "ran"], ["", ""])


# -- both sides of a call -------------------------------------------------------------------


class Server:
    """A handler behind a Bulkhead and a Throttle, answering "try later" when they refuse."""

    def __init__(self, clock: FakeClock) -> None:
        self.bulkhead = rs.Bulkhead(2, retry_after=1.5, clock=clock, name="server")
        self.throttle = rs.Throttle(10, burst=2, clock=clock, name="server")
        self.handle = rs.Pipeline([self.bulkhead, self.throttle])(self._handle)
        self.handled = 0

    def _handle(self, request: str) -> str:
        self.handled += 1
        return request.upper()

    def receive(self, request: str) -> bytes:
        """One request off the wire; a refusal goes back as a pickled error (its 503)."""
        try:
            return pickle.dumps(("ok", self.handle(request)))
        except rs.RejectedError as refusal:
            return pickle.dumps(("busy", refusal))


def test_both_sides_of_a_call() -> None:
    """Server: bulkhead and throttle answer at once. Client: its Retry honours retry_after."""
    clock = FakeClock()
    server = Server(clock)
    sleeps_before = len(clock.sleeps)

    def send(request: str) -> str:
        status, body = pickle.loads(server.receive(request))
        if status == "busy":
            raise body  # the refusal crossed the wire with its retry_after
        return str(body)

    client = rs.Pipeline(
        [
            rs.Retry(3, on=(ConnectionError, rs.ThrottledError), backoff=0.01, clock=clock),
            rs.Throttle(100, burst=5, clock=clock, name="client"),
        ]
    )
    assert [client.call(send, f"r{i}") for i in range(3)] == ["R0", "R1", "R2"]
    assert clock.sleeps[sleeps_before:] == [pytest.approx(0.1)]  # the server's throttle said when

    # A full server bulkhead: refused at once; a Retry that names it waits its hint.
    with server.bulkhead, server.bulkhead, pytest.raises(rs.BulkheadFullError) as caught:
        client.call(send, "r3")
    assert caught.value.retry_after == 1.5
    patient = rs.Retry(2, on=rs.BulkheadFullError, backoff=0, clock=clock)
    held = [server.bulkhead.__enter__(), server.bulkhead.__enter__()]
    original_sleep = clock.sleep

    def sleep_then_free(seconds: float) -> None:
        original_sleep(seconds)
        for _ in held:
            server.bulkhead.__exit__(None, None, None)
        held.clear()

    clock.sleep = sleep_then_free  # type: ignore[method-assign]
    assert patient.call(send, "r4") == "R4"
    assert clock.sleeps[-1] == 1.5


# -- the rest ----------------------------------------------------------------------------------


async def test_context_managers_hold_a_slot(mode: str) -> None:
    """``with bulkhead:`` / ``async with bulkhead:`` hold a slot for the block."""
    bulkhead = rs.Bulkhead(1)
    if mode == "sync":
        with bulkhead:
            assert bulkhead.in_flight == 1
            with pytest.raises(rs.BulkheadFullError), bulkhead:
                pass
    else:
        async with bulkhead:
            assert bulkhead.in_flight == 1
            with pytest.raises(rs.BulkheadFullError):
                async with bulkhead:
                    pass
    assert bulkhead.available == 1


def test_decorator_keeps_the_signature() -> None:
    """Decorating keeps the name, the signature and the async-ness."""
    bulkhead = rs.Bulkhead(2)

    @bulkhead
    def fetch(user_id: int, *, verbose: bool = False) -> int:
        return user_id

    @bulkhead
    async def afetch(user_id: int) -> int:
        return user_id

    assert fetch(3) == 3
    assert str(inspect.signature(fetch)) == "(user_id: 'int', *, verbose: 'bool' = False) -> 'int'"
    assert inspect.iscoroutinefunction(afetch)
    assert asyncio.run(afetch(4)) == 4


async def test_a_layer_that_is_not_innermost_calls_the_next(mode: str, clock: FakeClock) -> None:
    """Not innermost, the bulkhead hands the call on to the next layer."""
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(rs.current().attempt)
        if len(attempts) == 1:
            raise ConnectionError
        return "x"

    async def aflaky() -> str:
        return flaky()

    pipeline = rs.Pipeline([rs.Bulkhead(1), rs.Retry(2, backoff=0, clock=clock)])
    result = pipeline.call(flaky) if mode == "sync" else await pipeline.acall(aflaky)
    assert result == "x"
    assert attempts == [1, 2]


# -- size: memory, runtime updates -------------------------------------------------------------


def test_memory_does_not_grow_with_the_limit() -> None:
    """Bulkhead(10**8) allocated 1.6 GB and took 4 s; 10**30 raised OverflowError. Slots are
    made as calls use them, so the limit costs nothing up front."""
    tracemalloc.start()
    try:
        huge = rs.Bulkhead(10**8)
        size, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size < 100_000
    assert huge.metrics() == rs.metrics.BulkheadMetrics(0, 10**8, 0, 0)
    enormous = rs.Bulkhead(10**30)
    assert enormous.call(lambda: "ok") == "ok"
    assert enormous.available == 10**30


async def test_calls_beyond_the_first_tokens_come_from_the_reserve(mode: str) -> None:
    """More calls in flight than the tokens made up front: each gets a slot, all come back."""
    bulkhead = rs.Bulkhead(200)
    gate = threading.Barrier(150) if mode == "sync" else None
    if mode == "sync":
        assert gate is not None

        def hold() -> int:
            gate.wait(30)
            return bulkhead.in_flight

        with concurrent.futures.ThreadPoolExecutor(150) as pool:
            seen = list(pool.map(lambda _: bulkhead.call(hold), range(150)))
    else:
        started = Event()
        count = 0

        async def ahold() -> int:
            nonlocal count
            count += 1
            if count == 150:
                started.set()
            await started.wait()
            return bulkhead.in_flight

        seen = await gather(*(bulkhead.acall(ahold) for _ in range(150)))
    assert max(seen) == 150
    assert bulkhead.metrics() == rs.metrics.BulkheadMetrics(0, 200, 0, 0)


def test_settings_are_read_only() -> None:
    """Assigning a setting is refused with a pointer to update()."""
    bulkhead = rs.Bulkhead(5)
    for attribute in ("max_concurrent", "max_queue", "max_wait", "isolation", "name"):
        with pytest.raises(AttributeError, match=rf"^Bulkhead.{attribute} is read-only; use"):
            setattr(bulkhead, attribute, 1)


async def test_a_higher_limit_lets_waiters_in_at_once(clock: FakeClock) -> None:
    """update(max_concurrent=) up: queued calls start without waiting for a release."""
    bulkhead = rs.Bulkhead(1, max_queue=5, clock=clock)
    release = asyncio.Event()
    started: list[int] = []

    async def hold(i: int) -> None:
        started.append(i)
        await release.wait()

    tasks = [asyncio.create_task(bulkhead.acall(hold, i)) for i in range(4)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert (started, bulkhead.queued) == ([0], 3)
    bulkhead.update(max_concurrent=3)
    for _ in range(5):
        await asyncio.sleep(0)
    assert (started, bulkhead.queued, bulkhead.in_flight) == ([0, 1, 2], 1, 3)
    release.set()
    await asyncio.gather(*tasks)
    assert bulkhead.metrics() == rs.metrics.BulkheadMetrics(0, 3, 0, 0)


async def test_a_limit_one_higher_lets_one_waiter_in(clock: FakeClock) -> None:
    """update(max_concurrent=) up by exactly one slot admits exactly one waiter."""
    bulkhead = rs.Bulkhead(1, max_queue=5, clock=clock)
    release = asyncio.Event()
    started: list[int] = []

    async def hold(i: int) -> None:
        started.append(i)
        await release.wait()

    tasks = [asyncio.create_task(bulkhead.acall(hold, i)) for i in range(3)]
    for _ in range(5):
        await asyncio.sleep(0)
    bulkhead.update(max_concurrent=2)
    for _ in range(5):
        await asyncio.sleep(0)
    assert (started, bulkhead.queued, bulkhead.in_flight) == ([0, 1], 1, 2)
    release.set()
    await asyncio.gather(*tasks)
    assert bulkhead.metrics() == rs.metrics.BulkheadMetrics(0, 2, 0, 0)


def test_a_lower_limit_takes_back_free_slots_and_counts_right() -> None:
    """Shrinking with free tokens: they stop existing, and in_flight still counts the calls."""
    bulkhead = rs.Bulkhead(200)  # 64 tokens made up front, the rest in reserve
    for _ in range(70):
        bulkhead.call(lambda: None)  # 70 tokens now exist, all free
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        entered.set()
        release.wait(30)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(bulkhead.call, hold)
        assert entered.wait(30)
        bulkhead.update(max_concurrent=3)
        assert (bulkhead.in_flight, bulkhead.available) == (1, 2)
        release.set()
        running.result(30)
    assert (bulkhead.in_flight, bulkhead.available) == (0, 3)


def test_a_waiter_who_joins_during_a_release_is_served() -> None:
    """The race in release(): the queue was empty when checked, and a waiter joined before the
    slot went back to the free list. The release must serve that waiter at once, not leave it
    waiting for a slot that sits free until its own time runs out."""
    clock = WatchedClock()  # fake time: a waiter left waiting stays queued, visibly
    bulkhead = rs.Bulkhead(1, max_queue=1, max_wait=5, clock=clock)
    slots = bulkhead._slots
    entered, release = threading.Event(), threading.Event()
    releasing, queued = threading.Event(), threading.Event()

    class Racy(deque):  # type: ignore[type-arg]
        def append(self, item: object) -> None:
            if not releasing.is_set():  # the first give-back: a waiter joins right now
                releasing.set()
                assert queued.wait(30)
            super().append(item)

    def hold() -> None:
        with bulkhead:  # the context manager gives its slot back through Slots.release
            entered.set()
            release.wait(30)

    slots.free = Racy(slots.free)  # before the first call builds the chains that read it
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        holder = pool.submit(hold)
        assert entered.wait(30)
        release.set()
        assert releasing.wait(30)
        waiter = pool.submit(bulkhead.call, lambda: "served")
        try:
            assert clock.blocked.acquire(timeout=30)  # queued, and waiting for a signal
            queued.set()
            holder.result(30)
            assert bulkhead.queued == 0  # the release let it in
            assert waiter.result(30) == "served"
        finally:
            queued.set()
            clock.advance(10)  # a waiter still queued gives up instead of hanging the test
    assert bulkhead.in_flight == 0


def test_a_slot_given_back_while_a_call_joins_the_queue_lets_it_in() -> None:
    """The other side of that race: the slot comes back after the joining call found none
    free and before it is in the queue (the release saw no waiter to serve). The call must
    get that slot at once, not wait for a slot that sits free until it gives up."""

    class ReleasingClock(FakeClock):  # its next reading gives the held slot back
        armed = False

        def monotonic(self) -> float:
            if self.armed:
                self.armed = False
                bulkhead._slots.release()
            return super().monotonic()

    clock = ReleasingClock()  # auto-advancing: a waiter left waiting gives up at once
    bulkhead = rs.Bulkhead(1, max_queue=1, max_wait=5, clock=clock)
    bulkhead.__enter__()  # the call in flight whose slot comes back
    clock.armed = True
    assert bulkhead.call(lambda: "served") == "served"
    assert not clock.armed  # the slot came back during the call's way in
    assert (bulkhead.in_flight, bulkhead.queued, bulkhead.rejected) == (0, 0, 0)


def test_a_lower_limit_is_taken_back_as_calls_end() -> None:
    """update(max_concurrent=) below the calls running: no new call starts until they are
    under the new limit; then it holds."""
    bulkhead = rs.Bulkhead(3)
    holds = [threading.Event() for _ in range(3)]
    entered = threading.Barrier(4)

    def hold(i: int) -> None:
        entered.wait(30)
        holds[i].wait(30)

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        running = [pool.submit(bulkhead.call, hold, i) for i in range(3)]
        entered.wait(30)
        bulkhead.update(max_concurrent=1)
        assert (bulkhead.in_flight, bulkhead.available, bulkhead.queued) == (3, 0, 0)
        with pytest.raises(rs.BulkheadFullError, match="all 1 slots are taken"):
            bulkhead.call(lambda: None)
        holds[0].set()
        running[0].result(30)
        assert bulkhead.in_flight == 2
        with pytest.raises(rs.BulkheadFullError):
            bulkhead.call(lambda: None)
        holds[1].set()
        holds[2].set()
        for future in running:
            future.result(30)
    assert bulkhead.metrics() == rs.metrics.BulkheadMetrics(0, 1, 0, 2)  # two refused above
    assert bulkhead.call(lambda: "one at a time") == "one at a time"


def test_a_limit_raised_after_a_cut_forgives_only_what_it_adds() -> None:
    """3 calls run, the limit goes to 1 (two slots owed), then to 2: one debt is forgiven,
    the other still takes the next slot given back."""
    bulkhead = rs.Bulkhead(3)
    for _ in range(3):
        bulkhead.__enter__()
    bulkhead.update(max_concurrent=1)
    bulkhead.update(max_concurrent=2)
    assert bulkhead.metrics() == rs.metrics.BulkheadMetrics(3, 0, 0, 0)
    bulkhead.__exit__(None, None, None)  # its slot pays the debt left
    assert bulkhead.metrics() == rs.metrics.BulkheadMetrics(2, 0, 0, 0)
    with pytest.raises(rs.BulkheadFullError, match="all 2 slots are taken"):
        bulkhead.call(lambda: None)
    bulkhead.__exit__(None, None, None)
    assert bulkhead.metrics() == rs.metrics.BulkheadMetrics(1, 1, 0, 1)
    bulkhead.__exit__(None, None, None)
    assert bulkhead.metrics() == rs.metrics.BulkheadMetrics(0, 2, 0, 1)


async def test_a_slot_given_back_by_a_cancelled_waiter_pays_a_debt_first(async_mode: str) -> None:
    """A queued task is handed a slot, the limit drops (a slot is owed), and the task is
    cancelled before it runs: its slot pays the debt instead of going free."""
    bulkhead = rs.Bulkhead(2, max_queue=1)
    started: list[str] = []

    async def work() -> None:
        started.append("waiter")

    bulkhead.__enter__()
    bulkhead.__enter__()
    waiter = create_task(bulkhead.acall(work))
    await settle()
    assert bulkhead.queued == 1
    bulkhead.__exit__(None, None, None)  # the slot is handed to the waiter, not run yet
    bulkhead.update(max_concurrent=1)  # the waiter's slot and the one still held: one owed
    assert bulkhead.metrics() == rs.metrics.BulkheadMetrics(2, 0, 0, 0)
    waiter.cancel()
    with pytest.raises(task_cancelled(async_mode)):
        await waiter
    assert started == []
    assert bulkhead.metrics() == rs.metrics.BulkheadMetrics(1, 0, 0, 0)  # the debt is paid
    bulkhead.__exit__(None, None, None)
    assert bulkhead.metrics() == rs.metrics.BulkheadMetrics(0, 1, 0, 0)
    bulkhead.update(max_concurrent=2)  # nothing is owed any more: both slots are free
    assert bulkhead.metrics() == rs.metrics.BulkheadMetrics(0, 2, 0, 0)


def test_update_checks_its_arguments_and_keeps_the_others() -> None:
    """Bad values name the parameter; what is not given stays."""
    bulkhead = rs.Bulkhead(4, max_queue=2, max_wait=1.5)
    with pytest.raises(ValueError, match=r"^max_concurrent must be >= 1"):
        bulkhead.update(max_concurrent=0)
    with pytest.raises(TypeError, match=r"^max_queue must be an int"):
        bulkhead.update(max_queue=1.5)  # type: ignore[arg-type]
    bulkhead.update(max_queue=7)
    assert bulkhead.settings() == {"max_concurrent": 4, "max_queue": 7, "max_wait": 1.5}
    bulkhead.update(max_wait=None)
    assert bulkhead.max_wait is None
    bulkhead.update(max_concurrent=1, max_queue=0, max_wait=timedelta(0))  # the least allowed
    assert bulkhead.settings() == {"max_concurrent": 1, "max_queue": 0, "max_wait": 0.0}
    bulkhead.update(max_wait=timedelta(milliseconds=1500))
    assert isinstance(bulkhead.max_wait, float)
    assert bulkhead.max_wait == 1.5


def test_an_isolated_bulkhead_resizes_its_pool() -> None:
    """With thread isolation the pool follows the limit."""
    bulkhead = rs.Bulkhead(2, isolation="thread")
    assert bulkhead.call(lambda: 1) == 1
    bulkhead.update(max_concurrent=5)
    assert bulkhead._pool is not None
    assert bulkhead._pool.max_workers == 5
    assert bulkhead.drain(10)


def test_updates_under_threads_never_run_over_the_limit() -> None:
    """Threads hammer a bulkhead whose limit keeps changing: never more in flight than the
    largest limit in force since the call started, and every slot comes back."""
    bulkhead = rs.Bulkhead(4)
    lock = threading.Lock()
    running = 0
    over: list[int] = []
    stop = threading.Event()

    def work() -> None:
        nonlocal running
        with lock:
            running += 1
            if running > 4:
                over.append(running)
        with lock:
            running -= 1

    def hammer() -> None:
        while not stop.is_set():
            with contextlib.suppress(rs.BulkheadFullError):
                bulkhead.call(work)

    threads = [threading.Thread(target=hammer) for _ in range(6)]
    for thread in threads:
        thread.start()
    try:
        for i in range(300):
            bulkhead.update(max_concurrent=(1, 4, 2, 3)[i % 4])
        bulkhead.update(max_concurrent=4)
    finally:
        stop.set()  # even when update() raises: the hammers must not outlive the test
        for thread in threads:
            thread.join(30)
    assert not any(thread.is_alive() for thread in threads), "a hammer thread never stopped"
    assert over == []
    assert bulkhead.metrics() == rs.metrics.BulkheadMetrics(0, 4, 0, bulkhead.rejected)
