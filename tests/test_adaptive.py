"""Tests of `resilience.AdaptiveLimiter` and its algorithms: the rules, the slots, a simulation."""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import logging
import math
import random
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest

import resilience as rs
from modes import (
    Event,
    checkpoint,
    create_task,
    forever,
    run_yielding,
    settle,
    task_cancelled,
)
from resilience._adaptive import log10_root
from resilience.testing import EventRecorder, FakeClock


class Scripted(rs.LimitAlgorithm):
    """An algorithm that returns the limits it is given, one per window, and keeps the inputs."""

    def __init__(self, *limits: float) -> None:
        self.limits: Iterator[float] = iter(limits)
        self.seen: list[tuple[float | None, int, bool]] = []

    def update(self, rtt: float | None, in_flight: int, dropped: bool) -> float:
        self.seen.append((rtt, in_flight, dropped))
        self.limit = next(self.limits, self.limit)
        return self.limit


def limiter(algorithm: rs.LimitAlgorithm | None = None, **kwargs: Any) -> rs.AdaptiveLimiter:
    """A limiter whose windows close at the first call after the clock moved past them."""
    kwargs.setdefault("window_seconds", 1.0)
    kwargs.setdefault("window_samples", 1)
    return rs.AdaptiveLimiter(algorithm, **kwargs)


class WatchedClock(FakeClock):
    """A FakeClock that tells the test when a thread blocks on it to wait for a slot."""

    def __init__(self, *, auto_advance: bool = False) -> None:
        super().__init__(auto_advance=auto_advance)
        self._blocked = threading.Semaphore(0)

    def wait_future(self, future: concurrent.futures.Future[Any], deadline: float) -> None:
        self._blocked.release()  # the thread is in the queue, about to block
        super().wait_future(future, deadline)

    def wait_for_a_blocked_thread(self) -> None:
        """Return once a thread has blocked waiting its turn; fail if none does."""
        assert self._blocked.acquire(timeout=30), "no thread blocked in the queue within 30 s"


# -- construction ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"algorithm": rs.Vegas}, TypeError, r"^algorithm must be an instance, e.g. Vegas\(\)"),
        ({"algorithm": "vegas"}, TypeError, r"^algorithm must be a LimitAlgorithm, got str"),
        ({"min_limit": 0}, ValueError, r"^min_limit must be >= 1"),
        ({"max_limit": 1.5}, TypeError, r"^max_limit must be an int"),
        ({"min_limit": 5, "max_limit": 4}, ValueError, r"^max_limit must be >= min_limit \(5\)"),
        ({"max_limit": 0}, ValueError, r"^max_limit must be >= 1"),
        ({"initial_limit": 0}, ValueError, r"^initial_limit must be >= 1"),
        ({"initial_limit": 300}, ValueError, r"^initial_limit must be within \[min_limit"),
        ({"max_queue": -1}, ValueError, r"^max_queue must be >= 0"),
        ({"max_wait": -1}, ValueError, r"^max_wait must be >= 0"),
        ({"window_seconds": -1}, ValueError, r"^window_seconds must be >= 0"),
        ({"window_samples": 0}, ValueError, r"^window_samples must be >= 1"),
        ({"window_samples": 1001}, ValueError, r"^window_samples must be <= 1000"),
        ({"drop_on": 3}, TypeError, r"^drop_on"),
        ({"clock": object()}, TypeError, r"^clock"),
        ({"name": 1}, TypeError, r"^name"),
    ],
)
def test_bad_arguments_fail_at_construction(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    """Every bad argument is refused by the constructor, naming the parameter."""
    with pytest.raises(error, match=message):
        rs.AdaptiveLimiter(**kwargs)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: rs.AIMD(backoff_ratio=0.4), ValueError, r"^backoff_ratio must be >= 0.5"),
        (lambda: rs.AIMD(backoff_ratio=1), ValueError, r"^backoff_ratio must be in \[0.5, 1\)"),
        (lambda: rs.AIMD(timeout=0), ValueError, r"^timeout must be > 0"),
        (lambda: rs.Vegas(smoothing=0), ValueError, r"^smoothing must be > 0"),
        (lambda: rs.Vegas(smoothing=1.5), ValueError, r"^smoothing must be in \(0, 1\]"),
        (lambda: rs.Vegas(probe_multiplier=0), ValueError, r"^probe_multiplier must be >= 1"),
        (lambda: rs.Vegas(alpha=-1), ValueError, r"^alpha must be >= 0"),
        (lambda: rs.Vegas(beta="6"), TypeError, r"^beta must be a number"),
        (lambda: rs.Vegas(increase=2), TypeError, r"^increase must be a function"),
        (lambda: rs.Vegas(seed="x"), TypeError, r"^seed must be an int or a random.Random"),
        (lambda: rs.Gradient2(smoothing=2), ValueError, r"^smoothing must be in \(0, 1\]"),
        (lambda: rs.Gradient2(smoothing=0), ValueError, r"^smoothing must be > 0"),
        (lambda: rs.Gradient2(long_window=0), ValueError, r"^long_window must be >= 1"),
        (lambda: rs.Gradient2(rtt_tolerance=0.9), ValueError, r"^rtt_tolerance must be >= 1"),
        (lambda: rs.Gradient2(queue_size=-4), ValueError, r"^queue_size must be >= 0"),
    ],
)
def test_bad_algorithm_settings_fail_at_construction(
    make: Callable[[], object], error: type[Exception], message: str
) -> None:
    """The algorithms validate their parameters too, naming them."""
    with pytest.raises(error, match=message):
        make()


def test_the_limits_may_all_be_equal() -> None:
    """min_limit, initial_limit and max_limit may be one number, 1 included."""
    for bound in (1, 5):
        adaptive = rs.AdaptiveLimiter(initial_limit=bound, min_limit=bound, max_limit=bound)
        assert (adaptive.min_limit, adaptive.limit, adaptive.max_limit) == (bound, bound, bound)


def test_a_custom_algorithm_and_a_permit_show_themselves() -> None:
    """A LimitAlgorithm subclass needs only update(); repr works for it and for permits."""
    adaptive = rs.AdaptiveLimiter(Scripted())
    assert repr(adaptive.algorithm) == "Scripted()"
    permit = adaptive.try_acquire()
    assert repr(permit) == "LimitPermit(done=False)"
    permit.ignore()
    permit.ignore()
    permit.drop()
    assert repr(permit) == "LimitPermit(done=True)"
    assert adaptive.metrics().dropped == 0


class Broken(rs.LimitAlgorithm):
    """An algorithm that fails, or answers NaN; its settings are not numbers."""

    def __init__(self, answer: float | None) -> None:
        self.answer = answer

    def settings(self) -> dict[str, Any]:
        return {"answer": self.answer, "mode": "broken"}

    def update(self, rtt: float | None, in_flight: int, dropped: bool) -> float:
        if self.answer is None:
            raise RuntimeError("broken rule")
        return self.answer


