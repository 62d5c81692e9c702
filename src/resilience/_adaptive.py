"""`AdaptiveLimiter`: a bulkhead whose limit follows measured latency.

A fixed concurrency limit goes stale as soon as the dependency scales or its
latency shifts. An adaptive limiter measures how long calls take and how
many run at once, and moves its limit with a congestion-control rule taken
from TCP, as Netflix's concurrency-limits library does:

* `AIMD`: loss based. Add one while calls succeed in time and the limit is
  in use; multiply by ``backoff_ratio`` on a drop (a timeout) or a call
  slower than ``timeout``.
* `Vegas`: delay based. Estimate the queue as ``limit * (1 - rtt_noload /
  rtt)`` and keep it between ``alpha`` and ``beta``.
* `Gradient2`: delay based. Scale the limit by ``long_rtt / short_rtt``
  (an average over hundreds of windows against the last one), kept in
  [0.5, 1], plus a little room for a queue, smoothed.

Measuring every call under a lock would cost more than the 1 us a call may
spend here, so samples are aggregated in windows, as Netflix's
``WindowedLimit`` does: a successful call appends ``(seconds, in_flight)``
to a bounded `collections.deque` (an atomic step), and the call that ends a
window (at least ``window_seconds`` old, with ``window_samples`` samples or
a drop) takes the lock, summarises it (average time of the successful
calls, most calls in flight, whether any was dropped) and hands that to the
algorithm, once.

The slots are tokens in a `deque`, as in `Bulkhead`: taking one is an
atomic ``pop``, giving it back an atomic ``append``. A new limit adds
tokens, or takes them away; tokens out in running calls are then *owed*,
and swallowed as those calls give them back. Calls that find no token may
wait in the shared FIFO `WaiterQueue` of `resilience._waiters`.
"""

from __future__ import annotations

import logging
import math
import random as _random
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar, Literal

from . import _shells, _shells_sync
from ._aio import is_cancellation
from ._clock import Clock, validate_clock
from ._errors import LimitExceededError
from ._events import AdmissionEvent, Described, ResilienceEvent
from ._middleware import AsyncEndpoint, Endpoint, Middleware, terminal
from ._slots import Admission, Slots
from ._validate import (
    CONTROL_FLOW,
    Matcher,
    exception_matcher,
    integer,
    number,
    optional_name,
    random_source,
)
from ._validate import seconds as _seconds

logger = logging.getLogger("resilience")

__all__ = [
    "AIMD",
    "AdaptiveLimiter",
    "AdaptiveLimiterEvent",
    "AdaptiveLimiterMetrics",
    "Gradient2",
    "LimitAlgorithm",
    "LimitChange",
    "LimitPermit",
    "Vegas",
]

_UNSET: Any = object()

#: The most samples a window keeps (the latest ones): a bound on memory at any rate.
MAX_WINDOW_SAMPLES = 1000
#: The time recorded for a dropped call: a marker, never averaged.
DROPPED = -1.0


def _limit_function(value: object, name: str) -> Callable[[int], float] | None:
    """A number (fixed) or a function of the current limit, as Netflix's builders take."""
    if value is None:
        return None
    if callable(value):
        return value
    fixed = number(value, name, minimum=0.0)
    return lambda _limit: fixed


def log10_root(limit: int) -> int:
    """Netflix's ``Log10RootFunction``: ``max(1, int(log10(limit)))`` below 1000, else the root."""
    if limit < 1000:
        return max(1, int(math.log10(limit))) if limit > 0 else 1
    return int(math.sqrt(limit))


# -- the algorithms: update rules with no I/O --------------------------------------------------


