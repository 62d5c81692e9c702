"""Misuse is loud: a wrong kind of callable fails at once, and no layer mistakes it for a failure.

Three mix-ups used to pass silently:

* a generator function, decorated or called: its body runs only when the
  caller iterates, after every layer has returned;
* an async function through ``call()`` (a coroutine that never runs comes
  back, and every layer counts a success), a sync one through ``acall()``
  (it runs, then awaiting its result fails inside the innermost layer, so a
  Retry runs it again and a breaker counts a failure), a coroutine object
  instead of a function;
* an async function where a plain one is expected (a predicate, a listener):
  a coroutine is always true, and a listener's coroutine never runs.

The first and the last are refused where they are given. A mix-up that can
only show during a call travels up the chain as `Misuse`, a `BaseException`
that is not an `Exception`: every layer lets it through as it lets
cancellation through (nothing retried, counted or replaced, every slot and
permit given back), and the entry point (decorated function, ``call``,
``acall``) raises the `TypeError` it carries.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable
from typing import Any

__all__ = [
    "Misuse",
    "awaitable_or_misuse",
    "check_async_entry",
    "check_decorated",
    "check_sync_entry",
    "is_async_callable",
    "refuse_async",
]

_GENERATOR = inspect.CO_GENERATOR
_ASYNC_GENERATOR = inspect.CO_ASYNC_GENERATOR
_STREAMS = _GENERATOR | _ASYNC_GENERATOR
_FUNCTION = types.FunctionType


class Misuse(BaseException):
    """A `TypeError` on its way up through the layers, untouched by them (see the module docs)."""

    def __init__(self, error: TypeError) -> None:
        super().__init__(error)
        self.error = error


def _name(fn: object) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def _flags(fn: object) -> int:
    """The code flags of a function, a method or a partial of one (0 for anything else)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    code = getattr(fn, "__code__", None)
    if code is None:
        call = getattr(type(fn), "__call__", None)  # noqa: B004 - the method itself
        code = getattr(call, "__code__", None)
    return code.co_flags if isinstance(code, types.CodeType) else 0


def is_async_callable(fn: object) -> bool:
    """True for coroutine functions, partials of them and objects with an async ``__call__``."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - the bound method, not callable()
    return call is not None and inspect.iscoroutinefunction(call)


def _stream_error(fn: object, where: str) -> TypeError:
    kind = "an async generator" if _flags(fn) & _ASYNC_GENERATOR else "a generator"
    return TypeError(
        f"{where}: {_name(fn)} is {kind} function: its body runs only when the caller "
        "iterates, after every layer has returned, so nothing could retry, time, count or "
        "limit it. Protect the call that opens the stream, or consume the stream inside a "
        "protected function (for example `return list(items())`)"
    )


def check_decorated(fn: Callable[..., Any], name: str | None) -> bool:
    """Whether a function to decorate is async; refuses (async) generator functions."""
    where = f"decorating with {name!r}" if name else "decorating"
    if _flags(fn) & _STREAMS:
        raise _stream_error(fn, where)
    return is_async_callable(fn)


def _not_a_function(fn: object, where: str, entry: str) -> TypeError:
    if inspect.iscoroutine(fn):
        fn.close()  # it will never run: no "never awaited" warning later
        return TypeError(
            f"{where}.{entry}() takes the function and its arguments, "
            f"{entry}(fetch, 1), not a coroutine object, {entry}(fetch(1))"
        )
    return TypeError(f"{where}.{entry}() takes a callable, got {type(fn).__name__}")


def check_sync_entry(fn: Any, policy: Any) -> None:
    """Refuse what ``call()`` cannot protect; remember a plain function found fine."""
    where = type(policy).__name__
    if not callable(fn):
        raise _not_a_function(fn, where, "call")
    flags = _flags(fn)
    if flags & _STREAMS:
        raise _stream_error(fn, f"{where}.call()")
    if is_async_callable(fn):
        raise TypeError(
            f"{where}.call() was given the async function {_name(fn)}: calling it would "
            "only make a coroutine, and no layer would see it run. Use "
            f"`await policy.acall({_name(fn)}, ...)`"
        )
    if isinstance(fn, _FUNCTION):
        policy._checked_sync = fn


def check_async_entry(fn: Any, policy: Any) -> Any:
    """What ``acall()`` should call: ``fn``, or ``fn`` with a check that it returned an awaitable.

    Refuses a coroutine object, an (async) generator function and anything
    not callable; remembers a plain coroutine function found fine.
    """
    where = type(policy).__name__
    if not callable(fn):
        raise _not_a_function(fn, where, "acall")
    if _flags(fn) & _STREAMS:
        raise _stream_error(fn, f"{where}.acall()")
    if is_async_callable(fn):
        if isinstance(fn, _FUNCTION):
            policy._checked_async = fn
        return fn
    return awaitable_or_misuse(fn, where)


def awaitable_or_misuse(fn: Callable[..., Any], where: str) -> Callable[..., Any]:
    """``fn``, checked: a result that is not awaitable ends the call as `Misuse`."""

    def checked(*args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        if inspect.isawaitable(result):
            return result
        raise Misuse(
            TypeError(
                f"{where}.acall() was given {_name(fn)}, which returned "
                f"{type(result).__name__}, not an awaitable: pass an async function to "
                "acall(), or call a sync one with call()"
            )
        )

    return checked


def refuse_async(value: object, name: str) -> None:
    """Refuse an async callable where a plain one is expected (a predicate, a listener)."""
    if is_async_callable(value):
        raise TypeError(
            f"{name} must be a plain function, got the async function {_name(value)}: "
            "it is called without awaiting, and a coroutine is always true and never runs"
        )
