"""FakeClock, the system clock with the fallbacks for hook-less clocks, and the eager checks.

No test here sleeps in real time. Threads are coordinated with events: a
FakeClock gets a condition that reports when a sleeper is parked on it, so the
test advances time only once the sleeper is really waiting, and then learns
whether the sleeper parked again or returned.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import math
import re
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest

import resilience as rs
from resilience import _clock
from resilience._clock import SYSTEM_CLOCK, SystemClock, validate_clock
from resilience._validate import (
    callable_or_none,
    exception_matcher,
    integer,
    number,
    optional_name,
    seconds,
)
from resilience.testing import FakeClock


class _SignallingCondition(threading.Condition):
    """A condition that sets `parked` each time a thread starts waiting on it.

    The waiter sets the event while still holding the lock, and `advance` takes
    the same lock, so time cannot move before the waiter has really let go of
    it inside ``wait``: the notification cannot be missed.
    """

    def __init__(self) -> None:
        super().__init__(threading.Lock())
        self.parked = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.parked.set()
        return super().wait(timeout)


def _watch(clock: FakeClock) -> _SignallingCondition:
    """Give ``clock`` a condition that tells the test when a sleeper is parked."""
    cond = _SignallingCondition()
    clock._cond = cond
    return cond


def _in_thread(
    target: Callable[[], object], cond: _SignallingCondition
) -> tuple[threading.Thread, threading.Event]:
    """Start ``target`` in a thread; the event is set, and ``cond.parked`` too, when it returns.

    So after each step the test waits on ``cond.parked`` and then knows whether
    the thread parked again or returned, and a broken clock fails the
    assertion instead of hanging the test. The thread is a daemon so that a
    sleeper a broken clock never wakes cannot keep the process alive.
    """
    returned = threading.Event()

    def run() -> None:
        target()
        returned.set()
        cond.parked.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, returned


def _record_loop_errors() -> list[dict[str, Any]]:
    """Collect whatever the running loop's exception handler would have logged."""
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(context))
    return errors


async def _spin() -> None:
    """Let the loop run a few rounds: enough for a queued wake-up to reach its task."""
    for _ in range(5):
        await asyncio.sleep(0)


class _BareClock:
    """A clock with only the protocol's three methods: no call_at or wait_future hooks."""

    def __init__(self, now: float) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.now += seconds


class _HookedClock(_BareClock):
    """A clock with both optional hooks, recording how they were called."""

    def __init__(self, now: float) -> None:
        super().__init__(now)
        self.calls: list[tuple[str, object, object]] = []

    def call_at(
        self, when: float, callback: Callable[[], object], loop: asyncio.AbstractEventLoop
    ) -> str:
        self.calls.append(("call_at", when, callback))
        return "hooked handle"

    def wait_future(self, future: concurrent.futures.Future[Any], deadline: float) -> None:
        self.calls.append(("wait_future", future, deadline))