class LimitAlgorithm(ABC):
    """An update rule: one window's measurements in, a new limit out.

    An instance holds the state of one limiter (its estimate and its
    latency baselines); `AdaptiveLimiter` calls `start` once, then `update`
    at the end of each window, under its lock, and refuses an algorithm that
    another limiter already uses. The estimate is a float; the limiter uses
    its integer part.
    """

    name: ClassVar[str] = "custom"

    limit: float
    """The current estimate (set by `start`)."""
    min_limit: int
    max_limit: int
    _started = False

    def start(self, initial: int, minimum: int, maximum: int) -> None:
        """Begin at ``initial``, bounded by ``[minimum, maximum]`` (once: one limiter each)."""
        if self._started:
            raise ValueError(f"{self!r} is already used by a limiter: give each its own")
        self._started = True
        self.limit = float(initial)
        self.min_limit = minimum
        self.max_limit = maximum

    def _bound(self, value: float) -> float:
        return max(float(self.min_limit), min(float(self.max_limit), value))

    @abstractmethod
    def update(self, rtt: float | None, in_flight: int, dropped: bool) -> float:
        """The new estimate after one window.

        ``rtt`` is the average time of the window's successful calls in
        seconds (None when none succeeded), ``in_flight`` the most calls that
        ran at once, ``dropped`` whether any call timed out or was cancelled.
        """

    def settings(self) -> dict[str, Any]:
        """The algorithm's parameters, for `describe()` and `repr()`."""
        return {}

    def __repr__(self) -> str:
        shown = []
        for key, value in self.settings().items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                shown.append(f"{key}={value:g}")
            else:
                shown.append(f"{key}={getattr(value, '__name__', None) or repr(value)}")
        return f"{type(self).__name__}({', '.join(shown)})"


class AIMD(LimitAlgorithm):
    """Additive increase, multiplicative decrease, on loss: Netflix's ``AIMDLimit``.

    After a window with a drop, or whose average call took longer than
    ``timeout`` seconds (default 5), the limit becomes ``int(limit *
    backoff_ratio)`` (default 0.9, in [0.5, 1)). Otherwise, if at least half
    the limit was in use, it grows by one. It reacts to latency only through
    ``timeout``: set that near the latency you can accept.
    """

    name = "aimd"

    def __init__(self, *, backoff_ratio: float = 0.9, timeout: float | timedelta = 5.0) -> None:
        self.backoff_ratio = number(backoff_ratio, "backoff_ratio", minimum=0.5)
        if self.backoff_ratio >= 1.0:
            raise ValueError(f"backoff_ratio must be in [0.5, 1), got {backoff_ratio!r}")
        self.timeout = _seconds(timeout, "timeout")

    def settings(self) -> dict[str, Any]:
        return {"backoff_ratio": self.backoff_ratio, "timeout": self.timeout}

    def update(self, rtt: float | None, in_flight: int, dropped: bool) -> float:
        limit = int(self.limit)
        if dropped or (rtt is not None and rtt > self.timeout):
            limit = int(limit * self.backoff_ratio)
        elif rtt is not None and in_flight * 2 >= limit:
            limit += 1
        self.limit = self._bound(limit)
        return self.limit