@pytest.mark.parametrize("answer", [None, math.nan])
def test_a_broken_algorithm_is_logged_and_the_limit_stays(
    answer: float | None, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """An algorithm that raises or answers NaN never fails the call that ended the window."""
    adaptive = limiter(Broken(answer), clock=clock, initial_limit=3)
    clock.advance(1)

    def takes_a_second() -> str:
        clock.advance(1)
        return "fine"

    with caplog.at_level(logging.ERROR, logger="resilience"):
        assert adaptive.call(takes_a_second) == "fine"
    assert "the algorithm of AdaptiveLimiter(Broken(" in caplog.text
    assert adaptive.limit == 3
    assert adaptive.in_flight == 0


def test_an_algorithm_serves_one_limiter() -> None:
    """An algorithm keeps one limiter's state, so a second limiter may not share it."""
    vegas = rs.Vegas()
    rs.AdaptiveLimiter(vegas)
    with pytest.raises(ValueError, match=r"is already used by a limiter: give each its own"):
        rs.AdaptiveLimiter(vegas)


def test_defaults_settings_and_repr() -> None:
    """Vegas, 20 within [1, 200], one-second windows of ten samples, no queue."""
    adaptive = rs.AdaptiveLimiter(name="db")
    settings = adaptive.settings()
    assert isinstance(settings.pop("algorithm"), rs.Vegas)
    assert settings == {
        "initial_limit": 20,
        "min_limit": 1,
        "max_limit": 200,
        "max_queue": 0,
        "max_wait": None,
        "window_seconds": 1.0,
        "window_samples": 10,
    }
    assert repr(adaptive) == (
        "AdaptiveLimiter('db', Vegas(smoothing=1, probe_multiplier=30), limit=20, "
        "min_limit=1, max_limit=200)"
    )
    assert adaptive.describe()["kind"] == "adaptive_limiter"
    assert (adaptive.limit, adaptive.in_flight, adaptive.queued, adaptive.rejected) == (20, 0, 0, 0)
    queued = rs.AdaptiveLimiter(rs.AIMD(timeout=timedelta(milliseconds=250)), max_queue=5)
    assert repr(queued) == (
        "AdaptiveLimiter(AIMD(backoff_ratio=0.9, timeout=0.25), limit=20, min_limit=1, "
        "max_limit=200, max_queue=5)"
    )
    assert repr(Broken(None)) == "Broken(answer=None, mode='broken')"
    assert repr(rs.Gradient2(queue_size=math.sqrt)) == (
        "Gradient2(smoothing=0.2, queue_size=sqrt, long_window=600, rtt_tolerance=1.5)"
    )


# -- the algorithms, driven directly ---------------------------------------------------------------


def test_log10_root_is_netflix_s_step_function() -> None:
    """max(1, int(log10(limit))) below 1000, the integer square root from there."""
    assert [log10_root(n) for n in (0, 1, 9, 10, 99, 100, 999, 1000, 4096)] == [
        1, 1, 1, 1, 1, 2, 2, 31, 64,
    ]  # fmt: skip


def test_aimd_rule() -> None:
    """+1 while half the limit is in use, x backoff_ratio on a drop or a slow window, bounded."""
    aimd = rs.AIMD(backoff_ratio=0.5, timeout=1.0)
    aimd.start(10, 2, 12)
    steps = [
        ((0.1, 5, False), 11),  # 5 * 2 >= 10: grow
        ((0.1, 5, False), 11),  # 5 * 2 < 11: the limit is not in use
        ((0.1, 6, False), 12),
        ((0.1, 12, False), 12),  # max_limit
        ((2.0, 12, False), 6),  # slower than timeout
        ((None, 3, True), 3),  # a drop with no successful call
        ((0.1, 3, True), 2),  # int(1.5) = 1, held at min_limit
        ((None, 0, False), 2),  # nothing to learn
    ]
    for (rtt, in_flight, dropped), expected in steps:
        assert aimd.update(rtt, in_flight, dropped) == expected
        assert aimd.limit == expected


def test_vegas_rule() -> None:
    """Queue = ceil(limit * (1 - noload / rtt)): <= 1 adds beta, < alpha adds 1, > beta takes 1."""
    vegas = rs.Vegas(probe_multiplier=1000, seed=1)
    vegas.start(20, 1, 100)
    steps = [
        ((0.010, 20, False), 20),  # the first window sets rtt_noload
        ((0.010, 20, False), 26),  # no queue: + beta (6 * log10_root)
        ((0.0108, 26, False), 27),  # queue 2 < alpha 3: + 1
        ((0.0125, 27, False), 27),  # queue 6: between alpha and beta, hold
        ((0.020, 27, False), 26),  # queue 14 > beta 6: - 1
        ((0.020, 26, True), 25),  # a drop: - 1
        ((0.010, 10, False), 25),  # less than half in use: no drift up
        ((None, 0, True), 24),  # only drops
        ((None, 0, False), 24),
        ((0.005, 24, False), 24),  # a faster window: the new rtt_noload
    ]
    for (rtt, in_flight, dropped), expected in steps:
        assert vegas.update(rtt, in_flight, dropped) == expected
    assert vegas.rtt_noload == 0.005


def test_vegas_thresholds_smoothing_and_functions_can_be_set() -> None:
    """alpha, beta, threshold as numbers or functions; increase, decrease; smoothing."""
    vegas = rs.Vegas(
        alpha=3,
        beta=lambda limit: 2,
        threshold=0,
        increase=lambda limit: limit * 2,
        decrease=lambda limit: limit / 2,
        smoothing=0.5,
        probe_multiplier=1000,
    )
    vegas.start(16, 1, 100)
    vegas.update(0.010, 16, False)
    assert vegas.update(0.011, 16, False) == 24  # queue 2 < alpha 3: double, half smoothed
    assert vegas.update(0.020, 24, False) == 18  # queue 12 > beta 2: halve, half smoothed
    assert vegas.update(0.010, 18, False) == 19  # queue 0 <= threshold 0: + beta, smoothed


def test_vegas_probes_rtt_noload_again() -> None:
    """Every probe_multiplier * limit windows (jittered) it takes the current time as no-load."""
    vegas = rs.Vegas(probe_multiplier=1, seed=7)
    vegas.start(10, 1, 100)
    vegas.update(0.010, 10, False)
    for _ in range(10):
        vegas.update(0.050, 10, False)
    assert vegas.rtt_noload == 0.050  # re-measured within 10 windows


def test_aimd_default_timeout_is_five_seconds_and_a_window_at_it_is_in_time() -> None:
    """A window exactly as slow as ``timeout`` (5 s by default) is in time; a slower one is not."""
    aimd = rs.AIMD()
    assert aimd.settings() == {"backoff_ratio": 0.9, "timeout": 5.0}
    aimd.start(10, 1, 20)
    assert aimd.update(5.0, 5, False) == 11
    assert aimd.update(5.5, 6, False) == 9  # int(11 * 0.9)


def test_each_algorithm_has_the_name_configuration_files_use() -> None:
    """AIMD, Vegas and Gradient2 name themselves as a configuration file names them."""
    from resilience.config import _ALGORITHMS

    assert {cls.name: cls for cls in (rs.AIMD, rs.Vegas, rs.Gradient2)} == _ALGORITHMS
    assert rs.LimitAlgorithm.name == "custom"


def test_vegas_default_thresholds_grow_with_log10_of_the_limit() -> None:
    """At a limit of 100, f = 2: threshold 2, alpha 6, beta 12; half the limit in use is in use."""
    vegas = rs.Vegas(probe_multiplier=10000)
    vegas.start(100, 1, 1000)
    steps = [
        ((0.010, 100), 100),  # rtt_noload
        ((0.0105, 50), 102),  # queue ceil(4.76) = 5 < alpha 6: + f; 50 of 100 is in use
        ((0.0106, 51), 102),  # queue ceil(5.77) = 6, not below alpha: hold
        ((0.01127, 51), 102),  # queue ceil(11.49) = 12, not above beta: hold
        ((0.0114, 51), 100),  # queue ceil(12.53) = 13 > beta 12: - f
    ]
    for (rtt, in_flight), expected in steps:
        assert vegas.update(rtt, in_flight, False) == expected


def test_vegas_bounds_the_target_before_smoothing() -> None:
    """The target is held to max_limit before smoothing: (20 + 22) / 2, not (20 + 26) / 2."""
    vegas = rs.Vegas(smoothing=0.5, probe_multiplier=10000)
    vegas.start(20, 1, 22)
    vegas.update(0.010, 20, False)
    assert vegas.update(0.010, 20, False) == 21


class Draws(random.Random):
    """A random source whose uniform() answers the given values in turn, and keeps its ranges."""

    def __init__(self, *values: float) -> None:
        super().__init__(0)
        self.values = list(values)
        self.ranges: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.ranges.append((a, b))
        return self.values.pop(0)


def test_vegas_probes_after_exactly_jitter_times_multiplier_times_limit_windows() -> None:
    """With jitter j drawn in [0.5, 1), the probe comes at window j * probe_multiplier * limit.

    A probe takes the window's time as the new rtt_noload and changes nothing else,
    even with the limit in use; the count starts again with a new jitter.
    """
    draws = Draws(0.5, 0.75, 0.5)
    vegas = rs.Vegas(probe_multiplier=2, seed=draws)
    assert (vegas.rtt_noload, draws.ranges) == (0.0, [(0.5, 1.0)])
    vegas.start(10, 1, 100)
    assert vegas.update(0.010, 0, False) == 10  # window 1: the first rtt_noload
    for _ in range(8):  # windows 2 to 9, slower, the limit not in use
        assert vegas.update(0.020, 0, False) == 10
    assert vegas.rtt_noload == 0.010
    assert vegas.update(0.020, 10, False) == 10  # window 10 = 0.5 * 2 * 10: the probe
    assert (vegas.rtt_noload, draws.ranges) == (0.020, [(0.5, 1.0)] * 2)
    for _ in range(14):
        vegas.update(0.030, 0, False)
    assert vegas.rtt_noload == 0.020
    vegas.update(0.030, 0, False)  # window 15 = 0.75 * 2 * 10 after the probe
    assert vegas.rtt_noload == 0.030


def test_vegas_takes_the_first_window_as_rtt_noload_however_slow() -> None:
    """The first window sets rtt_noload even when it took seconds, and moves nothing."""
    vegas = rs.Vegas(probe_multiplier=10000)
    vegas.start(10, 1, 100)
    assert vegas.update(2.0, 10, False) == 10
    assert vegas.rtt_noload == 2.0


def test_gradient2_rule() -> None:
    """limit * clamp(tolerance * long / short, 0.5, 1) + queue, smoothed by 0.2."""
    gradient = rs.Gradient2()
    gradient.start(20, 1, 200)
    assert gradient.update(0.010, 20, False) == pytest.approx(20.8)  # 0.8 * 20 + 0.2 * 24
    assert gradient.long_rtt == pytest.approx(0.010)
    assert gradient.update(0.010, 5, False) == pytest.approx(20.8)  # not in use: hold
    # long = mean(0.010, 0.010, 0.030): gradient = 1.5 * (0.05 / 3) / 0.03 = 0.8333
    expected = 20.8 * 0.8 + (20.8 * (1.5 * (0.05 / 3) / 0.03) + 4) * 0.2
    assert gradient.update(0.030, 20, False) == pytest.approx(expected)
    assert gradient.update(None, 20, True) == pytest.approx(expected)  # drops: ignored


def test_gradient2_averages_and_forgets_a_past_overload() -> None:
    """A plain mean for 10 windows, then an EMA; a long time twice the short one is cut by 5 %."""
    gradient = rs.Gradient2(long_window=9, queue_size=lambda limit: 0)
    gradient.start(50, 1, 200)
    for _ in range(10):
        gradient.update(0.040, 50, False)
    assert gradient.long_rtt == pytest.approx(0.040)
    gradient.update(0.010, 50, False)  # EMA factor 2 / 10: 0.034, then 0.034 / 0.010 > 2
    assert gradient.long_rtt == pytest.approx(0.034 * 0.95)
    assert gradient.update(0.500, 50, False) == pytest.approx(50 * 0.8 + 25 * 0.2)  # clamped 0.5


def test_gradient2_with_smoothing_one_takes_the_new_limit_when_half_is_in_use() -> None:
    """Smoothing 1 keeps nothing of the old limit; half the limit in flight is in use, less not."""
    gradient = rs.Gradient2(smoothing=1.0)
    assert gradient.long_rtt == 0.0  # no average before the first window
    gradient.start(20, 1, 200)
    assert gradient.update(0.010, 10, False) == 24  # 20 * 1 + 4; 10 of 20 is in use
    assert gradient.update(0.010, 11, False) == 24  # 11 of 24 is not


def test_gradient2_cuts_long_rtt_only_when_more_than_twice_the_short_one() -> None:
    """A long average exactly twice the last window is kept; beyond twice it loses 5 %."""
    gradient = rs.Gradient2(queue_size=0)
    gradient.start(50, 1, 200)
    gradient.update(0.625, 50, False)
    gradient.update(0.625, 50, False)
    gradient.update(0.25, 50, False)  # mean 1.5 / 3 = 0.5: exactly twice 0.25
    assert gradient.long_rtt == 0.5
    gradient.update(0.2, 50, False)  # mean 1.7 / 4 = 0.425: 2.125 times 0.2
    assert gradient.long_rtt == pytest.approx(0.425 * 0.95)


# -- windows and the limit -------------------------------------------------------------------------


def test_a_window_closes_with_its_summary(clock: FakeClock) -> None:
    """At the end of a window the algorithm gets the mean time, the peak in flight, the drops."""
    scripted = Scripted(5)
    adaptive = limiter(scripted, clock=clock, initial_limit=4, window_samples=3)
    permits = [adaptive.try_acquire() for _ in range(3)]
    assert adaptive.in_flight == 3
    clock.advance(0.5)
    permits[0].record()  # 0.5 s
    clock.advance(0.5)
    permits[1].record()  # 1.0 s: the window is due, but holds 2 samples of 3
    assert scripted.seen == []
    permits[2].record()  # 1.0 s
    assert scripted.seen == [(pytest.approx(2.5 / 3), 3, False)]
    assert adaptive.limit == 5
    permits[2].record()  # ending a permit twice does nothing
    assert adaptive.in_flight == 0


def test_a_drop_closes_a_due_window_at_once(clock: FakeClock) -> None:
    """A drop need not wait for window_samples: overload is news."""
    scripted = Scripted(2)
    adaptive = limiter(scripted, clock=clock, initial_limit=4, window_samples=10)
    fast, dropped = adaptive.try_acquire(), adaptive.try_acquire()
    clock.advance(1)
    fast.record()
    dropped.drop()
    dropped.drop()
    assert scripted.seen == [(1.0, 2, True)]
    assert adaptive.metrics() == rs.metrics.AdaptiveLimiterMetrics(
        limit=2, in_flight=0, queued=0, rejected=0, dropped=1
    )


def test_the_window_after_a_drop_again_needs_its_samples(clock: FakeClock) -> None:
    """A drop closes its window early, once: the next window waits for window_samples again."""
    scripted = Scripted(4, 4)
    adaptive = limiter(scripted, clock=clock, initial_limit=4, window_samples=2)
    clock.advance(1)
    adaptive.try_acquire().drop()
    assert scripted.seen == [(None, 1, True)]
    clock.advance(1)
    permit = adaptive.try_acquire()
    clock.advance(1)
    permit.record()  # due, but one sample of two and no drop
    assert len(scripted.seen) == 1


def test_a_drop_after_the_window_ended_closes_it(clock: FakeClock) -> None:
    """A drop that comes after the window's end (not at it) closes the window too."""
    scripted = Scripted(2)
    adaptive = limiter(scripted, clock=clock, initial_limit=4, window_samples=10)
    permit = adaptive.try_acquire()
    clock.advance(1.5)
    permit.drop()
    assert scripted.seen == [(None, 1, True)]
    assert adaptive.limit == 2


def test_a_drop_before_the_window_ends_waits_for_it(clock: FakeClock) -> None:
    """A drop marks the window; the window still ends on time, then counts it."""
    scripted = Scripted(3)
    adaptive = limiter(scripted, clock=clock, initial_limit=4)
    adaptive.try_acquire().drop()
    assert scripted.seen == []
    clock.advance(1)
    permit = adaptive.try_acquire()
    clock.advance(0.5)
    permit.record()
    assert scripted.seen == [(0.5, 1, True)]


def test_calls_too_fast_to_time_and_ignored_ones_teach_nothing(clock: FakeClock) -> None:
    """A 0 s call is no sample; an ignored permit only gives its slot back."""
    scripted = Scripted(9)
    adaptive = limiter(scripted, clock=clock, initial_limit=4)
    clock.advance(2)
    adaptive.try_acquire().record()  # 0 s: closes the due window with nothing to learn
    adaptive.try_acquire().ignore()
    assert scripted.seen == []
    assert adaptive.limit == 4
    assert adaptive.in_flight == 0


def test_a_lower_limit_is_owed_by_the_calls_running(clock: FakeClock) -> None:
    """Tokens out in running calls are swallowed as they come back; a raise pays debts first."""
    scripted = Scripted(2, 3, 6)
    adaptive = limiter(scripted, clock=clock, initial_limit=4, min_limit=1, max_limit=10)
    with EventRecorder().watch(adaptive) as recorder:
        held = [adaptive.try_acquire() for _ in range(4)]
        assert adaptive.try_acquire() is None
        clock.advance(1)
        held.pop().record()  # closes the window: limit 2, with 3 calls still running
        assert (adaptive.limit, adaptive.in_flight) == (2, 3)
        held.pop().record()  # owed
        assert adaptive.try_acquire() is None
        clock.advance(1)
        held.pop().record()  # closes a window: limit 3; paid back, one call running
        assert (adaptive.limit, adaptive.in_flight) == (3, 1)
        extra = [adaptive.try_acquire(), adaptive.try_acquire()]
        assert adaptive.try_acquire() is None
        clock.advance(1)
        extra.pop().record()  # limit 6
        assert (adaptive.limit, adaptive.in_flight) == (6, 2)
        assert len([adaptive.try_acquire() for _ in range(4)]) == 4
        assert adaptive.try_acquire() is None
    changes = recorder.of(rs.events.LimitChange)
    assert [(c.old, c.new) for c in changes] == [(4, 2), (2, 3), (3, 6)]
    assert changes[0].describe() == (
        "limit_changed",
        None,
        {
            "resilience.adaptive_limiter.limit": 2,
            "resilience.adaptive_limiter.previous_limit": 4,
        },
    )
    assert changes[0] == rs.events.LimitChange(None, 4, 2, 1.0, 4, False, 1.0)
    assert adaptive.rejected == 4


def test_the_core_owes_what_running_calls_hold_and_forgives_on_a_rise(clock: FakeClock) -> None:
    """The slot core (no I/O): a lower limit owes the slots held above it, which vanish as they
    come back; a higher limit first cancels debts not yet collected."""
    core = limiter(clock=clock, initial_limit=2)._core
    with core.mutex:
        assert (core.take(1, 0), core.take(1, 0), core.take(1, 0)) == (True, True, False)
        core.resize(1)  # both slots are out: one is owed
    assert (core.capacity, core.queue.debts, core.in_flight()) == (1, 1, 2)
    assert core.queue.waiting == 0  # a debt is nobody waiting
    core.release()  # the debt takes it: the slot is gone
    assert (core.queue.debts, core.available(), core.in_flight()) == (0, 0, 1)
    core.release()
    assert (core.available(), core.in_flight()) == (1, 0)
    with core.mutex:
        assert core.take(1, 0)
        core.resize(3)  # two more, kept in the reserve until used
    assert (core.available(), core.in_flight(), len(core.free)) == (2, 1, 0)
    with core.mutex:
        core.resize(1)  # the two unused slots are taken back, nothing owed
    assert (core.available(), core.queue.debts, core.in_flight()) == (0, 0, 1)
    with core.mutex:
        assert core.take(1, 0) is False


def test_a_rise_cancels_debts_not_yet_collected(clock: FakeClock) -> None:
    """Lowered below the calls running, then raised again before they end: nothing is owed."""
    core = limiter(clock=clock, initial_limit=3)._core
    with core.mutex:
        for _ in range(3):
            assert core.take(1, 0)
        core.resize(1)
    assert core.queue.debts == 2
    with core.mutex:
        core.resize(4)
    assert (core.queue.debts, core.queue.count, core.available(), core.in_flight()) == (0, 0, 1, 3)
    for _ in range(3):
        core.release()
    assert (core.available(), core.in_flight()) == (4, 0)


class Snatching(deque[None]):
    """A free list where, once armed, another call's fast path takes each token as it lands."""

    def __init__(self, tokens: deque[None]) -> None:
        super().__init__(tokens)
        self.armed = False
        self.snatched = 0

    def append(self, token: None) -> None:
        super().append(token)
        if self.armed:
            self.pop()  # the other call's lock-free take, between two of our steps
            self.snatched += 1


async def test_a_slot_given_back_while_owed_never_passes_through_the_free_list(
    mode: str, clock: FakeClock
) -> None:
    """After the limit falls below the calls running, an ending call pays the debt directly.

    Were the slot put in the free list first, a new call could take it before the
    debt was paid and run over the lowered limit.
    """
    adaptive = limiter(clock=clock, initial_limit=2)
    core = adaptive._core
    free = core.free = Snatching(core.free)
    held = adaptive.try_acquire()
    assert held is not None

    def lowered_while_running() -> str:
        with core.mutex:
            core.resize(1)  # both slots are out: one is owed
        free.armed = True
        return "done"

    assert await run_yielding(mode, adaptive, lowered_while_running) == "done"
    assert (core.queue.debts, free.snatched, core.in_flight()) == (0, 0, 1)
    free.armed = False
    held.ignore()
    assert (core.queue.debts, len(core.free), core.in_flight()) == (0, 1, 0)


def test_a_permit_ended_while_owed_pays_the_debt_directly(clock: FakeClock) -> None:
    """The same for a permit (and every release outside the fast path)."""
    adaptive = limiter(clock=clock, initial_limit=2)
    core = adaptive._core
    first, second = adaptive.try_acquire(), adaptive.try_acquire()
    assert first is not None
    assert second is not None
    with core.mutex:
        core.resize(1)
    free = core.free = Snatching(core.free)
    free.armed = True
    first.ignore()
    assert (core.queue.debts, free.snatched, core.in_flight()) == (0, 0, 1)


def test_a_permit_ended_from_many_threads_at_once_gives_one_slot_back(clock: FakeClock) -> None:
    """Ending is atomic: of 8 threads ending one permit together, one gives the slot back."""
    for _ in range(50):
        adaptive = limiter(clock=clock, initial_limit=4)
        permit = adaptive.try_acquire()
        assert permit is not None
        start = threading.Barrier(8)

        def end(permit: rs.LimitPermit = permit, start: threading.Barrier = start) -> None:
            start.wait(10)
            permit.ignore()

        threads = [threading.Thread(target=end) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert (len(adaptive._core.free), adaptive.in_flight) == (4, 0)
        assert repr(permit) == "LimitPermit(done=True)"


# -- calls through the limiter ---------------------------------------------------------------------


async def test_a_full_limiter_refuses_with_its_own_error(mode: str, clock: FakeClock) -> None:
    """At the limit, with no queue, a call is refused at once with LimitExceededError."""
    adaptive = limiter(clock=clock, initial_limit=1, name="search")
    held = adaptive.try_acquire()
    with (
        EventRecorder().watch(adaptive) as recorder,
        pytest.raises(rs.LimitExceededError) as caught,
    ):
        await run_yielding(mode, adaptive, lambda: "never")
    assert str(caught.value) == "adaptive limiter 'search' is at its limit: 1 calls are running"
    assert isinstance(caught.value, rs.RejectedError)
    assert (caught.value.name, caught.value.retry_after) == ("search", None)
    assert recorder.of(rs.events.AdaptiveLimiterEvent) == [
        rs.events.AdaptiveLimiterEvent("search", "rejected", 0.0, 1, caught.value)
    ]
    held.ignore()
    assert await run_yielding(mode, adaptive, lambda: "now") == "now"
    assert adaptive.rejected == 1


async def test_timeouts_are_drops_other_errors_are_ignored(mode: str, clock: FakeClock) -> None:
    """TimeoutError lowers the limit; a ValueError says nothing about load; slots come back."""
    adaptive = limiter(rs.AIMD(backoff_ratio=0.5), clock=clock, initial_limit=8)

    def times_out() -> None:
        raise rs.TimeoutExceeded(1.0)

    def fails() -> None:
        raise ValueError("bad input")

    clock.advance(1)
    with pytest.raises(ValueError, match="bad input"):
        await run_yielding(mode, adaptive, fails)
    assert adaptive.limit == 8
    with pytest.raises(rs.TimeoutExceeded):
        await run_yielding(mode, adaptive, times_out)
    assert adaptive.limit == 4
    assert adaptive.metrics().dropped == 1
    assert adaptive.in_flight == 0


async def test_drop_on_takes_types_or_a_predicate(mode: str, clock: FakeClock) -> None:
    """drop_on says which errors are overload; a failing predicate still frees the slot."""
    adaptive = limiter(rs.AIMD(backoff_ratio=0.5), clock=clock, initial_limit=8, drop_on=KeyError)
    clock.advance(1)
    with pytest.raises(KeyError):
        await run_yielding(mode, adaptive, {}.__getitem__, "x")
    assert adaptive.limit == 4

    def broken(error: BaseException) -> bool:
        raise RuntimeError("predicate")

    assert adaptive.drop_on is KeyError
    picky = limiter(clock=clock, initial_limit=2, drop_on=broken)
    with pytest.raises(RuntimeError, match="predicate"):
        await run_yielding(mode, picky, {}.__getitem__, "x")
    assert picky.in_flight == 0


class Abort(BaseException):
    """An exception that is not an Exception, and not control flow either."""


def test_only_exceptions_can_be_drops(clock: FakeClock) -> None:
    """A BaseException that is not an Exception is never a drop, whatever drop_on says."""
    adaptive = limiter(clock=clock, initial_limit=2, drop_on=lambda error: True)

    def aborts() -> None:
        raise Abort

    clock.advance(1)
    with pytest.raises(Abort):
        adaptive.call(aborts)
    assert (adaptive.in_flight, adaptive.metrics().dropped, adaptive.limit) == (0, 0, 2)


def test_control_flow_frees_the_slot_and_is_no_drop(clock: FakeClock) -> None:
    """KeyboardInterrupt passes through, gives the slot back, and teaches nothing."""
    adaptive = limiter(clock=clock, initial_limit=1)

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        adaptive.call(interrupted)
    assert (adaptive.in_flight, adaptive.metrics().dropped) == (0, 0)


async def test_successes_are_timed_samples(mode: str, clock: FakeClock) -> None:
    """A successful call is a sample of its own time, as the clock measured it."""
    scripted = Scripted(3)
    adaptive = limiter(scripted, clock=clock, initial_limit=2)

    def takes_two_seconds() -> str:
        clock.advance(2)
        return "done"

    assert await run_yielding(mode, adaptive, takes_two_seconds) == "done"
    assert scripted.seen == [(2.0, 1, False)]
    assert adaptive.limit == 3


async def test_cancellation_is_a_drop_and_returns_the_slot(
    clock: FakeClock, async_mode: str
) -> None:
    """A task cancelled inside the limiter counts as a drop, never as a fast success."""
    scripted = Scripted(1)
    adaptive = limiter(scripted, clock=clock, initial_limit=2)
    started = Event()

    async def hangs() -> None:
        started.set()
        await forever()

    task = create_task(adaptive.acall(hangs))
    await started.wait()
    assert adaptive.in_flight == 1
    clock.advance(1)
    task.cancel()
    with pytest.raises(task_cancelled(async_mode)):
        await task
    assert adaptive.in_flight == 0
    assert scripted.seen == [(None, 1, True)]
    assert adaptive.metrics().dropped == 1


async def test_an_outer_timeout_is_a_drop_not_a_fast_success(async_mode: str) -> None:
    """A Timeout outside the limiter cancels the call: the limiter sees a drop, not a sample."""
    clock = FakeClock()
    scripted = Scripted(1)
    adaptive = limiter(scripted, clock=clock, initial_limit=2)
    pipeline = rs.Pipeline.builder().add(rs.Timeout(1, clock=clock)).add(adaptive).build()

    async def slow() -> None:
        await clock.asleep(5)

    with pytest.raises(rs.TimeoutExceeded):
        await pipeline.acall(slow)
    assert scripted.seen == [(None, 1, True)]
    assert adaptive.in_flight == 0


async def test_calls_queue_for_a_slot_in_order(clock: FakeClock) -> None:
    """With max_queue, calls wait first come first served; beyond it they are refused."""
    adaptive = limiter(clock=clock, initial_limit=1, max_queue=2)
    gate = asyncio.Event()
    order: list[int] = []

    async def work(i: int) -> int:
        await gate.wait()
        order.append(i)
        return i

    with EventRecorder().watch(adaptive) as recorder:
        tasks = [asyncio.create_task(adaptive.acall(work, i)) for i in range(3)]
        await asyncio.sleep(0)
        assert (adaptive.in_flight, adaptive.queued) == (1, 2)
        with pytest.raises(rs.LimitExceededError, match="its queue of 2 is full"):
            await adaptive.acall(work, 3)
        gate.set()
        assert await asyncio.gather(*tasks) == [0, 1, 2]
    assert order == [0, 1, 2]
    assert [e.outcome for e in recorder.of(rs.events.AdaptiveLimiterEvent)] == [
        "rejected",
        "waited",
        "waited",
    ]


async def test_a_slot_that_came_back_is_taken_without_queueing(clock: FakeClock) -> None:
    """The slow path looks again before it queues: a slot given back meanwhile is taken."""
    adaptive = limiter(clock=clock, initial_limit=1, max_queue=1)
    adaptive._admit()
    assert adaptive.in_flight == 1
    adaptive._core.release()
    await adaptive._aadmit()
    assert (adaptive.in_flight, adaptive.queued) == (1, 0)


async def test_try_acquire_never_takes_a_free_slot_from_the_queue(clock: FakeClock) -> None:
    """A slot in the free list while calls wait is theirs: try_acquire refuses.

    That happens for a moment when a waiter granted a slot leaves without it: the
    slot goes back to the free list, then the queue hands it to the next waiter.
    """
    adaptive = limiter(clock=clock, initial_limit=1, max_queue=1)
    held = adaptive.try_acquire()
    assert held is not None
    waiting = asyncio.create_task(adaptive.acall(asyncio.sleep, 0, "served"))
    await asyncio.sleep(0)
    assert adaptive.queued == 1
    core = adaptive._core
    core.free.append(None)  # a slot given back, not yet handed to the waiter
    assert adaptive.try_acquire() is None
    assert (len(core.free), adaptive.rejected) == (1, 1)
    core.free.pop()
    held.ignore()
    assert await waiting == "served"


def test_layers_inside_the_limiter_run(clock: FakeClock) -> None:
    """With a layer inside it (here a Retry), the limiter calls through that layer."""
    adaptive = limiter(clock=clock, initial_limit=2)
    retry = rs.Retry(2, backoff=0, clock=clock)
    pipeline = rs.Pipeline.builder().add(adaptive).add(retry).build()
    attempts: list[int] = []

    def fails_once() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise ValueError("first")
        return "second"

    assert pipeline.call(fails_once) == "second"
    assert (len(attempts), adaptive.in_flight) == (2, 0)


async def test_a_higher_limit_serves_the_queue(clock: FakeClock) -> None:
    """Tokens added by a raise go to the calls waiting, in order."""
    adaptive = limiter(Scripted(4), clock=clock, initial_limit=2, max_queue=2)
    first, second = adaptive.try_acquire(), adaptive.try_acquire()
    waiting = [asyncio.create_task(adaptive.acall(asyncio.sleep, 0, i)) for i in range(2)]
    await asyncio.sleep(0)
    assert adaptive.queued == 2
    assert adaptive.try_acquire() is None  # the queue comes first
    clock.advance(1)
    second.record()  # its slot goes to the first waiter; the new limit 4 serves the second
    assert (adaptive.limit, adaptive.queued) == (4, 0)
    assert await asyncio.gather(*waiting) == [0, 1]
    first.ignore()


async def test_a_waiter_cancelled_after_its_grant_gives_the_slot_back(
    clock: FakeClock, async_mode: str
) -> None:
    """A task granted a slot but cancelled before it ran hands the slot back."""
    adaptive = limiter(clock=clock, initial_limit=1, max_queue=1)
    held = adaptive.try_acquire()
    task = create_task(adaptive.acall(checkpoint))
    await settle()
    held.ignore()  # grants the slot to the task, which has not run yet
    task.cancel()
    with pytest.raises(task_cancelled(async_mode)):
        await task
    assert (adaptive.in_flight, adaptive.queued, adaptive.metrics().dropped) == (0, 0, 0)


def test_a_thread_waits_at_most_max_wait() -> None:
    """A queued thread that gets no slot within max_wait is refused, after waiting."""
    clock = WatchedClock()
    adaptive = limiter(clock=clock, initial_limit=1, max_queue=1, max_wait=2)
    held = adaptive.try_acquire()
    caught: list[BaseException] = []

    def queued() -> None:
        try:
            adaptive.call(lambda: None)
        except rs.LimitExceededError as exc:
            caught.append(exc)

    thread = threading.Thread(target=queued)
    thread.start()
    clock.wait_for_a_blocked_thread()
    assert adaptive.queued == 1
    with pytest.raises(rs.LimitExceededError, match="its queue of 1 is full"):
        adaptive.call(lambda: None)  # the queue comes first, and it is full
    clock.advance(2)
    thread.join(30)
    assert not thread.is_alive(), "the queued thread did not give up after max_wait"
    assert str(caught[0]) == "adaptive limiter is at its limit: no slot came free in 2s"
    assert (adaptive.queued, adaptive.rejected) == (0, 2)
    held.ignore()
    assert adaptive.try_acquire() is not None


def test_a_thread_gets_a_slot_given_back_while_it_waits() -> None:
    """A call that ends hands its slot to the first waiting thread."""
    clock = WatchedClock(auto_advance=True)
    adaptive = limiter(clock=clock, initial_limit=1, max_queue=1)
    entered, release = threading.Event(), threading.Event()
    results: list[str] = []

    def holder() -> str:
        entered.set()
        release.wait(30)
        return "held"

    threads = [
        threading.Thread(target=lambda: results.append(adaptive.call(holder))),
        threading.Thread(target=lambda: results.append(adaptive.call(lambda: "served"))),
    ]
    threads[0].start()
    assert entered.wait(30), "the first call never got its slot"
    assert adaptive.in_flight == 1
    threads[1].start()
    clock.wait_for_a_blocked_thread()
    assert adaptive.queued == 1
    release.set()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads), "a call never ended"
    assert results == ["held", "served"]
    assert adaptive.in_flight == 0


def test_a_queued_thread_never_waits_past_the_call_deadline() -> None:
    """The wait in the queue ends at the deadline of an outer Timeout; max_wait=0 never waits."""
    clock = WatchedClock()
    adaptive = limiter(clock=clock, initial_limit=1, max_queue=1)
    pipeline = rs.Pipeline.builder().add(rs.Timeout(1.5, clock=clock)).add(adaptive).build()
    held = adaptive.try_acquire()
    caught: list[BaseException] = []

    def queued() -> None:
        try:
            pipeline.call(lambda: None)
        except rs.LimitExceededError as exc:
            caught.append(exc)

    thread = threading.Thread(target=queued)
    thread.start()
    clock.wait_for_a_blocked_thread()
    assert adaptive.queued == 1
    clock.advance(1.5)
    thread.join(30)
    assert not thread.is_alive(), "the queued thread waited past the deadline"
    assert str(caught[0]).endswith("no slot came free in 1.5s")
    impatient = limiter(clock=clock, initial_limit=1, max_queue=1, max_wait=0)
    impatient.try_acquire()
    with pytest.raises(rs.LimitExceededError, match="its queue of 1 is full"):
        impatient.call(lambda: None)
    held.ignore()


# -- concurrency -----------------------------------------------------------------------------------


def test_eight_threads_never_exceed_the_limit_and_leak_no_slot() -> None:
    """8 threads, 2,000 calls each, while the limit jumps between 2 and 6 at every call."""
    limits = [2.0, 6.0] * 20000
    adaptive = rs.AdaptiveLimiter(
        Scripted(*limits), initial_limit=4, max_limit=6, window_seconds=0, window_samples=1
    )
    running = 0
    peak = 0
    lock = threading.Lock()
    outcomes = {"ok": 0, "refused": 0}

    def work() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        threading.Event().wait(0)
        with lock:
            running -= 1

    def hammer() -> None:
        ok = refused = 0
        for _ in range(2000):
            try:
                adaptive.call(work)
            except rs.LimitExceededError:
                refused += 1
            else:
                ok += 1
        with lock:
            outcomes["ok"] += ok
            outcomes["refused"] += refused

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads), "a thread never finished its calls"
    assert outcomes["ok"] + outcomes["refused"] == 16000
    assert outcomes["refused"] == adaptive.rejected
    assert peak <= 6
    core = adaptive._core
    assert core.queue.debts == 0
    assert core.available() == core.capacity == adaptive.limit
    assert adaptive.in_flight == 0


