"""`CircuitBreaker`: stop calling a dependency that keeps failing, then probe it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from . import _shells, _shells_sync
from . import backoff as _backoff
from ._backend import Backend, check_backend
from ._circuit_store import (
    FAILURE,
    SLOW,
    SUCCESS,
    CircuitMetrics,
    CircuitRules,
    CircuitState,
    CircuitStore,
    MemoryCircuitStore,
)
from ._clock import Clock, validate_clock
from ._errors import CircuitOpenError
from ._events import CIRCUIT_STATE, Described, ResilienceEvent
from ._middleware import AsyncEndpoint, Endpoint, Middleware, notify, terminal
from ._validate import Matcher, callable_or_none, exception_matcher, integer, number, optional_name
from ._validate import seconds as _seconds

__all__ = ["CircuitBreaker", "CircuitOutcome", "CircuitStateChange"]

logger = logging.getLogger("resilience")

_UNSET: Any = object()

Outcome = Literal["success", "failure", "ignored", "rejected"]

#: The event name of each state a breaker enters.
_VERBS = {
    CircuitState.CLOSED: "circuit_closed",
    CircuitState.OPEN: "circuit_opened",
    CircuitState.HALF_OPEN: "circuit_half_opened",
    CircuitState.ISOLATED: "circuit_isolated",
    CircuitState.DISABLED: "circuit_disabled",
}


@dataclass(frozen=True, slots=True)
class CircuitStateChange(ResilienceEvent):
    """Passed to ``on_state_change`` after the breaker changed state."""

    name: str | None
    old: CircuitState
    new: CircuitState
    at: float
    """The breaker's clock reading when it happened."""

    event = "circuit_state_changed"

    def describe(self) -> Described:
        details = {
            CIRCUIT_STATE: self.new.value,
            "resilience.circuit_breaker.previous_state": self.old.value,
        }
        return _VERBS[self.new], None, details


@dataclass(frozen=True, slots=True)
class CircuitOutcome(ResilienceEvent):
    """Passed to ``on_outcome`` after each call the breaker saw."""

    name: str | None
    outcome: Outcome
    """What the breaker made of the call: ``"ignored"`` calls count neither way."""
    seconds: float | None
    """How long the call took, when the breaker measured it (slow-call or time window)."""
    slow: bool
    error: BaseException | None
    """The call's exception, or the rejection for ``"rejected"``."""

    event = "rejected"

    def describe(self) -> Described | None:
        """Only rejections are counted (listeners receive no other outcome)."""
        return (self.event, self.error, {}) if self.outcome == "rejected" else None


def _matcher(value: object, name: str) -> Callable[[BaseException], bool] | None:
    if value is None:
        return None
    types, predicate = exception_matcher(value, name)
    if predicate is not None:
        return predicate
    return lambda error: isinstance(error, types)


def _ratio(value: object, name: str) -> float | None:
    if value is None:
        return None
    result = number(value, name, minimum=0.0, inclusive=False)
    if result > 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return result


def _break_seconds(value: object) -> tuple[Callable[[int], float], float | _backoff.Backoff]:
    """The break duration for the n-th trip in a row, from seconds or a Backoff."""
    if isinstance(value, _backoff.Backoff):
        strategy = value
        previous = [0.0]

        def growing(streak: int) -> float:
            delay = strategy.delay(streak, previous[0] if streak > 1 else 0.0)
            previous[0] = delay
            return delay

        return growing, strategy
    fixed = _seconds(value, "open_seconds")
    return (lambda _streak: fixed), fixed


def _nominal_first_break(open_seconds: float | _backoff.Backoff) -> float:
    """The first break duration before any jitter, drawing nothing from the strategy.

    The default bound on a half-open trial: it must neither be a random draw
    nor shift the seeded sequence of the breaks themselves.
    """
    if not isinstance(open_seconds, _backoff.Backoff):
        return open_seconds
    if isinstance(open_seconds, _backoff._Capped):
        return min(open_seconds.base_delay(1), open_seconds.maximum)
    if isinstance(open_seconds, _backoff._Decorrelated):
        return open_seconds.initial
    return open_seconds.delay(1, 0.0)  # a strategy of the user's: asked once


HalfOpenRule = Literal["first_failure", "ratio"]

