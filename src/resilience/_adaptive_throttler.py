"""`AdaptiveThrottler`: client-side throttling from the Google SRE book.

Each client remembers, over the last two minutes, how many *requests* it
attempted and how many the backend *accepted*, and rejects a new request
locally with probability::

    max(0, (requests - K * accepts) / (requests + 1))

("Handling Overload", chapter 21 of *Site Reliability Engineering*). While
the backend accepts everything, ``requests == accepts`` and nothing is
rejected. Once it accepts less than one request in K, the client sheds the
excess itself, before it reaches the network; locally rejected requests
still count as requests, so the rejection rate rises with the overload and
falls as soon as accepts come back.

A request is counted when its outcome is known: when the call returns or
raises, or when it is rejected locally. Calls still running are in neither
count, so a burst of calls at start-up, with no answer yet, is not taken for
a backend that accepts nothing (go-kratos's SRE breaker counts the same way).

The two counts are lock-free `Tally` counters of lifetime totals. The window
is ``window_buckets`` slices of time: at the start of each slice the totals
are written down, and the counts in the window are the totals now minus the
totals at the start of its oldest slice. A call takes a lock only when it
is the first of a new slice, or when it is rejected.
"""

from __future__ import annotations

import logging
import random as _random
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from . import _shells, _shells_sync
from ._clock import Clock, validate_clock
from ._errors import RejectedError, ThrottledError
from ._events import Described, ResilienceEvent
from ._middleware import AsyncEndpoint, Endpoint, Middleware, terminal
from ._tally import Tally
from ._validate import (
    Matcher,
    callable_or_none,
    exception_matcher,
    integer,
    number,
    optional_name,
    random_source,
)
from ._validate import seconds as _seconds

__all__ = ["AdaptiveThrottler", "AdaptiveThrottlerEvent", "AdaptiveThrottlerMetrics"]

_UNSET: Any = object()
logger = logging.getLogger("resilience")


@dataclass(frozen=True, slots=True)
class AdaptiveThrottlerEvent(ResilienceEvent):
    """Sent to the throttler's listeners when it rejected a call locally."""

    name: str | None
    """The throttler's name."""
    probability: float
    """The rejection probability the call drew against."""
    requests: int
    """Requests in the window before this one (rejected ones included)."""
    accepts: int
    """Requests the backend accepted in the window."""
    error: ThrottledError
    """The rejection raised."""

    event = "rejected"

    def describe(self) -> Described:
        return self.event, self.error, {"resilience.probability": self.probability}


@dataclass(frozen=True, slots=True)
class AdaptiveThrottlerMetrics:
    """A snapshot of an `AdaptiveThrottler`."""

    requests: int
    """Requests in the window (rejected ones included)."""
    accepts: int
    """Requests the backend accepted in the window."""
    probability: float
    """The probability that the next request is rejected locally."""
    rejected: int
    """Requests rejected locally since the throttler was made."""


def probability(requests: int, accepts: int, k: float) -> float:
    """The SRE book's client-side rejection probability."""
    return max(0.0, (requests - k * accepts) / (requests + 1))


