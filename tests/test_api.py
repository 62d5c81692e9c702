"""The public face: exports, errors, custom middleware, the one call interface."""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.resources
import inspect
import pickle
from collections.abc import Callable
from typing import Any

import pytest

import resilience as rs
from resilience._middleware import is_async_callable


def test_all_is_sorted_and_complete() -> None:
    """__all__ is sorted, every name in it exists, and every public name is in it."""
    assert rs.__all__ == sorted(rs.__all__, key=isort_order)
    for name in rs.__all__:
        assert hasattr(rs, name), name
    public = {n for n in vars(rs) if not n.startswith("_") and not inspect.ismodule(getattr(rs, n))}
    assert public - set(rs.__all__) == set()


def isort_order(name: str) -> tuple[int, str]:
    """The order ruff's RUF022 keeps: CONSTANTS, then Classes, then functions."""
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


@pytest.mark.parametrize(
    "module",
    [
        "resilience.backoff",
        "resilience.events",
        "resilience.metrics",
        "resilience.stores",
        "resilience.testing",
        "resilience.integrations.httpx",
        "resilience.integrations.grpc",
        "resilience.config",
        "resilience.simulate",
        "resilience.demo",
    ],
)
def test_subpackages_have_sorted_all(module: str) -> None:
    """Public subpackages keep a sorted __all__ of names that exist."""
    mod = importlib.import_module(module)
    assert mod.__all__ == sorted(mod.__all__, key=isort_order)
    assert all(hasattr(mod, name) for name in mod.__all__)


def test_package_is_typed() -> None:
    """The py.typed marker ships with the package."""
    assert (importlib.resources.files("resilience") / "py.typed").is_file()


def test_error_hierarchy() -> None:
    """Every error is a ResilienceError; TimeoutExceeded is a TimeoutError too."""
    assert issubclass(rs.TimeoutExceeded, rs.ResilienceError)
    assert issubclass(rs.TimeoutExceeded, TimeoutError)
    for cls in (rs.CircuitOpenError, rs.ThrottledError, rs.BulkheadFullError):
        assert issubclass(cls, rs.RejectedError)
    assert issubclass(rs.RejectedError, rs.ResilienceError)
    assert issubclass(rs.InjectedFault, rs.ResilienceError)
    assert not issubclass(rs.InjectedFault, rs.RejectedError)


def test_errors_carry_their_fields_and_pickle() -> None:
    """Errors keep name, seconds and retry_after, also through pickle (for process pools)."""
    timeout = rs.TimeoutExceeded(0.5, "users.get")
    assert (timeout.seconds, timeout.name) == (0.5, "users.get")
    assert str(timeout) == "call exceeded its timeout of 0.5s in 'users.get'"
    rejected = rs.ThrottledError("slow down", name="api", retry_after=2.5)
    assert (rejected.name, rejected.retry_after, str(rejected)) == ("api", 2.5, "slow down")
    for error in (timeout, rejected):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert str(copy) == str(error)
    assert pickle.loads(pickle.dumps(rejected)).retry_after == 2.5


def test_pickled_errors_keep_their_notes() -> None:
    """The notes Retry adds ("gave up after N attempts") survive a process boundary."""
    for error in (rs.TimeoutExceeded(1.0), rs.CircuitOpenError("open", name="db")):
        error.add_note("resilience: gave up after 3 attempts")
        copy = pickle.loads(pickle.dumps(error))
        assert copy.__notes__ == ["resilience: gave up after 3 attempts"]


class Counter(rs.Middleware):
    """A user middleware in a handful of lines: counts the calls through it."""

    kind = "counter"

    def __init__(self) -> None:
        self.calls = 0

    def settings(self) -> dict[str, Any]:
        return {"calls": self.calls}

    def wrap(self, next: rs.Endpoint) -> rs.Endpoint:
        def run(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            self.calls += 1
            return next(fn, args, kwargs)

        return run

    def awrap(self, next: rs.AsyncEndpoint) -> rs.AsyncEndpoint:
        async def run(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            self.calls += 1
            return await next(fn, args, kwargs)

        return run


def test_custom_middleware_gets_the_whole_call_interface() -> None:
    """A subclass writing only wrap/awrap is a decorator, has call/acall, and describes itself."""
    counter = Counter()

    @counter
    def double(x: int) -> int:
        return 2 * x

    @counter
    async def adouble(x: int) -> int:
        return 2 * x

    assert double(2) == 4
    assert counter.call(double.__wrapped__, 3) == 6  # type: ignore[attr-defined]
    assert asyncio.run(adouble(4)) == 8
    assert asyncio.run(counter.acall(adouble.__wrapped__, 5)) == 10  # type: ignore[attr-defined]
    assert counter.calls == 4
    assert counter.describe() == {"type": "Counter", "kind": "counter", "name": None, "calls": 4}
    pipeline = rs.Pipeline.builder().add(counter).add(rs.Timeout(5)).build()
    assert pipeline.call(lambda: "x") == "x"
    assert counter.calls == 5


def test_call_passes_positional_and_keyword_arguments() -> None:
    """call() forwards *args and **kwargs untouched, even a kwarg named fn."""
    retry = rs.Retry()

    def echo(*args: Any, **kwargs: Any) -> tuple[Any, ...]:
        return args, kwargs

    assert retry.call(echo, 1, 2, fn="f", key="a") == ((1, 2), {"fn": "f", "key": "a"})


def test_decorating_a_non_callable_is_a_type_error() -> None:
    """Decorating something that cannot be called fails at once, clearly."""
    with pytest.raises(TypeError, match="callable"):
        rs.Retry()(42)  # type: ignore[call-overload]


def test_async_detection_sees_through_partials_and_callable_objects() -> None:
    """Partials of coroutine functions and objects with an async __call__ get the async wrapper."""

    async def coro(x: int) -> int:
        return x

    class AsyncCallable:
        async def __call__(self, x: int) -> int:
            return x

    class SyncCallable:
        def __call__(self, x: int) -> int:
            return x

    assert is_async_callable(functools.partial(coro, 1))
    assert is_async_callable(AsyncCallable())
    assert not is_async_callable(SyncCallable())
    assert not is_async_callable(len)
    wrapped = rs.Retry()(functools.partial(coro, 7))
    assert asyncio.run(wrapped()) == 7  # type: ignore[arg-type]


def test_clock_protocol_is_checked_at_construction() -> None:
    """A clock lacking monotonic/sleep/asleep is refused when the policy is built."""
    with pytest.raises(TypeError, match="clock must provide"):
        rs.Retry(clock=object())  # type: ignore[arg-type]
    assert isinstance(rs.SystemClock(), rs.Clock)
    assert repr(rs.SystemClock()) == "SystemClock()"


def test_every_event_type_is_a_resilience_event_and_the_waits_admission_events() -> None:
    """resilience.events holds every event type; the waits and refusals share one base."""
    from resilience import events

    kinds = [getattr(events, name) for name in events.__all__ if name != "FaultPlan"]
    assert all(issubclass(kind, events.ResilienceEvent) for kind in kinds)
    admissions = {k.__name__ for k in kinds if issubclass(k, events.AdmissionEvent)}
    expected = {"AdaptiveLimiterEvent", "AdmissionEvent", "BulkheadEvent", "ThrottleEvent"}
    assert admissions == expected
    refused = rs.BulkheadFullError("full")
    event = events.BulkheadEvent("b", "rejected", 0.5, refused)
    assert event.describe() == ("rejected", refused, {"resilience.wait.seconds": 0.5})
