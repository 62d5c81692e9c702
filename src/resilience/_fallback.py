"""`Fallback`: serve a substitute instead of a failure (graceful degradation)."""

from __future__ import annotations

import inspect
import logging
import reprlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType
from typing import Any, overload

from . import _shells, _shells_sync
from ._clock import Clock, validate_clock
from ._context import TAGS, VAR
from ._events import ResilienceEvent
from ._middleware import AsyncEndpoint, Endpoint, Middleware, notify, terminal
from ._misuse import Misuse
from ._retry import _show
from ._validate import Matcher, callable_or_none, exception_matcher, integer, optional_name
from ._validate import seconds as _seconds

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
    last_good: Any = None
    """With ``last_good=True``: the last good result for the call's key, or None."""
    age: float | None = None
    """Seconds since ``last_good`` was the answer; None when there is none."""


@dataclass(frozen=True, slots=True)
class FallbackEvent(ResilienceEvent):
    """Passed to ``on_fallback`` just before the substitute is produced."""

    name: str | None
    """The Fallback's name."""
    error: Exception | None
    """The exception being replaced, or None when a result was rejected."""
    result: Any = None
    """The rejected result when ``on_result`` asked for a substitute."""
    stale: bool = False
    """True when a last good result (``last_good=True``) was found for the call."""
    age: float | None = None
    """Its age in seconds, when ``stale``."""

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
    _read_only = frozenset(
        {"value", "handler", "on", "on_result", "on_fallback", "last_good", "name"}
    )

    @overload
    def __init__(
        self,
        *,
        value: Any,
        on: Matcher = Exception,
        on_result: Callable[[Any], bool] | None = None,
        on_fallback: Callable[[FallbackEvent], object] | None = None,
        last_good: bool = False,
        key: str | Callable[..., Hashable] | None = None,
        max_entries: int = 1000,
        max_age: float | timedelta | None = None,
        clock: Clock | None = None,
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
        last_good: bool = False,
        key: str | Callable[..., Hashable] | None = None,
        max_entries: int = 1000,
        max_age: float | timedelta | None = None,
        clock: Clock | None = None,
        name: str | None = None,
    ) -> None: ...

    @overload
    def __init__(
        self,
        *,
        last_good: bool,
        on: Matcher = Exception,
        on_result: Callable[[Any], bool] | None = None,
        on_fallback: Callable[[FallbackEvent], object] | None = None,
        key: str | Callable[..., Hashable] | None = None,
        max_entries: int = 1000,
        max_age: float | timedelta | None = None,
        clock: Clock | None = None,
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
        last_good: bool = False,
        key: str | Callable[..., Hashable] | None = None,
        max_entries: int = 1000,
        max_age: float | timedelta | None = None,
        clock: Clock | None = None,
        name: str | None = None,
    ) -> None:
        if not isinstance(last_good, bool):
            raise TypeError(f"last_good must be True or False, got {last_good!r}")
        if value is not _UNSET and handler is not None:
            raise ValueError("Fallback takes exactly one of value= or handler=")
        if value is _UNSET and handler is None and not last_good:
            raise ValueError("Fallback takes exactly one of value= or handler= (or last_good=True)")
        self.last_good = last_good
        self._memory = _LastGood(key, max_entries, max_age, clock) if last_good else None
        if not last_good and (key is not None or max_age is not None):
            raise ValueError("key= and max_age= are settings of last_good=True")
        self._fallthrough = value is _UNSET and handler is None
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
        chosen: dict[str, Any] = {}
        if self.handler is not None:
            chosen["handler"] = self.handler
        elif not self._fallthrough:
            chosen["value"] = self.value
        out = {**chosen, "on": self.on, "on_result": self.on_result}
        if self._memory is not None:
            out.update(last_good=True, **self._memory.settings())
        return out

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
        """The value, or what the handler returns (an awaitable for an async handler).

        With ``last_good``: the last good result for the call's key when there
        is a fresh one and no handler; the handler, when there is one, gets it
        in its context and decides. With neither a value nor a handler and no
        last good result, the failure stands: the error is raised again (the
        rejected result returned).
        """
        found, stale, age = None, False, None
        if self._memory is not None:
            hit = self._memory.recall(args, kwargs)
            if hit is not None:
                (found, age), stale = hit, True
            elif self._fallthrough:
                if error is not None:
                    raise error
                return result
        event = FallbackEvent(self.name, error, result, stale, age)
        if self.on_fallback is not None:
            notify(self.on_fallback, event, f"the on_fallback listener of Fallback{self._label}")
        logger.info(
            "resilience: Fallback%s served %s for %s",
            self._label,
            "the last good result" if stale and self.handler is None else "a substitute",
            _REPR.repr(error if error is not None else result),
        )
        if self._listeners:
            self._emit(event)
        if self.handler is not None:
            context = FallbackContext(error, result, args, MappingProxyType(kwargs), found, age)
            return self.handler(context)
        return found if stale else self.value

    # -- the shells: a plain try/except around the call --------------------------

    def wrap(self, next: Endpoint, /) -> Endpoint:
        memory = self._memory
        if memory is not None:
            next = memory.recording(next, self.on_result)
        return _shells_sync.fallback(
            next, next is terminal, self._handles, self.on_result, self._sync_substitute
        )

    def awrap(self, next: AsyncEndpoint, /) -> AsyncEndpoint:
        memory = self._memory
        if memory is not None:
            next = memory.arecording(next, self.on_result)
        return _shells.fallback(
            next, next is terminal, self._handles, self.on_result, self._async_substitute
        )

    def forget(self) -> None:
        """Drop every remembered good result (``last_good=True``)."""
        if self._memory is not None:
            self._memory.clear()

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


