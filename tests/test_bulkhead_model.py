"""`resilience.Bulkhead` against a plain model of its slots.

The model is the specification and nothing else: a limit, the calls running
in the order they were let in, a FIFO queue of waiting calls, refusals. A
call runs at once when nobody waits and fewer than the limit run; it waits
when the queue has room; else it is refused. A call that ends, or that is
cancelled running or waiting, lets the next waiters in while fewer than the
limit run. A lower limit takes nothing back from running calls: no new call
starts until they are under it (the library's *debts*). A hypothesis test
drives a bulkhead and the model with the same steps (calls that hold their
slot until the test ends them: asyncio tasks in ``async with`` or `acall`,
threads in ``with`` or `call`, the test's own thread in ``with``; ends,
cancellations, new limits and queue lengths) and compares, after every step,
the metrics and which calls run, wait, were refused or cancelled. Limits
above 64 come often: the first 64 slots are tokens made up front, the others
come from the reserve.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import resilience as rs
from resilience.metrics import BulkheadMetrics

MODEL_SETTINGS = settings(
    max_examples=80,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
"""Randomised: each run draws new examples from the run's seed (tests/conftest.py prints it;
RESILIENCE_HYPOTHESIS_SEED replays it)."""

HANG = 10.0
"""Only a safety net so that a broken bulkhead fails the test instead of hanging it."""

SETTLE = 2.0
"""Real seconds a step may take to reach the state the model expects (threads need a moment)."""

Kind = Literal["async with", "acall", "thread with", "thread call", "holder"]
State = Literal["waiting", "running", "refused", "cancelled", "done"]
TASKS: tuple[Kind, ...] = ("async with", "acall")
THREADS: tuple[Kind, ...] = ("thread with", "thread call")


# -- the reference model --------------------------------------------------------------------


@dataclass
class Model:
    """The limit, the calls running, the queue, the refusals."""

    limit: int
    max_queue: int
    running: list[int] = field(default_factory=list)
    queue: list[int] = field(default_factory=list)
    states: dict[int, State] = field(default_factory=dict)
    rejected: int = 0
    admitted: list[int] = field(default_factory=list)
    """Calls in the order they were let in (and ran)."""
    fresh: set[int] = field(default_factory=set)
    """Calls let in during this step that have not run yet."""

    def start(self, call: int) -> None:
        if not self.queue and len(self.running) < self.limit:
            self.run(call)
        elif len(self.queue) < self.max_queue:
            self.queue.append(call)
            self.states[call] = "waiting"
        else:
            self.states[call] = "refused"
            self.rejected += 1

    def run(self, call: int) -> None:
        self.running.append(call)
        self.admitted.append(call)
        self.fresh.add(call)
        self.states[call] = "running"

    def let_in(self) -> None:
        """Waiters take the free slots, first come first served."""
        while self.queue and len(self.running) < self.limit:
            self.run(self.queue.pop(0))

    def end(self, call: int) -> None:
        self.running.remove(call)
        self.states[call] = "done"
        self.let_in()

    def cancel(self, call: int) -> None:
        """A waiting call leaves the queue; a running one (or one let in, not run) frees a slot."""
        if call in self.queue:
            self.queue.remove(call)
        else:
            self.running.remove(call)
            if call in self.fresh:  # it never ran
                self.admitted.remove(call)
        self.states[call] = "cancelled"
        self.let_in()

    def update(self, limit: int | None, max_queue: int | None) -> None:
        if max_queue is not None:
            self.max_queue = max_queue  # the calls already waiting keep their places
        if limit is not None:
            self.limit = limit
            self.let_in()

    def metrics(self) -> BulkheadMetrics:
        return BulkheadMetrics(
            in_flight=len(self.running),
            available=max(0, self.limit - len(self.running)),
            queued=len(self.queue),
            rejected=self.rejected,
        )


# -- the calls --------------------------------------------------------------------------------


@dataclass
class Call:
    """One call through the bulkhead, held in its slot until the test ends it."""

    index: int
    kind: Kind
    gate: asyncio.Event | threading.Event
    task: asyncio.Task[None] | None = None
    thread: threading.Thread | None = None
    entered: bool = False
    outcome: State | None = None
    """For a thread or the holder: how it ended."""

    def state(self) -> State:
        if self.task is not None:
            if self.task.done():
                if self.task.cancelled():
                    return "cancelled"
                error = self.task.exception()
                if isinstance(error, rs.BulkheadFullError):
                    return "refused"
                if error is not None:
                    raise error
                return "done"
        elif self.outcome is not None:
            return self.outcome
        return "running" if self.entered else "waiting"


class Calls:
    """The calls of one example, and what they saw from inside their slots."""

    def __init__(self, bulkhead: rs.Bulkhead) -> None:
        self.bulkhead = bulkhead
        self.calls: dict[int, Call] = {}
        self.lock = threading.Lock()
        self.inside = 0
        self.entered: list[int] = []
        self.overruns: list[str] = []

    def enter(self, call: Call) -> None:
        with self.lock:
            self.inside += 1
            if self.inside > self.bulkhead.max_concurrent:
                self.overruns.append(
                    f"call {call.index} made {self.inside} running, limit "
                    f"{self.bulkhead.max_concurrent}"
                )
            self.entered.append(call.index)
            call.entered = True

    def exit(self) -> None:
        with self.lock:
            self.inside -= 1

    async def hold(self, call: Call) -> None:
        """The body of an async call: it runs until the test sets its gate."""
        assert isinstance(call.gate, asyncio.Event)
        self.enter(call)
        try:
            await call.gate.wait()
        finally:
            self.exit()

    def hold_thread(self, call: Call) -> None:
        """The body of a call in a thread."""
        assert isinstance(call.gate, threading.Event)
        self.enter(call)
        try:
            assert call.gate.wait(HANG)
        finally:
            self.exit()

    async def in_async_with(self, call: Call) -> None:
        async with self.bulkhead:
            await self.hold(call)

    def in_thread(self, call: Call) -> None:
        try:
            if call.kind == "thread with":
                with self.bulkhead:
                    self.hold_thread(call)
            else:
                self.bulkhead.call(self.hold_thread, call)
        except rs.BulkheadFullError:
            call.outcome = "refused"
        else:
            call.outcome = "done"

    def start(self, index: int, kind: Kind) -> None:
        if kind in TASKS:
            call = Call(index, kind, asyncio.Event())
            body = (
                self.in_async_with(call)
                if kind == "async with"
                else self.bulkhead.acall(self.hold, call)
            )
            call.task = asyncio.create_task(body)
        elif kind in THREADS:
            call = Call(index, kind, threading.Event())
            call.thread = threading.Thread(target=self.in_thread, args=(call,), daemon=True)
            call.thread.start()
        else:  # the test's own thread holds a slot (only when it is free at once)
            call = Call(index, kind, threading.Event())
            self.bulkhead.__enter__()
            self.enter(call)
        self.calls[index] = call

    def end(self, index: int) -> None:
        call = self.calls[index]
        if call.kind == "holder":
            self.exit()
            call.outcome = "done"
            self.bulkhead.__exit__(None, None, None)  # gives the slot to the next one, at once
        else:
            call.gate.set()

    def states(self) -> dict[int, State]:
        return {index: call.state() for index, call in self.calls.items()}

    def task_order(self) -> list[int]:
        """The async tasks in the order they entered their slots."""
        return [index for index in self.entered if self.calls[index].kind in TASKS]


def task_admissions(model: Model, calls: Calls) -> list[int]:
    return [index for index in model.admitted if calls.calls[index].kind in TASKS]


def metrics(bulkhead: rs.Bulkhead, shared: bool) -> BulkheadMetrics:
    """The bulkhead's metrics, read from its backend when ``shared`` (which they must say)."""
    read = bulkhead.metrics()
    assert read.shared is shared, f"metrics with shared={read.shared}, expected {shared}"
    return replace(read, shared=False)


