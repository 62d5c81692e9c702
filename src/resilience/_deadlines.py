"""One timer per Timeout and event loop, instead of one timer per call.

Every call through a given `Timeout` gets the same duration, so on one clock
their deadlines arrive in the order the calls started: a FIFO queue keeps
them sorted for free. A single loop timer is armed for the head of the queue;
when it fires it cancels the tasks whose deadlines have passed, drops the
entries of calls that already finished, and re-arms for the new head. A call
pays a deque append and a flag write, where ``loop.call_later`` plus
``handle.cancel()`` would build a `TimerHandle` and push it on the loop's
heap (asyncio.timeout does that too). This is the single-duration case of a
timing wheel (Varghese and Lauck, "Hashed and Hierarchical Timing Wheels",
1987).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Any

from ._clock import SYSTEM_CLOCK, Clock, call_at

# An entry is a list: [deadline, task, finished, fired].
DEADLINE, TASK, FINISHED, FIRED = 0, 1, 2, 3

#: The queue length at which finished entries behind a running call are first dropped.
COMPACT_AT = 64


class DeadlineQueue:
    """Deadlines of one Timeout on one event loop, oldest first."""

    __slots__ = ("clock", "handle", "limit", "loop", "queue")

    def __init__(self, clock: Clock, loop: asyncio.AbstractEventLoop) -> None:
        self.clock = clock
        self.loop = loop
        self.queue: deque[list[Any]] = deque()
        self.handle: Any = None
        self.limit = COMPACT_AT

    def add(self, deadline: float, task: asyncio.Task[Any]) -> list[Any]:
        """Watch ``task`` until ``deadline``.

        The caller marks the returned entry finished and drops its task
        (``entry[FINISHED] = True; entry[TASK] = None``) when the call ends.
        """
        queue = self.queue
        while queue and queue[0][FINISHED]:
            queue.popleft()
        if queue and len(queue) >= self.limit:
            queue = self._compact()
        entry = [deadline, task, False, False]
        queue.append(entry)
        if self.handle is None:
            self._arm(deadline)
        return entry

    def _compact(self) -> deque[list[Any]]:
        """Drop the finished entries queued behind a call still running.

        Calls that end behind a slow one would otherwise wait in the queue
        until it ends. Compacting whenever the queue has doubled since the
        last time costs O(1) per call, amortised, and keeps the queue within
        twice the calls in flight (plus `COMPACT_AT`).
        """
        queue = self.queue = deque(entry for entry in self.queue if not entry[FINISHED])
        self.limit = max(COMPACT_AT, 2 * len(queue))
        return queue

    def _arm(self, when: float) -> None:
        clock = self.clock
        if clock is SYSTEM_CLOCK:
            self.handle = self.loop.call_later(max(0.0, when - clock.monotonic()), self._expire)
        else:
            self.handle = call_at(clock, when, self._expire, self.loop)

    def _expire(self) -> None:
        self.handle = None
        now = self.clock.monotonic()
        queue = self.queue
        while queue:
            entry = queue[0]
            if not entry[FINISHED]:
                if entry[DEADLINE] > now:
                    self._arm(entry[DEADLINE])
                    return
                entry[FIRED] = True
                entry[TASK].cancel()
            queue.popleft()


class DeadlineQueues:
    """The `DeadlineQueue` of each event loop a Timeout runs on.

    The last one used is cached; others are kept per thread (an event loop
    runs in one thread, and a thread runs one loop at a time).
    """

    __slots__ = ("clock", "last", "local")

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.local = threading.local()
        self.last: DeadlineQueue | None = None

    def for_loop(self, loop: asyncio.AbstractEventLoop) -> DeadlineQueue:
        queue: DeadlineQueue | None = getattr(self.local, "queue", None)
        if queue is None or queue.loop is not loop:
            queue = self.local.queue = DeadlineQueue(self.clock, loop)
        self.last = queue
        return queue