class _LastGood:
    """The last good result per key: least recently stored goes past ``max_entries``."""

    def __init__(
        self,
        key: str | Callable[..., Hashable] | None,
        max_entries: int,
        max_age: float | timedelta | None,
        clock: Clock | None,
    ) -> None:
        if key is not None and not (isinstance(key, str) and key) and not callable(key):
            raise TypeError(
                f"key must be a tag name, a function of the call's arguments, or None, got {key!r}"
            )
        self.key = key
        self.max_entries = integer(max_entries, "max_entries", minimum=1)
        self.max_age = None if max_age is None else _seconds(max_age, "max_age")
        self.clock = validate_clock(clock)
        self._entries: OrderedDict[Hashable, tuple[Any, float]] = OrderedDict()
        self._lock = threading.Lock()

    def settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {"max_entries": self.max_entries}
        if self.key is not None:
            out["key"] = self.key
        if self.max_age is not None:
            out["max_age"] = self.max_age
        return out

    def _key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
        key = self.key
        if isinstance(key, str):
            return VAR.get()[TAGS].get(key, _NO_KEY)  # type: ignore[no-any-return]
        if key is not None:
            found: Hashable = key(*args, **kwargs)
            return found
        made = (args, tuple(sorted(kwargs.items()))) if kwargs else args
        try:
            hash(made)
        except TypeError:
            raise TypeError(
                "Fallback(last_good=True) keys results by the call's arguments, and these are "
                "not hashable; pass key= (a function of the arguments, or a tag name)"
            ) from None
        return made

    def remember(self, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> None:
        key = self._key(args, kwargs)
        if key is _NO_KEY:
            return
        now = self.clock.monotonic()
        with self._lock:
            entries = self._entries
            entries[key] = (result, now)
            entries.move_to_end(key)
            while len(entries) > self.max_entries:
                entries.popitem(last=False)

    def recall(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, float] | None:
        """The last good result of the call's key and its age, if there is a fresh one."""
        key = self._key(args, kwargs)
        with self._lock:
            entry = self._entries.get(key)
        if entry is None:
            return None
        value, stored = entry
        age = max(0.0, self.clock.monotonic() - stored)
        if self.max_age is not None and age > self.max_age:
            return None
        return value, age

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def recording(self, next: Endpoint, on_result: Callable[[Any], bool] | None) -> Endpoint:
        direct = next is terminal
        remember = self.remember

        def recording(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            result = fn(*args, **kwargs) if direct else next(fn, args, kwargs)
            if on_result is None or not on_result(result):
                remember(args, kwargs, result)
            return result

        return recording

    def arecording(
        self, next: AsyncEndpoint, on_result: Callable[[Any], bool] | None
    ) -> AsyncEndpoint:
        direct = next is terminal
        remember = self.remember

        async def recording(
            fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            result = await (fn(*args, **kwargs) if direct else next(fn, args, kwargs))
            if on_result is None or not on_result(result):
                remember(args, kwargs, result)
            return result

        return recording


_NO_KEY: Any = object()