#: The settings `CircuitBreaker.update` can change, in the constructor's order.
_THRESHOLDS = (
    "failure_ratio",
    "consecutive_failures",
    "minimum_calls",
    "window_calls",
    "window_seconds",
    "window_buckets",
    "slow_call_seconds",
    "slow_call_ratio",
    "open_seconds",
    "half_open_calls",
    "half_open_max_seconds",
    "half_open_rule",
)


def _classifiers(
    failure_on: object, ignore: object, rules: CircuitRules
) -> tuple[Callable[[BaseException], bool], Callable[[BaseException], bool] | None]:
    """What counts as a failure, and what is ignored, from ``failure_on`` and ``ignore``."""
    if failure_on is None:  # None means "no failures": a breaker that can never trip
        raise TypeError(
            "failure_on must be an exception type, a tuple of them, or a predicate, got None"
        )
    if failure_on == () and rules.slow_call_ratio is None:
        raise ValueError(
            "failure_on=() counts no error as a failure, so the breaker could never open: "
            "name the exceptions that are failures, or set a slow-call rule"
        )
    is_failure = _matcher(failure_on, "failure_on")
    assert is_failure is not None
    return is_failure, _matcher(ignore, "ignore")


def _refuse_never_opening(
    ratio: float | None, consecutive: int | None, slow_ratio: float | None, rule: str
) -> None:
    """A breaker with no trip rule, or a ratio rule with no ratio, could never open."""
    if ratio is None and consecutive is None and slow_ratio is None:
        raise ValueError(
            "failure_ratio=None with no other rule gives a breaker that can never open: "
            "set failure_ratio, consecutive_failures or slow_call_seconds"
        )
    if rule == "ratio" and ratio is None and slow_ratio is None:
        raise ValueError(
            "half_open_rule='ratio' judges the trials by failure_ratio (and the slow-call "
            "ratio): set failure_ratio, or keep half_open_rule='first_failure'"
        )


def _window(given: dict[str, Any], minimum_calls: int) -> dict[str, Any]:
    """``window_calls`` (default 100) or ``window_seconds``, checked."""
    window_seconds = given.get("window_seconds")
    window_calls = given.get("window_calls")
    if window_seconds is not None:
        if window_calls is not None:
            raise ValueError("window_calls and window_seconds cannot both be set: pick one")
        return {"window_seconds": _seconds(window_seconds, "window_seconds"), "window_calls": None}
    calls = integer(100 if window_calls is None else window_calls, "window_calls", minimum=1)
    if minimum_calls > calls:
        raise ValueError(f"minimum_calls must be <= window_calls ({calls}), got {minimum_calls!r}")
    return {"window_seconds": None, "window_calls": calls}


def _thresholds(given: dict[str, Any]) -> tuple[dict[str, Any], CircuitRules]:
    """The thresholds with their defaults, checked, and the rules a store runs on."""
    consecutive = given.get("consecutive_failures")
    if consecutive is not None:
        consecutive = integer(consecutive, "consecutive_failures", minimum=1)
    ratio = given.get("failure_ratio", None if consecutive is not None else 0.5)
    out: dict[str, Any] = {
        "failure_ratio": _ratio(ratio, "failure_ratio"),
        "consecutive_failures": consecutive,
        "minimum_calls": integer(given.get("minimum_calls", 20), "minimum_calls", minimum=1),
        "window_buckets": integer(given.get("window_buckets", 10), "window_buckets", minimum=1),
        "slow_call_ratio": _ratio(given.get("slow_call_ratio", 1.0), "slow_call_ratio"),
        "half_open_calls": integer(given.get("half_open_calls", 1), "half_open_calls", minimum=1),
    }
    out.update(_window(given, out["minimum_calls"]))
    slow = given.get("slow_call_seconds")
    out["slow_call_seconds"] = None if slow is None else _seconds(slow, "slow_call_seconds")
    break_seconds, out["open_seconds"] = _break_seconds(given.get("open_seconds", 30.0))
    bound = given.get("half_open_max_seconds")
    out["half_open_max_seconds"] = (
        _nominal_first_break(out["open_seconds"])
        if bound is None
        else _seconds(bound, "half_open_max_seconds")
    )
    rule = given.get("half_open_rule", "first_failure")
    if rule not in ("first_failure", "ratio"):
        raise ValueError(f"half_open_rule must be 'first_failure' or 'ratio', got {rule!r}")
    out["half_open_rule"] = rule
    slow_ratio = out["slow_call_ratio"] if out["slow_call_seconds"] is not None else None
    _refuse_never_opening(out["failure_ratio"], consecutive, slow_ratio, rule)
    rules = CircuitRules(
        failure_ratio=out["failure_ratio"],
        consecutive_failures=consecutive,
        slow_call_ratio=slow_ratio,
        minimum_calls=out["minimum_calls"],
        window_calls=out["window_calls"],
        window_seconds=out["window_seconds"],
        window_buckets=out["window_buckets"],
        half_open_calls=out["half_open_calls"],
        half_open_max_seconds=out["half_open_max_seconds"],
        break_seconds=break_seconds,
        half_open_rule=rule,
    )
    return out, rules