class Vegas(LimitAlgorithm):
    """Delay based, after TCP Vegas: Netflix's ``VegasLimit``.

    ``rtt_noload`` is the shortest window average seen (measured again every
    ``probe_multiplier * limit`` windows, jittered by a factor in [0.5, 1),
    so that it can rise). The queue is ``ceil(limit * (1 - rtt_noload /
    rtt))``. With ``f = log10_root(limit)`` (``max(1, int(log10(limit)))``
    below 1000): a queue up to ``threshold`` (default ``f``) adds ``beta``;
    below ``alpha`` (default ``3 f``) adds ``f``; above ``beta`` (default
    ``6 f``) subtracts ``f``; a drop subtracts ``f``. Nothing grows while
    less than half the limit is in use. The new limit is smoothed:
    ``(1 - smoothing) * old + smoothing * new`` (default 1.0: no smoothing).

    ``alpha``, ``beta`` and ``threshold`` take a number or a function of the
    limit; ``increase`` and ``decrease`` a function of the limit that returns
    the new one. ``seed`` (an int or a `random.Random`) fixes the probe jitter.
    """

    name = "vegas"

    def __init__(
        self,
        *,
        alpha: float | Callable[[int], float] | None = None,
        beta: float | Callable[[int], float] | None = None,
        threshold: float | Callable[[int], float] | None = None,
        increase: Callable[[float], float] | None = None,
        decrease: Callable[[float], float] | None = None,
        smoothing: float = 1.0,
        probe_multiplier: int = 30,
        seed: int | _random.Random | None = None,
    ) -> None:
        self.alpha = _limit_function(alpha, "alpha") or (lambda limit: 3 * log10_root(limit))
        self.beta = _limit_function(beta, "beta") or (lambda limit: 6 * log10_root(limit))
        self.threshold = _limit_function(threshold, "threshold") or log10_root
        for name, given in (("increase", increase), ("decrease", decrease)):
            if given is not None and not callable(given):
                raise TypeError(f"{name} must be a function of the limit or None")
        self.increase: Callable[[float], float] = increase or (
            lambda limit: limit + log10_root(int(limit))
        )
        self.decrease: Callable[[float], float] = decrease or (
            lambda limit: limit - log10_root(int(limit))
        )
        self.smoothing = number(smoothing, "smoothing", minimum=0.0, inclusive=False)
        if self.smoothing > 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing!r}")
        self.probe_multiplier = integer(probe_multiplier, "probe_multiplier", minimum=1)
        self.random = random_source(seed)
        self.rtt_noload = 0.0
        self._probe_count = 0
        self._probe_jitter = self.random.uniform(0.5, 1.0)

    def settings(self) -> dict[str, Any]:
        return {"smoothing": self.smoothing, "probe_multiplier": self.probe_multiplier}

    def update(self, rtt: float | None, in_flight: int, dropped: bool) -> float:
        estimate = self.limit
        if rtt is None:  # only drops: nothing to measure, but a drop still counts
            if dropped:
                self.limit = self._smooth(estimate, self.decrease(estimate))
            return self.limit
        self._probe_count += 1
        if self._probe_jitter * self.probe_multiplier * estimate <= self._probe_count:
            self._probe_jitter = self.random.uniform(0.5, 1.0)
            self._probe_count = 0
            self.rtt_noload = rtt  # measure the no-load time again: it may have risen
            return estimate
        if self.rtt_noload == 0.0 or rtt < self.rtt_noload:
            self.rtt_noload = rtt
            return estimate
        queue = math.ceil(estimate * (1.0 - self.rtt_noload / rtt))
        limit = int(estimate)
        if dropped:
            target = self.decrease(estimate)
        elif in_flight * 2 < estimate:
            return estimate  # the limit is not in use: do not let it drift up
        elif queue <= self.threshold(limit):
            target = estimate + self.beta(limit)
        elif queue < self.alpha(limit):
            target = self.increase(estimate)
        elif queue > self.beta(limit):
            target = self.decrease(estimate)
        else:
            return estimate
        self.limit = self._smooth(estimate, target)
        return self.limit

    def _smooth(self, estimate: float, target: float) -> float:
        target = self._bound(target)
        return (1.0 - self.smoothing) * estimate + self.smoothing * target


class Gradient2(LimitAlgorithm):
    """Delay based, on the gradient of two averages: Netflix's ``Gradient2Limit``.

    ``long_rtt`` is an exponential average of the window times over
    ``long_window`` windows (default 600; a plain average for the first
    10), ``short_rtt`` the last window's time. Each window::

        gradient = max(0.5, min(1.0, rtt_tolerance * long_rtt / short_rtt))
        new = limit * gradient + queue_size
        limit = limit * (1 - smoothing) + new * smoothing

    with ``rtt_tolerance`` 1.5, ``queue_size`` 4 (a number or a function of
    the limit) and ``smoothing`` 0.2. When ``long_rtt`` is more than twice
    ``short_rtt`` (load has passed) it is cut by 5 % a window, and nothing
    changes while less than half the limit is in use. As published, the rule
    does not look at drops: a window of nothing but timeouts leaves the
    limit alone.
    """

    name = "gradient2"

    def __init__(
        self,
        *,
        smoothing: float = 0.2,
        queue_size: float | Callable[[int], float] = 4,
        long_window: int = 600,
        rtt_tolerance: float = 1.5,
    ) -> None:
        self.smoothing = number(smoothing, "smoothing", minimum=0.0, inclusive=False)
        if self.smoothing > 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing!r}")
        queue = _limit_function(queue_size, "queue_size")
        if queue is None:
            raise TypeError("queue_size must be a number or a function of the limit, got None")
        self.queue_size = queue
        self._queue_shown = queue_size
        self.long_window = integer(long_window, "long_window", minimum=1)
        self.rtt_tolerance = number(rtt_tolerance, "rtt_tolerance", minimum=1.0)
        self.long_rtt = 0.0
        self._warmup = 0
        self._sum = 0.0

    def settings(self) -> dict[str, Any]:
        return {
            "smoothing": self.smoothing,
            "queue_size": self._queue_shown,
            "long_window": self.long_window,
            "rtt_tolerance": self.rtt_tolerance,
        }

    def _average(self, rtt: float) -> float:
        """Netflix's ``ExpAvgMeasurement``: a plain mean for 10 samples, then an EMA."""
        if self._warmup < 10:
            self._warmup += 1
            self._sum += rtt
            self.long_rtt = self._sum / self._warmup
        else:
            factor = 2.0 / (self.long_window + 1)
            self.long_rtt = self.long_rtt * (1.0 - factor) + rtt * factor
        return self.long_rtt

    def update(self, rtt: float | None, in_flight: int, dropped: bool) -> float:
        estimate = self.limit
        if rtt is None:
            return estimate
        queue = self.queue_size(int(estimate))
        long_rtt = self._average(rtt)
        if long_rtt / rtt > 2.0:
            self.long_rtt = long_rtt = long_rtt * 0.95
        if in_flight < estimate / 2:
            return estimate
        gradient = max(0.5, min(1.0, self.rtt_tolerance * long_rtt / rtt))
        target = estimate * gradient + queue
        target = estimate * (1.0 - self.smoothing) + target * self.smoothing
        self.limit = self._bound(target)
        return self.limit


