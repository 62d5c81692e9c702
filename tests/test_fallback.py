"""Tests of `resilience.Fallback`, each behaviour checked for sync and async calls."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import resilience as rs
from modes import flavour, run
from resilience import Fallback, FallbackContext
from resilience.events import FallbackEvent
from resilience.testing import FakeClock


class Raises:
    """A function that raises ``error`` on every call and counts the calls."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        raise self.error


class Returns:
    """A function that returns ``value`` on every call and counts the calls."""

    def __init__(self, value: Any) -> None:
        self.value = value
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.value


class Recorder:
    """A handler that records the contexts it gets and returns ``value``."""

    def __init__(self, value: Any = "substitute") -> None:
        self.value = value
        self.seen: list[FallbackContext] = []

    def __call__(self, ctx: FallbackContext) -> Any:
        self.seen.append(ctx)
        return self.value


class Awaitable:
    """An awaitable that is not a coroutine; awaiting it gives ``value``."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, Any]:
        return self.value
        yield  # makes this a generator


# -- the substitute ----------------------------------------------------------------


async def test_value_replaces_an_error(mode: str) -> None:
    """A failing call returns the value; the function was called once."""
    fn = Raises(ConnectionError("down"))
    assert await run(mode, Fallback(value="cached"), flavour(mode, fn)) == "cached"
    assert fn.calls == 1


async def test_value_is_returned_as_the_same_object(mode: str) -> None:
    """The value is not copied: every fallback returns that very object."""
    default: dict[str, Any] = {"items": []}
    fallback = Fallback(value=default)
    for _ in range(2):
        assert await run(mode, fallback, flavour(mode, Raises(ValueError("x")))) is default


async def test_value_none_is_a_valid_substitute(mode: str) -> None:
    """value=None means "return None", not "no value given"."""
    assert await run(mode, Fallback(value=None), flavour(mode, Raises(KeyError("k")))) is None


async def test_an_awaitable_value_is_returned_without_awaiting_it(mode: str) -> None:
    """value is returned as it is on both paths, even when it happens to be awaitable."""
    marker = Awaitable("inner")
    assert await run(mode, Fallback(value=marker), flavour(mode, Raises(ValueError("x")))) is marker


async def test_success_passes_through_untouched(mode: str) -> None:
    """A call that returns is not replaced; the handler and the listener are not called."""
    handler = Recorder()
    events: list[FallbackEvent] = []
    fallback = Fallback(handler=handler, on_fallback=events.append)
    fn = Returns([1, 2])
    assert await run(mode, fallback, flavour(mode, fn)) is fn.value
    assert fn.calls == 1
    assert handler.seen == []
    assert events == []


async def test_handler_gets_the_error_and_the_call_arguments(mode: str) -> None:
    """The handler's FallbackContext holds the exception itself and the call's args and kwargs."""
    error = ConnectionError("down")
    handler = Recorder("from cache")
    result = await run(
        mode, Fallback(handler=handler), flavour(mode, Raises(error)), 42, 7, region="eu"
    )
    assert result == "from cache"
    (ctx,) = handler.seen
    assert ctx.error is error
    assert ctx.result is None
    assert ctx.args == (42, 7)
    assert ctx.kwargs == {"region": "eu"}


async def test_handler_serves_a_value_for_the_arguments(mode: str) -> None:
    """A handler can serve a per-argument answer, e.g. the last known value for that user."""
    cache = {1: "alice (cached)", 2: "bob (cached)"}
    fallback = Fallback(handler=lambda ctx: cache.get(ctx.args[0], "unknown"))
    fn = flavour(mode, Raises(ConnectionError("down")))
    assert [await run(mode, fallback, fn, user) for user in (1, 2, 3)] == [
        "alice (cached)",
        "bob (cached)",
        "unknown",
    ]


async def test_handler_context_is_read_only(mode: str) -> None:
    """The context is frozen and its kwargs cannot be changed by the handler."""
    contexts: list[FallbackContext] = []

    def handler(ctx: FallbackContext) -> str:
        contexts.append(ctx)
        with pytest.raises(TypeError):
            ctx.kwargs["x"] = 2  # type: ignore[index]
        with pytest.raises(AttributeError):
            ctx.error = None  # type: ignore[misc]
        return "ok"

    assert (
        await run(mode, Fallback(handler=handler), flavour(mode, Raises(ValueError())), x=1) == "ok"
    )
    assert len(contexts) == 1
    assert not hasattr(contexts[0], "__dict__")  # slotted


def test_a_context_can_be_built_to_test_a_handler() -> None:
    """FallbackContext needs only the error; result, args and kwargs default to empty."""
    ctx = FallbackContext(ConnectionError("down"), args=(42,))
    assert (ctx.result, ctx.args, dict(ctx.kwargs)) == (None, (42,), {})
    assert FallbackContext(None).kwargs == {}


async def test_handler_runs_inside_the_call_context(mode: str) -> None:
    """The handler sees the call's context: pipeline name, attempt and tags."""
    seen: list[rs.CallContext] = []

    def handler(ctx: FallbackContext) -> str:
        seen.append(rs.current())
        return "ok"

    with rs.tags(tenant="acme"):
        fallback = Fallback(handler=handler, name="users")
        assert await run(mode, fallback, flavour(mode, Raises(ValueError()))) == "ok"
    (ctx,) = seen
    assert (ctx.pipeline, ctx.attempt, dict(ctx.tags)) == ("users", 1, {"tenant": "acme"})


