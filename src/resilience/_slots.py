"""`Slots`: the concurrency account of `Bulkhead` and `AdaptiveLimiter`, with no I/O.

A free slot is a token in a `deque`: taking one is an atomic ``pop``, giving
it back an atomic ``append``, so the fast path of a call needs no lock. The
mutex guards everything else: the FIFO `WaiterQueue` (whose `Gate` this
is), the size, and the *reserve*.

The reserve is the slots never handed out yet, kept as a number: only the
slots that calls have actually used become tokens, so a limit of
``10**9`` costs no more memory than a limit of 10 (the memory follows the
calls in flight, not the limit).

A smaller limit cannot take back slots held by running calls. Those slots
are *owed*: each debt is a waiter placed at the head of the queue that
takes the next slot given back and never returns it. The fast paths see
the queue is not empty and go the slow way, so no call runs over the new
limit, and the release path stays one ``append`` and one check.

``top`` is the number of slots that exist (free, reserved or held,
debts included): the calls in flight are ``top - len(free)``, readable
without the lock.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

from ._aio import Loop, running_loop
from ._clock import Clock
from ._context import VAR, remaining
from ._waiters import Waiter, WaiterQueue, await_turn, wait_turn

logger = logging.getLogger("resilience")

__all__ = ["Admission", "Slots"]

#: Tokens made up front: a small pool serves most bulkheads without a trip to the reserve.
PREFILL = 64


class Slots:
    """Free slots, the reserve, debts and the FIFO queue; see the module docs."""

    __slots__ = ("capacity", "clock", "free", "mutex", "queue", "rejected", "reserve", "top")

    def __init__(self, size: int, clock: Clock) -> None:
        self.clock = clock
        ready = min(size, PREFILL)
        self.free: deque[None] = deque([None] * ready)
        self.reserve = size - ready
        self.capacity = size
        self.top = size - self.reserve  # slots that exist as tokens or calls (no debt yet)
        self.mutex = threading.Lock()
        self.queue = WaiterQueue(self)
        self.rejected = 0

    # -- the Gate of the queue (mutex held) ----------------------------------------------

    def lock(self) -> None:
        self.mutex.acquire()

    def unlock(self) -> None:
        self.mutex.release()

    def take(self, cost: float, now: float, since: float | None = None) -> bool:
        """Take a slot: a free token, else one from the reserve."""
        try:
            self.free.pop()
        except IndexError:
            if not self.reserve:
                return False
            self.reserve -= 1
            self.top += 1
        return True

    def take_free(self) -> bool:
        """Take a free token without the mutex (False: see the slow path, which has the reserve)."""
        try:
            self.free.pop()
        except IndexError:
            return False
        return True

    def ready_at(self, cost: float, now: float) -> None:
        return None  # only a release can tell

    def give_back(self, cost: float, now: float) -> None:
        """A waiter that was granted a slot left without using it (the queue serves it next)."""
        self.free.append(None)

    # -- giving slots back ------------------------------------------------------------------

    def release(self) -> None:
        """Give a slot back, from any thread.

        With waiters or debts in the queue it goes to them under the mutex,
        never through the free list, where another call's fast path could
        take it first.
        """
        if self.queue.count:
            self.hand_over()
            return
        self.free.append(None)
        if self.queue.count:  # somebody joined in between (mypy narrows it to 0): serve them
            self.serve()  # type: ignore[unreachable]

    def hand_over(self) -> None:
        """Give a slot straight to the head of the queue: a debt swallows it, a waiter gets it."""
        with self.mutex:
            queue = self.queue
            if queue.debts:
                queue.collect_debt()  # the slot stops existing, never seen free
            else:
                self.free.append(None)
                queue.serve(0.0)

    def serve(self) -> None:
        """Serve the queue from the free slots (after a release that found it empty)."""
        with self.mutex:
            self.queue.serve(0.0)

    # -- the size ---------------------------------------------------------------------------

    def resize(self, size: int) -> None:
        """A new limit (mutex held): add slots, or take back free ones and owe the rest."""
        change = size - self.capacity
        self.capacity = size
        queue = self.queue
        if change > 0:
            paid = queue.forgive(change)  # debts not yet collected are cancelled first
            self.reserve += change - paid
            if queue.count:
                queue.serve(0.0)
        else:
            owe = -change
            taken = min(owe, self.reserve)
            self.reserve -= taken
            owe -= taken
            while owe:
                try:
                    self.free.pop()  # a free token taken back stops existing
                except IndexError:
                    break
                owe -= 1
            if owe:
                queue.owe(owe, self._collected)
        # Slots that exist: the limit, plus the debts still to collect, less the reserve.
        self.top = self.capacity + queue.debts - self.reserve

    def _collected(self) -> None:
        """A debt took a slot given back: that slot stops existing (mutex held)."""
        self.top -= 1

    def in_flight(self) -> int:
        """Calls holding a slot now."""
        return max(0, self.top - len(self.free))

    def available(self) -> int:
        """Free slots now, the reserve included."""
        return len(self.free) + self.reserve


class Admission:
    """The slow way into `Slots`, shared by `Bulkhead` and `AdaptiveLimiter`.

    A call that found no free slot on its fast path comes here: a slot given
    back meanwhile, or a place in the FIFO queue for at most ``max_wait``
    (and never past the call's deadline), or a refusal. The policy says how
    it refuses (`_rejection`) and what its "waited" event is
    (`_waited_event`).
    """

    _slots: Slots
    max_queue: int
    max_wait: float | None
    clock: Clock
    _listeners: tuple[Any, ...]

    if TYPE_CHECKING:  # given by Middleware and by the policy

        def _emit(self, event: object) -> None: ...

        @property
        def _label(self) -> str: ...

        def _rejection(self, waited: float) -> BaseException: ...

        def _waited_event(self, seconds: float) -> object: ...

    @property
    def in_flight(self) -> int:
        """Calls holding a slot now."""
        return self._slots.in_flight()

    @property
    def queued(self) -> int:
        """Calls waiting for a slot now."""
        return self._slots.queue.waiting

    @property
    def rejected(self) -> int:
        """Calls refused since the policy was made."""
        return self._slots.rejected

    def _enter(self, loop: Loop | None) -> tuple[Waiter | None, float, float]:
        """Take a slot now (no waiter), or join the queue: ``(waiter, now, give_up)``.

        Raises the policy's rejection when the queue is full or nothing may wait.
        """
        slots = self._slots
        slots.lock()
        try:
            queue = slots.queue
            if not queue.count and slots.take(1.0, 0.0):  # a slot came back meanwhile
                return None, 0.0, 0.0
            limit = math.inf if self.max_wait is None else self.max_wait
            left = remaining(VAR.get())
            if left is not None and left < limit:
                limit = max(0.0, left)
            if queue.waiting < self.max_queue and limit > 0.0:
                now = self.clock.monotonic()
                waiter = queue.join(1.0, loop, now)
                queue.serve(now)  # a slot given back since we looked is not left idle
                return waiter, now, now + limit
            slots.rejected += 1
        finally:
            slots.unlock()
        raise self._rejection(0.0)

    def _waited(self, started: float, granted: bool) -> None:
        """After a wait in the queue: report it, or refuse a waiter whose time ran out."""
        if granted and not self._listeners and not logger.isEnabledFor(logging.DEBUG):
            return
        seconds = self.clock.monotonic() - started
        if granted:
            event = self._waited_event(seconds)
            label = f"{type(self).__name__}{self._label}"
            logger.debug("resilience: %s: a call waited %.3gs", label, seconds)
            self._emit(event)
            return
        slots = self._slots
        with slots.mutex:
            slots.rejected += 1
        raise self._rejection(seconds)

    def _admit(self) -> None:
        """Take a slot for this thread, waiting in the queue if allowed, or raise."""
        waiter, started, give_up = self._enter(None)
        if waiter is not None:
            slots = self._slots
            self._waited(started, wait_turn(slots.queue, slots, waiter, give_up))

    async def _aadmit(self) -> None:
        """`_admit` for this task."""
        waiter, started, give_up = self._enter(running_loop())
        if waiter is not None:
            slots = self._slots
            self._waited(started, await await_turn(slots.queue, slots, waiter, give_up))