# -- events and snapshots ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LimitChange(ResilienceEvent):
    """Sent to the limiter's listeners after a window moved its limit."""

    name: str | None
    """The limiter's name."""
    old: int
    new: int
    rtt: float | None
    """The window's average call time in seconds (None if none succeeded)."""
    in_flight: int
    """The most calls in flight during the window."""
    dropped: bool
    """Whether a call of the window timed out or was cancelled."""
    at: float
    """The limiter's clock reading when it happened."""

    event = "limit_changed"

    def describe(self) -> Described:
        details = {
            "resilience.adaptive_limiter.limit": self.new,
            "resilience.adaptive_limiter.previous_limit": self.old,
        }
        return self.event, None, details


@dataclass(frozen=True, slots=True)
class AdaptiveLimiterEvent(AdmissionEvent):
    """Sent to the limiter's listeners when a call waited for a slot or was refused."""

    name: str | None
    outcome: Literal["waited", "rejected"]
    seconds: float
    """Seconds the call spent in the queue (0 for a call refused at once)."""
    limit: int
    """The limit at that moment."""
    error: LimitExceededError | None = None
    """The refusal, for "rejected"."""


@dataclass(frozen=True, slots=True)
class AdaptiveLimiterMetrics:
    """A snapshot of an `AdaptiveLimiter`."""

    limit: int
    """The current limit."""
    in_flight: int
    """Calls holding a slot now."""
    queued: int
    """Calls waiting for a slot."""
    rejected: int
    """Calls refused since the limiter was made."""
    dropped: int
    """Calls that timed out or were cancelled since the limiter was made."""


# -- the core: slots, samples and windows, no I/O ---------------------------------------------


class _Core(Slots):
    """The limiter's `Slots` (see `resilience._slots`), plus the window's samples and its end.

    A new limit goes through `Slots.resize`: more slots, or free ones taken
    back and the rest owed by the calls running.
    """

    __slots__ = ("dropped", "drops", "samples", "window_end")

    def __init__(self, capacity: int, clock: Clock, window_seconds: float) -> None:
        super().__init__(capacity, clock)
        self.samples: deque[tuple[float, int]] = deque(maxlen=MAX_WINDOW_SAMPLES)
        self.dropped = False
        self.drops = 0
        self.window_end = clock.monotonic() + window_seconds


