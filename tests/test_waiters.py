"""Tests of the FIFO waiter queue shared by Throttle and Bulkhead, through a toy gate."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

import pytest

import resilience as rs
from modes import create_task, settle, task_cancelled
from resilience._aio import running_loop
from resilience._waiters import (
    GRANTED,
    LEFT,
    ROUND,
    WAITING,
    Waiter,
    WaiterQueue,
    _wake,
    await_turn,
    wait_turn,
)
from resilience.testing import FakeClock


class Units:
    """A gate over a count of units: the simplest resource (a bulkhead's slots, say)."""

    def __init__(self, units: int, clock: FakeClock, ready: float | None = None) -> None:
        self.units = units
        self.clock = clock
        self.ready = ready  # a fixed ready_at, to exercise a timed head
        self.mutex = threading.Lock()
        self.queue = WaiterQueue(self)

    def lock(self) -> None:
        self.mutex.acquire()

    def unlock(self) -> None:
        self.mutex.release()

    def take(self, cost: float, now: float, since: float | None = None) -> bool:
        if self.units >= cost:
            self.units -= int(cost)
            return True
        return False

    def ready_at(self, cost: float, now: float) -> float | None:
        return self.ready

    def give_back(self, cost: float, now: float) -> None:
        self.units += int(cost)

    def release(self, units: int = 1) -> None:
        """Give units back and serve the queue, as a finishing call does."""
        with self.mutex:
            self.units += units
            self.queue.serve(self.clock.monotonic())


def join(gate: Units, cost: float = 1, loop: asyncio.AbstractEventLoop | None = None) -> Waiter:
    with gate.mutex:
        return gate.queue.join(cost, loop, gate.clock.monotonic())


def test_waiters_are_granted_in_arrival_order_even_when_a_later_one_would_fit() -> None:
    """A big request at the head is not overtaken by a small one behind it."""
    gate = Units(0, FakeClock())
    big, small = join(gate, 3), join(gate, 1)
    gate.release(1)
    assert (big.state, small.state) == (WAITING, WAITING)
    assert (gate.queue.count, gate.queue.pending) == (2, 4)
    gate.release(2)
    assert (big.state, small.state) == (GRANTED, WAITING)
    gate.release(1)
    assert small.state == GRANTED
    assert (gate.queue.count, gate.queue.pending, gate.units) == (0, 0, 0)


def test_a_head_that_leaves_lets_the_next_one_through() -> None:
    """Leaving takes nothing, and the waiter behind is served at once if it can be."""
    gate = Units(1, FakeClock())
    head, second = join(gate, 2), join(gate, 1)
    with gate.mutex:
        gate.queue.serve(0.0)
        assert second.state == WAITING  # FIFO: it waits behind the head
        gate.queue.leave(head, 0.0)
    assert (head.state, second.state, gate.units) == (LEFT, GRANTED, 0)
    with gate.mutex:
        gate.queue.leave(head, 0.0)  # leaving twice changes nothing
    assert (gate.queue.count, gate.units) == (0, 0)


def test_a_granted_waiter_that_leaves_gives_its_grant_back() -> None:
    """A grant that came too late is returned, and passed on to the next waiter."""
    gate = Units(0, FakeClock())
    first, second = join(gate), join(gate)
    gate.release(1)
    assert first.state == GRANTED
    with gate.mutex:
        gate.queue.leave(first, 0.0)
    assert (first.state, second.state, gate.units) == (LEFT, GRANTED, 0)
    with gate.mutex:
        gate.queue.leave(first, 0.0)  # a grant is given back once, however often it leaves
    assert (gate.queue.count, gate.units) == (0, 0)


def test_debts_are_served_first_and_the_counts_follow() -> None:
    """Debts go before every waiter and swallow their grants; count, debts, waiting and
    pending (the cost still waited for) follow each debt owed, forgiven and collected."""
    gate = Units(0, FakeClock())
    queue = gate.queue
    waiter = join(gate, 2)
    collected: list[str] = []
    with gate.mutex:
        queue.owe(3, lambda: collected.append("debt"))
    assert (queue.count, queue.debts, queue.waiting, queue.pending) == (4, 3, 1, 5.0)
    with gate.mutex:
        assert queue.forgive(1) == 1  # one of three: the others stay owed
    assert (queue.count, queue.debts, queue.waiting, queue.pending) == (3, 2, 1, 4.0)
    with gate.mutex:
        queue.collect_debt()  # a unit given back straight to the first debt
    assert collected == ["debt"]
    assert (queue.count, queue.debts, queue.waiting, queue.pending) == (2, 1, 1, 3.0)
    gate.release(1)  # served from the gate: the last debt swallows the unit
    assert (collected, gate.units, waiter.state) == (["debt", "debt"], 0, WAITING)
    assert (queue.count, queue.debts, queue.waiting, queue.pending) == (1, 0, 1, 2.0)
    with gate.mutex:
        assert queue.forgive(5) == 0  # no debt is left to forgive
    gate.release(2)
    assert waiter.state == GRANTED
    assert (queue.count, queue.debts, queue.waiting, queue.pending) == (0, 0, 0, 0.0)


def test_forgiving_more_debts_than_are_owed_cancels_them_all() -> None:
    """forgive(n) cancels at most the debts still owed and says how many; waiters stay."""
    gate = Units(0, FakeClock())
    queue = gate.queue
    with gate.mutex:
        queue.owe(2, lambda: None)
    waiter = join(gate)
    with gate.mutex:
        assert queue.forgive(5) == 2
    assert (queue.count, queue.debts, queue.waiting, queue.pending) == (1, 0, 1, 1.0)
    gate.release(1)  # the waiter is first now
    assert (waiter.state, gate.units) == (GRANTED, 0)


def test_a_waiter_that_leaves_takes_its_cost_out_of_what_is_pending() -> None:
    """The queue's pending cost drops by the cost of a waiter that gives up."""
    gate = Units(0, FakeClock())
    head, second = join(gate, 3), join(gate, 1)
    with gate.mutex:
        gate.queue.leave(head, 0.0)
    assert (gate.queue.count, gate.queue.pending, second.state) == (1, 1.0, WAITING)


def test_an_emptied_queue_waits_for_nothing_not_float_dust() -> None:
    """Once every waiter is served the pending cost is exactly zero, whatever the sums left."""
    gate = Units(1, FakeClock())
    join(gate, 0.1), join(gate, 0.2)
    assert gate.queue.pending != 0.3  # 0.1 + 0.2 in floats: subtracting them leaves dust
    gate.release(0)
    assert (gate.queue.count, gate.queue.pending) == (0, 0.0)


def test_a_new_head_is_woken_to_set_its_timer() -> None:
    """When the head changes, the new head's signal fires even though it is not granted."""
    gate = Units(0, FakeClock(), ready=5.0)
    head, second = join(gate), join(gate)
    second.signal = concurrent.futures.Future()
    with gate.mutex:
        gate.queue.leave(head, 0.0)
    assert second.state == WAITING
    assert second.signal.done()


def test_a_new_head_without_a_timer_is_left_alone() -> None:
    """A gate with no ready time (a bulkhead) does not wake waiters for nothing."""
    gate = Units(0, FakeClock())
    head, second = join(gate), join(gate)
    second.signal = concurrent.futures.Future()
    with gate.mutex:
        gate.queue.leave(head, 0.0)
    assert not second.signal.done()


async def test_a_task_on_a_closed_loop_is_dropped_not_granted() -> None:
    """A waiter whose event loop has closed can never run: it gets nothing."""
    dead_loop = asyncio.new_event_loop()
    dead_loop.close()
    gate = Units(0, FakeClock())
    dead = join(gate, 1, dead_loop)
    dead.signal = asyncio.get_running_loop().create_future()  # never resolved
    alive = join(gate)
    gate.release(1)
    assert (dead.state, alive.state, gate.queue.count) == (LEFT, GRANTED, 0)


def test_waking_a_thread_sets_its_signal() -> None:
    """Waking a thread resolves the signal it blocks on this round; a wake is not a grant."""
    gate = Units(0, FakeClock())
    waiter = join(gate)
    signal: concurrent.futures.Future[None] = concurrent.futures.Future()
    waiter.signal = signal
    _wake(waiter)
    assert signal.done()
    assert signal.result() is None
    assert waiter.state == WAITING


def test_waking_a_thread_twice_is_harmless() -> None:
    """A thread nudged, then granted before its next round: no InvalidStateError, still done."""
    gate = Units(0, FakeClock(), ready=5.0)
    head, second = join(gate), join(gate)
    signal: concurrent.futures.Future[None] = concurrent.futures.Future()
    second.signal = signal
    with gate.mutex:
        gate.queue.leave(head, 0.0)  # the new head is nudged: its signal is set
    assert (second.state, signal.done()) == (WAITING, True)
    gate.release(1)  # granted before it ran again: the same, already done, signal is woken again
    assert (second.state, gate.queue.count, gate.units) == (GRANTED, 0, 0)
    _wake(second)  # and once more, directly
    assert signal.done()
    assert signal.result() is None


def test_waking_a_task_whose_loop_closed_is_harmless() -> None:
    """A grant racing with the close of the waiter's loop does not raise."""
    loop = asyncio.new_event_loop()
    gate = Units(0, FakeClock())
    waiter = join(gate, 1, loop)
    waiter.signal = loop.create_future()
    loop.close()
    _wake(waiter)  # call_soon_threadsafe on a closed loop: nothing to wake, no error
    assert not waiter.signal.done()


def test_threads_wait_their_turn_and_give_up_on_time() -> None:
    """Blocked threads are granted in order; one whose time runs out leaves empty-handed."""
    clock = FakeClock(auto_advance=False)
    gate = Units(0, clock)
    results: dict[str, bool] = {}
    waiters = {name: join(gate) for name in ("a", "b", "c")}

    def run(name: str, give_up: float) -> None:
        results[name] = wait_turn(gate.queue, gate, waiters[name], give_up)

    threads = [
        threading.Thread(target=run, args=("a", 100.0)),
        threading.Thread(target=run, args=("b", 5.0)),
        threading.Thread(target=run, args=("c", float("inf"))),
    ]
    for thread in threads:
        thread.start()
    gate.release(1)
    threads[0].join(10)
    assert results == {"a": True}
    clock.advance(5)  # b gives up
    threads[1].join(10)
    assert results["b"] is False
    assert waiters["b"].state == LEFT
    clock.advance(ROUND * 2)  # c waits endlessly, in day-long rounds
    assert waiters["c"].state == WAITING
    gate.release(1)
    threads[2].join(10)
    assert results["c"] is True
    assert gate.queue.count == 0


class RoundsClock(FakeClock):
    """A manual FakeClock that records until when each blocked thread waits."""

    def __init__(self) -> None:
        super().__init__(auto_advance=False)
        self.deadlines: list[float] = []
        self.blocked = threading.Semaphore(0)

    def wait_future(self, future: concurrent.futures.Future[Any], deadline: float) -> None:
        self.deadlines.append(deadline)
        self.blocked.release()
        super().wait_future(future, deadline)


def test_an_endless_wait_blocks_in_day_long_rounds() -> None:
    """A thread that may wait for ever blocks until a day from now, again and again, rather
    than on a deadline that could overflow or one already past (which would spin)."""
    clock = RoundsClock()
    gate = Units(0, clock)
    waiter = join(gate)
    results: list[bool] = []
    thread = threading.Thread(
        target=lambda: results.append(wait_turn(gate.queue, gate, waiter, float("inf")))
    )
    thread.start()
    assert clock.blocked.acquire(timeout=10)
    clock.advance(86_400)  # a day: the round ends and the next one starts
    assert clock.blocked.acquire(timeout=10)
    assert clock.deadlines == [86_400.0, 172_800.0]
    gate.release(1)
    thread.join(10)
    assert results == [True]


def test_a_waiter_the_gate_refuses_stops_waiting_empty_handed() -> None:
    """A waiter whose cost the gate can no longer hold is woken and its wait returns False;
    the queue moves on without it."""
    clock = RoundsClock()
    gate = Units(0, clock)
    big, small = join(gate, 3), join(gate, 1)
    results: list[bool] = []
    thread = threading.Thread(
        target=lambda: results.append(wait_turn(gate.queue, gate, big, float("inf")))
    )
    thread.start()
    assert clock.blocked.acquire(timeout=10)
    with gate.mutex:
        gate.queue.refuse_over(2)
        gate.queue.serve(0.0)
    thread.join(10)
    assert results == [False]
    assert (big.state, gate.queue.count, gate.queue.pending) == (LEFT, 1, 1.0)
    gate.release(1)
    assert (small.state, gate.units) == (GRANTED, 0)


class PlainClock:
    """A clock of the user's own (no FakeClock, no auto_advance): fake time that moves only
    when slept on, and a record of the sleeps and the blocking waits."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.deadlines: list[float] = []
        self.blocked = threading.Event()

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        self.blocked.set()

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)

    def wait_future(self, future: concurrent.futures.Future[Any], deadline: float) -> None:
        self.deadlines.append(deadline)
        self.blocked.set()
        concurrent.futures.wait([future], timeout=10)


def test_a_timed_head_on_a_plain_clock_is_cut_short_by_a_grant() -> None:
    """On a clock that does not auto-advance, the timed head blocks until its time on its
    signal (not in a sleep), so a grant from another thread lets it in at once."""
    clock = PlainClock()
    gate = Units(0, clock, ready=5.0)  # type: ignore[arg-type]
    waiter = join(gate)
    results: list[bool] = []
    thread = threading.Thread(
        target=lambda: results.append(wait_turn(gate.queue, gate, waiter, 10.0))
    )
    thread.start()
    assert clock.blocked.wait(10)
    gate.release(1)
    thread.join(10)
    assert results == [True]
    assert (clock.sleeps, clock.deadlines, clock.now) == ([], [5.0], 0.0)


def test_a_timed_head_sleeps_until_its_time() -> None:
    """With a ready_at, the head sleeps on the clock (auto-advancing here) then is served."""
    clock = FakeClock()
    gate = Units(0, clock, ready=3.0)
    waiter = join(gate)
    original_sleep = clock.sleep

    def sleep(seconds: float) -> None:
        original_sleep(seconds)
        gate.units = 1  # the resource is there when the head wakes

    clock.sleep = sleep  # type: ignore[method-assign]
    assert wait_turn(gate.queue, gate, waiter, 10.0)
    assert clock.sleeps == [3.0]


def test_an_interrupted_thread_leaves_the_queue() -> None:
    """KeyboardInterrupt while waiting passes through, and the waiter takes nothing."""
    clock = FakeClock()
    gate = Units(0, clock, ready=1.0)
    waiter, behind = join(gate), join(gate)

    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    clock.sleep = interrupted  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        wait_turn(gate.queue, gate, waiter, 10.0)
    assert waiter.state == LEFT
    gate.release(1)
    assert behind.state == GRANTED


async def test_tasks_wait_their_turn_give_up_and_are_cancelled(async_mode: str) -> None:
    """Awaiting tasks are granted in order; cancelled or timed-out ones take nothing."""
    clock = FakeClock(auto_advance=False)
    gate = Units(0, clock)
    loop = running_loop()
    waiters = [join(gate, 1, loop) for _ in range(4)]
    tasks = [
        create_task(await_turn(gate.queue, gate, waiters[0], float("inf"))),
        create_task(await_turn(gate.queue, gate, waiters[1], 2.0)),
        create_task(await_turn(gate.queue, gate, waiters[2], float("inf"))),
        create_task(await_turn(gate.queue, gate, waiters[3], float("inf"))),
    ]
    await settle()
    tasks[2].cancel()
    clock.advance(2)
    for _ in range(3):
        await settle()
    assert tasks[1].done()
    assert tasks[1].result() is False
    with pytest.raises(task_cancelled(async_mode)):
        await tasks[2]
    gate.release(2)
    assert await tasks[0] is True
    assert await tasks[3] is True
    assert [w.state for w in waiters] == [GRANTED, LEFT, LEFT, GRANTED]
    assert (gate.queue.count, gate.units) == (0, 0)


async def test_a_timed_task_head_sleeps_until_its_time(async_mode: str) -> None:
    """An async head with a ready_at sleeps on the clock, then is served."""
    clock = FakeClock()
    gate = Units(0, clock, ready=2.0)
    waiter = join(gate, 1, running_loop())
    original = clock.asleep

    async def asleep(seconds: float) -> None:
        await original(seconds)
        gate.units = 1

    clock.asleep = asleep  # type: ignore[method-assign]
    assert await await_turn(gate.queue, gate, waiter, 10.0)
    assert clock.sleeps == [2.0]


class TimerClock(FakeClock):
    """A manual FakeClock that keeps the timers set on it."""

    def __init__(self) -> None:
        super().__init__(auto_advance=False)
        self.timers: list[Any] = []

    def call_at(self, when: float, callback: Any, loop: Any) -> Any:
        timer = super().call_at(when, callback, loop)
        self.timers.append(timer)
        return timer


async def test_a_task_granted_before_it_gives_up_cancels_its_timer() -> None:
    """A waiting task sets a timer for when it gives up; granted earlier, it cancels it."""
    clock = TimerClock()
    gate = Units(0, clock)
    waiter = join(gate, 1, running_loop())
    task = asyncio.create_task(await_turn(gate.queue, gate, waiter, 50.0))
    await settle(5)
    assert [(timer.when, timer.cancelled) for timer in clock.timers] == [(50.0, False)]
    gate.release(1)
    assert await task is True
    assert [timer.cancelled for timer in clock.timers] == [True]


async def test_a_timed_task_head_granted_early_stops_sleeping() -> None:
    """The head task sleeps until its time on the clock; a grant before then ends the sleep
    (its timer is cancelled, no sleeping task is left behind)."""
    clock = TimerClock()
    gate = Units(0, clock, ready=5.0)
    waiter = join(gate, 1, running_loop())
    task = asyncio.create_task(await_turn(gate.queue, gate, waiter, 50.0))
    await settle(5)
    assert [(timer.when, timer.cancelled) for timer in clock.timers] == [(5.0, False)]
    gate.release(1)
    assert await task is True
    await settle(5)
    assert [timer.cancelled for timer in clock.timers] == [True]
    assert asyncio.all_tasks() == {asyncio.current_task()}


@pytest.mark.parametrize("kind", ["bulkhead", "adaptive limiter", "throttle"])
async def test_a_sync_wait_on_an_event_loop_thread_is_refused(kind: str) -> None:
    """`with bulkhead:` or a sync call inside a coroutine, while a task of the same loop holds
    the slot, used to hang the loop for good; now it raises at once and leaves the queue."""
    policy: Any
    if kind == "bulkhead":
        policy = rs.Bulkhead(1, max_queue=1)
    elif kind == "adaptive limiter":
        policy = rs.AdaptiveLimiter(initial_limit=1, min_limit=1, max_limit=1, max_queue=1)
    else:
        policy = rs.Throttle(1, burst=1, max_wait=None, clock=FakeClock(auto_advance=False))
    holding, done = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async def hold() -> None:
            holding.set()
            await done.wait()

        await policy.acall(hold)

    task = asyncio.create_task(holder())
    await holding.wait()
    ahead = None
    if kind == "throttle":  # the first in line sleeps on a timer: queue behind a task instead
        ahead = asyncio.create_task(policy.aacquire())
        await asyncio.sleep(0)
        assert policy.queued == 1
    with pytest.raises(RuntimeError, match=r"runs an event loop.*acall"):
        policy.call(lambda: None)
    if kind == "bulkhead":
        with pytest.raises(RuntimeError, match=r"async with"), policy:
            pass
    assert policy.queued == (1 if ahead else 0)  # the refused caller left the queue
    done.set()
    await task
    if ahead is not None:
        ahead.cancel()
        with pytest.raises(asyncio.CancelledError):
            await ahead