# -- which exceptions are replaced --------------------------------------------------


def _is_transient(error: BaseException) -> bool:
    return "transient" in str(error)


HANDLED = [
    pytest.param(ValueError, ValueError("x"), KeyError("x"), id="type"),
    pytest.param((ValueError, KeyError), KeyError("x"), TypeError("x"), id="tuple"),
    pytest.param([ValueError, KeyError], ValueError("x"), TypeError("x"), id="list"),
    pytest.param(_is_transient, RuntimeError("transient"), RuntimeError("fatal"), id="predicate"),
    pytest.param(OSError, ConnectionResetError("x"), ValueError("x"), id="subclass"),
    pytest.param(BaseException, ValueError("x"), None, id="BaseException"),
]


@pytest.mark.parametrize(("on", "matching", "other"), HANDLED)
async def test_on_selects_the_replaced_exceptions(
    mode: str, on: Any, matching: Exception, other: Exception | None
) -> None:
    """An exception that `on` accepts is replaced by the substitute."""
    handler = Recorder()
    result = await run(mode, Fallback(handler=handler, on=on), flavour(mode, Raises(matching)))
    assert result == "substitute"
    assert handler.seen[0].error is matching


@pytest.mark.parametrize(("on", "matching", "other"), [p for p in HANDLED if p.values[2]])
async def test_other_exceptions_propagate_unchanged(
    mode: str, on: Any, matching: Exception, other: Exception
) -> None:
    """An exception that `on` rejects is raised as it is, with no handler or listener call."""
    handler = Recorder()
    events: list[FallbackEvent] = []
    fallback = Fallback(handler=handler, on=on, on_fallback=events.append)
    with pytest.raises(type(other)) as excinfo:
        await run(mode, fallback, flavour(mode, Raises(other)))
    assert excinfo.value is other
    assert handler.seen == []
    assert events == []


REJECTIONS = [
    rs.CircuitOpenError("open", name="users", retry_after=5.0),
    rs.ThrottledError("slow down"),
    rs.BulkheadFullError("full"),
    rs.RejectedError("rejected"),
    rs.TimeoutExceeded(0.5),
]


@pytest.mark.parametrize("rejection", REJECTIONS, ids=lambda e: type(e).__name__)
async def test_rejections_are_replaced_by_default(mode: str, rejection: Exception) -> None:
    """The default on=Exception covers this library's own rejections and timeouts."""
    handler = Recorder("degraded")
    result = await run(mode, Fallback(handler=handler), flavour(mode, Raises(rejection)))
    assert result == "degraded"
    assert handler.seen[0].error is rejection


