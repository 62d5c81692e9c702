"""Delays between retries.

Each strategy computes the delay before retry number ``retry`` (1 for the
first retry) from that number and the previous delay. All of them cap at
``maximum`` and can add jitter; all take ``seed`` (an int or a
`random.Random`) so a test can fix the sequence.

The formulas follow Marc Brooker's AWS Architecture Blog post "Exponential
Backoff and Jitter" (2015): with ``d`` the capped delay,

* full jitter: ``uniform(0, d)``;
* equal jitter: ``d / 2 + uniform(0, d / 2)``;
* decorrelated jitter: ``min(maximum, uniform(initial, previous * 3))``.

A tenacity wait strategy (``tenacity.wait_exponential(...)`` and friends) is
accepted by `resilience.Retry` wherever a backoff is, through `from_tenacity`;
a function of the retry number, through `from_function`.

A strategy may also take its delay from the failed attempt itself, an HTTP
429 or 503 response's ``Retry-After`` say: `retry_after` does that for HTTP
responses and errors that carry one, `from_outcome` for any rule of yours,
and a subclass can override `Backoff.delay_for`, which gets the whole
`RetryOutcome`.
"""

from __future__ import annotations

import email.utils
import math
import random as _random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Any, ClassVar, Literal

from ._misuse import refuse_async
from ._validate import number, random_source

__all__ = [
    "Backoff",
    "Jitter",
    "RetryOutcome",
    "constant",
    "decorrelated",
    "exponential",
    "fibonacci",
    "from_function",
    "from_outcome",
    "from_tenacity",
    "linear",
    "parse_retry_after",
    "retry_after",
]

Jitter = Literal["full", "equal"]
_JITTERS = (None, "full", "equal")
_LOG_MAX_FLOAT = math.log(1.7976931348623157e308)


def _rng(seed: int | _random.Random | None) -> _random.Random:
    return random_source(seed)


def _jitter_mode(value: object) -> Jitter | None:
    if value not in _JITTERS:
        hint = (
            " (use backoff.decorrelated() for decorrelated jitter)"
            if value == "decorrelated"
            else ""
        )
        raise ValueError(f"jitter must be None, 'full' or 'equal', got {value!r}{hint}")
    return value  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class RetryOutcome:
    """What a strategy knows when `Backoff.delay_for` asks it for the next delay."""

    retry: int
    """The retry about to be made, 1 for the first (attempt ``retry + 1``)."""
    previous: float = 0.0
    """The delay before the previous retry (0.0 before the first)."""
    error: BaseException | None = None
    """The failed attempt's exception, or None when its result is being retried."""
    result: Any = None
    """The failed attempt's result, when ``on_result`` asked for the retry."""
    slept: float = 0.0
    """Seconds waited between the attempts so far (tenacity's ``idle_for``)."""
    elapsed: float = math.nan
    """Seconds since the call's first attempt began. Measured only for a strategy whose
    `Backoff.wants_elapsed` is True (it costs a clock read per call); else NaN."""


class Backoff(ABC):
    """A delay strategy: ``delay(retry, previous)`` seconds before retry number ``retry``."""

    maximum: float = math.inf

    wants_elapsed: ClassVar[bool] = False
    """Set it to True in a subclass whose `delay_for` reads `RetryOutcome.elapsed`."""

    @abstractmethod
    def delay(self, retry: int, previous: float) -> float:
        """Seconds before retry ``retry`` (1-based), given the previous delay (0.0 at first)."""

    def delays(self, count: int | None = None) -> Iterator[float]:
        """The delays this strategy gives one call, ``count`` of them (endless by default)."""
        previous = 0.0
        retry = 0
        while count is None or retry < count:
            retry += 1
            previous = self.delay(retry, previous)
            yield previous

    def delay_for(self, outcome: RetryOutcome) -> float:
        """The delay before ``outcome.retry``, knowing how the attempt failed.

        `resilience.Retry` calls this; plain strategies ignore all but the
        retry number and the previous delay. Override it to read the error
        or the result (a server's ``Retry-After``, say). Returning
        ``math.inf`` stops the retries.
        """
        return self.delay(outcome.retry, outcome.previous)


