"""`FakeClock`: time that moves only when told to, for sync, asyncio and trio code alike."""

from __future__ import annotations

import concurrent.futures
import contextlib
import heapq
import itertools
import threading
from collections.abc import Callable
from typing import Any

from .. import _aio
from .._validate import number, seconds

__all__ = ["FakeClock"]


class _Timer:
    __slots__ = ("callback", "cancelled", "loop", "when")

    def __init__(self, when: float, callback: Callable[[], object], loop: _aio.Loop) -> None:
        self.when = when
        self.callback = callback
        self.loop = loop
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """A `resilience.Clock` whose time moves only by `advance` and by sleeping.

    With ``auto_advance=True`` (the default) every ``sleep(s)`` and
    ``await asleep(s)`` moves the clock forward by ``s`` at once and returns,
    so a retry with a 30-second backoff finishes instantly and the test can
    read what was slept in `sleeps`. With ``auto_advance=False`` sleepers
    wait, in whatever thread or task they are, until the test calls
    `advance` past their wake-up time: use it to hold calls in flight.

    Timers that the timeout layers set on this clock fire when the clock
    passes them, on the event loop (or trio run) that set them. It is safe
    to use from several threads and tasks at once, under asyncio and trio.

    Under trio it is the analogue of `trio.testing.MockClock`, for the
    policies' own time: the policies read it, sleep on it and set their
    timers on it, while trio's own sleeps (`trio.sleep` in your code) follow
    trio's clock. Run the test with ``MockClock(autojump_threshold=0)`` to
    skip those too.
    """

    def __init__(self, start: float = 0.0, *, auto_advance: bool = True) -> None:
        self._now = number(start, "start", minimum=-1e300)
        if not isinstance(auto_advance, bool):
            raise TypeError(f"auto_advance must be a bool, got {type(auto_advance).__name__}")
        self.auto_advance = auto_advance
        self._cond = threading.Condition(threading.Lock())
        self._timers: list[tuple[float, int, _Timer]] = []
        self._order = itertools.count()
        self.sleeps: list[float] = []
        """Every duration passed to `sleep` and `asleep`, in order."""

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now:g}, auto_advance={self.auto_advance})"

    def monotonic(self) -> float:
        """The fake time, in seconds."""
        return self._now

    def advance(self, seconds_: float) -> None:
        """Move time forward by ``seconds_``, waking sleepers and firing due timers."""
        step = seconds(seconds_, "seconds", allow_zero=True)
        with self._cond:
            self._now += step
            due: list[_Timer] = []
            while self._timers and self._timers[0][0] <= self._now:
                due.append(heapq.heappop(self._timers)[2])
            self._cond.notify_all()
        for timer in due:
            if not timer.cancelled and not timer.loop.is_closed():
                # A loop that closed (a trio run that ended) since: nobody is left to wake.
                with contextlib.suppress(RuntimeError):
                    timer.loop.call_soon_threadsafe(self._fire, timer)

    @staticmethod
    def _fire(timer: _Timer) -> None:
        if not timer.cancelled:
            timer.callback()

    def sleep(self, seconds_: float) -> None:
        """Sleep in fake time: advance at once, or wait for `advance` when not auto-advancing."""
        step = seconds(seconds_, "seconds", allow_zero=True)
        self.sleeps.append(step)
        if self.auto_advance:
            self.advance(step)
            return
        with self._cond:
            wake = self._now + step
            while self._now < wake:
                self._cond.wait()

    async def asleep(self, seconds_: float) -> None:
        """Async sleep in fake time; always yields to the event loop once."""
        step = seconds(seconds_, "seconds", allow_zero=True)
        self.sleeps.append(step)
        if self.auto_advance:
            self.advance(step)
            await _aio.after_callbacks()  # the timers it made due fire first
            return
        loop = _aio.running_loop()
        future: Any = loop.create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        timer = self.call_at(self._now + step, wake, loop)
        try:
            await future
        finally:
            timer.cancel()

    # -- hooks the timeout layers use (see resilience.Clock) ------------------

    def call_at(self, when: float, callback: Callable[[], object], loop: _aio.Loop) -> _Timer:
        """Run ``callback`` on ``loop`` (an asyncio loop, or a trio run) once the clock
        reaches ``when``."""
        timer = _Timer(when, callback, loop)
        with self._cond:
            if when <= self._now:
                loop.call_soon_threadsafe(self._fire, timer)
            else:
                heapq.heappush(self._timers, (when, next(self._order), timer))
        return timer

    def wait_future(self, future: concurrent.futures.Future[Any], deadline: float) -> None:
        """Block until ``future`` is done or the fake time reaches ``deadline``."""

        def done(_: object) -> None:
            with self._cond:
                self._cond.notify_all()

        future.add_done_callback(done)
        with self._cond:
            while not future.done() and self._now < deadline:
                self._cond.wait()
