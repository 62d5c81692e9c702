"""The exception hierarchy shared by every policy."""

from __future__ import annotations

__all__ = [
    "BulkheadFullError",
    "CircuitOpenError",
    "InjectedFault",
    "LimitExceededError",
    "RejectedError",
    "ResilienceError",
    "ThrottledError",
    "TimeoutExceeded",
]


class ResilienceError(Exception):
    """Base class of every exception this library raises on its own account."""


class TimeoutExceeded(ResilienceError, TimeoutError):
    """A `Timeout` layer's own deadline passed before the call finished.

    It is also a builtin `TimeoutError`, so code that already catches
    `TimeoutError` keeps working.
    """

    def __init__(self, seconds: float, name: str | None = None) -> None:
        self.seconds = seconds
        self.name = name
        where = f" in {name!r}" if name else ""
        super().__init__(f"call exceeded its timeout of {seconds:g}s{where}")

    def __reduce__(self) -> tuple[object, ...]:
        # The instance dict carries the notes (add_note) across the boundary.
        return (type(self), (self.seconds, self.name), self.__dict__)


class DeadlineCut(TimeoutExceeded):
    """A Timeout stopped at an enclosing layer's deadline, not its own.

    Raised by a sync layer (a cooperative or walk-away Timeout, a
    thread-isolated Bulkhead) when an earlier
    deadline, set outside it, has passed. The enclosing `Timeout` whose
    deadline it was, sync or async, turns it into its own `TimeoutExceeded`
    (its name, its seconds, its event); where no such layer is on the way
    out (the deadline came with a copied context, say) users see it as a
    plain `TimeoutExceeded` with no name.
    """


class RejectedError(ResilienceError):
    """A policy refused to start the call: nothing downstream was called.

    `retry_after` is the number of seconds after which the same call is
    expected to be admitted, or None when the policy cannot tell. A `Retry`
    honours it as the least delay before its next attempt.
    """

    def __init__(
        self, message: str, *, name: str | None = None, retry_after: float | None = None
    ) -> None:
        self.name = name
        self.retry_after = retry_after
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_rejection,
            (type(self), str(self), self.name, self.retry_after),
            self.__dict__,
        )


def _rebuild_rejection(
    cls: type[RejectedError], message: str, name: str | None, retry_after: float | None
) -> RejectedError:
    return cls(message, name=name, retry_after=retry_after)


class CircuitOpenError(RejectedError):
    """A circuit breaker is open (or its half-open trial slots are taken)."""


class ThrottledError(RejectedError):
    """A rate limiter had no token for the call within the time allowed."""


class BulkheadFullError(RejectedError):
    """A bulkhead had no free slot and no room in its queue."""


class LimitExceededError(RejectedError):
    """An adaptive concurrency limiter was at its current limit and its queue was full."""


class InjectedFault(ResilienceError):
    """The default error a fault injector raises, so tests tell it from real failures."""