# -- FakeClock: construction, reading and moving time ---------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"start": "0"}, TypeError, "start must be a number, got str"),
        ({"start": True}, TypeError, "start must be a number, got bool"),
        ({"start": math.nan}, ValueError, "start must be a finite number, got nan"),
        ({"start": math.inf}, ValueError, "start must be a finite number, got inf"),
        ({"auto_advance": 1}, TypeError, "auto_advance must be a bool, got int"),
        ({"auto_advance": None}, TypeError, "auto_advance must be a bool, got NoneType"),
    ],
)
def test_fake_clock_rejects_bad_arguments(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    """A bad start or auto_advance fails at construction, naming the parameter."""
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        FakeClock(**kwargs)


def test_fake_clock_repr_shows_time_and_mode() -> None:
    """The repr shows the current fake time and whether sleeping advances it."""
    clock = FakeClock(start=2.5, auto_advance=False)
    assert repr(clock) == "FakeClock(now=2.5, auto_advance=False)"
    clock.advance(1)
    assert repr(clock) == "FakeClock(now=3.5, auto_advance=False)"
    assert repr(FakeClock()) == "FakeClock(now=0, auto_advance=True)"


def test_time_starts_at_start_and_moves_only_by_advance() -> None:
    """monotonic() is a float that stays put until advance(), which also takes timedelta and 0."""
    clock = FakeClock(start=-5)
    assert clock.monotonic() == -5.0
    assert isinstance(clock.monotonic(), float)
    assert clock.monotonic() == clock.monotonic()
    clock.advance(2)
    assert clock.monotonic() == -3.0
    clock.advance(0)
    assert clock.monotonic() == -3.0
    clock.advance(1.5)
    assert clock.monotonic() == -1.5
    assert clock.sleeps == []  # advancing is not sleeping


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (-1, ValueError, "seconds must be >= 0 seconds, got -1"),
        (math.nan, ValueError, "seconds must be a number of seconds, got NaN"),
        (math.inf, ValueError, "seconds must be finite, got inf"),
        ("1", TypeError, "seconds must be a number of seconds or a timedelta, got str"),
    ],
)
def test_advance_sleep_and_asleep_reject_bad_durations(
    value: object, error: type[Exception], message: str
) -> None:
    """Negative, NaN, infinite or non-numeric durations are refused and change nothing."""
    clock = FakeClock(start=7)
    pattern = f"^{re.escape(message)}$"
    with pytest.raises(error, match=pattern):
        clock.advance(value)  # type: ignore[arg-type]
    with pytest.raises(error, match=pattern):
        clock.sleep(value)  # type: ignore[arg-type]
    with pytest.raises(error, match=pattern):
        asyncio.run(clock.asleep(value))  # type: ignore[arg-type]
    assert (clock.monotonic(), clock.sleeps) == (7.0, [])


# -- FakeClock: auto-advancing sleep ---------------------------------------------


def test_sleep_auto_advances_and_records(clock: FakeClock) -> None:
    """With auto_advance, sleep() returns at once, moves time and records each duration."""
    clock.sleep(30)
    clock.sleep(0)
    clock.sleep(1.5)
    assert clock.sleeps == [30.0, 0.0, 1.5]
    assert clock.monotonic() == 31.5


async def test_asleep_auto_advances_records_and_yields_once(clock: FakeClock) -> None:
    """With auto_advance, asleep() moves time at once but still lets other tasks run."""
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    task = asyncio.create_task(other())
    await clock.asleep(0)
    assert ran == ["other"]  # the zero sleep yielded to the loop
    await clock.asleep(2.5)
    assert clock.sleeps == [0.0, 2.5]
    assert clock.monotonic() == 2.5
    await task


async def test_auto_advancing_sleep_fires_due_timers(clock: FakeClock) -> None:
    """A sleep that passes a timer's time fires it, as advance() would."""
    fired: list[str] = []
    clock.call_at(2, lambda: fired.append("t"), asyncio.get_running_loop())
    clock.sleep(1)
    await asyncio.sleep(0)
    assert fired == []
    clock.sleep(1)
    await asyncio.sleep(0)
    assert fired == ["t"]


# -- FakeClock: manual mode, sleepers wait for advance ---------------------------


def test_manual_sleep_blocks_a_thread_until_advance_passes_its_wake_time() -> None:
    """Without auto_advance, sleep(5) in a thread wakes only once advance() reaches +5."""
    clock = FakeClock(start=10, auto_advance=False)
    cond = _watch(clock)
    thread, woke = _in_thread(lambda: clock.sleep(5), cond)

    cond.parked.wait()  # the sleeper holds the lock until it waits, so it sees every advance
    cond.parked.clear()
    clock.advance(1)
    cond.parked.wait()  # it woke, checked the time, and parked again or returned
    assert not woke.is_set()
    assert clock.sleeps == [5.0]

    cond.parked.clear()
    clock.advance(4)
    cond.parked.wait()
    assert woke.is_set()
    thread.join()
    assert clock.monotonic() == 15.0


def test_manual_sleep_of_zero_returns_at_once() -> None:
    """Without auto_advance, a zero sleep is already due and does not wait."""
    clock = FakeClock(auto_advance=False)
    clock.sleep(0)
    assert (clock.sleeps, clock.monotonic()) == ([0.0], 0.0)


