"""Pipeline: order, composition at build time, nesting, description and order advice."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable
from typing import Any

import pytest

import resilience as rs
from resilience.testing import FakeClock


class Trace(rs.Middleware):
    """Records "<label> pre" and "<label> post" around each call."""

    def __init__(self, label: str, log: list[str], kind: str = "custom") -> None:
        self.label = label
        self.log = log
        self.kind = kind  # type: ignore[misc]
        self.wraps = 0

    def wrap(self, next: rs.Endpoint) -> rs.Endpoint:
        self.wraps += 1

        def run(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            self.log.append(f"{self.label} pre")
            try:
                return next(fn, args, kwargs)
            finally:
                self.log.append(f"{self.label} post")

        return run

    def awrap(self, next: rs.AsyncEndpoint) -> rs.AsyncEndpoint:
        self.wraps += 1

        async def run(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            self.log.append(f"{self.label} pre")
            try:
                return await next(fn, args, kwargs)
            finally:
                self.log.append(f"{self.label} post")

        return run


ORDER = ["retry pre", "timeout pre", "call", "timeout post", "retry post"]


def test_first_added_is_outermost_sync() -> None:
    """The order of add() is the order a sync call passes through, like go-kit's Chain."""
    log: list[str] = []
    pipeline = rs.Pipeline.builder().add(Trace("retry", log)).add(Trace("timeout", log)).build()
    assert pipeline.call(lambda: log.append("call") or "done") == "done"
    assert log == ORDER


async def test_first_added_is_outermost_async() -> None:
    """The async path passes through the layers in the same order."""
    log: list[str] = []
    pipeline = rs.Pipeline.builder().add(Trace("retry", log)).add(Trace("timeout", log)).build()

    async def call() -> str:
        log.append("call")
        return "done"

    assert await pipeline.acall(call) == "done"
    assert log == ORDER


def test_order_with_real_policies_and_retry_reruns_inner_layers() -> None:
    """Retry outside a traced Timeout re-enters every inner layer on each attempt."""
    log: list[str] = []
    clock = FakeClock()
    attempts = iter([ConnectionError("first"), None])

    def call() -> str:
        log.append("call")
        error = next(attempts)
        if error is not None:
            raise error
        return "ok"

    pipeline = (
        rs.Pipeline.builder()
        .add(Trace("retry", log))
        .add(rs.Retry(attempts=2, backoff=rs.backoff.constant(0), clock=clock))
        .add(Trace("timeout", log))
        .add(rs.Timeout(1, clock=clock))
        .build()
    )
    assert pipeline.call(call) == "ok"
    assert log == ["retry pre", "timeout pre", "call", "timeout post", *ORDER[1:]]


def test_chain_is_built_once_not_per_call() -> None:
    """Layers are wrapped when the pipeline is built, not on each call."""
    log: list[str] = []
    layer = Trace("t", log)
    pipeline = rs.Pipeline.builder().add(layer).build()
    built = layer.wraps
    for _ in range(5):
        pipeline.call(lambda: None)
    asyncio.run(pipeline.acall(asyncio.sleep, 0))
    assert built == 2  # one sync chain, one async chain
    assert layer.wraps == built


def test_pipeline_is_a_middleware_and_nests() -> None:
    """A pipeline added to another pipeline behaves as its layers spliced in place."""
    log: list[str] = []
    inner = rs.Pipeline.builder("inner").add(Trace("b", log)).add(Trace("c", log)).build()
    outer = (
        rs.Pipeline.builder("outer").add(Trace("a", log)).add(inner).add(Trace("d", log)).build()
    )
    outer.call(lambda: log.append("call"))
    assert log == [
        "a pre",
        "b pre",
        "c pre",
        "d pre",
        "call",
        "d post",
        "c post",
        "b post",
        "a post",
    ]
    assert isinstance(inner, rs.Middleware)


def test_describe_lists_layers_in_order_with_settings() -> None:
    """describe() gives the ordered layers with their settings, nested pipelines included."""
    inner = rs.Pipeline.builder("inner").add(rs.Timeout(2)).build()
    pipeline = (
        rs.Pipeline.builder("users.get")
        .add(rs.Retry(attempts=3, on=ConnectionError))
        .add(inner)
        .add(rs.Timeout(0.5))
        .build()
    )
    described = pipeline.describe()
    assert described["name"] == "users.get"
    assert [layer["type"] for layer in described["layers"]] == ["Retry", "Pipeline", "Timeout"]
    assert described["layers"][0]["attempts"] == 3
    assert described["layers"][0]["on"] is ConnectionError
    assert described["layers"][1]["layers"][0]["seconds"] == 2.0
    assert described["layers"][2] == {
        "type": "Timeout",
        "kind": "timeout",
        "name": None,
        "seconds": 0.5,
        "sync_mode": "cooperative",
    }
    assert "Retry(attempts=3, on=ConnectionError" in repr(pipeline)
    assert repr(pipeline).startswith("Pipeline('users.get': Retry(")


def test_same_instance_in_two_pipelines_shares_state() -> None:
    """One middleware instance placed in two pipelines is one object with one state."""
    log: list[str] = []
    shared = Trace("shared", log)
    first = rs.Pipeline.builder("first").add(shared).build()
    second = rs.Pipeline.builder("second").add(shared).build()
    first.call(lambda: None)
    second.call(lambda: None)
    assert log == ["shared pre", "shared post"] * 2
    assert first.layers[0] is second.layers[0]