async def test_a_thousand_tasks_queue_and_all_get_through() -> None:
    """1,000 tasks through a limit of 10 with a long queue: all served, never more than 10."""
    adaptive = rs.AdaptiveLimiter(Scripted(), initial_limit=10, max_queue=1000, window_samples=1000)
    running = 0
    peak = 0

    async def work(i: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0)
        running -= 1
        return i

    results = await asyncio.gather(*(adaptive.acall(work, i) for i in range(1000)))
    assert results == list(range(1000))
    assert peak == 10
    assert (adaptive.in_flight, adaptive.queued, adaptive.rejected) == (0, 0, 0)


async def test_a_task_cancelled_in_the_queue_takes_no_slot(async_mode: str) -> None:
    """A queued task that is cancelled leaves the queue; the slot goes to the next in line."""
    adaptive = rs.AdaptiveLimiter(initial_limit=1, max_queue=5)
    held = adaptive.try_acquire()

    async def next_() -> str:
        return "next"

    waiting = create_task(adaptive.acall(checkpoint))
    await settle()  # in the queue first (trio runs new tasks in any order)
    behind = create_task(adaptive.acall(next_))
    await settle()
    assert adaptive.queued == 2
    waiting.cancel()
    await settle()
    assert adaptive.queued == 1
    held.ignore()
    assert await behind == "next"
    assert adaptive.in_flight == 0
    assert adaptive.metrics().dropped == 0