async def test_manual_asleep_waits_for_advance_from_the_test() -> None:
    """Without auto_advance, asleep(5) finishes only after the clock has moved 5 s."""
    clock = FakeClock(auto_advance=False)
    task = asyncio.create_task(clock.asleep(5))
    await asyncio.sleep(0)
    assert clock.sleeps == [5.0]  # the task is waiting on its timer

    clock.advance(1)
    await _spin()
    assert not task.done()

    clock.advance(4)
    await _spin()
    assert task.done()
    await task
    assert clock.monotonic() == 5.0


async def test_manual_asleep_of_zero_returns_without_advance() -> None:
    """Without auto_advance, asleep(0) is due at once and needs no advance."""
    clock = FakeClock(auto_advance=False)
    task = asyncio.create_task(clock.asleep(0))
    await _spin()
    assert task.done()
    await task
    assert (clock.sleeps, clock.monotonic()) == ([0.0], 0.0)


async def test_cancelled_manual_asleep_leaves_no_timer_behind() -> None:
    """Cancelling a task in asleep() cancels its timer, so a later advance schedules nothing."""
    clock = FakeClock(auto_advance=False)
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(clock.asleep(5))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with mock.patch.object(loop, "call_soon_threadsafe") as schedule:
        clock.advance(5)
    schedule.assert_not_called()


async def test_asleep_cancelled_after_its_timer_was_due_is_not_woken_twice() -> None:
    """A task cancelled after advance() made its timer due ends cancelled, with no loop error."""
    clock = FakeClock(auto_advance=False)
    errors = _record_loop_errors()
    task = asyncio.create_task(clock.asleep(5))
    await asyncio.sleep(0)
    clock.advance(5)  # the wake-up is queued on the loop ...
    task.cancel()  # ... and the task is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert errors == []  # the late wake-up did not try to set a cancelled future


# -- FakeClock: timers (the call_at hook) ---------------------------------------


async def test_timers_fire_on_the_loop_in_time_order_once_passed(clock: FakeClock) -> None:
    """advance() fires due timers on their loop, earliest first, ties in the order set."""
    loop = asyncio.get_running_loop()
    fired: list[str] = []
    for when, name in [(3, "3a"), (1, "1"), (3, "3b"), (5, "5")]:
        clock.call_at(when, functools.partial(fired.append, name), loop)

    clock.advance(3)
    assert fired == []  # callbacks run on the loop, not inside advance()
    await asyncio.sleep(0)
    assert fired == ["1", "3a", "3b"]

    clock.advance(2)
    await asyncio.sleep(0)
    assert fired == ["1", "3a", "3b", "5"]


async def test_timers_fire_on_their_loop_when_advanced_from_another_thread(
    clock: FakeClock,
) -> None:
    """A timer set from a loop runs on that loop's thread even if another thread advances."""
    ran_in: list[int] = []
    clock.call_at(1, lambda: ran_in.append(threading.get_ident()), asyncio.get_running_loop())
    thread = threading.Thread(target=clock.advance, args=(1,))
    thread.start()
    thread.join()
    await asyncio.sleep(0)
    assert ran_in == [threading.get_ident()]


async def test_call_at_a_time_already_passed_fires_soon() -> None:
    """A timer for now or the past is handed to the loop at once, not inside call_at."""
    clock = FakeClock(start=10)
    loop = asyncio.get_running_loop()
    fired: list[str] = []
    clock.call_at(4, lambda: fired.append("past"), loop)
    clock.call_at(10, lambda: fired.append("now"), loop)
    assert fired == []
    await asyncio.sleep(0)
    assert fired == ["past", "now"]
    assert clock.monotonic() == 10.0


async def test_cancelled_timers_do_not_fire(clock: FakeClock) -> None:
    """cancel() stops a timer whether it is still pending or already queued on the loop."""
    loop = asyncio.get_running_loop()
    fired: list[str] = []
    pending = clock.call_at(1, lambda: fired.append("pending"), loop)
    queued = clock.call_at(0, lambda: fired.append("queued"), loop)
    clock.call_at(0, lambda: fired.append("control"), loop)
    pending.cancel()
    queued.cancel()
    clock.call_at(1, lambda: fired.append("control after advance"), loop)
    clock.advance(1)
    await asyncio.sleep(0)
    assert fired == ["control", "control after advance"]