CONTROL_FLOW = [KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError]


@pytest.mark.parametrize("kind", CONTROL_FLOW, ids=lambda k: k.__name__)
@pytest.mark.parametrize(
    "on", [BaseException, (BaseException,), lambda error: True], ids=["type", "tuple", "predicate"]
)
async def test_control_flow_is_never_replaced(
    mode: str, kind: type[BaseException], on: Any
) -> None:
    """KeyboardInterrupt, SystemExit, GeneratorExit and CancelledError always propagate."""
    signal = kind()
    handler = Recorder()
    events: list[FallbackEvent] = []
    fallback = Fallback(handler=handler, on=on, on_fallback=events.append)
    with pytest.raises(kind) as excinfo:
        await run(mode, fallback, flavour(mode, Raises(signal)))
    assert excinfo.value is signal
    assert handler.seen == []
    assert events == []


@pytest.mark.parametrize("kind", CONTROL_FLOW, ids=lambda k: k.__name__)
def test_on_refuses_control_flow_types(kind: type[BaseException]) -> None:
    """Naming a control-flow type in `on` is a mistake caught at construction, naming `on`."""
    with pytest.raises(TypeError, match=rf"^on cannot include {kind.__name__}"):
        Fallback(value=None, on=kind)
    with pytest.raises(TypeError, match=r"^on "):
        Fallback(value=None, on=(ValueError, kind))


# -- on_result -----------------------------------------------------------------------


async def test_on_result_replaces_a_rejected_result(mode: str) -> None:
    """A result for which on_result is True is replaced; the handler gets it, with error None."""
    handler = Recorder("fresh")
    fallback = Fallback(handler=handler, on_result=lambda r: r is None)
    assert await run(mode, fallback, flavour(mode, Returns(None)), "k") == "fresh"
    (ctx,) = handler.seen
    assert (ctx.error, ctx.result, ctx.args) == (None, None, ("k",))


async def test_on_result_leaves_good_results_alone(mode: str) -> None:
    """A result for which on_result is False is returned as it is."""
    fallback = Fallback(value="default", on_result=lambda r: r == "")
    assert await run(mode, fallback, flavour(mode, Returns("real"))) == "real"
    assert await run(mode, fallback, flavour(mode, Returns(""))) == "default"


async def test_on_result_handler_sees_the_rejected_result(mode: str) -> None:
    """The rejected result is in ctx.result and in the event, e.g. to mend a partial answer."""
    events: list[FallbackEvent] = []
    fallback = Fallback(
        handler=lambda ctx: {**ctx.result, "status": "degraded"},
        on_result=lambda r: r.get("status") == "partial",
        on_fallback=events.append,
    )
    result = await run(mode, fallback, flavour(mode, Returns({"id": 1, "status": "partial"})))
    assert result == {"id": 1, "status": "degraded"}
    assert events == [FallbackEvent(None, None, {"id": 1, "status": "partial"})]


async def test_on_result_is_not_asked_about_errors(mode: str) -> None:
    """An exception goes to `on`, never to on_result."""
    asked: list[Any] = []

    def check(result: Any) -> bool:
        asked.append(result)
        return False

    fallback = Fallback(value="default", on_result=check)
    assert await run(mode, fallback, flavour(mode, Raises(ValueError()))) == "default"
    assert asked == []


# -- a handler that fails, async handlers --------------------------------------------


async def test_handler_error_propagates_chained_to_the_original(mode: str) -> None:
    """If the handler raises, its error propagates with the replaced one as __context__."""
    original = ConnectionError("down")

    def handler(ctx: FallbackContext) -> Any:
        raise LookupError("not in cache either")

    with pytest.raises(LookupError, match="not in cache") as excinfo:
        await run(mode, Fallback(handler=handler), flavour(mode, Raises(original)))
    assert excinfo.value.__context__ is original


