"""A FIFO queue of threads and tasks waiting for a policy to let them in.

`Throttle` (waiting for tokens) and `Bulkhead` (waiting for a slot) share it,
so neither carries its own thread and task waiting logic. The policy owns
the resource and the lock; it implements the small `Gate` protocol, with no
I/O, and this module does the waiting:

* ``take(cost, now, since)`` takes ``cost`` of the resource if it is there,
  for a waiter that joined the queue at clock time ``since``;
* ``ready_at(cost, now)`` says when the head of the queue could take its
  cost, or None when only a release can tell (a bulkhead);
* ``give_back(cost, now)`` returns a grant that its waiter never used;
* ``lock()`` and ``unlock()`` bracket every use of the queue.

The resource is taken only when it is *granted*, in queue order, by
whichever thread or task finds it available: the head waiter when its
timer fires, a call that releases a slot, a waiter that leaves. A waiter
that leaves (it gives up, is cancelled or interrupted) takes nothing: when
a grant reached it too late, it gives it back. Only the head ever sleeps on a
timer (when the gate can tell its time); the others wait for a signal. When
the head changes, a new head with a time to wait for is woken to set its
own timer.

Each waiter has a signal of its own, renewed at each round of its wait:
a thread blocks on a `concurrent.futures.Future` (through the clock's
``wait_future`` hook, so a `FakeClock` drives it), a task awaits an
`asyncio.Future` of its loop, set with ``loop.call_soon_threadsafe`` from
whichever thread grants it. A trio task does the same through its run's
`resilience._aio.TrioLoop`, with a `trio.Event` for a future. One queue
therefore serves threads and tasks of any number of event loops and trio
runs at once, in one order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import math
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from ._aio import Loop, TrioLoop, in_event_loop, wait_signal
from ._clock import Clock, call_at, wait_future

__all__ = ["Gate", "Waiter", "WaiterQueue", "await_turn", "wait_turn"]

WAITING = 0
GRANTED = 1
LEFT = 2

# An endless wait is done in rounds this long, so no timeout overflows.
ROUND = 86_400.0


class Gate(Protocol):
    """What a policy gives its `WaiterQueue`; see the module docs."""

    clock: Clock

    def lock(self) -> None: ...

    def unlock(self) -> None: ...

    def take(self, cost: float, now: float, since: float | None = None) -> bool: ...

    def ready_at(self, cost: float, now: float) -> float | None: ...

    def give_back(self, cost: float, now: float) -> None: ...


class Waiter:
    """One thread or task in the queue, or a debt (see `WaiterQueue.owe`)."""

    __slots__ = ("collect", "cost", "loop", "signal", "since", "state")

    def __init__(
        self,
        cost: float,
        loop: Loop | None,
        since: float,
        collect: Callable[[], None] | None = None,
    ) -> None:
        self.cost = cost
        self.loop = loop  # None for a thread
        self.since = since  # clock time it joined the queue
        self.state = WAITING
        self.signal: Any = None  # this round's future, once the waiter waits
        self.collect = collect  # for a debt: called (lock held) when it takes its grant


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _wake(waiter: Waiter) -> None:
    """Wake a waiter from any thread (the gate's lock is held)."""
    signal = waiter.signal
    if signal is None:
        return  # it has not waited yet, and will look at its state first
    if waiter.loop is None:
        if not signal.done():
            signal.set_result(None)
        return
    with contextlib.suppress(RuntimeError):  # its loop closed: nobody is left to wake
        waiter.loop.call_soon_threadsafe(_resolve, signal)


class WaiterQueue:
    """Waiters in arrival order; every method runs with the gate's lock held."""

    __slots__ = ("_gate", "_waiters", "count", "debts", "pending")

    def __init__(self, gate: Gate) -> None:
        self._gate = gate
        self._waiters: deque[Waiter] = deque()
        self.count = 0
        """Waiters and debts still waiting (read without the lock by the policies' fast paths)."""
        self.debts = 0
        """Debts among them: grants owed to nobody (see `owe`)."""
        self.pending = 0.0
        """The total cost they wait for."""

    @property
    def waiting(self) -> int:
        """Callers waiting, debts left out."""
        return self.count - self.debts

    def owe(self, count: int, collect: Callable[[], None]) -> None:
        """Put ``count`` debts at the head of the queue.

        A debt is served like a waiter, before every waiter, and swallows its
        grant: ``collect()`` runs when it takes it. A gate whose capacity
        shrank below what is out uses them to take back what comes back.
        """
        for _ in range(count):
            self._waiters.appendleft(Waiter(1.0, None, 0.0, collect))
        self.count += count
        self.debts += count
        self.pending += count

    def collect_debt(self) -> None:
        """Settle the first debt with a grant that never enters the gate (a slot given back)."""
        waiter = self.head()
        assert waiter is not None  # debts come first
        assert waiter.collect is not None
        self._waiters.popleft()
        waiter.state = GRANTED
        self.count -= 1
        self.debts -= 1
        self.pending -= waiter.cost
        waiter.collect()

    def forgive(self, count: int) -> int:
        """Cancel up to ``count`` debts not yet collected; returns how many."""
        forgiven = 0
        for waiter in self._waiters:
            if forgiven == count:
                break
            if waiter.collect is not None and waiter.state == WAITING:
                self._leave(waiter)
                forgiven += 1
        return forgiven

    def join(self, cost: float, loop: Loop | None, now: float) -> Waiter:
        """Add a waiter at the back of the queue, at clock time ``now``."""
        waiter = Waiter(cost, loop, now)
        self._waiters.append(waiter)
        self.count += 1
        self.pending += cost
        return waiter

    def head(self) -> Waiter | None:
        """The first waiter still waiting, dropping those that left."""
        waiters = self._waiters
        while waiters:
            waiter = waiters[0]
            if waiter.state == WAITING:
                return waiter
            waiters.popleft()
        return None

    def serve(self, now: float) -> None:
        """Grant waiters from the head while the gate has enough; wake a new head."""
        gate = self._gate
        first = self._waiters[0] if self._waiters else None
        while (waiter := self.head()) is not None:
            loop = waiter.loop
            if loop is not None and loop.is_closed():
                self._leave(waiter)  # a task that can never run again gets nothing
                continue
            if not gate.take(waiter.cost, now, waiter.since):
                if waiter is not first and gate.ready_at(waiter.cost, now) is not None:
                    _wake(waiter)  # the new head: time to set its own timer
                return
            self._waiters.popleft()
            waiter.state = GRANTED
            self.count -= 1
            self.pending -= waiter.cost
            if waiter.collect is not None:
                self.debts -= 1
                waiter.collect()
                continue
            _wake(waiter)
        self.pending = 0.0  # the queue is empty: no float dust left over from the sums

    def leave(self, waiter: Waiter, now: float) -> None:
        """``waiter`` goes away: it takes nothing, and the queue moves on without it."""
        if waiter.state == GRANTED:
            waiter.state = LEFT
            self._gate.give_back(waiter.cost, now)
        elif waiter.state == WAITING:
            self._leave(waiter)
        self.serve(now)

    def refuse_over(self, limit: float) -> None:
        """Refuse the waiters whose cost is above ``limit`` (a gate that shrank).

        They could never be granted: each is woken to leave with nothing. The caller
        serves the queue next, which moves on without them.
        """
        for waiter in list(self._waiters):
            if waiter.state == WAITING and waiter.collect is None and waiter.cost > limit:
                self._leave(waiter)
                _wake(waiter)

    def _leave(self, waiter: Waiter) -> None:
        waiter.state = LEFT
        self.count -= 1
        self.pending -= waiter.cost
        if waiter.collect is not None:
            self.debts -= 1


def _next_round(
    queue: WaiterQueue, gate: Gate, waiter: Waiter, give_up: float, new_signal: Callable[[], Any]
) -> tuple[bool | None, float, float | None, Any]:
    """One decision, under the gate's lock: granted, gave up, or wait until when.

    Returns ``(done, now, at, signal)``: ``done`` is True when granted, False
    when the waiter gave up (and left), None to wait again, on the head's
    timer ``at`` or on ``signal``, a fresh future (from ``new_signal``) that
    whoever grants the waiter sets.
    """
    gate.lock()
    try:
        now = gate.clock.monotonic()
        if waiter.state == WAITING:
            queue.serve(now)
        if waiter.state == GRANTED:
            return True, now, None, None
        if waiter.state == LEFT:  # refused by the gate (see `WaiterQueue.refuse_over`)
            return False, now, None, None
        if now >= give_up:
            queue.leave(waiter, now)
            return False, now, None, None
        at = gate.ready_at(waiter.cost, now) if queue.head() is waiter else None
        signal = waiter.signal = new_signal()
        return None, now, at, signal
    finally:
        gate.unlock()


def _refuse_on_an_event_loop() -> None:
    """A thread that runs an event loop must never block on the queue.

    Its tasks could hold what it waits for and never run again to give it
    back: the loop would hang for good.
    """
    if not in_event_loop():
        return
    raise RuntimeError(
        "resilience: a sync call would block this thread to wait its turn, but the thread "
        "runs an event loop (asyncio or trio), whose tasks could never run again to let it "
        "in (a deadlock): "
        "use `async with` or `await policy.acall(...)` (or an async def) in async code"
    )


def wait_turn(queue: WaiterQueue, gate: Gate, waiter: Waiter, give_up: float) -> bool:
    """Block this thread until ``waiter`` is granted (True) or ``give_up`` passes (False).

    A waiter that would wait for a signal (not on a timer of its own) while
    this thread runs an event loop raises `RuntimeError` instead, leaving
    the queue: the signal could have to come from a task of that loop.
    """
    clock = gate.clock
    try:
        while True:
            done, now, at, signal = _next_round(
                queue, gate, waiter, give_up, concurrent.futures.Future
            )
            if done is not None:
                return done
            if at is not None and getattr(clock, "auto_advance", False):
                # An auto-advancing FakeClock moves on only for a sleeper.
                clock.sleep(max(0.0, min(at, give_up) - now))
            elif at is not None:
                # The head's timer, which a grant from another thread cuts short.
                wait_future(clock, signal, min(at, give_up))
            else:
                _refuse_on_an_event_loop()
                wait_future(clock, signal, min(give_up, now + ROUND))
    except BaseException:
        _abandon(queue, gate, waiter)
        raise


async def await_turn(queue: WaiterQueue, gate: Gate, waiter: Waiter, give_up: float) -> bool:
    """Suspend this task until ``waiter`` is granted (True) or ``give_up`` passes (False)."""
    clock = gate.clock
    loop = waiter.loop
    if isinstance(loop, TrioLoop):
        return await _trio_turn(queue, gate, waiter, give_up, loop)
    assert loop is not None
    try:
        while True:
            done, now, at, signal = _next_round(queue, gate, waiter, give_up, loop.create_future)
            if done is not None:
                return done
            if at is not None:
                # The head sleeps on its timer, or less: a grant by another caller wakes it.
                sleep = loop.create_task(clock.asleep(max(0.0, min(at, give_up) - now)))
                try:
                    await asyncio.wait((sleep, signal), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    sleep.cancel()
                continue
            timer = None
            if not math.isinf(give_up):
                timer = call_at(clock, give_up, functools.partial(_resolve, signal), loop)
            try:
                await signal
            finally:
                if timer is not None:
                    timer.cancel()
    except BaseException:
        _abandon(queue, gate, waiter)
        raise


async def _trio_turn(
    queue: WaiterQueue, gate: Gate, waiter: Waiter, give_up: float, loop: TrioLoop
) -> bool:
    """`await_turn` for a trio task: its signal is a `trio.Event`, its timer a cancel scope."""
    clock = gate.clock
    try:
        while True:
            done, now, at, signal = _next_round(queue, gate, waiter, give_up, loop.create_future)
            if done is not None:
                return done
            # The head sleeps until its time (or less: a grant wakes it); the others wait
            # for their grant until they give up.
            until = give_up if at is None else min(at, give_up)
            await wait_signal(clock, signal, until - now)
    except BaseException:  # trio.Cancelled included
        _abandon(queue, gate, waiter)
        raise


def _abandon(queue: WaiterQueue, gate: Gate, waiter: Waiter) -> None:
    """The waiter was cancelled or interrupted: it leaves, giving back a late grant."""
    gate.lock()
    try:
        queue.leave(waiter, gate.clock.monotonic())
    finally:
        gate.unlock()