# -- the simulation: a server whose latency rises past its capacity --------------------------------


@dataclass
class Server:
    """C workers, BASE seconds a call: with n calls in, each takes BASE * max(1, n / C)."""

    capacity: int
    base: float
    running: int = 0


@dataclass(order=True)
class Completion:
    at: float
    order: int
    permit: rs.LimitPermit = field(compare=False)


def simulate(
    algorithm: rs.LimitAlgorithm, phases: list[tuple[float, int]], *, window: float = 0.1
) -> list[tuple[float, int]]:
    """A discrete-event run on a FakeClock: open-loop arrivals at 1.25x the largest capacity.

    Returns ``(time, limit)`` each time the limit changed. No real time passes.
    """
    base = 0.020
    clock = FakeClock()
    adaptive = rs.AdaptiveLimiter(
        algorithm, clock=clock, window_seconds=window, window_samples=10, max_limit=500
    )
    server = Server(phases[0][1], base)
    gap = base / (1.25 * max(c for _, c in phases))
    pending: list[Completion] = []
    trace = [(0.0, adaptive.limit)]
    order = 0
    start = 0.0
    for seconds, capacity in phases:
        server.capacity = capacity
        arrival = start
        while arrival < start + seconds:
            while pending and pending[0].at <= arrival:
                done = heapq.heappop(pending)
                clock.advance(done.at - clock.monotonic())
                server.running -= 1
                done.permit.record()
            clock.advance(arrival - clock.monotonic())
            permit = adaptive.try_acquire()
            if permit is not None:
                server.running += 1
                order += 1
                latency = base * max(1.0, server.running / server.capacity)
                heapq.heappush(pending, Completion(arrival + latency, order, permit))
            if adaptive.limit != trace[-1][1]:
                trace.append((clock.monotonic(), adaptive.limit))
            arrival += gap
        start += seconds
    return trace