class _Capped(Backoff):
    """Shared by the strategies that compute a base delay, cap it, then jitter it."""

    def __init__(
        self,
        maximum: float,
        jitter: Jitter | None,
        seed: int | _random.Random | None,
    ) -> None:
        self.maximum = number(maximum, "maximum", minimum=0.0) if maximum != math.inf else math.inf
        self.jitter = _jitter_mode(jitter)
        self._random = _rng(seed).random

    @abstractmethod
    def base_delay(self, retry: int) -> float:
        """The delay before jitter, possibly above the cap."""

    def delay(self, retry: int, previous: float) -> float:
        d = min(self.base_delay(retry), self.maximum)
        if self.jitter is None:
            return d
        if self.jitter == "full":
            return d * self._random()
        half = d / 2.0
        return half + half * self._random()

    def _tail(self) -> str:
        parts = []
        if self.maximum != math.inf:
            parts.append(f"maximum={self.maximum:g}")
        if self.jitter is not None:
            parts.append(f"jitter={self.jitter!r}")
        return "".join(", " + p for p in parts)


class _Constant(_Capped):
    def __init__(
        self, delay: float, jitter: Jitter | None, seed: int | _random.Random | None
    ) -> None:
        super().__init__(math.inf, jitter, seed)
        self.value = number(delay, "delay", minimum=0.0)

    def base_delay(self, retry: int) -> float:
        return self.value

    def __repr__(self) -> str:
        return f"constant({self.value:g}{self._tail()})"


# The concrete strategies take their own parameters, then `_Capped`'s (maximum, jitter, seed).


class _Linear(_Capped):
    def __init__(self, initial: float, step: float | None, *cap: Any) -> None:
        super().__init__(*cap)
        self.initial = number(initial, "initial", minimum=0.0)
        self.step = self.initial if step is None else number(step, "step", minimum=0.0)

    def base_delay(self, retry: int) -> float:
        return self.initial + self.step * (retry - 1)

    def __repr__(self) -> str:
        return f"linear(initial={self.initial:g}, step={self.step:g}{self._tail()})"


class _Exponential(_Capped):
    def __init__(self, initial: float, base: float, *cap: Any) -> None:
        super().__init__(*cap)
        self.initial = number(initial, "initial", minimum=0.0)
        self.base = number(base, "base", minimum=1.0)

    def base_delay(self, retry: int) -> float:
        if self.initial == 0.0:
            return 0.0
        try:
            return self.initial * self.base ** (retry - 1)
        except OverflowError:  # the power alone is too big; the product may still fit
            exponent = math.log(self.initial) + (retry - 1) * math.log(self.base)
            return math.exp(exponent) if exponent < _LOG_MAX_FLOAT else math.inf

    def __repr__(self) -> str:
        return f"exponential(initial={self.initial:g}, base={self.base:g}{self._tail()})"


class _Fibonacci(_Capped):
    def __init__(self, initial: float, *cap: Any) -> None:
        super().__init__(*cap)
        self.initial = number(initial, "initial", minimum=0.0)

    def base_delay(self, retry: int) -> float:
        if self.initial == 0.0:
            return 0.0
        a, b = 1.0, 1.0  # fib(1), fib(2), as floats: they reach inf instead of raising
        for _ in range(retry - 1):
            a, b = b, a + b
            if self.initial * a >= self.maximum:  # capped from here on: stop counting
                return math.inf
        return self.initial * a

    def __repr__(self) -> str:
        return f"fibonacci(initial={self.initial:g}{self._tail()})"


class _Decorrelated(Backoff):
    def __init__(self, initial: float, maximum: float, seed: int | _random.Random | None) -> None:
        self.initial = number(initial, "initial", minimum=0.0, inclusive=False)
        self.maximum = number(maximum, "maximum", minimum=0.0)
        if self.maximum < self.initial:
            raise ValueError(f"maximum must be >= initial ({self.initial:g}), got {self.maximum:g}")
        self._uniform = _rng(seed).uniform

    def delay(self, retry: int, previous: float) -> float:
        upper = max(previous, self.initial) * 3.0
        return min(self.maximum, self._uniform(self.initial, upper))

    def __repr__(self) -> str:
        return f"decorrelated(initial={self.initial:g}, maximum={self.maximum:g})"


def constant(
    delay: float = 1.0, *, jitter: Jitter | None = None, seed: int | _random.Random | None = None
) -> Backoff:
    """The same ``delay`` before every retry."""
    return _Constant(delay, jitter, seed)


def linear(
    initial: float = 0.1,
    step: float | None = None,
    *,
    maximum: float = math.inf,
    jitter: Jitter | None = None,
    seed: int | _random.Random | None = None,
) -> Backoff:
    """``initial``, ``initial + step``, ``initial + 2 * step``, ..., capped at ``maximum``.

    ``step`` defaults to ``initial``.
    """
    return _Linear(initial, step, maximum, jitter, seed)


