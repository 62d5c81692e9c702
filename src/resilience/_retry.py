"""`Retry`: call again after a failure, with backoff, within the deadline."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from . import _shells, _shells_sync
from . import backoff as _backoff
from ._budget import RetryBudget, RetryBudgetExhausted, describe_budget
from ._clock import Clock, validate_clock
from ._context import VAR, remaining
from ._errors import RejectedError
from ._events import ATTEMPT_NUMBER, Described, ResilienceEvent
from ._middleware import AsyncEndpoint, Endpoint, Middleware, notify, terminal
from ._testing_mode import MODE
from ._validate import Matcher, callable_or_none, exception_matcher, integer, optional_name
from ._validate import seconds as _seconds

__all__ = ["RetriesExhausted", "Retry", "RetryEvent"]

logger = logging.getLogger("resilience")

_DEFAULT_BACKOFF = object()


@dataclass(frozen=True, slots=True)
class RetryEvent(ResilienceEvent):
    """Passed to ``on_retry`` just before the wait that precedes a new attempt."""

    name: str | None
    """The Retry's name."""
    attempt: int
    """The attempt that just failed (1-based)."""
    delay: float
    """Seconds the Retry will now wait."""
    error: BaseException | None
    """The exception of the failed attempt, or None when its result was retried."""
    result: Any = None
    """The rejected result when ``on_result`` asked for a retry."""

    event = "retry_scheduled"

    def describe(self) -> Described:
        details = {ATTEMPT_NUMBER: self.attempt, "resilience.retry.delay": self.delay}
        return self.event, self.error, details


@dataclass(frozen=True, slots=True)
class RetriesExhausted(ResilienceEvent):
    """Sent to a Retry's listeners when it gives up: the last outcome goes to the caller.

    A refusal by the Retry's budget sends `RetryBudgetExhausted` instead.
    """

    name: str | None
    """The Retry's name."""
    attempts: int
    """Attempts made, the first call included."""
    reason: Literal["attempts", "deadline", "backoff"]
    """Why: no attempt left, the next wait would pass the deadline, or an endless backoff."""
    error: BaseException | None
    """The error that will be raised, or None when a result was to be retried."""
    result: Any = None
    """The rejected result that will be returned, for ``on_result`` retries."""

    event = "retries_exhausted"

    def describe(self) -> Described:
        details = {
            "resilience.retry.attempts": self.attempts,
            "resilience.retry.reason": self.reason,
        }
        return self.event, self.error, details


def _matcher(on: object) -> Callable[[BaseException], bool]:
    wanted = _wanted(on)

    def retryable(error: BaseException) -> bool:
        # An error that says it must not be repeated (an integration's request that is not
        # idempotent, a server's negative pushback) is not retried, whatever ``on`` says.
        return getattr(error, "retryable", None) is not False and wanted(error)

    return retryable


def _wanted(on: object) -> Callable[[BaseException], bool]:
    types, predicate = exception_matcher(on, "on")
    if predicate is not None:
        return predicate
    # Rejections by this library's own policies are not retried unless asked for by name.
    wanted_rejections = tuple(t for t in types if issubclass(t, RejectedError))

    def matches(error: BaseException) -> bool:
        if not isinstance(error, types):
            return False
        return not isinstance(error, RejectedError) or isinstance(error, wanted_rejections)

    return matches


def _show(on: object) -> str:
    if isinstance(on, tuple):
        return "(" + ", ".join(_show(item) for item in on) + ")"
    return getattr(on, "__qualname__", None) or repr(on)