def windows_to_settle(
    trace: list[tuple[float, int]], start: float, end: float, capacity: int, window: float
) -> float | None:
    """Windows after ``start`` until the limit enters C +-25 % and stays there until ``end``."""
    low, high = 0.75 * capacity, 1.25 * capacity
    limit = [value for at, value in trace if at <= start][-1]
    entered = start if low <= limit <= high else None
    for at, value in trace:
        if start < at < end:
            inside = low <= value <= high
            entered = (entered if entered is not None else at) if inside else None
    return None if entered is None else (entered - start) / window


@pytest.mark.parametrize(
    "make",
    [
        lambda: rs.Vegas(seed=3),
        lambda: rs.AIMD(timeout=1.2 * 0.020),
        lambda: rs.Gradient2(rtt_tolerance=1.0),
    ],
    ids=["vegas", "aimd", "gradient2"],
)
def test_the_limit_finds_the_capacity_and_follows_it(make: Callable[[], rs.LimitAlgorithm]) -> None:
    """The limit settles within +-25 % of C, then of C/2, then of C again, each within 40 windows.

    C = 64 workers at 20 ms a call (3,200 calls/s), offered 4,000 calls/s;
    windows of 0.1 s (about 320 calls each). AIMD only sees latency through
    its timeout, set here at 1.2x the unloaded time; Gradient2's default
    tolerance of 1.5 accepts 50 % queueing by design (see the docs), so the
    test asks for 1.0.
    """
    window = 0.1
    phases = [(8.0, 64), (6.0, 32), (6.0, 64)]
    trace = simulate(make(), phases, window=window)
    start = 0.0
    for seconds, capacity in phases:
        settled = windows_to_settle(trace, start, start + seconds, capacity, window)
        assert settled is not None, (capacity, trace)
        assert settled <= 40, (capacity, settled)
        start += seconds