class _Window:
    """The two tallies and the marks of the slices in the window; see the module docs.

    The fast path reads raw tally values without taking a number:
    ``requested - base_requests`` is the number of requests in the window
    and ``accepted - base_accepts`` the accepts (``requested`` and
    ``accepted`` are the raw values after the latest request and accept
    that ended; with calls ending at once in several threads, one may lag a
    moment behind). `sync` keeps the bases in step with the marks and with
    the numbers its own reads take.
    """

    __slots__ = (
        "accepted",
        "accepts",
        "base_accepts",
        "base_requests",
        "clock",
        "edge",
        "k",
        "latest",
        "marks",
        "mutex",
        "rejected",
        "requested",
        "requests",
        "width",
    )

    def __init__(self, seconds: float, buckets: int, clock: Clock) -> None:
        self.k = 2.0  # the throttler's, read by every call
        self.clock = clock
        self.width = seconds / buckets
        self.requests = Tally()
        self.accepts = Tally()
        self.marks: deque[tuple[int, int]] = deque([(0, 0)], maxlen=buckets)
        self.latest = int(clock.monotonic() // self.width)
        self.edge = (self.latest + 1) * self.width
        self.base_requests = 0
        self.base_accepts = 0
        self.requested = 0
        self.accepted = 0
        self.mutex = threading.Lock()
        self.rejected = 0

    def sync(self, now: float) -> tuple[int, int]:
        """Move the window to ``now`` (mutex held); return its requests and accepts."""
        requests = self.requests.total()
        accepts = self.accepts.total()
        bucket = int(now // self.width)
        if bucket > self.latest:
            for _ in range(min(bucket - self.latest, self.marks.maxlen or 1)):
                self.marks.append((requests, accepts))
            self.latest = bucket
            self.edge = (bucket + 1) * self.width
        oldest_requests, oldest_accepts = self.marks[0]
        self.base_requests = oldest_requests + self.requests.reads
        self.base_accepts = oldest_accepts + self.accepts.reads
        self.requested = requests + self.requests.reads
        self.accepted = accepts + self.accepts.reads
        return requests - oldest_requests, accepts - oldest_accepts

    def rotate(self) -> None:
        """The first call of a new slice: move the window on."""
        with self.mutex:
            self.sync(self.clock.monotonic())


class AdaptiveThrottler(Middleware):
    """Reject calls locally in proportion to how many the backend stops accepting (SRE book).

    Over a sliding window of ``window_seconds`` (default 120, the book's
    two minutes, in ``window_buckets`` slices), it counts the *requests*
    made through it, its own rejections included, and the *accepts*. A new
    call is rejected with `ThrottledError`, without calling anything, with
    probability ``max(0, (requests - k * accepts) / (requests + 1))``.
    ``k`` (default 2) is how many requests per accept it lets through
    before shedding: lower is more aggressive, the book suggests 1.1 when a
    rejection costs the backend as much as a request.

    A call counts as accepted unless it raised one of ``refused_on``
    (default: `RejectedError`, `TimeoutError`, `ConnectionError`, i.e. the
    backend, or a layer inside this one, did not take it) or returned a
    value for which ``refused_result`` is true (say, an HTTP 429 or 503
    response). Any other error is an answer from the backend, so it counts
    as accepted. Cancellation, `KeyboardInterrupt`, `SystemExit` and
    `GeneratorExit` count neither way: they say nothing about the backend.

    ``seed`` (an int or a `random.Random`) makes the rejections
    reproducible; a random number is drawn only when the probability is
    above zero. Share one throttler between the callers of one backend.
    """

    kind = "adaptive_throttler"
    _read_only = frozenset(
        {"k", "window_seconds", "window_buckets", "refused_on", "refused_result", "clock", "name"}
    )

    def __init__(
        self,
        k: float = 2.0,
        *,
        window_seconds: float | timedelta = 120.0,
        window_buckets: int = 10,
        refused_on: Matcher = (RejectedError, TimeoutError, ConnectionError),
        refused_result: Callable[[Any], bool] | None = None,
        seed: int | _random.Random | None = None,
        clock: Clock | None = None,
        name: str | None = None,
    ) -> None:
        self.k = number(k, "k", minimum=1.0)
        self.window_seconds = _seconds(window_seconds, "window_seconds")
        self.window_buckets = integer(window_buckets, "window_buckets", minimum=1)
        self.refused_on = refused_on
        types, predicate = exception_matcher(refused_on, "refused_on")
        self._refused: Callable[[BaseException], bool] = predicate or (
            lambda error: isinstance(error, types)
        )
        self.refused_result = callable_or_none(refused_result, "refused_result")
        self.random = random_source(seed)
        self.clock = validate_clock(clock)
        self.name = optional_name(name)
        self._window = _Window(self.window_seconds, self.window_buckets, self.clock)
        self._window.k = self.k

    def update(self, *, k: float = _UNSET) -> None:
        """Change ``k``, from any thread: the next call's rejection probability uses it.

        The window keeps its counts; a smaller ``k`` rejects more of the calls
        that the backend has been refusing, a larger one fewer.
        """
        if k is not _UNSET:
            value = number(k, "k", minimum=1.0)
            self._set(k=value)
            self._window.k = value

    # -- description and observation ----------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "window_seconds": self.window_seconds,
            "window_buckets": self.window_buckets,
            "refused_on": self.refused_on,
            "refused_result": self.refused_result,
        }

    def __repr__(self) -> str:
        label = self._repr_name
        return (
            f"AdaptiveThrottler({label}k={self.k:g}, window_seconds={self.window_seconds:g}, "
            f"window_buckets={self.window_buckets})"
        )

    def metrics(self) -> AdaptiveThrottlerMetrics:
        """The window's counts, the probability of the next rejection, and the total rejected."""
        window = self._window
        with window.mutex:
            requests, accepts = window.sync(self.clock.monotonic())
            return AdaptiveThrottlerMetrics(
                requests=requests,
                accepts=accepts,
                probability=probability(requests, accepts, self.k),
                rejected=window.rejected,
            )

    @property
    def probability(self) -> float:
        """The probability that the next call is rejected locally."""
        return self.metrics().probability

    # -- the core ----------------------------------------------------------------------------

    def _reject(self, requests: int, accepts: int) -> ThrottledError:
        window = self._window
        with window.mutex:
            window.rejected += 1
            window.requested = next(window.requests.counter) + 1  # a request too
        chance = probability(requests, accepts, self.k)
        label = f"adaptive throttler {self.name!r}" if self.name else "adaptive throttler"
        error = ThrottledError(
            f"{label} rejected the call locally (p={chance:.2f}: the backend accepted "
            f"{accepts} of the last {requests} requests)",
            name=self.name,
        )
        logger.info("resilience: rejected: %s", error)
        if self._listeners:
            self._emit(AdaptiveThrottlerEvent(self.name, chance, requests, accepts, error))
        return error

    # -- the shells (resilience._shells) ------------------------------------------------------

    def wrap(self, next: Endpoint, /) -> Endpoint:
        return self._shell(_shells_sync, next)  # type: ignore[no-any-return]

    def awrap(self, next: AsyncEndpoint, /) -> AsyncEndpoint:
        return self._shell(_shells, next)  # type: ignore[no-any-return]

    def _shell(self, shells: Any, next: Any) -> Any:
        parts = (
            self.clock.monotonic,
            self.random.random,
            self._reject,
            self._refused,
            self.refused_result,
        )
        return shells.adaptive_throttler(next, next is terminal, self._window, parts)