async def settle(calls: Calls, model: Model, shared: bool = False) -> None:
    """Let tasks and threads run until the bulkhead shows what the model expects, or a while."""
    expected = (model.metrics(), model.states)
    limit = time.monotonic() + SETTLE
    while True:
        for _ in range(8):
            await asyncio.sleep(0)
        seen = (metrics(calls.bulkhead, shared), calls.states())
        if seen == expected or time.monotonic() > limit:
            return
        await asyncio.sleep(0.001)  # threads run


def compare(calls: Calls, model: Model, shared: bool = False) -> None:
    assert calls.overruns == []
    assert metrics(calls.bulkhead, shared) == model.metrics()
    assert calls.states() == model.states
    assert calls.task_order() == task_admissions(model, calls)
    assert calls.bulkhead.max_concurrent == model.limit
    model.fresh.clear()


# -- strategies --------------------------------------------------------------------------------

limits = st.integers(1, 8) | st.integers(60, 72) | st.integers(100, 140)
"""Small limits, and limits around and well beyond the 64 slots made up front."""
queues = st.integers(1, 6)


def new_limit(data: st.DataObject, model: Model) -> int:
    """Any limit, one near the calls running now, or, while slots are owed, one between the
    limit and the calls running (the debts are forgiven in part)."""
    running = len(model.running)
    ways = ["any", "near"] + (["owed", "owed"] if running > model.limit + 1 else [])
    way = data.draw(st.sampled_from(ways), label="new limit")
    if way == "near":
        return max(1, running + data.draw(st.integers(-3, 3), label="from running"))
    if way == "owed":
        return data.draw(st.integers(model.limit + 1, running - 1), label="max_concurrent")
    return data.draw(limits, label="max_concurrent")