def test_update_checks_its_arguments_as_the_constructor_does(clock: FakeClock) -> None:
    """Equal bounds of 1, an empty queue and max_wait 0 or a timedelta are fine; less is refused."""
    adaptive = limiter(clock=clock, initial_limit=4, min_limit=2, max_limit=10, max_queue=2)
    adaptive.update(min_limit=1, max_limit=1, max_queue=0, max_wait=0)
    assert (adaptive.limit, adaptive.min_limit, adaptive.max_limit) == (1, 1, 1)
    assert (adaptive.max_queue, adaptive.max_wait) == (0, 0.0)
    adaptive.update(max_wait=timedelta(milliseconds=1500))
    assert adaptive.max_wait == 1.5
    adaptive.update(max_limit=3)
    assert adaptive.max_wait == 1.5  # kept when not given
    refused = [
        ({"min_limit": 0}, r"^min_limit must be >= 1"),
        ({"max_limit": 0}, r"^max_limit must be >= 1"),
        ({"max_queue": -1}, r"^max_queue must be >= 0"),
        ({"max_wait": -1}, r"^max_wait must be >= 0"),
    ]
    for kwargs, message in refused:
        with pytest.raises(ValueError, match=message):
            adaptive.update(**kwargs)
    assert (adaptive.min_limit, adaptive.max_limit, adaptive.max_queue) == (1, 3, 0)