async def test_timers_on_a_closed_loop_are_skipped(clock: FakeClock) -> None:
    """A due timer whose loop has closed is dropped; advance() neither fails nor stops."""
    running = asyncio.get_running_loop()
    closed = asyncio.new_event_loop()
    fired: list[str] = []
    clock.call_at(1, lambda: fired.append("closed"), closed)
    clock.call_at(1, lambda: fired.append("running"), running)
    closed.close()
    clock.advance(1)  # scheduling on the closed loop would raise RuntimeError
    await asyncio.sleep(0)
    assert fired == ["running"]


# -- FakeClock: the wait_future hook ----------------------------------------------


@pytest.mark.parametrize(
    ("done", "deadline"), [(True, 100.0), (False, 0.0)], ids=["done-future", "deadline-passed"]
)
def test_wait_future_returns_at_once_for_a_done_future_or_a_passed_deadline(
    done: bool, deadline: float
) -> None:
    """A finished future, or a deadline already reached, never parks the waiter."""
    clock = FakeClock(auto_advance=False)
    cond = _watch(clock)
    future: concurrent.futures.Future[int] = concurrent.futures.Future()
    if done:
        future.set_result(1)
    thread, returned = _in_thread(lambda: clock.wait_future(future, deadline), cond)
    cond.parked.wait()  # set by the thread when it parks or returns
    assert returned.is_set()
    thread.join()
    assert future.done() is done
    assert clock.monotonic() == 0.0


def test_wait_future_returns_when_the_future_completes_in_another_thread() -> None:
    """A thread in wait_future() wakes when the future is done, without time moving."""
    clock = FakeClock(auto_advance=False)
    cond = _watch(clock)
    future: concurrent.futures.Future[str] = concurrent.futures.Future()
    thread, returned = _in_thread(lambda: clock.wait_future(future, deadline=100), cond)

    cond.parked.wait()
    assert not returned.is_set()
    cond.parked.clear()
    future.set_result("ok")  # its done-callback wakes the waiter
    cond.parked.wait()
    assert returned.is_set()
    thread.join()
    assert clock.monotonic() == 0.0


def test_wait_future_returns_when_time_reaches_the_deadline() -> None:
    """A thread in wait_future() keeps waiting until advance() reaches the deadline."""
    clock = FakeClock(auto_advance=False)
    cond = _watch(clock)
    future: concurrent.futures.Future[str] = concurrent.futures.Future()
    thread, returned = _in_thread(lambda: clock.wait_future(future, deadline=3), cond)

    cond.parked.wait()
    cond.parked.clear()
    clock.advance(1)
    cond.parked.wait()  # woke, and either saw 1 < 3 and parked again or returned
    assert not returned.is_set()

    cond.parked.clear()
    clock.advance(2)
    cond.parked.wait()
    assert returned.is_set()
    thread.join()
    assert not future.done()


# -- SystemClock and the module-level helpers -------------------------------------


async def test_system_clock_is_a_clock_and_asleep_yields() -> None:
    """SystemClock satisfies Clock, has a plain repr, and asleep(0) lets other tasks run."""
    assert rs.SystemClock is SystemClock
    assert isinstance(SYSTEM_CLOCK, rs.Clock)
    assert repr(SYSTEM_CLOCK) == "SystemClock()"
    first = SYSTEM_CLOCK.monotonic()
    assert SYSTEM_CLOCK.monotonic() >= first
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    task = asyncio.create_task(other())
    await SYSTEM_CLOCK.asleep(0)
    assert ran == ["other"]
    await task