# -- the test ----------------------------------------------------------------------------------


def in_process(limit: int, max_queue: int) -> rs.Bulkhead:
    return rs.Bulkhead(limit, max_queue=max_queue, max_wait=None)


async def run_bulkhead(
    data: st.DataObject,
    make: Callable[[int, int], rs.Bulkhead] = in_process,
    shared: bool = False,
) -> None:
    """Random steps on the bulkhead ``make`` builds, checked against the model after each
    (``shared``: its metrics come from a backend; tests/test_redis_models.py)."""
    limit = data.draw(limits, label="max_concurrent")
    max_queue = data.draw(queues, label="max_queue")
    bulkhead = make(limit, max_queue)
    model = Model(limit, max_queue)
    calls = Calls(bulkhead)
    threads = 0
    counter = iter(range(10**6))
    try:
        for _ in range(data.draw(st.integers(3, 40), label="steps")):
            running = list(model.running)
            waiting = list(model.queue)
            tasks = [i for i in running + waiting if calls.calls[i].kind in TASKS]
            holders = [i for i in running if calls.calls[i].kind == "holder"]
            kinds = ["start", "start", "many", "update", "update"]
            if running:
                kinds += ["end", "end"]
            if tasks:
                kinds += ["cancel", "cancel"]
            if not waiting and len(running) < model.limit:
                kinds.append("hold")
            if len(running) > model.limit:  # slots owed: a new limit forgives some, or owes more
                kinds += ["update", "update"]
            if holders and waiting:
                kinds += ["release and cancel", "release and cancel"]
            kind = data.draw(st.sampled_from(kinds), label="step")
            if kind == "release and cancel":
                # The test's thread gives its slot back: the head of the queue is let in at
                # once but cannot run before this step ends. It is cancelled: its slot must
                # go to the next one.
                index = data.draw(st.sampled_from(holders), label="release")
                calls.end(index)
                model.end(index)
                let_in = sorted(model.fresh)
                if (
                    let_in
                    and all(calls.calls[i].kind in TASKS for i in let_in)
                    and data.draw(st.booleans(), label="cut the limit first")
                ):
                    # Only tasks were let in (a thread could run before the cut): a limit
                    # below the calls running makes the cancelled ones' slots pay its debts
                    # before any waiter gets them.
                    new = data.draw(st.integers(1, len(model.running)), label="max_concurrent")
                    bulkhead.update(max_concurrent=new)
                    model.update(new, None)
                for cancelled in sorted(i for i in model.fresh if calls.calls[i].task):
                    task = calls.calls[cancelled].task
                    assert task is not None
                    task.cancel()
                    model.cancel(cancelled)
            elif kind == "hold":  # the test's own thread takes a slot (free at once)
                index = next(counter)
                calls.start(index, "holder")
                model.start(index)
            elif kind in ("start", "many"):
                count = 1
                if kind == "many":  # a few, or enough to reach past the first 64 slots
                    count = data.draw(st.integers(2, 10) | st.integers(50, 150), label="how many")
                for _ in range(count):
                    how: Kind = data.draw(
                        st.sampled_from([*TASKS, *THREADS, "holder"] if count == 1 else TASKS),
                        label="how",
                    )
                    if kind == "start":
                        if how in THREADS and threads >= 4:
                            how = "async with"
                        if how == "holder" and (model.queue or len(model.running) >= model.limit):
                            how = "acall"  # the test's thread must never block in the queue
                        threads += how in THREADS
                    index = next(counter)
                    calls.start(index, how)
                    model.start(index)
            elif kind == "end":
                index = data.draw(st.sampled_from(running), label="end")
                calls.end(index)
                model.end(index)
                if calls.calls[index].kind == "holder":
                    # Released synchronously: the next call was let in but has not run yet.
                    # Cancel it (or others) now, and the slot must go on to the next one.
                    chosen = [i for i in model.running + model.queue if calls.calls[i].task]
                    if chosen:
                        for cancelled in data.draw(
                            st.lists(st.sampled_from(chosen), unique=True, max_size=2),
                            label="cancel before it runs",
                        ):
                            task = calls.calls[cancelled].task
                            assert task is not None
                            task.cancel()
                            model.cancel(cancelled)
            elif kind == "cancel":
                index = data.draw(st.sampled_from(tasks), label="cancel")
                task = calls.calls[index].task
                assert task is not None
                task.cancel()
                model.cancel(index)
            else:
                new = new_limit(data, model) if data.draw(st.booleans(), label="limit") else None
                length = data.draw(st.none() | st.integers(0, 6), label="max_queue")
                settings_: dict[str, int] = {}
                if new is not None:
                    settings_["max_concurrent"] = new
                if length is not None:
                    settings_["max_queue"] = length
                bulkhead.update(**settings_)
                model.update(new, length)
            await settle(calls, model, shared)
            compare(calls, model, shared)

        # The end: every call ends (the waiters run, then end); every slot is back.
        while model.running:
            for index in list(model.running):
                calls.end(index)
                model.end(index)
            await settle(calls, model, shared)
            compare(calls, model, shared)
        assert model.queue == []
        assert metrics(bulkhead, shared) == BulkheadMetrics(
            in_flight=0, available=model.limit, queued=0, rejected=model.rejected
        )
        assert bulkhead.available == model.limit
    finally:  # also when failing: no task or thread is left behind
        for call in calls.calls.values():
            call.gate.set()
            if call.task is not None:
                call.task.cancel()
        await asyncio.gather(
            *(call.task for call in calls.calls.values() if call.task is not None),
            return_exceptions=True,
        )
        for call in calls.calls.values():
            if call.kind == "holder" and call.outcome is None:
                bulkhead.__exit__(None, None, None)
                call.outcome = "done"
        for call in calls.calls.values():
            if call.thread is not None:
                call.thread.join(HANG)


@MODEL_SETTINGS
@given(data=st.data())
def test_bulkhead_follows_the_model(data: st.DataObject) -> None:
    """Calls started, ended and cancelled, and new limits, run and wait as the model says."""
    asyncio.run(run_bulkhead(data))