def exponential(
    initial: float = 0.1,
    *,
    base: float = 2.0,
    maximum: float = 10.0,
    jitter: Jitter | None = None,
    seed: int | _random.Random | None = None,
) -> Backoff:
    """``initial * base ** (retry - 1)``, capped at ``maximum``."""
    return _Exponential(initial, base, maximum, jitter, seed)


def fibonacci(
    initial: float = 0.1,
    *,
    maximum: float = 10.0,
    jitter: Jitter | None = None,
    seed: int | _random.Random | None = None,
) -> Backoff:
    """``initial`` times 1, 1, 2, 3, 5, 8, ..., capped at ``maximum``."""
    return _Fibonacci(initial, maximum, jitter, seed)


def decorrelated(
    initial: float = 0.1,
    *,
    maximum: float = 10.0,
    seed: int | _random.Random | None = None,
) -> Backoff:
    """Decorrelated jitter: each delay is uniform in ``[initial, 3 * previous]``, capped."""
    return _Decorrelated(initial, maximum, seed)


class _Tenacity(Backoff):
    """A tenacity wait strategy, called with a real ``tenacity.RetryCallState``."""

    wants_elapsed = True  # tenacity waits may read seconds_since_start

    def __init__(self, wait: Callable[[Any], float]) -> None:
        import tenacity  # imported only by those who use the interop

        self.wait = wait
        self._tenacity = tenacity

    def delay(self, retry: int, previous: float) -> float:
        return self.delay_for(RetryOutcome(retry, previous, slept=previous, elapsed=previous))

    def retry_state(self, outcome: RetryOutcome) -> Any:
        """The ``tenacity.RetryCallState`` tenacity would pass before ``outcome.retry``.

        ``idle_for`` is the total waited so far, ``seconds_since_start`` the
        time since the first attempt began, as tenacity counts them.
        """
        tenacity = self._tenacity
        state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})
        state.attempt_number = outcome.retry
        future: Any = tenacity.Future(outcome.retry)
        if outcome.error is not None:
            future.set_exception(outcome.error)
        else:
            future.set_result(outcome.result)
        state.outcome = future
        elapsed = outcome.elapsed if math.isfinite(outcome.elapsed) else outcome.slept
        state.outcome_timestamp = state.start_time + elapsed
        state.idle_for = outcome.slept
        return state

    def delay_for(self, outcome: RetryOutcome) -> float:
        state = self.retry_state(outcome)
        try:
            value = float(self.wait(state))
        except (TypeError, AttributeError) as exc:
            # Most likely a function of the retry number, which cannot take a state.
            raise TypeError(
                f"backoff {self.wait!r} was called as a tenacity wait strategy (with a "
                f"tenacity.RetryCallState) and failed: {exc!r}. For a function of the "
                f"retry number, pass backoff.from_function(fn)"
            ) from exc
        if math.isnan(value) or value < 0:
            raise ValueError(f"tenacity wait strategy {self.wait!r} returned {value!r}")
        return value

    def __repr__(self) -> str:
        return f"from_tenacity({self.wait!r})"


def from_tenacity(wait: Callable[[Any], float]) -> Backoff:
    """Use a tenacity wait strategy (e.g. ``tenacity.wait_exponential(max=5)``) as a backoff.

    `resilience.Retry` applies this for you when ``backoff=`` is given a
    tenacity wait; call it yourself to combine or inspect the strategy.
    """
    if isinstance(wait, Backoff) or not callable(wait):
        raise TypeError(f"wait must be a tenacity wait strategy, got {type(wait).__name__}")
    refuse_async(wait, "wait")
    return _Tenacity(wait)


class _Function(Backoff):
    """A function of the retry number, giving seconds."""

    def __init__(self, fn: Callable[[int], float]) -> None:
        self.fn = fn

    def delay(self, retry: int, previous: float) -> float:
        value = self.fn(retry)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(
                f"backoff function {self.fn!r} returned {value!r}, not a number of seconds"
            )
        if math.isnan(value) or value < 0:
            raise ValueError(f"backoff function {self.fn!r} returned {value!r}")
        return float(value)

    def __repr__(self) -> str:
        return f"from_function({self.fn!r})"