async def test_system_clock_call_at_uses_the_loop_time() -> None:
    """SystemClock.call_at returns the loop's TimerHandle at the same time value, and it fires."""
    loop = asyncio.get_running_loop()
    fired = asyncio.Event()
    when = SYSTEM_CLOCK.monotonic()
    handle = SYSTEM_CLOCK.call_at(when, fired.set, loop)
    assert isinstance(handle, asyncio.TimerHandle)
    assert handle.when() == when
    await fired.wait()


def test_system_clock_wait_future_does_not_block_when_done_or_late() -> None:
    """SystemClock.wait_future returns for a done future, and at once past the deadline."""
    done: concurrent.futures.Future[int] = concurrent.futures.Future()
    done.set_result(1)
    SYSTEM_CLOCK.wait_future(done, deadline=SYSTEM_CLOCK.monotonic() + 3600)
    pending: concurrent.futures.Future[int] = concurrent.futures.Future()
    SYSTEM_CLOCK.wait_future(pending, deadline=SYSTEM_CLOCK.monotonic() - 1)
    assert not pending.done()


def test_helpers_use_the_clock_hooks_when_present() -> None:
    """call_at() and wait_future() hand over to a clock's own hooks."""
    clock = _HookedClock(now=0)
    loop = mock.Mock(spec=asyncio.AbstractEventLoop)
    future: concurrent.futures.Future[int] = concurrent.futures.Future()

    def callback() -> None: ...

    with mock.patch.object(concurrent.futures, "wait") as fallback_wait:
        assert _clock.call_at(clock, 5, callback, loop) == "hooked handle"
        _clock.wait_future(clock, future, 7)
    assert clock.calls == [("call_at", 5, callback), ("wait_future", future, 7)]
    loop.call_later.assert_not_called()
    fallback_wait.assert_not_called()


def test_call_at_fallback_converts_to_a_delay_on_the_clocks_own_time() -> None:
    """Without a hook, call_at() schedules after the time left on the clock, never negative."""
    clock = _BareClock(now=100)
    loop = mock.Mock(spec=asyncio.AbstractEventLoop)

    def callback() -> None: ...

    assert _clock.call_at(clock, 130, callback, loop) is loop.call_later.return_value
    _clock.call_at(clock, 50, callback, loop)
    assert loop.call_later.call_args_list == [mock.call(30.0, callback), mock.call(0.0, callback)]


async def test_call_at_fallback_with_a_passed_deadline_fires_on_the_loop() -> None:
    """Without a hook, a deadline already passed fires on the real loop at once."""
    fired = asyncio.Event()
    handle = _clock.call_at(_BareClock(now=100), 50, fired.set, asyncio.get_running_loop())
    assert isinstance(handle, asyncio.TimerHandle)
    await fired.wait()


def test_wait_future_fallback_waits_for_the_time_left_on_the_clock() -> None:
    """Without a hook, wait_future() waits for the time left on the clock, never negative."""
    clock = _BareClock(now=100)
    future: concurrent.futures.Future[int] = concurrent.futures.Future()
    with mock.patch.object(concurrent.futures, "wait") as wait:
        _clock.wait_future(clock, future, 130)
        _clock.wait_future(clock, future, 50)
    assert wait.call_args_list == [
        mock.call((future,), timeout=30.0),
        mock.call((future,), timeout=0.0),
    ]


def test_wait_future_fallback_returns_for_a_done_or_late_future() -> None:
    """Without a hook, a done future or a passed deadline returns without blocking."""
    clock = _BareClock(now=100)
    done: concurrent.futures.Future[int] = concurrent.futures.Future()
    done.set_result(1)
    _clock.wait_future(clock, done, 3700)
    pending: concurrent.futures.Future[int] = concurrent.futures.Future()
    _clock.wait_future(clock, pending, 50)
    assert not pending.done()


def test_validate_clock_defaults_to_the_system_clock_and_keeps_good_clocks() -> None:
    """None means the system clock; anything with the protocol's methods is used as is."""
    assert validate_clock(None) is SYSTEM_CLOCK
    fake = FakeClock()
    assert validate_clock(fake) is fake
    bare = _BareClock(now=0)
    assert validate_clock(bare) is bare