class Retry(Middleware):
    """Call again after a failure, waiting a backoff delay in between.

    ``attempts`` counts the first call (``attempts=3`` is one call and up to
    two retries). ``on`` picks the exceptions worth retrying: a type, a tuple
    of types, or a predicate; this library's own rejections
    (`CircuitOpenError`, `ThrottledError`, `BulkheadFullError`) are retried
    only when named there. Cancellation, `KeyboardInterrupt`, `SystemExit`
    and `GeneratorExit` are never retried. ``on_result`` retries on return
    values for which it returns True; when attempts run out the last result
    is returned.

    An exception whose ``retryable`` attribute is False is never retried,
    whatever ``on`` says: the integrations (`resilience.integrations.httpx`,
    `resilience.integrations.grpc`) mark this way a request that must not be
    sent twice, and your own errors can say the same.

    The wait honours ``retry_after`` on the exception (at least that long)
    and never crosses the call's deadline: when the next wait would, the
    last error is raised at once. The last error is re-raised as it is, the
    same object, with a note saying how many attempts were made.

    With a ``budget`` (a `RetryBudget`, shared by every Retry that calls the
    same dependency), each call deposits into it once and each retry must
    withdraw from it first; when it refuses, the last error is raised at
    once, with a note, and a `RetryBudgetExhausted` event is sent.
    """

    kind = "retry"
    _read_only = frozenset(
        {
            "attempts",
            "on",
            "on_result",
            "backoff",
            "max_delay",
            "on_retry",
            "budget",
            "clock",
            "name",
        }
    )

    def __init__(
        self,
        attempts: int = 3,
        *,
        on: Matcher = Exception,
        on_result: Callable[[Any], bool] | None = None,
        backoff: _backoff.Backoff | float | Callable[[Any], float] | object = _DEFAULT_BACKOFF,
        max_delay: float | timedelta | None = None,
        on_retry: Callable[[RetryEvent], object] | None = None,
        budget: RetryBudget | None = None,
        clock: Clock | None = None,
        name: str | None = None,
    ) -> None:
        self.attempts = integer(attempts, "attempts", minimum=1)
        self.on = on
        self._retryable = _matcher(on)
        self.on_result = callable_or_none(on_result, "on_result")
        self.backoff = (
            _backoff.exponential(0.1, maximum=10.0, jitter="full")
            if backoff is _DEFAULT_BACKOFF
            else _backoff.coerce(backoff)
        )
        self.max_delay = (
            None if max_delay is None else _seconds(max_delay, "max_delay", allow_zero=True)
        )
        self.on_retry = callable_or_none(on_retry, "on_retry")
        if budget is not None and not isinstance(budget, RetryBudget):
            raise TypeError(f"budget must be a RetryBudget or None, got {type(budget).__name__}")
        self.budget = budget
        self.clock = validate_clock(clock)
        self.name = optional_name(name)

    def settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "attempts": self.attempts,
            "on": self.on,
            "on_result": self.on_result,
            "backoff": self.backoff,
        }
        if self.max_delay is not None:
            out["max_delay"] = self.max_delay
        if self.budget is not None:
            out["budget"] = self.budget
        return out

    def __repr__(self) -> str:
        label = self._repr_name
        budget = "" if self.budget is None else f", budget={self.budget!r}"
        return (
            f"Retry({label}attempts={self.attempts}, on={_show(self.on)}, "
            f"backoff={self.backoff!r}{budget})"
        )

    # -- the core: decide, with no I/O ---------------------------------------

    def _schedule(self, started: float) -> _Schedule:
        """The retries of one call whose first attempt failed."""
        return _Schedule(self, started)

    def _give_up(
        self,
        reason: Literal["attempts", "deadline", "backoff"],
        attempt: int,
        error: BaseException | None,
        result: Any,
        note: str,
    ) -> None:
        """Note why on the error, log the end of the retries and tell the listeners."""
        label = self._label
        if error is not None:
            error.add_note(f"resilience: Retry{label} {note}")
        logger.info(
            "resilience: Retry%s gave up after %d attempt(s) (%s): %r",
            label,
            attempt,
            reason,
            error if error is not None else result,
        )
        if self._listeners:
            self._emit(RetriesExhausted(self.name, attempt, reason, error, result))

    def _refused(
        self, budget: RetryBudget, attempt: int, error: BaseException | None, result: Any
    ) -> None:
        """The budget refused the next retry: note it, log it, tell the listeners."""
        label = self._label
        if error is not None:
            error.add_note(
                f"resilience: Retry{label} stopped after {attempt} attempt(s): its "
                f"{describe_budget(budget)} is exhausted"
            )
        logger.info(
            "resilience: Retry%s stopped after %d attempt(s): its retry budget is exhausted",
            label,
            attempt,
        )
        if self._listeners:
            self._emit(RetryBudgetExhausted(self.name, budget.name, attempt, error, result))

    def _retrying(
        self, attempt: int, delay: float, error: BaseException | None, result: Any
    ) -> None:
        """A retry is scheduled: log it and tell the listeners."""
        label = self._label
        logger.debug(
            "resilience: Retry%s retrying in %.3gs after attempt %d failed: %r",
            label,
            delay,
            attempt,
            error if error is not None else result,
        )
        if self.on_retry is not None or self._listeners:
            event = RetryEvent(self.name, attempt, delay, error, result)
            if self.on_retry is not None:
                notify(self.on_retry, event, f"the on_retry listener of Retry{label}")
            self._emit(event)

    # -- the shells (resilience._shells): the first attempt inline, the rest driven ----

    def wrap(self, next: Endpoint, /) -> Endpoint:
        return self._shell(_shells_sync, next, self.clock.sleep)  # type: ignore[no-any-return]

    def awrap(self, next: AsyncEndpoint, /) -> AsyncEndpoint:
        return self._shell(_shells, next, self.clock.asleep)  # type: ignore[no-any-return]

    def _shell(self, shells: Any, next: Any, sleep: Any) -> Any:
        """The first attempt's shell, and what happens before it.

        Before the first attempt, a budget that deposits takes this call's
        deposit, and a backoff that wants the time since the first attempt
        (`backoff.Backoff.wants_elapsed`) has the clock read. A failure goes
        to ``again``, which drives the call's `_Schedule`.
        """
        direct = next is terminal
        drive, schedule = shells.retry_again, self._schedule
        retryable, check = self._retryable, self.on_result

        def again(
            next: Any, fn: Any, args: Any, kwargs: Any, error: Any, result: Any, started: Any
        ) -> Any:
            schedule_ = schedule(_NAN if started is None else started)
            return drive(schedule_, sleep, retryable, check, next, fn, args, kwargs, error, result)

        return shells.retry(next, direct, (retryable, check, again, self._before()))

    def _before(self) -> Callable[[], float | None] | None:
        """What a call does before its first attempt: deposit, read the clock; None if nothing."""
        budget = self.budget
        deposit = budget.deposit if budget is not None and budget.deposits else None
        monotonic = self.clock.monotonic if self.backoff.wants_elapsed else None
        if monotonic is None:
            return deposit
        if deposit is None:
            return monotonic

        def both() -> float:
            deposit()
            return monotonic()

        return both


