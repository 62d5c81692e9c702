"""Eager argument checks: bad input fails at construction, naming the parameter."""

from __future__ import annotations

import contextvars
import math
import random
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from ._misuse import refuse_async

Predicate = Callable[[BaseException], bool]

#: What ``on=``-style parameters take: an exception type, a tuple of them, or a predicate.
Matcher = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]

#: Control flow that no policy may retry, count as a failure or swallow.
CONTROL_FLOW: tuple[type[BaseException], ...] = (KeyboardInterrupt, SystemExit, GeneratorExit)


def seconds(
    value: object,
    name: str,
    *,
    allow_zero: bool = False,
    allow_inf: bool = False,
) -> float:
    """A duration in seconds from a real number or a `timedelta`."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"{name} must be a number of seconds or a timedelta, got {type(value).__name__}"
        )
    result = float(value)
    if math.isnan(result):
        raise ValueError(f"{name} must be a number of seconds, got NaN")
    if math.isinf(result) and not allow_inf:
        raise ValueError(f"{name} must be finite, got {result}")
    if result < 0 or (result == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound} seconds, got {value!r}")
    return result


def number(value: object, name: str, *, minimum: float, inclusive: bool = True) -> float:
    """A finite real number bounded below."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    result = float(value)
    if math.isnan(result) or math.isinf(result):
        raise ValueError(f"{name} must be a finite number, got {result}")
    if result < minimum or (result == minimum and not inclusive):
        bound = ">=" if inclusive else ">"
        raise ValueError(f"{name} must be {bound} {minimum:g}, got {value!r}")
    return result


def integer(value: object, name: str, *, minimum: int) -> int:
    """An int (not a bool) bounded below."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


def optional_name(value: object, name: str = "name") -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a str or None, got {type(value).__name__}")
    return value


def callable_or_none(value: object, name: str) -> Callable[..., Any] | None:
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be callable or None, got {type(value).__name__}")
    refuse_async(value, name)
    return value


def exception_matcher(
    value: object, name: str
) -> tuple[tuple[type[BaseException], ...], Predicate | None]:
    """Split an ``on=``-style argument into exception types or a predicate.

    Accepts one exception class, a tuple (or list) of them, or a callable
    taking the exception and returning a bool.
    """
    if isinstance(value, type):
        if not issubclass(value, BaseException):
            raise TypeError(f"{name} must be an exception type, got {value.__name__}")
        return (value,), None
    if isinstance(value, tuple | list | frozenset | set):
        types = tuple(value)
        for item in types:
            if not (isinstance(item, type) and issubclass(item, BaseException)):
                raise TypeError(f"{name} must contain only exception types, got {item!r}")
        return types, None
    if callable(value):
        refuse_async(value, name)
        return (), value
    raise TypeError(
        f"{name} must be an exception type, a tuple of them, or a predicate, "
        f"got {type(value).__name__}"
    )


#: While set (the simulator sets it), policies built without a seed draw theirs from it,
#: so a whole simulated run is reproducible.
DEFAULT_SEEDS: contextvars.ContextVar[random.Random | None] = contextvars.ContextVar(
    "resilience_default_seeds", default=None
)


def random_source(seed: object, name: str = "seed") -> random.Random:
    """A random source from a seed: None (fresh), an int, or a `random.Random` (used as is)."""
    if seed is None:
        seeds = DEFAULT_SEEDS.get()
        return random.Random() if seeds is None else random.Random(seeds.getrandbits(64))
    if isinstance(seed, random.Random):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"{name} must be an int or a random.Random, got {type(seed).__name__}")
    return random.Random(seed)