@pytest.mark.parametrize(
    ("value", "name", "start", "end"),
    [
        (object(), "clock", "clock must provide monotonic(), sleep() and asleep()", "got object"),
        (3, "retry_clock", "retry_clock must provide", "got int"),
        # A class has the methods as attributes, but they need an instance to call.
        (FakeClock, "clock", "clock must provide", "got the class FakeClock"),
        (_BareClock, "timeout_clock", "timeout_clock must provide", "got the class _BareClock"),
    ],
)
def test_validate_clock_rejects_non_clocks_naming_the_parameter(
    value: object, name: str, start: str, end: str
) -> None:
    """Something that is not a Clock fails with the parameter's name first."""
    with pytest.raises(TypeError, match=f"^{re.escape(start)}.*{re.escape(end)}$"):
        validate_clock(value, name)


def test_a_clock_class_instead_of_an_instance_is_refused_at_construction() -> None:
    """clock=FakeClock (forgotten parentheses) fails when the policy is built, not mid-call."""
    with pytest.raises(TypeError, match=r"^clock must provide .* got the class FakeClock$"):
        rs.Retry(clock=FakeClock)  # type: ignore[arg-type]


# -- _validate: every branch of every check ---------------------------------------


def _raises(error: type[Exception], message: str) -> Any:
    """pytest.raises for exactly this message, which starts with the parameter's name."""
    return pytest.raises(error, match=f"^{re.escape(message)}$")


@pytest.mark.parametrize(
    ("value", "kwargs", "expected"),
    [
        (2, {}, 2.0),
        (2.5, {}, 2.5),
        (timedelta(milliseconds=1500), {}, 1.5),
        (0, {"allow_zero": True}, 0.0),
        (timedelta(0), {"allow_zero": True}, 0.0),
        (math.inf, {"allow_inf": True}, math.inf),
    ],
)
def test_seconds_accepts_numbers_and_timedeltas(
    value: object, kwargs: dict[str, bool], expected: float
) -> None:
    """seconds() returns a float from an int, a float or a timedelta."""
    result = seconds(value, "delay", **kwargs)
    assert result == expected
    assert type(result) is float


@pytest.mark.parametrize(
    ("value", "kwargs", "error", "message"),
    [
        (True, {}, TypeError, "delay must be a number of seconds or a timedelta, got bool"),
        ("1", {}, TypeError, "delay must be a number of seconds or a timedelta, got str"),
        (None, {}, TypeError, "delay must be a number of seconds or a timedelta, got NoneType"),
        (math.nan, {}, ValueError, "delay must be a number of seconds, got NaN"),
        (math.inf, {}, ValueError, "delay must be finite, got inf"),
        (-math.inf, {"allow_inf": True}, ValueError, "delay must be > 0 seconds, got -inf"),
        (0, {}, ValueError, "delay must be > 0 seconds, got 0"),
        (-1, {}, ValueError, "delay must be > 0 seconds, got -1"),
        (-0.5, {"allow_zero": True}, ValueError, "delay must be >= 0 seconds, got -0.5"),
        (timedelta(seconds=-1), {}, ValueError, "delay must be > 0 seconds, got -1.0"),
    ],
)
def test_seconds_rejects_with_the_parameter_name(
    value: object, kwargs: dict[str, bool], error: type[Exception], message: str
) -> None:
    """seconds() refuses bools, non-numbers, NaN, unwanted infinity, zero and negatives."""
    with _raises(error, message):
        seconds(value, "delay", **kwargs)


@pytest.mark.parametrize(
    ("value", "kwargs", "expected"),
    [
        (3, {"minimum": 0}, 3.0),
        (0, {"minimum": 0}, 0.0),
        (0.5, {"minimum": 0, "inclusive": False}, 0.5),
        (-1e300, {"minimum": -1e300}, -1e300),
    ],
)
def test_number_accepts_finite_numbers_at_or_above_the_minimum(
    value: object, kwargs: dict[str, Any], expected: float
) -> None:
    """number() returns a float; the minimum itself is allowed unless inclusive=False."""
    result = number(value, "ratio", **kwargs)
    assert result == expected
    assert type(result) is float