class LimitPermit:
    """One slot of an `AdaptiveLimiter`, taken by `AdaptiveLimiter.try_acquire`.

    End it exactly once: `record` when the call succeeded (its time is a
    sample), `drop` when it timed out or was cancelled, `ignore` when its
    outcome says nothing about load. Later calls do nothing.
    """

    __slots__ = ("_held", "_limiter", "_started", "_token")

    def __init__(self, limiter: AdaptiveLimiter, started: float, held: int) -> None:
        self._limiter = limiter
        self._started = started
        self._held = held
        self._token = [None]  # taken by the one end that counts (list.pop is atomic)

    def _end(self) -> bool:
        try:
            self._token.pop()
        except IndexError:
            return False
        return True

    def record(self) -> None:
        """The call succeeded: its time since `try_acquire` is a sample."""
        if self._end():
            self._limiter._record(self._started, self._held)

    def drop(self) -> None:
        """The call timed out or was cancelled: a sign of overload."""
        if self._end():
            self._limiter._drop(self._held)

    def ignore(self) -> None:
        """The call ended in a way that says nothing about load: just give the slot back."""
        if self._end():
            self._limiter._core.release()

    def __repr__(self) -> str:
        return f"LimitPermit(done={not self._token})"


def _algorithm(algorithm: object) -> LimitAlgorithm:
    """The algorithm given, checked (default: a new `Vegas`)."""
    if algorithm is None:
        return Vegas()
    if isinstance(algorithm, type):
        raise TypeError(
            f"algorithm must be an instance, e.g. {algorithm.__name__}(), not the class"
        )
    if not isinstance(algorithm, LimitAlgorithm):
        raise TypeError(f"algorithm must be a LimitAlgorithm, got {type(algorithm).__name__}")
    return algorithm


def _limits(minimum: object, maximum: object, initial: object) -> tuple[int, int, int]:
    """``min_limit``, ``max_limit`` and ``initial_limit``, checked against each other."""
    low = integer(minimum, "min_limit", minimum=1)
    high = integer(maximum, "max_limit", minimum=1)
    if high < low:
        raise ValueError(f"max_limit must be >= min_limit ({low}), got {maximum!r}")
    start = integer(initial, "initial_limit", minimum=1)
    if not low <= start <= high:
        raise ValueError(
            f"initial_limit must be within [min_limit, max_limit] = [{low}, {high}], "
            f"got {initial!r}"
        )
    return low, high, start