async def test_handler_error_on_a_rejected_result_has_no_context(mode: str) -> None:
    """A handler failing over a rejected result raises its own error, with nothing chained."""

    def handler(ctx: FallbackContext) -> Any:
        raise LookupError("no substitute")

    fallback = Fallback(handler=handler, on_result=lambda r: True)
    with pytest.raises(LookupError) as excinfo:
        await run(mode, fallback, flavour(mode, Returns(0)))
    assert excinfo.value.__context__ is None


async def test_an_outer_fallback_can_replace_a_failing_handler(mode: str) -> None:
    """Fallbacks nest: the outer one catches what the inner handler raised."""

    def from_cache(ctx: FallbackContext) -> Any:
        raise LookupError("cache miss")

    pipeline = (
        rs.Pipeline.builder()
        .add(Fallback(value="static default", on=LookupError))
        .add(Fallback(handler=from_cache, on=ConnectionError))
        .build()
    )
    assert await run(mode, pipeline, flavour(mode, Raises(ConnectionError()))) == "static default"


async def test_async_handler_is_awaited_in_an_async_call() -> None:
    """In an async call, an async handler's result is awaited; it gets the same context."""
    seen: list[FallbackContext] = []

    async def handler(ctx: FallbackContext) -> str:
        await asyncio.sleep(0)
        seen.append(ctx)
        return f"cached {ctx.args[0]}"

    error = ConnectionError("down")
    fallback = Fallback(handler=handler)
    assert await fallback.acall(flavour("async", Raises(error)), 7) == "cached 7"
    assert seen[0].error is error


async def test_any_awaitable_from_the_handler_is_awaited_in_an_async_call() -> None:
    """A plain handler that returns an awaitable (not a coroutine) is awaited too."""
    fallback = Fallback(handler=lambda ctx: Awaitable("awaited"))
    assert await fallback.acall(flavour("async", Raises(ValueError()))) == "awaited"


async def test_async_handler_error_is_chained_to_the_original() -> None:
    """An async handler that raises after an await still chains to the replaced error."""
    original = ConnectionError("down")

    async def handler(ctx: FallbackContext) -> str:
        await asyncio.sleep(0)
        raise LookupError("cache miss")

    with pytest.raises(LookupError) as excinfo:
        await Fallback(handler=handler).acall(flavour("async", Raises(original)))
    assert excinfo.value.__context__ is original


def test_async_handler_in_a_sync_call_is_a_type_error() -> None:
    """A sync call whose handler returns a coroutine raises TypeError (and closes it unawaited)."""
    started: list[bool] = []

    async def handler(ctx: FallbackContext) -> str:
        started.append(True)
        return "never"

    original = ValueError("x")
    with pytest.raises(TypeError, match="awaitable in a sync call") as excinfo:
        Fallback(handler=handler).call(Raises(original))
    assert excinfo.value.__cause__ is original  # the failure it was replacing
    assert started == []


def test_awaitable_from_handler_in_a_sync_call_is_a_type_error() -> None:
    """Any awaitable from the handler is refused in a sync call, not only coroutines."""
    with pytest.raises(TypeError, match="awaitable in a sync call"):
        Fallback(handler=lambda ctx: Awaitable(1)).call(Raises(ValueError()))


# -- on_fallback ----------------------------------------------------------------------


async def test_on_fallback_hears_each_fallback_before_the_handler(mode: str) -> None:
    """on_fallback gets a FallbackEvent (name, error, result), before the handler runs."""
    order: list[str] = []
    events: list[FallbackEvent] = []

    def listener(event: FallbackEvent) -> None:
        order.append("listener")
        events.append(event)

    def handler(ctx: FallbackContext) -> str:
        order.append("handler")
        return "ok"

    error = ValueError("x")
    fallback = Fallback(handler=handler, on_fallback=listener, name="svc")
    assert await run(mode, fallback, flavour(mode, Raises(error))) == "ok"
    assert order == ["listener", "handler"]
    assert events == [FallbackEvent("svc", error, None)]


