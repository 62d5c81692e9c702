"""`attempts`: wrap the function under test to count how often a pipeline called it."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

from .._context import current
from .._middleware import is_async_callable

__all__ = ["AttemptCounter", "attempts"]


class AttemptCounter:
    """A stand-in for a function that counts the calls that reached it.

    Call it (or await it, when it wraps an async function) exactly as the
    function itself; `count` says how many calls got through, and `seen`
    holds the attempt number of each, as the call context reported it.
    Safe to share between threads and tasks.
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.seen: list[int] = []
        """The attempt number of every call that reached the function, in order."""
        self._lock = threading.Lock()
        functools.update_wrapper(self, fn)

    @property
    def count(self) -> int:
        """How many calls reached the function."""
        return len(self.seen)

    def _note(self) -> None:
        attempt = current().attempt
        with self._lock:
            self.seen.append(attempt)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._note()
        return self.fn(*args, **kwargs)

    def assert_count(self, expected: int) -> None:
        """Fail with a readable message unless exactly ``expected`` calls got through."""
        if self.count != expected:
            name = getattr(self.fn, "__name__", self.fn)
            raise AssertionError(
                f"expected {expected} attempt(s) to reach {name!r}, "
                f"got {self.count} (attempt numbers seen: {self.seen})"
            )

    def reset(self) -> None:
        """Forget the calls counted so far."""
        with self._lock:
            self.seen.clear()

    def __repr__(self) -> str:
        return f"AttemptCounter({getattr(self.fn, '__name__', self.fn)!r}, count={self.count})"


class AsyncAttemptCounter(AttemptCounter):
    """`AttemptCounter` for an async function: calling it gives a coroutine."""

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._note()
        return await self.fn(*args, **kwargs)


def attempts(fn: Callable[..., Any]) -> AttemptCounter:
    """Wrap ``fn`` to count the attempts that reach it::

    fetch = attempts(flaky_fetch)
    users_get.call(fetch, 42)
    fetch.assert_count(3)
    """
    if is_async_callable(fn):
        return AsyncAttemptCounter(fn)
    return AttemptCounter(fn)