def test_update_brings_the_algorithm_s_estimate_inside_the_new_bounds(clock: FakeClock) -> None:
    """After max_limit 4 under a limit of 8, AIMD backs off from 4 (to 2), not from 8."""
    adaptive = limiter(rs.AIMD(backoff_ratio=0.5), clock=clock, initial_limit=8, max_limit=10)
    adaptive.update(max_limit=4)
    assert adaptive.algorithm.limit == 4.0
    clock.advance(1)
    adaptive.try_acquire().drop()
    assert adaptive.limit == 2


def test_a_new_limit_and_a_refusal_are_logged(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A limit that moves is logged at DEBUG, a refused call at INFO, on the resilience logger."""
    adaptive = limiter(Scripted(1), clock=clock, initial_limit=2, name="db")
    with caplog.at_level(logging.DEBUG, logger="resilience"):
        clock.advance(1)
        adaptive.try_acquire().drop()
        held = adaptive.try_acquire()
        with pytest.raises(rs.LimitExceededError):
            adaptive.call(lambda: None)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("DEBUG", "resilience: AdaptiveLimiter 'db' limit 2 -> 1"),
        (
            "INFO",
            "resilience: rejected: adaptive limiter 'db' is at its limit: 1 calls are running",
        ),
    ]
    held.ignore()


def test_update_moves_the_bounds_and_the_limit_inside_them(clock: FakeClock) -> None:
    """update(max_limit=) below the current limit lowers it at once; settings are read-only."""
    adaptive = limiter(clock=clock, initial_limit=8, min_limit=2, max_limit=10)
    held = [adaptive.try_acquire() for _ in range(5)]
    adaptive.update(max_limit=4)
    assert (adaptive.limit, adaptive.max_limit, adaptive.in_flight) == (4, 4, 5)
    assert adaptive.try_acquire() is None  # five running over a limit of four: no new call
    for permit in held:
        assert permit is not None
        permit.ignore()
    assert (adaptive.in_flight, adaptive.metrics().limit) == (0, 4)
    assert adaptive.algorithm.max_limit == 4
    adaptive.update(min_limit=6, max_limit=12, max_queue=3)
    assert (adaptive.limit, adaptive.max_queue) == (6, 3)
    with pytest.raises(ValueError, match=r"^max_limit must be >= min_limit \(6\)"):
        adaptive.update(max_limit=5)
    with pytest.raises(AttributeError, match=r"read-only; use AdaptiveLimiter.update"):
        adaptive.max_limit = 3  # type: ignore[misc]