class CircuitBreaker(Middleware):
    """Reject calls to a dependency that keeps failing, then let trial calls probe it.

    *Closed*, calls flow and their outcomes fill a sliding window. The breaker
    *opens* when a trip rule fires:

    * ``failure_ratio``: failures over calls in the window reach this ratio,
      once the window holds at least ``minimum_calls`` calls (default 0.5,
      or off when you set ``consecutive_failures`` and no ratio);
    * ``consecutive_failures``: that many failures in a row;
    * ``slow_call_ratio``: with ``slow_call_seconds`` set, calls slower than it
      reach this ratio of the window (default 1.0: every call slow).

    The window is the last ``window_calls`` calls (default 100), or the last
    ``window_seconds`` seconds in ``window_buckets`` buckets.

    *Open*, calls are rejected with `CircuitOpenError` (its ``retry_after``
    says when a trial is allowed) for ``open_seconds``: a number, or a
    `resilience.backoff` strategy giving the n-th break in a row (to grow it,
    capped by the strategy's maximum). The first call after that turns the
    breaker *half-open*: up to ``half_open_calls`` trial calls run at once,
    the rest are rejected. It closes when that many trials succeed, and
    reopens at the first failed or slow one. Trials that have not reported
    back after ``half_open_max_seconds`` (default: the first break duration,
    before jitter) no longer hold it: the next call reopens it.

    ``failure_on`` says which exceptions are failures (default: any
    `Exception`), ``ignore`` which count neither way, and ``failure_result``
    which return values are failures. Cancellation, `KeyboardInterrupt`,
    `SystemExit` and `GeneratorExit` never count. `isolate`, `disable` and
    `reset` control it by hand; `metrics` takes a snapshot.
    """

    kind = "circuit_breaker"

    # The thresholds, set from `_thresholds` (and by `update`).
    failure_ratio: float | None
    consecutive_failures: int | None
    minimum_calls: int
    window_calls: int | None
    window_seconds: float | None
    window_buckets: int
    slow_call_seconds: float | None
    slow_call_ratio: float
    open_seconds: float | _backoff.Backoff
    half_open_calls: int
    half_open_max_seconds: float
    half_open_rule: HalfOpenRule

    _read_only = frozenset(
        {
            *_THRESHOLDS,
            "failure_on",
            "ignore",
            "failure_result",
            "on_state_change",
            "on_outcome",
            "store",
            "backend",
            "clock",
            "name",
        }
    )

    def __init__(
        self,
        *,
        failure_ratio: float | None = _UNSET,
        consecutive_failures: int | None = None,
        minimum_calls: int = 20,
        window_calls: int | None = None,
        window_seconds: float | timedelta | None = None,
        window_buckets: int = 10,
        slow_call_seconds: float | timedelta | None = None,
        slow_call_ratio: float = 1.0,
        open_seconds: float | timedelta | _backoff.Backoff = 30.0,
        half_open_calls: int = 1,
        half_open_max_seconds: float | timedelta | None = None,
        half_open_rule: HalfOpenRule = "first_failure",
        failure_on: Matcher = Exception,
        ignore: Matcher | None = None,
        failure_result: Callable[[Any], bool] | None = None,
        on_state_change: Callable[[CircuitStateChange], object] | None = None,
        on_outcome: Callable[[CircuitOutcome], object] | None = None,
        store: CircuitStore | None = None,
        backend: Backend | None = None,
        clock: Clock | None = None,
        name: str | None = None,
    ) -> None:
        given = {
            key: value
            for key, value in locals().items()
            if key in _THRESHOLDS and value is not _UNSET
        }
        self._given = given  # as passed: update() recomputes the defaults that follow them
        thresholds, rules = _thresholds(given)
        self._set(**thresholds)
        self._is_failure, self._is_ignored = _classifiers(failure_on, ignore, rules)
        self.failure_on = failure_on
        self.ignore = ignore
        self.failure_result = callable_or_none(failure_result, "failure_result")
        self.on_state_change = callable_or_none(on_state_change, "on_state_change")
        self.on_outcome = callable_or_none(on_outcome, "on_outcome")
        self.clock = validate_clock(clock)
        self.name = optional_name(name)
        if store is not None and not isinstance(store, CircuitStore):
            raise TypeError(f"store must be a CircuitStore, got {type(store).__name__}")
        self.backend = check_backend(backend, self.name, "CircuitBreaker")
        if self.backend is not None:
            if store is not None:
                raise ValueError("give a CircuitBreaker a store or a backend, not both")
            store = self.backend.attach(self.kind, self.name or "", self)
        self.store: CircuitStore = MemoryCircuitStore() if store is None else store
        self.store.configure(rules, self.clock, self._notify)

    def update(self, **thresholds: Any) -> None:
        """Change thresholds at run time, atomically; the state and the window are kept.

        Takes the constructor's threshold keywords (``failure_ratio``,
        ``consecutive_failures``, ``minimum_calls``, ``slow_call_ratio``,
        ``slow_call_seconds``, ``open_seconds``, ``half_open_calls``,
        ``half_open_max_seconds``, ``half_open_rule``, and the window's size:
        ``window_calls``, or ``window_seconds`` and ``window_buckets``),
        checked as the constructor checks them. A window of another size
        starts empty. What calls are timed is fixed when the breaker is
        built, so a count window cannot become a time window, nor the
        slow-call rule be switched on or off. A closed breaker whose window
        now breaks a rule opens at once.
        """
        unknown = sorted(set(thresholds) - set(_THRESHOLDS))
        if unknown:
            raise TypeError(
                f"update() takes the thresholds {', '.join(_THRESHOLDS)}; got {', '.join(unknown)}"
            )
        given = {**self._given, **thresholds}
        if "window_seconds" in thresholds and thresholds["window_seconds"] is not None:
            given.pop("window_calls", None)
        values, rules = _thresholds(given)
        if (values["window_seconds"] is None) != (self.window_seconds is None) or (
            values["slow_call_seconds"] is None
        ) != (self.slow_call_seconds is None):
            raise ValueError(
                "a breaker cannot switch between a count and a time window, nor turn its "
                "slow-call rule on or off, at run time: what calls are timed is fixed when "
                "it is built"
            )
        if self.failure_on == () and rules.slow_call_ratio is None:
            raise ValueError("failure_on=() needs a slow-call rule, or the breaker never opens")
        self.store.reconfigure(rules)
        self._given = given
        self._set(**values)

    # -- description and control ----------------------------------------------

    def settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "failure_ratio": self.failure_ratio,
            "consecutive_failures": self.consecutive_failures,
            "minimum_calls": self.minimum_calls,
        }
        if self.half_open_rule != "first_failure":
            out["half_open_rule"] = self.half_open_rule
        if self.window_seconds is not None:
            out["window_seconds"] = self.window_seconds
            out["window_buckets"] = self.window_buckets
        else:
            out["window_calls"] = self.window_calls
        if self.slow_call_seconds is not None:
            out["slow_call_seconds"] = self.slow_call_seconds
            out["slow_call_ratio"] = self.slow_call_ratio
        out["open_seconds"] = self.open_seconds
        out["half_open_calls"] = self.half_open_calls
        out["half_open_max_seconds"] = self.half_open_max_seconds
        if self.backend is not None:
            out["backend"] = repr(self.backend)
        return out

    def __repr__(self) -> str:
        label = self._repr_name
        rules = []
        if self.failure_ratio is not None:
            rules.append(f"failure_ratio={self.failure_ratio:g}")
        if self.consecutive_failures is not None:
            rules.append(f"consecutive_failures={self.consecutive_failures}")
        if self.slow_call_seconds is not None:
            rules.append(f"slow_call_seconds={self.slow_call_seconds:g}")
        return f"CircuitBreaker({label}{', '.join(rules)}, state={self.state.value})"

    @property
    def state(self) -> CircuitState:
        """The state now. An open breaker turns half-open only at its next call."""
        return self.store.state()

    def metrics(self) -> CircuitMetrics:
        """A snapshot of the state, the window's counts and ratios, and totals."""
        return self.store.metrics()

    def isolate(self) -> None:
        """Force the breaker open: every call is rejected until `reset`."""
        self.store.transition(CircuitState.ISOLATED)

    def disable(self) -> None:
        """Let every call through, still measuring them, until `reset`."""
        self.store.transition(CircuitState.DISABLED)

    def reset(self) -> None:
        """Close the breaker and clear its window and counters."""
        self.store.transition(CircuitState.CLOSED)

    def _notify(self, old: CircuitState, new: CircuitState, at: float) -> None:
        label = self._label
        logger.info("resilience: circuit breaker%s %s -> %s", label, old.value, new.value)
        listener = self.on_state_change
        if listener is None and not self._listeners:
            return
        event = CircuitStateChange(self.name, old, new, at)
        if listener is not None:
            notify(listener, event, f"the on_state_change listener of circuit breaker{label}")
        self._emit(event)

    def _admit(self) -> int:
        """A permit from the store, or the refusal raised."""
        permit = self.store.acquire()
        if permit < 0:
            raise self._rejection()
        return permit

    async def _aadmit(self) -> int:
        """`_admit` for async calls: a store shared by processes answers without blocking."""
        permit = await self.store.aacquire()
        if permit < 0:
            raise self._rejection()
        return permit

    def _rejection(self) -> CircuitOpenError:
        state = self.store.state()
        label = f"circuit breaker {self.name!r}" if self.name else "circuit breaker"
        retry_after = self.store.retry_after()
        if state is CircuitState.ISOLATED:
            message = f"{label} is isolated"
        elif state is CircuitState.HALF_OPEN:
            message = f"{label} is half-open and its trial calls are taken"
        else:
            message = f"{label} is open"
            if retry_after is not None:
                message += f" (next trial in {retry_after:.3g}s)"
        error = CircuitOpenError(message, name=self.name, retry_after=retry_after)
        logger.info("resilience: rejected: %s", error)
        if self.on_outcome is not None:
            self._report("rejected", None, False, error)
        if self._listeners:
            self._emit(CircuitOutcome(self.name, "rejected", None, False, error))
        return error

    def _report(
        self, outcome: Outcome, seconds: float | None, slow: bool, error: BaseException | None
    ) -> None:
        listener = self.on_outcome
        if listener is None:
            return
        label = self._label
        event = CircuitOutcome(self.name, outcome, seconds, slow, error)
        notify(listener, event, f"the on_outcome listener of circuit breaker{label}")

    # -- the core of a call's end: classify, then record ---------------------------

    def _settle(
        self, permit: int, error: BaseException | None, result: Any, started: float | None
    ) -> None:
        """Classify the outcome of a permitted call and hand it to the store.

        Control flow (not an `Exception`) only gives the permit back: it counts nothing.
        """
        store = self.store
        if error is not None and not isinstance(error, Exception):
            store.release(permit)
            return
        try:
            if error is not None:
                ignored = self._is_ignored
                if ignored is not None and ignored(error):
                    store.release(permit)
                    self._report("ignored", None, False, error)
                    return
                code = FAILURE if self._is_failure(error) else SUCCESS
            else:
                check = self.failure_result
                code = FAILURE if check is not None and check(result) else SUCCESS
        except BaseException:
            store.release(permit)  # a failing predicate must not keep a trial slot
            raise
        now = 0.0
        seconds = None
        slow = False
        if started is not None:
            now = self.clock.monotonic()
            seconds = now - started
            limit = self.slow_call_seconds
            if limit is not None and seconds > limit:
                slow = True
                code |= SLOW
        store.record(permit, code, now)
        if self.on_outcome is not None:
            self._report("failure" if code & 2 else "success", seconds, slow, error)

    # -- the shells (resilience._shells): the store's lane inline --------------------

    def _shell(self, shells: Any, next: Any, admit: Any) -> Any:
        store = self.store
        direct = next is terminal  # innermost: call the function without the extra hop
        timed = self.slow_call_seconds is not None or self.window_seconds is not None
        measured = timed or self.failure_result is not None or self.on_outcome is not None
        if measured or getattr(store, "remote", False):
            monotonic = self.clock.monotonic if timed else None
            return shells.measured_circuit_breaker(
                next, direct, store, self._settle, admit, monotonic
            )
        return shells.circuit_breaker(next, direct, store, self._settle, self._rejection)

    def wrap(self, next: Endpoint, /) -> Endpoint:
        return self._shell(_shells_sync, next, self._admit)  # type: ignore[no-any-return]

    def awrap(self, next: AsyncEndpoint, /) -> AsyncEndpoint:
        return self._shell(_shells, next, self._aadmit)  # type: ignore[no-any-return]