def from_function(fn: Callable[[int], float]) -> Backoff:
    """A backoff from ``fn(retry) -> seconds``, ``retry`` counting from 1 for the first retry.

    Polly's ``DelayGenerator`` and resilience4j's ``IntervalFunction`` are
    this shape. Returning ``math.inf`` stops the retries, as for every
    strategy.
    """
    if isinstance(fn, Backoff) or not callable(fn):
        raise TypeError(f"fn must be a function of the retry number, got {type(fn).__name__}")
    refuse_async(fn, "fn")
    return _Function(fn)


class _Outcome(Backoff):
    """A function of the `RetryOutcome`, falling back to another strategy when it says None."""

    def __init__(self, fn: Callable[[RetryOutcome], float | None], otherwise: Backoff) -> None:
        self.fn = fn
        self.otherwise = otherwise
        self.maximum = otherwise.maximum

    wants_elapsed = True  # the function may read it

    def delay(self, retry: int, previous: float) -> float:
        return self.delay_for(RetryOutcome(retry, previous))

    def delay_for(self, outcome: RetryOutcome) -> float:
        value = self.fn(outcome)
        if value is None:
            return self.otherwise.delay_for(outcome)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"backoff function {self.fn!r} returned {value!r}, not seconds")
        if math.isnan(value) or value < 0:
            raise ValueError(f"backoff function {self.fn!r} returned {value!r}")
        return float(value)

    def __repr__(self) -> str:
        return f"from_outcome({self.fn!r}, otherwise={self.otherwise!r})"


def from_outcome(
    fn: Callable[[RetryOutcome], float | None], *, otherwise: Backoff | float | None = None
) -> Backoff:
    """A backoff from ``fn(outcome) -> seconds``, reading the failed attempt.

    ``fn`` gets a `RetryOutcome` (the retry number, the error or result, the
    time waited and elapsed) and returns seconds, or None to leave the delay
    to ``otherwise`` (a strategy or seconds; default: the `Retry` default,
    exponential from 0.1 s to 10 s with full jitter).
    """
    if isinstance(fn, Backoff) or not callable(fn):
        raise TypeError(f"fn must be a function of the outcome, got {type(fn).__name__}")
    refuse_async(fn, "fn")
    fallback = (
        exponential(0.1, maximum=10.0, jitter="full")
        if otherwise is None
        else coerce(otherwise, "otherwise")
    )
    return _Outcome(fn, fallback)


def parse_retry_after(value: str | float | None, *, now: float | None = None) -> float | None:
    """Seconds asked by an HTTP ``Retry-After`` value, or None when it says nothing usable.

    Takes delay-seconds (``"120"``) or an HTTP-date (``"Fri, 31 Dec 1999
    23:59:59 GMT"``, RFC 9110 section 10.2.3); a date in the past gives 0.
    ``now`` is the POSIX time to measure a date from (default: `time.time`).
    """
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) if math.isfinite(value) and value >= 0 else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def _header(headers: Any, name: str) -> Any:
    if isinstance(headers, Mapping) or hasattr(headers, "get"):
        try:
            return headers.get(name)
        except Exception:  # a headers object that cannot be asked: nothing to read
            return None
    return None


def _retry_after_of(outcome: RetryOutcome) -> float | None:
    """A ``Retry-After`` on the failed result, or on the error (or its response)."""
    for source in (outcome.result, getattr(outcome.error, "response", None), outcome.error):
        if source is None:
            continue
        seconds = parse_retry_after(_header(getattr(source, "headers", None), "Retry-After"))
        if seconds is not None:
            return seconds
    return None


def retry_after(otherwise: Backoff | float | None = None) -> Backoff:
    """Wait what the server asked in ``Retry-After``, else ``otherwise``.

    The header is looked for on the failed result (an HTTP response with
    ``headers``, as httpx's and requests' are) and on the error (its
    ``response``, as ``httpx.HTTPStatusError`` has, or its own ``headers``),
    in seconds or as an HTTP date. `resilience.Retry` already honours a
    ``retry_after`` attribute on an error (this library's rejections carry
    one); its ``max_delay`` caps what a server may ask.
    """
    return from_outcome(_retry_after_of, otherwise=otherwise)


def coerce(value: object, name: str = "backoff") -> Backoff:
    """A `Backoff` from a Backoff, a number of seconds, or a tenacity wait strategy."""
    if isinstance(value, Backoff):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return constant(number(value, name, minimum=0.0))
    if callable(value):
        return from_tenacity(value)
    raise TypeError(
        f"{name} must be a resilience.backoff strategy, a number of seconds, or a tenacity "
        f"wait strategy, got {type(value).__name__}"
    )
