"""Use an existing `pybreaker.CircuitBreaker` as a pipeline layer.

    import pybreaker
    from resilience.integrations.pybreaker import PybreakerLayer

    legacy = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
    pipeline = rs.Pipeline.builder("users").add(rs.Retry(3)).add(PybreakerLayer(legacy)).build()

The breaker keeps its own rules, state, listeners and storage; the layer only
calls through it. Two things are translated so the rest of the pipeline
understands them: a call pybreaker refuses without running it raises
`resilience.CircuitOpenError` (chained to pybreaker's `CircuitBreakerError`,
with ``retry_after`` from its ``reset_timeout``), so `Retry` does not retry it
and `Fallback` serves the substitute; and async calls work on asyncio, which
pybreaker's own ``call_async`` (Tornado) does not.

What stays pybreaker's: sync calls go through ``breaker.call``, which holds
the breaker's lock for the whole call, so calls through one pybreaker breaker
run one at a time; async calls go through ``breaker.calling()`` and hold no
lock while they run. pybreaker counts every exception it sees, cancellation
included, unless you exclude it on the breaker. The native
`resilience.CircuitBreaker` has none of these limits (see docs/design.md).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pybreaker

from .._errors import CircuitOpenError
from .._middleware import AsyncEndpoint, Endpoint, Middleware
from .._validate import optional_name

__all__ = ["PybreakerLayer"]


class PybreakerLayer(Middleware):
    """A pipeline layer that calls through a `pybreaker.CircuitBreaker`."""

    kind = "circuit_breaker"

    def __init__(self, breaker: pybreaker.CircuitBreaker, *, name: str | None = None) -> None:
        if not isinstance(breaker, pybreaker.CircuitBreaker):
            raise TypeError(
                f"breaker must be a pybreaker.CircuitBreaker, got {type(breaker).__name__}"
            )
        self.breaker = breaker
        self.name = optional_name(name) or breaker.name

    def settings(self) -> dict[str, Any]:
        return {"fail_max": self.breaker.fail_max, "reset_timeout": self.breaker.reset_timeout}

    def __repr__(self) -> str:
        return f"PybreakerLayer({self.breaker.name!r}, state={self.breaker.current_state!r})"

    def _rejection(self, error: pybreaker.CircuitBreakerError) -> CircuitOpenError:
        breaker = self.breaker
        retry_after: float | None = None
        opened_at = getattr(getattr(breaker, "_state_storage", None), "opened_at", None)
        if isinstance(opened_at, datetime):
            elapsed = (datetime.now(UTC) - opened_at).total_seconds()
            retry_after = max(0.0, float(breaker.reset_timeout) - elapsed)
        label = f"pybreaker circuit breaker {self.name!r}" if self.name else "pybreaker breaker"
        rejection = CircuitOpenError(f"{label} is open", name=self.name, retry_after=retry_after)
        rejection.__cause__ = error
        return rejection

    def wrap(self, next: Endpoint, /) -> Endpoint:
        breaker = self.breaker
        rejection = self._rejection

        def pybreaker_layer(
            fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            ran = False

            def run() -> Any:
                nonlocal ran
                ran = True
                return next(fn, args, kwargs)

            try:
                return breaker.call(run)
            except pybreaker.CircuitBreakerError as exc:
                if ran:  # the call ran and tripped the breaker: pybreaker's own error
                    raise
                raise rejection(exc) from exc

        return pybreaker_layer

    def awrap(self, next: AsyncEndpoint, /) -> AsyncEndpoint:
        breaker = self.breaker
        rejection = self._rejection

        async def pybreaker_layer(
            fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            guard = breaker.calling()
            try:
                guard.__enter__()
            except pybreaker.CircuitBreakerError as exc:
                raise rejection(exc) from exc
            try:
                result = await next(fn, args, kwargs)
            except BaseException as exc:
                # pybreaker records the error and raises it again (or its own
                # CircuitBreakerError when this failure trips it).
                guard.__exit__(type(exc), exc, exc.__traceback__)
                raise
            guard.__exit__(None, None, None)
            return result

        return pybreaker_layer
