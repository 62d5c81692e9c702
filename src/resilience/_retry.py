"""`Retry`: call again after a failure, with backoff, within the deadline."""

from __future__ import annotations

import builtins
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from . import backoff as _backoff
from ._budget import RetryBudget, RetryBudgetExhausted, describe_budget
from ._clock import Clock, validate_clock
from ._context import EMPTY, VAR, own_context, remaining
from ._errors import RejectedError
from ._middleware import AsyncEndpoint, Endpoint, Middleware, notify, terminal
from ._testing_mode import MODE
from ._validate import callable_or_none, exception_matcher, integer, optional_name

__all__ = ["RetriesExhausted", "Retry", "RetryEvent"]

logger = logging.getLogger("resilience")

_DEFAULT_BACKOFF = object()


@dataclass(frozen=True, slots=True)
class RetryEvent:
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


@dataclass(frozen=True, slots=True)
class RetriesExhausted:
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


def _matcher(on: object) -> Callable[[BaseException], bool]:
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

    def __init__(
        self,
        attempts: int = 3,
        *,
        on: type[BaseException]
        | tuple[type[BaseException], ...]
        | Callable[[BaseException], bool] = Exception,
        on_result: Callable[[Any], bool] | None = None,
        backoff: _backoff.Backoff | float | Callable[[Any], float] | object = _DEFAULT_BACKOFF,
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
        if self.budget is not None:
            out["budget"] = self.budget
        return out

    def __repr__(self) -> str:
        label = f"{self.name!r}, " if self.name else ""
        budget = "" if self.budget is None else f", budget={self.budget!r}"
        return (
            f"Retry({label}attempts={self.attempts}, on={_show(self.on)}, "
            f"backoff={self.backoff!r}{budget})"
        )

    # -- the core: decide, with no I/O ---------------------------------------

    def _next_delay(
        self, attempt: int, previous: float, error: BaseException | None, result: Any
    ) -> float | None:
        """The wait before attempt ``attempt + 1``, or None to give up now."""
        label = f" {self.name!r}" if self.name else ""
        limit = self.attempts
        cap = MODE.max_attempts
        if cap is not None and cap < limit:
            limit = cap
        if attempt >= limit:
            if error is not None:
                error.add_note(f"resilience: Retry{label} gave up after {attempt} attempts")
            self._give_up("attempts", attempt, error, result)
            return None
        delay = self.backoff.delay_for(attempt, previous, error, result)
        hint = getattr(error, "retry_after", None)
        if (
            isinstance(hint, int | float)
            and not isinstance(hint, bool)
            and math.isfinite(hint)
            and hint > delay
        ):
            delay = float(hint)
        if delay == math.inf:
            if error is not None:
                error.add_note(
                    f"resilience: Retry{label} stopped after {attempt} attempt(s): "
                    "its backoff asked for an endless wait"
                )
            self._give_up("backoff", attempt, error, result)
            return None
        if MODE.instant_waits:
            delay = 0.0
        left = remaining(VAR.get())
        if left is not None and delay >= left:
            if error is not None:
                error.add_note(
                    f"resilience: Retry{label} stopped after {attempt} attempt(s): waiting "
                    f"{delay:.3g}s would pass the deadline ({max(left, 0.0):.3g}s left)"
                )
            self._give_up("deadline", attempt, error, result)
            return None
        budget = self.budget
        if budget is not None and not budget.try_withdraw():
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
            return None
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
        return delay

    def _give_up(
        self,
        reason: Literal["attempts", "deadline", "backoff"],
        attempt: int,
        error: BaseException | None,
        result: Any,
    ) -> None:
        """Log the end of the retries and tell the listeners."""
        label = f" {self.name!r}" if self.name else ""
        logger.info(
            "resilience: Retry%s gave up after %d attempt(s) (%s): %r",
            label,
            attempt,
            reason,
            error if error is not None else result,
        )
        if self._listeners:
            self._emit(RetriesExhausted(self.name, attempt, reason, error, result))

    # -- the shells: the first attempt inline, the rest out of the hot path ----

    def wrap(self, next: Endpoint, /) -> Endpoint:
        if self.budget is not None and self.budget.deposits:
            return self._wrap_budgeted(next, self.budget)
        retryable = self._retryable
        check = self.on_result
        again = self._again
        direct = next is terminal  # innermost: call the function without the extra hop

        def retry(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            try:
                result = fn(*args, **kwargs) if direct else next(fn, args, kwargs)
            except Exception as exc:
                if not retryable(exc):
                    raise
                error: BaseException | None = exc
                result = None
            else:
                if check is None or not check(result):
                    return result
                error = None
            return again(next, fn, args, kwargs, error, result)

        return retry

    def _wrap_budgeted(self, next: Endpoint, budget: RetryBudget) -> Endpoint:
        """`wrap` with the budget's deposit inlined: one clock read and one atomic step."""
        retryable = self._retryable
        check = self.on_result
        again = self._again
        direct = next is terminal
        account = budget._account
        monotonic = account.clock.monotonic
        tally = account.tally.counter
        deposit_late = account.deposit_late
        step = builtins.next

        def retry(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if monotonic() < account.edge:  # RetryBudget.deposit, inlined
                step(tally)
            else:
                deposit_late()
            try:
                result = fn(*args, **kwargs) if direct else next(fn, args, kwargs)
            except Exception as exc:
                if not retryable(exc):
                    raise
                error: BaseException | None = exc
                result = None
            else:
                if check is None or not check(result):
                    return result
                error = None
            return again(next, fn, args, kwargs, error, result)

        return retry

    def _again(
        self,
        next: Endpoint,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        error: BaseException | None,
        result: Any,
    ) -> Any:
        ctx = VAR.get()
        if ctx is EMPTY:  # run outside any call (a custom layer's own thread)
            with own_context():
                return self._again(next, fn, args, kwargs, error, result)
        first = ctx[1]
        attempt = 1
        previous = 0.0
        while True:
            delay = self._next_delay(attempt, previous, error, result)
            if delay is None:
                if error is not None:
                    raise error
                return result
            self.clock.sleep(delay)
            previous = delay
            attempt += 1
            ctx[1] = attempt
            try:
                result = next(fn, args, kwargs)
            except Exception as exc:
                if not self._retryable(exc):
                    raise
                error = exc
                result = None
            else:
                if self.on_result is None or not self.on_result(result):
                    return result
                error = None
            finally:
                ctx[1] = first

    def awrap(self, next: AsyncEndpoint, /) -> AsyncEndpoint:
        if self.budget is not None and self.budget.deposits:
            return self._awrap_budgeted(next, self.budget)
        retryable = self._retryable
        check = self.on_result
        again = self._aagain

        async def retry(
            fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            try:
                result = await next(fn, args, kwargs)
            except Exception as exc:
                if not retryable(exc):
                    raise
                error: BaseException | None = exc
                result = None
            else:
                if check is None or not check(result):
                    return result
                error = None
            return await again(next, fn, args, kwargs, error, result)

        return retry

    def _awrap_budgeted(self, next: AsyncEndpoint, budget: RetryBudget) -> AsyncEndpoint:
        """`awrap` with the budget's deposit inlined."""
        retryable = self._retryable
        check = self.on_result
        again = self._aagain
        account = budget._account
        monotonic = account.clock.monotonic
        tally = account.tally.counter
        deposit_late = account.deposit_late
        step = builtins.next

        async def retry(
            fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            if monotonic() < account.edge:  # RetryBudget.deposit, inlined
                step(tally)
            else:
                deposit_late()
            try:
                result = await next(fn, args, kwargs)
            except Exception as exc:
                if not retryable(exc):
                    raise
                error: BaseException | None = exc
                result = None
            else:
                if check is None or not check(result):
                    return result
                error = None
            return await again(next, fn, args, kwargs, error, result)

        return retry

    async def _aagain(
        self,
        next: AsyncEndpoint,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        error: BaseException | None,
        result: Any,
    ) -> Any:
        ctx = VAR.get()
        if ctx is EMPTY:  # run outside any call (a custom layer's own task)
            with own_context():
                return await self._aagain(next, fn, args, kwargs, error, result)
        first = ctx[1]
        attempt = 1
        previous = 0.0
        while True:
            delay = self._next_delay(attempt, previous, error, result)
            if delay is None:
                if error is not None:
                    raise error
                return result
            await self.clock.asleep(delay)
            previous = delay
            attempt += 1
            ctx[1] = attempt
            try:
                result = await next(fn, args, kwargs)
            except Exception as exc:
                if not self._retryable(exc):
                    raise
                error = exc
                result = None
            else:
                if self.on_result is None or not self.on_result(result):
                    return result
                error = None
            finally:
                ctx[1] = first