_NAN = math.nan


class _Schedule:
    """The retries of one call, with no I/O: told how each attempt failed, it says how long to
    wait before the next, or None to stop (then the caller gets the last outcome).

    The sync and async shells drive the same schedule (as httpx's ``auth_flow``
    is driven by a sync and an async client): only their waiting differs.
    """

    __slots__ = ("attempt", "previous", "retry", "slept", "started")

    def __init__(self, retry: Retry, started: float) -> None:
        self.retry = retry
        self.started = started
        self.attempt = 1
        """The attempt that just failed; after `next_delay`, the one about to run."""
        self.previous = 0.0
        self.slept = 0.0

    def next_delay(self, error: BaseException | None, result: Any) -> float | None:
        """The wait before the next attempt, given how this one failed; None to give up."""
        policy = self.retry
        attempt = self.attempt
        delay = self._delay(policy, attempt, error, result)
        if delay is None:
            return None
        policy._retrying(attempt, delay, error, result)
        self.previous = delay
        self.slept += delay
        self.attempt = attempt + 1
        return delay

    def _delay(
        self, policy: Retry, attempt: int, error: BaseException | None, result: Any
    ) -> float | None:
        limit = policy.attempts
        cap = MODE.max_attempts
        if cap is not None and cap < limit:
            limit = cap
        if attempt >= limit:
            policy._give_up("attempts", attempt, error, result, f"gave up after {attempt} attempts")
            return None
        elapsed = policy.clock.monotonic() - self.started
        outcome = _backoff.RetryOutcome(attempt, self.previous, error, result, self.slept, elapsed)
        delay = _honour(policy.backoff.delay_for(outcome), error, policy.max_delay)
        if delay == math.inf:
            note = f"stopped after {attempt} attempt(s): its backoff asked for an endless wait"
            policy._give_up("backoff", attempt, error, result, note)
            return None
        if MODE.instant_waits:
            delay = 0.0
        left = remaining(VAR.get())
        if left is not None and delay >= left:
            note = (
                f"stopped after {attempt} attempt(s): waiting {delay:.3g}s would pass the "
                f"deadline ({max(left, 0.0):.3g}s left)"
            )
            policy._give_up("deadline", attempt, error, result, note)
            return None
        budget = policy.budget
        if budget is not None and not budget.try_withdraw():
            policy._refused(budget, attempt, error, result)
            return None
        return delay


def _honour(delay: float, error: BaseException | None, maximum: float | None) -> float:
    """The backoff's delay, at least an error's ``retry_after`` hint, at most ``maximum``."""
    hint = getattr(error, "retry_after", None)
    if (
        isinstance(hint, int | float)
        and not isinstance(hint, bool)
        and math.isfinite(hint)
        and hint > delay
    ):
        delay = float(hint)
    if maximum is not None and delay > maximum:
        delay = maximum
    return delay