def test_empty_pipeline_calls_through() -> None:
    """A pipeline with no layers still calls the function and sets the context."""
    pipeline = rs.Pipeline.builder("bare").build()
    assert pipeline.call(lambda x, *, y: (x, y, rs.current().pipeline), 1, y=2) == (1, 2, "bare")
    assert repr(pipeline) == "Pipeline('bare': (no layers))"


def test_builder_rejects_non_middleware() -> None:
    """add() refuses anything that is not a Middleware, naming what it got."""
    with pytest.raises(TypeError, match=r"Middleware.*got function"):
        rs.Pipeline.builder().add(lambda: None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"layers\[0\]"):
        rs.Pipeline([object()])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="name"):
        rs.Pipeline.builder(name=3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kinds", "needle"),
    [
        (["circuit_breaker", "retry"], "CircuitBreaker is outside the Retry"),
        (["retry", "timeout", "retry"], r"Retry layers are nested.*\(\? x \? attempts\)"),
        (["fault_injection", "timeout"], "FaultInjector is not innermost"),
        (["retry", "fallback"], "Fallback is not outermost"),
    ],
)
def test_builder_warns_on_suspicious_orders(kinds: list[str], needle: str) -> None:
    """Orders that are almost always mistakes give a PipelineOrderWarning with the reason."""
    builder = rs.Pipeline.builder("checked")
    for kind in kinds:
        builder.add(Trace(kind, [], kind=kind))
    with pytest.warns(rs.PipelineOrderWarning, match=needle) as record:
        builder.build()
    assert "pipeline 'checked'" in str(record[0].message)


@pytest.mark.parametrize(
    "kinds",
    [
        ["fallback", "retry", "circuit_breaker", "timeout", "fault_injection"],
        ["timeout", "retry", "timeout"],
        ["fallback", "fallback", "fault_injection", "fault_injection"],
    ],
)
def test_builder_is_quiet_on_sound_orders(kinds: list[str]) -> None:
    """Recommended orders build without any warning (warnings are errors in this suite)."""
    builder = rs.Pipeline.builder()
    for kind in kinds:
        builder.add(Trace(kind, [], kind=kind))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        builder.build()


def test_order_rules_see_through_nested_pipelines() -> None:
    """A breaker outside a retry hidden in a nested pipeline is still reported."""
    inner = rs.Pipeline([Trace("r", [], kind="retry")])
    builder = rs.Pipeline.builder().add(Trace("cb", [], kind="circuit_breaker")).add(inner)
    with pytest.warns(rs.PipelineOrderWarning, match="CircuitBreaker"):
        builder.build()


def test_order_warning_can_be_silenced() -> None:
    """PipelineOrderWarning is an ordinary Warning subclass that filters can silence."""
    assert issubclass(rs.PipelineOrderWarning, UserWarning)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=rs.PipelineOrderWarning)
        pipeline = rs.Pipeline.builder().add(rs.Retry()).add(rs.Retry()).build()
    assert len(pipeline.layers) == 2


def test_decorated_function_keeps_metadata_and_kind() -> None:
    """The pipeline decorator keeps name, docstring and __wrapped__, for def and async def."""
    pipeline = rs.Pipeline.builder().build()

    @pipeline
    def sync_fn(x: int) -> int:
        """Sync doc."""
        return x

    @pipeline
    async def async_fn(x: int) -> int:
        """Async doc."""
        return x

    assert sync_fn.__name__ == "sync_fn"
    assert sync_fn.__doc__ == "Sync doc."
    assert async_fn.__name__ == "async_fn"
    assert async_fn.__doc__ == "Async doc."
    assert asyncio.iscoroutinefunction(async_fn)
    assert not asyncio.iscoroutinefunction(sync_fn)
    assert sync_fn.__wrapped__ is not None  # type: ignore[attr-defined]
    assert sync_fn(3) == 3
    assert asyncio.run(async_fn(4)) == 4


def test_nested_retry_warning_shows_the_real_attempts() -> None:
    """The warning multiplies the real attempts of the nested Retry layers."""
    inner = rs.Pipeline.builder("inner").add(rs.Retry(attempts=5)).build()
    with pytest.warns(rs.PipelineOrderWarning, match=r"\(3 x 5 attempts = 15 calls\)"):
        rs.Pipeline.builder("outer").add(rs.Retry(attempts=3)).add(inner).build()


async def test_decorating_above_staticmethod_and_classmethod_wraps_the_function() -> None:
    """@layer over @staticmethod / @classmethod protects the function and keeps the binding."""
    calls: list[str] = []
    retry = rs.Retry(attempts=2, backoff=0)

    class Client:
        @retry
        @staticmethod
        async def fetch(key: str) -> str:
            calls.append(key)
            if len(calls) == 1:
                raise ConnectionError("once")
            return key.upper()

        @retry
        @classmethod
        def kind(cls, key: str) -> tuple[str, str]:
            calls.append(key)
            return cls.__name__, key

    assert isinstance(Client.__dict__["fetch"], staticmethod)
    assert isinstance(Client.__dict__["kind"], classmethod)
    assert await Client().fetch("a") == "A"  # retried once, no self passed
    assert await Client.fetch("b") == "B"
    assert Client().kind("c") == ("Client", "c")
    assert calls == ["a", "a", "b", "c"]
