"""`Fallback`: serve a substitute instead of a failure (graceful degradation)."""

from __future__ import annotations

import inspect
import logging
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, overload

from . import _shells, _shells_sync
from ._events import ResilienceEvent
from ._middleware import AsyncEndpoint, Endpoint, Middleware, notify, terminal
from ._misuse import Misuse
from ._retry import _show
from ._validate import Matcher, callable_or_none, exception_matcher, optional_name

__all__ = ["Fallback", "FallbackContext", "FallbackEvent"]

logger = logging.getLogger("resilience")

_UNSET: Any = object()
_REPR = reprlib.Repr()  # a long cached value must not flood repr() and logs
_REPR.maxstring = _REPR.maxother = 40


@dataclass(frozen=True, slots=True)
class FallbackContext:
    """What a ``handler`` gets: the failure to replace and the call's arguments.

    To unit-test a handler, build one yourself:
    ``handler(FallbackContext(ConnectionError(), args=(42,)))``.
    """

    error: Exception | None
    """The exception the call raised, or None when ``on_result`` rejected its result."""
    result: Any = None
    """The rejected result when ``on_result`` asked for a substitute, else None."""
    args: tuple[Any, ...] = ()
    """The positional arguments of the call (``self`` first for a decorated method)."""
    kwargs: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """The keyword arguments of the call (read-only)."""


@dataclass(frozen=True, slots=True)
class FallbackEvent(ResilienceEvent):
    """Passed to ``on_fallback`` just before the substitute is produced."""

    name: str | None
    """The Fallback's name."""
    error: Exception | None
    """The exception being replaced, or None when a result was rejected."""
    result: Any = None
    """The rejected result when ``on_result`` asked for a substitute."""

    event = "fallback_served"


def _matcher(on: object) -> Callable[[Exception], bool]:
    types, predicate = exception_matcher(on, "on")
    if predicate is not None:
        return predicate
    for kind in types:
        if not (issubclass(kind, Exception) or issubclass(Exception, kind)):
            raise TypeError(
                f"on cannot include {kind.__name__}: Fallback only replaces Exception "
                "subclasses; cancellation, KeyboardInterrupt, SystemExit and GeneratorExit "
                "always propagate"
            )

    def matches(error: Exception) -> bool:
        return isinstance(error, types)

    return matches


class Fallback(Middleware):
    """Return a substitute when the call fails, instead of raising.

    Give exactly one of ``value`` (returned as it is, never called or
    awaited; the same object every time) or ``handler``, a function that
    gets a `FallbackContext` (the error or rejected result, and the call's
    ``args`` and ``kwargs``) and returns the substitute. In an async call
    the handler may be a plain function or an async one (its awaitable is
    awaited); in a sync call a handler that returns an awaitable is a
    `TypeError`, raised when it happens.

    ``on`` picks the exceptions to replace: a type, a tuple of types, or a
    predicate. The default, `Exception`, includes this library's own
    rejections, so an open `CircuitOpenError` becomes the substitute too.
    Only `Exception` subclasses are ever considered: cancellation,
    `KeyboardInterrupt`, `SystemExit` and `GeneratorExit` always propagate.
    ``on_result`` replaces return values for which it returns True.

    ``on_fallback`` hears a `FallbackEvent` before the substitute is
    produced; if it raises, the error is logged to the ``"resilience"``
    logger and the call goes on. If the handler raises, that exception
    propagates, with the replaced one as its ``__context__``.

    Add it first in a pipeline (outermost), so that every other layer has
    done its work before the failure is hidden.
    """

    kind = "fallback"
    _read_only = frozenset({"value", "handler", "on", "on_result", "on_fallback", "name"})

    @overload
    def __init__(
        self,
        *,
        value: Any,
        on: Matcher = Exception,
        on_result: Callable[[Any], bool] | None = None,
        on_fallback: Callable[[FallbackEvent], object] | None = None,
        name: str | None = None,
    ) -> None: ...

    @overload
    def __init__(
        self,
        *,
        handler: Callable[[FallbackContext], Any],
        on: Matcher = Exception,
        on_result: Callable[[Any], bool] | None = None,
        on_fallback: Callable[[FallbackEvent], object] | None = None,
        name: str | None = None,
    ) -> None: ...

    def __init__(
        self,
        *,
        value: Any = _UNSET,
        handler: Callable[[FallbackContext], Any] | None = None,
        on: Matcher = Exception,
        on_result: Callable[[Any], bool] | None = None,
        on_fallback: Callable[[FallbackEvent], object] | None = None,
        name: str | None = None,
    ) -> None:
        if (value is _UNSET) == (handler is None):
            raise ValueError("Fallback takes exactly one of value= or handler=")
        if handler is not None and not callable(handler):
            raise TypeError(f"handler must be callable, got {type(handler).__name__}")
        self.value: Any = None if value is _UNSET else value
        self.handler = handler
        self.on = on
        self._handles = _matcher(on)
        self.on_result = callable_or_none(on_result, "on_result")
        self.on_fallback = callable_or_none(on_fallback, "on_fallback")
        self.name = optional_name(name)

    def settings(self) -> dict[str, Any]:
        chosen = {"value": self.value} if self.handler is None else {"handler": self.handler}
        return {**chosen, "on": self.on, "on_result": self.on_result}

    def __repr__(self) -> str:
        label = self._repr_name
        if self.handler is None:
            chosen = f"value={_REPR.repr(self.value)}"
        else:
            chosen = f"handler={_show(self.handler)}"
        result = f", on_result={_show(self.on_result)}" if self.on_result is not None else ""
        return f"Fallback({label}{chosen}, on={_show(self.on)}{result})"

    # -- the core: notify, then produce the substitute (no awaiting here) -------

    def _substitute(
        self, error: Exception | None, result: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """The value, or what the handler returns (an awaitable for an async handler)."""
        if self.on_fallback is not None:
            label = self._label
            notify(
                self.on_fallback,
                FallbackEvent(self.name, error, result),
                f"the on_fallback listener of Fallback{label}",
            )
        logger.info(
            "resilience: Fallback%s served a substitute for %s",
            self._label,
            _REPR.repr(error if error is not None else result),
        )
        if self._listeners:
            self._emit(FallbackEvent(self.name, error, result))
        if self.handler is None:
            return self.value
        return self.handler(FallbackContext(error, result, args, MappingProxyType(kwargs)))

    # -- the shells: a plain try/except around the call --------------------------

    def wrap(self, next: Endpoint, /) -> Endpoint:
        return _shells_sync.fallback(
            next, next is terminal, self._handles, self.on_result, self._sync_substitute
        )

    def awrap(self, next: AsyncEndpoint, /) -> AsyncEndpoint:
        return _shells.fallback(
            next, next is terminal, self._handles, self.on_result, self._async_substitute
        )

    def _sync_substitute(
        self, error: Exception | None, result: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        substitute = self._substitute(error, result, args, kwargs)
        if self.handler is not None and inspect.isawaitable(substitute):
            if inspect.iscoroutine(substitute):
                substitute.close()  # never awaited, and it should not warn that it was not
            raise Misuse(
                TypeError(
                    f"the handler of {self!r} returned an awaitable in a sync call; use a "
                    "plain function as the handler, or make the call async (acall() or an "
                    "async def)"
                )
            )
        return substitute

    async def _async_substitute(
        self, error: Exception | None, result: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        substitute = self._substitute(error, result, args, kwargs)
        if self.handler is not None and inspect.isawaitable(substitute):
            return await substitute
        return substitute