class AdaptiveLimiter(Admission, Middleware):
    """A bulkhead whose limit follows measured latency (Netflix's concurrency-limits).

    At most ``limit`` calls run at once. The limit starts at
    ``initial_limit`` (default 20), stays within ``[min_limit, max_limit]``
    (default [1, 200]) and moves at the end of each window with the
    ``algorithm``: `Vegas` (the default), `Gradient2` or `AIMD`, each with
    its published defaults. A window lasts at least ``window_seconds``
    (default 1) and holds at least ``window_samples`` successful calls
    (default 10) or one drop, as in Netflix's ``WindowedLimit``.

    A call that finds the limit reached waits in a FIFO queue of at most
    ``max_queue`` calls (default 0: no queue) for up to ``max_wait``
    seconds (default None: as long as it takes, but never past the call's
    deadline), else it is refused with `LimitExceededError`.

    How a call ends decides what it teaches: a success is a sample of its
    time; a call that raised one of ``drop_on`` (default `TimeoutError`,
    which `TimeoutExceeded` is) or was cancelled is a *drop*, which lowers
    the limit, never a fast success; any other exception says nothing
    about load and is ignored. Calls faster than the clock can tell (0 s)
    are ignored too. The slot always comes back. `try_acquire` hands out
    slots for work that is not a call.
    """

    kind = "adaptive_limiter"
    _read_only = frozenset(
        {
            "algorithm",
            "initial_limit",
            "min_limit",
            "max_limit",
            "max_queue",
            "max_wait",
            "window_seconds",
            "window_samples",
            "drop_on",
            "clock",
            "name",
        }
    )

    def __init__(
        self,
        algorithm: LimitAlgorithm | None = None,
        *,
        initial_limit: int = 20,
        min_limit: int = 1,
        max_limit: int = 200,
        max_queue: int = 0,
        max_wait: float | timedelta | None = None,
        window_seconds: float | timedelta = 1.0,
        window_samples: int = 10,
        drop_on: Matcher = TimeoutError,
        clock: Clock | None = None,
        name: str | None = None,
    ) -> None:
        algorithm = _algorithm(algorithm)
        self.min_limit, self.max_limit, self.initial_limit = _limits(
            min_limit, max_limit, initial_limit
        )
        self.max_queue = integer(max_queue, "max_queue", minimum=0)
        self.max_wait = (
            None if max_wait is None else _seconds(max_wait, "max_wait", allow_zero=True)
        )
        self.window_seconds = _seconds(window_seconds, "window_seconds", allow_zero=True)
        self.window_samples = integer(window_samples, "window_samples", minimum=1)
        if self.window_samples > MAX_WINDOW_SAMPLES:
            raise ValueError(
                f"window_samples must be <= {MAX_WINDOW_SAMPLES}, got {window_samples!r}"
            )
        self.drop_on = drop_on
        types, predicate = exception_matcher(drop_on, "drop_on")
        self._drops: Callable[[BaseException], bool] = predicate or (
            lambda error: isinstance(error, types)
        )
        self.clock = validate_clock(clock)
        self.name = optional_name(name)
        algorithm.start(self.initial_limit, self.min_limit, self.max_limit)
        self.algorithm = algorithm
        self._core = self._slots = _Core(self.initial_limit, self.clock, self.window_seconds)

    def update(
        self,
        *,
        min_limit: int = _UNSET,
        max_limit: int = _UNSET,
        max_queue: int = _UNSET,
        max_wait: float | timedelta | None = _UNSET,
    ) -> None:
        """Change the bounds of the limit, the queue's length or ``max_wait``, atomically.

        A limit now outside ``[min_limit, max_limit]`` moves inside at once
        (slots held above a lower limit are taken back as their calls end);
        the algorithm keeps its estimate and works within the new bounds.
        """
        low = self.min_limit if min_limit is _UNSET else integer(min_limit, "min_limit", minimum=1)
        high = self.max_limit if max_limit is _UNSET else integer(max_limit, "max_limit", minimum=1)
        if high < low:
            raise ValueError(f"max_limit must be >= min_limit ({low}), got {high!r}")
        queue = (
            self.max_queue if max_queue is _UNSET else integer(max_queue, "max_queue", minimum=0)
        )
        wait = self.max_wait if max_wait is _UNSET else max_wait
        wait = None if wait is None else _seconds(wait, "max_wait", allow_zero=True)
        core = self._core
        with core.mutex:
            algorithm = self.algorithm
            algorithm.min_limit, algorithm.max_limit = low, high
            algorithm.limit = float(max(low, min(high, algorithm.limit)))
            self._set(min_limit=low, max_limit=high, max_queue=queue, max_wait=wait)
            limit = max(low, min(high, core.capacity))
            if limit != core.capacity:
                core.resize(limit)

    # -- description and observation ----------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "initial_limit": self.initial_limit,
            "min_limit": self.min_limit,
            "max_limit": self.max_limit,
            "max_queue": self.max_queue,
            "max_wait": self.max_wait,
            "window_seconds": self.window_seconds,
            "window_samples": self.window_samples,
        }

    def __repr__(self) -> str:
        label = self._repr_name
        extra = f", max_queue={self.max_queue}" if self.max_queue else ""
        return (
            f"AdaptiveLimiter({label}{self.algorithm!r}, limit={self.limit}, "
            f"min_limit={self.min_limit}, max_limit={self.max_limit}{extra})"
        )

    @property
    def limit(self) -> int:
        """The current limit."""
        return self._core.capacity

    def metrics(self) -> AdaptiveLimiterMetrics:
        """A consistent snapshot of the limit, the slots, the queue and the totals."""
        core = self._core
        with core.mutex:
            return AdaptiveLimiterMetrics(
                limit=core.capacity,
                in_flight=core.in_flight(),
                queued=core.queue.waiting,
                rejected=core.rejected,
                dropped=core.drops,
            )

    # -- samples and windows -------------------------------------------------------------------

    def _record(self, started: float, held: int) -> None:
        """A successful call that started at ``started``: sample it, free its slot."""
        core = self._core
        end = self.clock.monotonic()
        core.samples.append((end - started, held))
        core.release()
        if end >= core.window_end:
            self._close(end)

    def _drop(self, held: int) -> None:
        """A call timed out or was cancelled: mark the window, free the slot."""
        self._mark_drop(held)
        self._core.release()
        end = self.clock.monotonic()
        if end >= self._core.window_end:
            self._close(end)

    def _mark_drop(self, held: int) -> None:
        """Mark the window: a call timed out or was cancelled with ``held`` calls in flight."""
        core = self._core
        with core.mutex:
            core.samples.append((DROPPED, held))
            core.dropped = True
            core.drops += 1

    def _close(self, now: float) -> None:
        """End the window if it is due: summarise it and let the algorithm move the limit."""
        core = self._core
        with core.mutex:
            samples = core.samples
            if now < core.window_end or (len(samples) < self.window_samples and not core.dropped):
                return
            items = [samples.popleft() for _ in range(len(samples))]
            core.dropped = False
            core.window_end = now + self.window_seconds
            total = 0.0
            count = 0
            peak = 0
            dropped = False
            for seconds, held in items:
                if held > peak:
                    peak = held
                if seconds > 0.0:
                    total += seconds
                    count += 1
                elif seconds == DROPPED:
                    dropped = True
            rtt = total / count if count else None
            if rtt is None and not dropped:
                return  # only calls too fast to time: nothing to learn
            old = core.capacity
            try:
                estimate = self.algorithm.update(rtt, peak, dropped)
                new = max(self.min_limit, min(self.max_limit, int(estimate)))
            except Exception:  # a broken rule must not fail the call that ended the window
                logger.exception("resilience: the algorithm of %r failed; the limit stays", self)
                return
            if new != old:
                core.resize(new)
        if new != old:
            label = self._label
            logger.debug("resilience: AdaptiveLimiter%s limit %d -> %d", label, old, new)
            if self._listeners:
                self._emit(LimitChange(self.name, old, new, rtt, peak, dropped, now))

    def _failed(self, error: BaseException, held: int) -> None:
        """A call raised (its slot is given back by the shell): a drop, or nothing to learn."""
        if is_cancellation(error):  # asyncio's or trio's
            drop = True
        elif isinstance(error, CONTROL_FLOW) or not isinstance(error, Exception):
            drop = False
        else:
            drop = self._drops(error)
        if drop:
            self._mark_drop(held)
            end = self.clock.monotonic()
            if end >= self._core.window_end:
                self._close(end)

    # -- admission out of the fast path: take, queue, or refuse ---------------------------------

    def try_acquire(self) -> LimitPermit | None:
        """A slot now, if one is free and nobody waits (never blocks); else None.

        End the permit with `LimitPermit.record`, `LimitPermit.drop` or
        `LimitPermit.ignore`. A refusal counts in `rejected`.
        """
        core = self._core
        if not core.queue.count and core.take_free():
            return LimitPermit(self, self.clock.monotonic(), core.in_flight())
        with core.mutex:
            if not core.queue.count and core.take(1.0, 0.0):  # the reserve
                return LimitPermit(self, self.clock.monotonic(), core.in_flight())
            core.rejected += 1
        return None

    def _rejection(self, waited: float) -> LimitExceededError:
        label = f"adaptive limiter {self.name!r}" if self.name else "adaptive limiter"
        limit = self._core.capacity
        if waited:
            why = f"no slot came free in {waited:.3g}s"
        elif self.max_queue:
            why = f"{limit} calls are running and its queue of {self.max_queue} is full"
        else:
            why = f"{limit} calls are running"
        error = LimitExceededError(f"{label} is at its limit: {why}", name=self.name)
        logger.info("resilience: rejected: %s", error)
        if self._listeners:
            self._emit(AdaptiveLimiterEvent(self.name, "rejected", waited, limit, error))
        return error

    def _waited_event(self, seconds: float) -> AdaptiveLimiterEvent:
        return AdaptiveLimiterEvent(self.name, "waited", seconds, self._core.capacity)

    # -- the shells (resilience._shells): the fast path inline, the rest out of line -------

    def wrap(self, next: Endpoint, /) -> Endpoint:
        return self._shell(_shells_sync, next, self._admit)  # type: ignore[no-any-return]

    def awrap(self, next: AsyncEndpoint, /) -> AsyncEndpoint:
        return self._shell(_shells, next, self._aadmit)  # type: ignore[no-any-return]

    def _shell(self, shells: Any, next: Any, admit: Any) -> Any:
        direct = next is terminal  # innermost: call the function without the extra hop
        core = self._core
        sampling = (self._failed, self._close, self.clock.monotonic, core)
        return shells.bulkhead(next, direct, core, admit, sampling)