async def test_on_fallback_is_called_even_when_the_handler_fails(mode: str) -> None:
    """Because the listener comes first, a failing handler is still reported."""
    events: list[FallbackEvent] = []

    def handler(ctx: FallbackContext) -> Any:
        raise LookupError("miss")

    fallback = Fallback(handler=handler, on_fallback=events.append)
    with pytest.raises(LookupError):
        await run(mode, fallback, flavour(mode, Raises(ValueError())))
    assert len(events) == 1


async def test_failing_on_fallback_does_not_break_the_call(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An on_fallback that raises is logged under 'resilience'; the substitute is still served."""

    def listener(event: FallbackEvent) -> None:
        raise RuntimeError("listener broke")

    fallback = Fallback(value="default", on_fallback=listener, name="svc")
    with caplog.at_level(logging.ERROR, logger="resilience"):
        assert await run(mode, fallback, flavour(mode, Raises(ValueError()))) == "default"
    records = [r for r in caplog.records if r.name == "resilience"]
    assert len(records) == 1
    assert records[0].levelno == logging.ERROR
    assert "on_fallback" in records[0].getMessage()
    assert "'svc'" in records[0].getMessage()
    assert records[0].exc_info is not None
    assert isinstance(records[0].exc_info[1], RuntimeError)


def test_async_on_fallback_is_refused_at_construction() -> None:
    """An async listener could never run (listeners are called, not awaited): a TypeError."""

    async def listener(event: FallbackEvent) -> None:
        raise AssertionError("never")

    with pytest.raises(TypeError, match=r"^on_fallback must be a plain function"):
        Fallback(value="default", on_fallback=listener)


async def test_a_listener_returning_a_coroutine_is_closed_with_a_log(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A plain function that returns a coroutine (which construction cannot see): the coroutine
    is closed, an error is logged, and the call still gets its substitute."""
    started: list[bool] = []

    async def work(event: FallbackEvent) -> None:
        started.append(True)

    fallback = Fallback(value="default", on_fallback=lambda event: work(event))
    with caplog.at_level(logging.ERROR, logger="resilience"):
        assert await run(mode, fallback, flavour(mode, Raises(ValueError()))) == "default"
    assert started == []
    (record,) = [r for r in caplog.records if r.name == "resilience"]
    assert "did not run" in record.getMessage()


# -- construction ---------------------------------------------------------------------


def test_exactly_one_of_value_and_handler() -> None:
    """Neither or both of value= and handler= is a ValueError that names them."""
    with pytest.raises(ValueError, match=r"exactly one of value= or handler="):
        Fallback()  # type: ignore[call-overload]
    with pytest.raises(ValueError, match=r"exactly one of value= or handler="):
        Fallback(value=None, handler=lambda ctx: 1)  # type: ignore[call-overload]


@pytest.mark.parametrize("handler", [3, "cached", True])
def test_handler_must_be_callable(handler: object) -> None:
    """A non-callable handler is a TypeError naming `handler`."""
    with pytest.raises(TypeError, match=r"^handler must be callable"):
        Fallback(handler=handler)  # type: ignore[call-overload]


def test_a_callable_value_is_returned_not_called() -> None:
    """value= is never called, even when it is a function: that is what handler= is for."""

    def default() -> str:
        raise AssertionError("unreachable")

    assert Fallback(value=default).call(Raises(ValueError())) is default


@pytest.mark.parametrize("on", [int, (ValueError, 3), 42, "ValueError", (ValueError, str)])
def test_on_is_validated(on: object) -> None:
    """on must be an exception type, a tuple of them or a predicate; the error names `on`."""
    with pytest.raises(TypeError, match=r"^on "):
        Fallback(value=None, on=on)  # type: ignore[call-overload]


@pytest.mark.parametrize("param", ["on_result", "on_fallback"])
@pytest.mark.parametrize("value", [3, "x", True])
def test_hooks_must_be_callable(param: str, value: object) -> None:
    """on_result and on_fallback must be callables (or None); the error names them."""
    with pytest.raises(TypeError, match=rf"^{param} "):
        Fallback(value=None, **{param: value})


def test_name_is_validated() -> None:
    """A non-str name is refused, naming `name`."""
    with pytest.raises(TypeError, match=r"^name "):
        Fallback(value=None, name=3)  # type: ignore[call-overload]


def cached_user(ctx: FallbackContext) -> str:
    """A handler with a short qualified name, for the repr test."""
    return "cached"


def is_empty(result: Any) -> bool:
    """An on_result predicate with a short qualified name, for the repr test."""
    return not result


def test_repr_and_describe_show_the_settings() -> None:
    """repr() and describe() show the value or handler, `on`, and on_result when set."""
    by_value = Fallback(value=[], on=(ConnectionError, rs.CircuitOpenError), name="users")
    assert repr(by_value) == "Fallback('users', value=[], on=(ConnectionError, CircuitOpenError))"
    assert by_value.describe() == {
        "type": "Fallback",
        "kind": "fallback",
        "name": "users",
        "value": [],
        "on": (ConnectionError, rs.CircuitOpenError),
        "on_result": None,
    }
    by_handler = Fallback(handler=cached_user, on_result=is_empty)
    assert repr(by_handler) == "Fallback(handler=cached_user, on=Exception, on_result=is_empty)"
    described = by_handler.describe()
    assert described["handler"] is cached_user
    assert described["on_result"] is is_empty
    assert "value" not in described


def test_repr_shortens_a_long_value() -> None:
    """A large cached value does not flood repr()."""
    text = repr(Fallback(value="x" * 1000))
    assert len(text) < 80
    assert "..." in text


# -- decorator, pipelines ---------------------------------------------------------------


def test_decorator_keeps_the_metadata_of_a_def() -> None:
    """The decorated def keeps __name__, __doc__, __wrapped__ and its signature."""

    def fetch(user: int, *, verbose: bool = False) -> str:
        """Fetch a user."""
        raise ConnectionError(user)

    decorated = Fallback(handler=lambda ctx: f"cached {ctx.args[0]}")(fetch)
    assert decorated.__name__ == "fetch"
    assert decorated.__doc__ == "Fetch a user."
    assert decorated.__wrapped__ is fetch  # type: ignore[attr-defined]
    assert inspect.signature(decorated) == inspect.signature(fetch)
    assert not inspect.iscoroutinefunction(decorated)
    assert decorated(7) == "cached 7"


async def test_decorator_keeps_the_metadata_of_an_async_def() -> None:
    """The decorated async def stays a coroutine function with the original's metadata."""

    async def fetch(user: int, *, verbose: bool = False) -> str:
        """Fetch a user."""
        raise ConnectionError(user)

    decorated = Fallback(handler=lambda ctx: f"cached {ctx.args[0]}")(fetch)
    assert decorated.__name__ == "fetch"
    assert decorated.__doc__ == "Fetch a user."
    assert decorated.__wrapped__ is fetch  # type: ignore[attr-defined]
    assert inspect.signature(decorated) == inspect.signature(fetch)
    assert inspect.iscoroutinefunction(decorated)
    assert await decorated(7) == "cached 7"


async def test_decorated_method_handler_gets_self_first(mode: str) -> None:
    """On a decorated method, ctx.args starts with the instance."""

    def handler(ctx: FallbackContext) -> str:
        client, user = ctx.args
        return f"{client.region}: cached {user}"

    class Client:
        region = "eu"

        if mode == "sync":

            @Fallback(handler=handler)
            def get(self, user: int) -> str:
                raise ConnectionError(user)

        else:

            @Fallback(handler=handler)
            async def get(self, user: int) -> str:
                raise ConnectionError(user)

    result = Client().get(3)
    if mode != "sync":
        result = await result
    assert result == "eu: cached 3"


async def test_outermost_fallback_around_a_failing_retry(mode: str, clock: FakeClock) -> None:
    """Fallback > Retry: every attempt is made first, then the last error is replaced."""
    fn = Raises(ConnectionError("down"))
    events: list[FallbackEvent] = []
    pipeline = (
        rs.Pipeline.builder("users.get")
        .add(Fallback(value="cached", on_fallback=events.append))
        .add(rs.Retry(3, backoff=0.5, clock=clock))
        .build()  # no PipelineOrderWarning: warnings are errors in this suite
    )
    assert await run(mode, pipeline, flavour(mode, fn)) == "cached"
    assert fn.calls == 3
    assert clock.sleeps == [0.5, 0.5]
    (event,) = events
    assert event.error is fn.error
    assert "3 attempts" in event.error.__notes__[0]


class Open(rs.Middleware):
    """A stand-in for an open circuit breaker: rejects every call without making it."""

    kind = "circuit_breaker"

    def wrap(self, next: rs.Endpoint, /) -> rs.Endpoint:
        def reject(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            raise rs.CircuitOpenError("circuit 'users' is open", name="users", retry_after=30.0)

        return reject

    def awrap(self, next: rs.AsyncEndpoint, /) -> rs.AsyncEndpoint:
        async def reject(
            fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            raise rs.CircuitOpenError("circuit 'users' is open", name="users", retry_after=30.0)

        return reject


async def test_open_circuit_is_served_from_the_fallback(mode: str, clock: FakeClock) -> None:
    """Fallback > Retry > open breaker: no retry, no call, the substitute is served."""
    fn = Returns("live")
    handler = Recorder("cached")
    pipeline = (
        rs.Pipeline.builder()
        .add(Fallback(handler=handler))
        .add(rs.Retry(3, backoff=0.5, clock=clock))
        .add(Open())
        .build()
    )
    assert await run(mode, pipeline, flavour(mode, fn)) == "cached"
    assert fn.calls == 0
    assert clock.sleeps == []
    assert isinstance(handler.seen[0].error, rs.CircuitOpenError)


def test_fallback_inside_a_retry_draws_an_order_warning(clock: FakeClock) -> None:
    """Retry > Fallback hides the failures from the Retry; build() warns."""
    builder = rs.Pipeline.builder().add(rs.Retry(3, clock=clock)).add(Fallback(value=None))
    with pytest.warns(rs.PipelineOrderWarning, match="Fallback is not outermost"):
        builder.build()


# -- concurrency ------------------------------------------------------------------------


def test_shared_fallback_is_thread_safe() -> None:
    """8 threads x 200 calls through one Fallback: each gets the substitute for its own args."""
    fallback = Fallback(handler=lambda ctx: ctx.args[0] * 10)
    start = threading.Barrier(8)

    def fails_on_odd(value: int) -> int:
        if value % 2:
            raise ValueError(value)
        return value * 10

    def worker(thread: int) -> list[int]:
        start.wait()
        return [fallback.call(fails_on_odd, thread * 1000 + i) for i in range(200)]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(worker, range(8)))
    for thread, values in enumerate(results):
        assert values == [(thread * 1000 + i) * 10 for i in range(200)]


async def test_shared_fallback_is_task_safe() -> None:
    """500 tasks with async handlers through one Fallback: each gets its own substitute."""

    async def handler(ctx: FallbackContext) -> int:
        await asyncio.sleep(0)
        return int(ctx.args[0]) * 10

    async def fails_on_odd(value: int) -> int:
        await asyncio.sleep(0)
        if value % 2:
            raise ValueError(value)
        return value * 10

    fallback = Fallback(handler=handler)
    results = await asyncio.gather(*(fallback.acall(fails_on_odd, i) for i in range(500)))
    assert results == [i * 10 for i in range(500)]
