"""Time as the policies see it: a `Clock` protocol and the system clock.

Every time-based policy takes ``clock=``. The system clock is the default;
`resilience.testing.FakeClock` makes time move only when told to.

Besides the three methods of the protocol, a clock may offer two optional
hooks that the timeout layers use when present (the fake clock does):

* ``call_at(when, callback, loop)`` schedules ``callback`` to run on ``loop``
  once ``monotonic()`` reaches ``when`` and returns a handle with ``cancel()``;
* ``wait_future(future, deadline)`` blocks the calling thread until the
  ``concurrent.futures.Future`` is done or ``monotonic()`` reaches ``deadline``.

A clock without them gets real-time equivalents computed from its own
``monotonic()`` readings. Under trio, ``loop`` is the trio run, seen through
the loop methods ``call_soon_threadsafe`` and ``is_closed`` only (a
`resilience._aio.TrioLoop`): a hook that runs its callback through them
serves asyncio and trio alike, as the fake clock's does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from . import _aio

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]

#: The longest single blocking wait the platform takes; longer ones are done in rounds.
LONGEST_WAIT = min(threading.TIMEOUT_MAX, 86_400.0 * 365)


def _sleep(seconds: float) -> None:
    """`time.sleep`, for any finite length (a huge one sleeps in rounds, never overflows)."""
    while seconds > LONGEST_WAIT:
        time.sleep(LONGEST_WAIT)
        seconds -= LONGEST_WAIT
    time.sleep(seconds)


def _wait(
    future: concurrent.futures.Future[Any], deadline: float, monotonic: Callable[[], float]
) -> None:
    """Block until ``future`` is done or ``monotonic()`` reaches ``deadline``.

    A wait longer than the platform takes is done in rounds.
    """
    left = deadline - monotonic()
    while left > LONGEST_WAIT:
        concurrent.futures.wait((future,), timeout=LONGEST_WAIT)
        if future.done():
            return
        left = deadline - monotonic()
    concurrent.futures.wait((future,), timeout=max(0.0, left))


@runtime_checkable
class Clock(Protocol):
    """A monotonic time source with sync and async sleeping, in seconds."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for ``seconds``."""
        ...

    async def asleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds``."""
        ...


class SystemClock:
    """The real clock: `time.monotonic`, `time.sleep`, and `asyncio.sleep` or `trio.sleep`.

    ``monotonic`` is the same clock the asyncio event loop uses, so a deadline
    computed here can be handed to ``loop.call_at`` directly. ``asleep``
    sleeps with the library that runs the task: under trio it is
    `trio.sleep`, on trio's clock (a `trio.testing.MockClock` included).
    """

    __slots__ = ()

    monotonic = staticmethod(time.monotonic)
    sleep = staticmethod(_sleep)

    async def asleep(self, seconds: float) -> None:
        await _aio.sleep(seconds)

    def call_at(
        self, when: float, callback: Callable[[], object], loop: asyncio.AbstractEventLoop
    ) -> asyncio.TimerHandle:
        return loop.call_at(when, callback)

    def wait_future(self, future: concurrent.futures.Future[Any], deadline: float) -> None:
        _wait(future, deadline, time.monotonic)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()


def call_at(
    clock: Clock, when: float, callback: Callable[[], object], loop: asyncio.AbstractEventLoop
) -> Any:
    """Run ``callback`` on ``loop`` when ``clock`` reaches ``when``; returns a handle."""
    hook = getattr(clock, "call_at", None)
    if hook is not None:
        return hook(when, callback, loop)
    return loop.call_later(max(0.0, when - clock.monotonic()), callback)


def wait_future(clock: Clock, future: concurrent.futures.Future[Any], deadline: float) -> None:
    """Block until ``future`` is done or ``clock`` reaches ``deadline``."""
    hook = getattr(clock, "wait_future", None)
    if hook is not None:
        hook(future, deadline)
        return
    _wait(future, deadline, clock.monotonic)


def validate_clock(clock: object, name: str = "clock") -> Clock:
    """Return the clock to use: the system clock for None, else ``clock`` if it fits."""
    if clock is None:
        return SYSTEM_CLOCK
    # A class has the protocol's methods as attributes too: refuse `clock=FakeClock`.
    if isinstance(clock, type) or not isinstance(clock, Clock):
        got = f"the class {clock.__name__}" if isinstance(clock, type) else type(clock).__name__
        raise TypeError(
            f"{name} must provide monotonic(), sleep() and asleep() (a resilience.Clock), got {got}"
        )
    return clock