@pytest.mark.parametrize(
    ("value", "kwargs", "error", "message"),
    [
        (True, {"minimum": 0}, TypeError, "ratio must be a number, got bool"),
        ("1", {"minimum": 0}, TypeError, "ratio must be a number, got str"),
        (math.nan, {"minimum": 0}, ValueError, "ratio must be a finite number, got nan"),
        (-math.inf, {"minimum": 0}, ValueError, "ratio must be a finite number, got -inf"),
        (-1, {"minimum": 0}, ValueError, "ratio must be >= 0, got -1"),
        (1, {"minimum": 1.5}, ValueError, "ratio must be >= 1.5, got 1"),
        (0, {"minimum": 0, "inclusive": False}, ValueError, "ratio must be > 0, got 0"),
    ],
)
def test_number_rejects_with_the_parameter_name(
    value: object, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    """number() refuses bools, non-numbers, NaN, infinities and values below the bound."""
    with _raises(error, message):
        number(value, "ratio", **kwargs)


def test_integer_accepts_ints_at_or_above_the_minimum() -> None:
    """integer() returns the int unchanged, the minimum included."""
    assert integer(5, "attempts", minimum=1) == 5
    assert integer(1, "attempts", minimum=1) == 1


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (True, TypeError, "attempts must be an int, got bool"),
        (2.0, TypeError, "attempts must be an int, got float"),
        (0, ValueError, "attempts must be >= 1, got 0"),
    ],
)
def test_integer_rejects_with_the_parameter_name(
    value: object, error: type[Exception], message: str
) -> None:
    """integer() refuses bools, floats and values below the minimum."""
    with _raises(error, message):
        integer(value, "attempts", minimum=1)


def test_optional_name_accepts_str_or_none_and_names_itself() -> None:
    """optional_name() passes a str or None through; the default parameter name is 'name'."""
    assert optional_name(None) is None
    assert optional_name("users.get") == "users.get"
    with _raises(TypeError, "name must be a str or None, got int"):
        optional_name(3)
    with _raises(TypeError, "label must be a str or None, got bytes"):
        optional_name(b"x", "label")


def test_callable_or_none_accepts_callables_or_none() -> None:
    """callable_or_none() passes None or a callable through and refuses anything else."""
    assert callable_or_none(None, "on_retry") is None
    assert callable_or_none(len, "on_retry") is len
    with _raises(TypeError, "on_retry must be callable or None, got str"):
        callable_or_none("print", "on_retry")


def _is_value_error(error: BaseException) -> bool:
    return isinstance(error, ValueError)


@pytest.mark.parametrize(
    ("value", "types"),
    [
        (ValueError, (ValueError,)),
        (KeyboardInterrupt, (KeyboardInterrupt,)),
        ((ValueError, KeyError), (ValueError, KeyError)),
        ([OSError], (OSError,)),
        (frozenset({OSError}), (OSError,)),
        ({OSError}, (OSError,)),
        ((), ()),
    ],
)
def test_exception_matcher_splits_out_exception_types(
    value: object, types: tuple[type[BaseException], ...]
) -> None:
    """A class or a collection of classes becomes a tuple of types and no predicate."""
    assert exception_matcher(value, "on") == (types, None)


def test_exception_matcher_splits_out_a_predicate() -> None:
    """A callable that is not a class is used as the predicate, with no types."""
    types, predicate = exception_matcher(_is_value_error, "on")
    assert types == ()
    assert predicate is _is_value_error


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (int, "on must be an exception type, got int"),
        ((ValueError, int), "on must contain only exception types, got <class 'int'>"),
        ([ValueError()], "on must contain only exception types, got ValueError()"),
        (
            ValueError("x"),
            "on must be an exception type, a tuple of them, or a predicate, got ValueError",
        ),
        (42, "on must be an exception type, a tuple of them, or a predicate, got int"),
    ],
)
def test_exception_matcher_rejects_with_the_parameter_name(value: object, message: str) -> None:
    """Non-exception classes, collections holding anything else and other objects are refused."""
    with _raises(TypeError, message):
        exception_matcher(value, "on")
