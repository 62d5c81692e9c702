"""resilience.telemetry: instruments, spans and logs, against the SDK's in-memory readers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace as trace_api
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.metrics._internal import _ProxyMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, Metric
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracerProvider, StatusCode

import resilience as rs
from modes import Event, cancellation, create_task, forever, task_cancelled
from resilience import telemetry
from resilience.telemetry import (
    ATTEMPT_NUMBER,
    ERROR_TYPE,
    EVENT,
    OUTCOME,
    PIPELINE_NAME,
    POLICY_NAME,
    POLICY_TYPE,
)
from resilience.testing import FakeClock

# -- fixtures and helpers ------------------------------------------------------------


@pytest.fixture
def reader() -> InMemoryMetricReader:
    """An SDK metric reader that keeps what it collects in memory."""
    return InMemoryMetricReader()


@pytest.fixture
def meter_provider(reader: InMemoryMetricReader) -> Iterator[MeterProvider]:
    """An SDK meter provider (never the global one) reading into ``reader``."""
    provider = MeterProvider(metric_readers=[reader])
    yield provider
    provider.shutdown()


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    """An SDK span exporter that keeps finished spans in memory."""
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    """An SDK tracer provider (never the global one) exporting into ``exporter``."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
def sdk(
    meter_provider: MeterProvider, tracer_provider: TracerProvider, clock: FakeClock
) -> dict[str, Any]:
    """The keyword arguments of `instrument` for both SDK providers and the fake clock."""
    return {"meter_provider": meter_provider, "tracer_provider": tracer_provider, "clock": clock}


def collect(reader: InMemoryMetricReader) -> dict[str, Metric]:
    """Every metric collected now, by name; all of them come from the one scope."""
    data = reader.get_metrics_data()
    found: dict[str, Metric] = {}
    if data is None:
        return found
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            assert scope_metrics.scope.name == "resilience"
            assert scope_metrics.scope.version == rs.__version__
            for metric in scope_metrics.metrics:
                found[metric.name] = metric
    return found


def _key(point: tuple[dict[str, Any], Any]) -> str:
    return repr((sorted(point[0].items()), point[1]))


def points(metric: Metric) -> list[tuple[dict[str, Any], Any]]:
    """``(attributes, value)`` per data point, sorted (see `same`): sums and gauges by
    value, histograms by ``(count, sum)``."""
    out = []
    for point in metric.data.data_points:
        value = (point.count, point.sum) if hasattr(point, "count") else point.value
        out.append((dict(point.attributes or {}), value))
    return sorted(out, key=_key)


def same(expected: list[tuple[dict[str, Any], Any]]) -> list[tuple[dict[str, Any], Any]]:
    """``expected`` in the order `points` uses."""
    return sorted(expected, key=_key)


def events(reader: InMemoryMetricReader) -> dict[tuple[str, str], int]:
    """The ``resilience.events`` counter as ``{(policy type, event): count}``."""
    metric = collect(reader).get("resilience.events")
    if metric is None:
        return {}
    return {(attrs[POLICY_TYPE], attrs[EVENT]): value for attrs, value in points(metric)}


def flaky(clock: FakeClock, failures: int, seconds: float = 0.5) -> Any:
    """A function taking ``seconds`` of fake time per call that fails ``failures`` times."""
    calls = {"n": 0}

    def call() -> str:
        calls["n"] += 1
        clock.advance(seconds)
        if calls["n"] <= failures:
            raise ConnectionError("down")
        return "ok"

    return call


def spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return list(exporter.get_finished_spans())


# -- metrics ---------------------------------------------------------------------------


def test_sync_retry_records_durations_and_events_exactly(
    sdk: dict[str, Any], reader: InMemoryMetricReader, clock: FakeClock
) -> None:
    """Two failed attempts and a success: three attempt durations, one call, two retries."""
    users = rs.Pipeline.builder("users").add(rs.Retry(3, backoff=1, clock=clock, name="r")).build()
    fetch = users(flaky(clock, 2))  # decorated before instrument(): still instrumented
    with telemetry.instrument(users, **sdk):
        assert fetch() == "ok"
    metrics = collect(reader)
    assert metrics["resilience.pipeline.duration"].unit == "s"
    assert metrics["resilience.attempt.duration"].unit == "s"
    assert metrics["resilience.events"].unit == "{event}"
    assert points(metrics["resilience.pipeline.duration"]) == [
        ({PIPELINE_NAME: "users", OUTCOME: "success"}, (1, 3.5))  # 3 x 0.5 s + 2 x 1 s waits
    ]
    failed = {PIPELINE_NAME: "users", OUTCOME: "failure", ERROR_TYPE: "ConnectionError"}
    assert points(metrics["resilience.attempt.duration"]) == same(
        [
            ({**failed, ATTEMPT_NUMBER: 1}, (1, 0.5)),
            ({**failed, ATTEMPT_NUMBER: 2}, (1, 0.5)),
            ({PIPELINE_NAME: "users", ATTEMPT_NUMBER: 3, OUTCOME: "success"}, (1, 0.5)),
        ]
    )
    assert points(metrics["resilience.events"]) == [
        (
            {
                PIPELINE_NAME: "users",
                POLICY_TYPE: "retry",
                POLICY_NAME: "r",
                EVENT: "retry_scheduled",
                ERROR_TYPE: "ConnectionError",
            },
            2,
        )
    ]


async def test_async_retries_exhausted_records_the_failure(
    sdk: dict[str, Any], reader: InMemoryMetricReader, clock: FakeClock
) -> None:
    """Async: attempts run out; the call and every attempt record a failure."""
    users = rs.Pipeline.builder("users").add(rs.Retry(2, backoff=0, clock=clock)).build()

    async def down() -> None:
        clock.advance(0.25)
        raise ConnectionError("down")

    with telemetry.instrument(users, **sdk), pytest.raises(ConnectionError):
        await users.acall(down)
    metrics = collect(reader)
    failed = {PIPELINE_NAME: "users", OUTCOME: "failure", ERROR_TYPE: "ConnectionError"}
    assert points(metrics["resilience.pipeline.duration"]) == [(failed, (1, 0.5))]
    assert points(metrics["resilience.attempt.duration"]) == same(
        [
            ({**failed, ATTEMPT_NUMBER: 1}, (1, 0.25)),
            ({**failed, ATTEMPT_NUMBER: 2}, (1, 0.25)),
        ]
    )
    assert events(reader) == {("retry", "retry_scheduled"): 1, ("retry", "retries_exhausted"): 1}


def test_breaker_transitions_and_rejections_are_counted(
    sdk: dict[str, Any], reader: InMemoryMetricReader, clock: FakeClock
) -> None:
    """Opened, rejected, half-opened and closed each count once, with the error type."""
    breaker = rs.CircuitBreaker(consecutive_failures=1, open_seconds=10, clock=clock, name="b")
    users = rs.Pipeline([breaker], name="users")
    with telemetry.instrument(users, **sdk):
        with pytest.raises(ConnectionError):
            users.call(flaky(clock, 1))
        with pytest.raises(rs.CircuitOpenError):
            users.call(lambda: "never runs")
        clock.advance(10)
        assert users.call(lambda: "ok") == "ok"
    assert events(reader) == {
        ("circuit_breaker", "circuit_opened"): 1,
        ("circuit_breaker", "rejected"): 1,
        ("circuit_breaker", "circuit_half_opened"): 1,
        ("circuit_breaker", "circuit_closed"): 1,
    }
    rejected = [
        attrs
        for attrs, _ in points(collect(reader)["resilience.events"])
        if attrs[EVENT] == "rejected"
    ]
    assert rejected == [
        {
            PIPELINE_NAME: "users",
            POLICY_TYPE: "circuit_breaker",
            POLICY_NAME: "b",
            EVENT: "rejected",
            ERROR_TYPE: "CircuitOpenError",
        }
    ]
    attempts = points(collect(reader)["resilience.attempt.duration"])
    assert [value[0] for _, value in attempts] == [1, 1]  # the rejected call never ran


def test_every_kind_of_event_is_counted(
    sdk: dict[str, Any], reader: InMemoryMetricReader, clock: FakeClock
) -> None:
    """Timeout, fault, fallback, throttle, bulkhead, budget and adaptive events, by name."""
    timeout = rs.Timeout(1, clock=clock)
    faults = rs.FaultInjector(error=ValueError("injected"), error_rate=1.0, seed=1)
    fallback = rs.Fallback(value="stale")
    throttle = rs.Throttle(1, per=60, max_wait=0, clock=clock)
    budget = rs.RetryBudget(ratio=0.1, min_per_second=0.01, ttl=1, clock=clock)
    retry = rs.Retry(3, backoff=0, budget=budget, clock=clock)
    limiter = rs.AdaptiveLimiter(initial_limit=1, max_queue=0, clock=clock)
    bulkhead = rs.Bulkhead(1)
    shedder = rs.AdaptiveThrottler(k=1.0, seed=3, clock=clock)
    pipeline = rs.Pipeline([throttle, fallback, timeout, faults])
    with telemetry.instrument(pipeline, **sdk), telemetry.instrument(retry, **sdk):
        assert pipeline.call(lambda: "fresh") == "stale"  # fault, then fallback
        with pytest.raises(rs.ThrottledError):
            pipeline.call(lambda: "fresh")  # the throttle's one token is gone
        with pytest.raises(rs.TimeoutExceeded):
            timeout.call(lambda: clock.advance(2))  # not instrumented, but its layer is
        with pytest.raises(ConnectionError):
            retry.call(flaky(clock, 5))
        with (
            telemetry.instrument(bulkhead, **sdk),
            telemetry.instrument(limiter, **sdk),
            telemetry.instrument(shedder, **sdk),
        ):
            with pytest.raises(rs.BulkheadFullError):
                bulkhead.call(bulkhead.call, lambda: "inner")
            with pytest.raises(rs.LimitExceededError):
                limiter.call(limiter.call, lambda: "inner")
            for _ in range(30):
                with contextlib.suppress(ConnectionError, rs.ThrottledError):
                    shedder.call(flaky(clock, 1000, 0.0))
    counted = events(reader)
    assert counted[("fault_injection", "fault_injected")] == 1
    assert counted[("fallback", "fallback_served")] == 1
    assert counted[("throttle", "rejected")] == 1
    assert counted[("timeout", "timed_out")] == 1
    assert counted[("retry", "retry_budget_exhausted")] == 1
    assert counted[("bulkhead", "rejected")] == 1
    assert counted[("adaptive_limiter", "rejected")] == 1
    assert counted[("adaptive_throttler", "rejected")] >= 1
    by_event = {
        attrs[EVENT]: attrs.get(ERROR_TYPE)
        for attrs, _ in points(collect(reader)["resilience.events"])
    }
    assert by_event["fault_injected"] == "ValueError"
    assert by_event["fallback_served"] == "ValueError"
    assert by_event["timed_out"] == "TimeoutExceeded"
    assert by_event["retry_budget_exhausted"] == "ConnectionError"


def test_gauges_read_the_policies_at_collection(
    sdk: dict[str, Any], reader: InMemoryMetricReader, clock: FakeClock
) -> None:
    """Breaker state is one-hot; bulkhead, throttle and limiter gauges show their metrics()."""
    breaker = rs.CircuitBreaker(name="b", clock=clock)
    bulkhead = rs.Bulkhead(4, name="pool")
    throttle = rs.Throttle(10, clock=clock, name="t")
    limiter = rs.AdaptiveLimiter(initial_limit=7, name="lim", clock=clock)
    shedder = rs.AdaptiveThrottler(name="shed", clock=clock)
    pipeline = rs.Pipeline([rs.Pipeline([breaker, bulkhead]), throttle, limiter, shedder])
    seen: dict[str, Any] = {}

    def inside() -> str:
        seen.update(collect(reader))
        return "ok"

    with telemetry.instrument(pipeline, **sdk):
        breaker.isolate()
        breaker.reset()
        assert pipeline.call(inside) == "ok"
    states = {
        attrs[telemetry.CIRCUIT_STATE]: value
        for attrs, value in points(seen["resilience.circuit_breaker.state"])
    }
    assert states == {"closed": 1, "open": 0, "half_open": 0, "isolated": 0, "disabled": 0}
    assert seen["resilience.circuit_breaker.state"].unit == "1"
    assert points(seen["resilience.bulkhead.in_flight"]) == [
        ({POLICY_TYPE: "bulkhead", POLICY_NAME: "pool"}, 1)
    ]
    assert points(seen["resilience.bulkhead.queued"]) == [
        ({POLICY_TYPE: "bulkhead", POLICY_NAME: "pool"}, 0)
    ]
    assert seen["resilience.bulkhead.in_flight"].unit == "{call}"
    assert points(seen["resilience.throttle.tokens"]) == [
        ({POLICY_TYPE: "throttle", POLICY_NAME: "t"}, 9.0)
    ]
    assert seen["resilience.throttle.tokens"].unit == "{token}"
    assert points(seen["resilience.throttle.queued"]) == [
        ({POLICY_TYPE: "throttle", POLICY_NAME: "t"}, 0)
    ]
    assert points(seen["resilience.adaptive_limiter.limit"]) == [
        ({POLICY_TYPE: "adaptive_limiter", POLICY_NAME: "lim"}, 7)
    ]
    assert points(seen["resilience.adaptive_limiter.in_flight"]) == [
        ({POLICY_TYPE: "adaptive_limiter", POLICY_NAME: "lim"}, 1)
    ]
    assert points(seen["resilience.adaptive_limiter.queued"]) == [
        ({POLICY_TYPE: "adaptive_limiter", POLICY_NAME: "lim"}, 0)
    ]
    assert points(seen["resilience.adaptive_throttler.probability"]) == [
        ({POLICY_TYPE: "adaptive_throttler", POLICY_NAME: "shed"}, 0.0)
    ]
    transitions = {event for (_, event) in events(reader)}
    assert transitions == {"circuit_isolated", "circuit_closed"}  # outside any call
    outside = [attrs for attrs, _ in points(collect(reader)["resilience.events"])]
    assert all(PIPELINE_NAME not in attrs for attrs in outside)
    # after uninstrument() the gauges report nothing for these policies
    assert "resilience.bulkhead.in_flight" not in collect(reader) or not points(
        collect(reader)["resilience.bulkhead.in_flight"]
    )


def test_a_layer_shared_by_two_pipelines_reports_each_event_once(
    sdk: dict[str, Any], reader: InMemoryMetricReader, clock: FakeClock
) -> None:
    """Subscriptions are counted per meter provider; the pipeline comes from the call."""
    retry = rs.Retry(2, backoff=0, clock=clock)
    first = rs.Pipeline([retry], name="first")
    second = rs.Pipeline([retry], name="second")
    with telemetry.instrument(first, **sdk), telemetry.instrument(second, **sdk):
        with pytest.raises(ConnectionError):
            second.call(flaky(clock, 5))
        with telemetry.instrument(first.layers[0], **sdk) as alone:
            assert alone.target is retry
    found = points(collect(reader)["resilience.events"])
    assert sorted((attrs[PIPELINE_NAME], attrs[EVENT], n) for attrs, n in found) == [
        ("second", "retries_exhausted", 1),
        ("second", "retry_scheduled", 1),
    ]
    assert retry._listeners == ()  # every subscription is gone


def test_a_failing_instrument_never_breaks_the_call(
    sdk: dict[str, Any], caplog: pytest.LogCaptureFixture, clock: FakeClock
) -> None:
    """An exception in the telemetry listener is logged by the event hooks and swallowed."""
    retry = rs.Retry(2, backoff=0, clock=clock)
    with telemetry.instrument(retry, **sdk) as handle:
        signals = handle._signals
        original = signals.events.add

        def broken(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("exporter bug")

        signals.events.add = broken  # type: ignore[method-assign]
        try:
            # the listener captured the bound method at subscription: rebuild it
            handle.uninstrument()
            handle = telemetry.instrument(retry, **sdk)
            with caplog.at_level(logging.ERROR, logger="resilience"):
                assert retry.call(flaky(clock, 1)) == "ok"
        finally:
            signals.events.add = original  # type: ignore[method-assign]
            handle.uninstrument()
    assert any("a listener of" in record.getMessage() for record in caplog.records)


# -- traces ------------------------------------------------------------------------------


def test_one_span_per_call_with_span_events(
    sdk: dict[str, Any], exporter: InMemorySpanExporter, clock: FakeClock
) -> None:
    """The call's span carries the retries and the breaker's transition as span events."""
    breaker = rs.CircuitBreaker(consecutive_failures=2, clock=clock, name="b")
    users = (
        rs.Pipeline.builder("users")
        .add(rs.Retry(3, backoff=1, clock=clock, name="r"))
        .add(breaker)
        .build()
    )
    with telemetry.instrument(users, **sdk), pytest.raises(rs.CircuitOpenError):
        users.call(flaky(clock, 5))
    (span,) = spans(exporter)
    assert span.name == "resilience users"
    assert span.kind is trace_api.SpanKind.INTERNAL
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == "resilience"
    assert span.instrumentation_scope.version == rs.__version__
    assert dict(span.attributes or {}) == {
        PIPELINE_NAME: "users",
        OUTCOME: "failure",
        ERROR_TYPE: "CircuitOpenError",
    }
    assert span.status.status_code is StatusCode.ERROR
    assert [event.name for event in span.events] == [
        "resilience.retry_scheduled",
        "resilience.circuit_opened",
        "resilience.retry_scheduled",
        "resilience.rejected",  # a rejection is not retried: no retries_exhausted
        "exception",
    ]
    first = dict(span.events[0].attributes or {})
    assert first == {
        PIPELINE_NAME: "users",
        POLICY_TYPE: "retry",
        POLICY_NAME: "r",
        EVENT: "retry_scheduled",
        ERROR_TYPE: "ConnectionError",
        ATTEMPT_NUMBER: 1,
        "resilience.retry.delay": 1.0,
    }
    opened = dict(span.events[1].attributes or {})
    assert opened["resilience.circuit_breaker.state"] == "open"
    assert opened["resilience.circuit_breaker.previous_state"] == "closed"


async def test_attempt_spans_are_children_of_the_call_span(
    sdk: dict[str, Any], exporter: InMemorySpanExporter, clock: FakeClock
) -> None:
    """With attempt_spans=True each call of the function gets a child span, async too."""
    users = rs.Pipeline.builder("users").add(rs.Retry(3, backoff=0, clock=clock)).build()
    state = {"n": 0}

    async def fetch() -> str:
        state["n"] += 1
        if state["n"] == 1:
            raise ConnectionError("down")
        return "ok"

    with telemetry.instrument(users, attempt_spans=True, **sdk):
        assert await users(fetch)() == "ok"
    first, second, call = spans(exporter)
    assert call.name == "resilience users"
    assert [first.name, second.name] == ["resilience users attempt"] * 2
    assert call.context is not None
    for child in (first, second):
        assert child.parent is not None
        assert child.parent.span_id == call.context.span_id
    assert dict(first.attributes or {}) == {
        PIPELINE_NAME: "users",
        ATTEMPT_NUMBER: 1,
        OUTCOME: "failure",
        ERROR_TYPE: "ConnectionError",
    }
    assert dict(second.attributes or {}) == {
        PIPELINE_NAME: "users",
        ATTEMPT_NUMBER: 2,
        OUTCOME: "success",
    }
    assert call.status.status_code is StatusCode.UNSET


async def test_a_cancelled_call_is_recorded_as_cancelled(
    sdk: dict[str, Any],
    reader: InMemoryMetricReader,
    exporter: InMemorySpanExporter,
    async_mode: str,
) -> None:
    """Cancellation is an outcome of its own, not a failure, and leaves the span's status."""
    retry = rs.Retry(2, name="r")
    started = Event()

    async def hang() -> None:
        started.set()
        await forever()

    with telemetry.instrument(retry, **sdk):
        task = create_task(retry.acall(hang))
        await started.wait()
        task.cancel()
        with pytest.raises(task_cancelled(async_mode)):
            await task
    cancelled = {
        OUTCOME: "cancelled",
        ERROR_TYPE: cancellation(async_mode).__name__,
        PIPELINE_NAME: "r",
    }
    assert points(collect(reader)["resilience.pipeline.duration"])[0][0] == cancelled
    (span,) = spans(exporter)
    assert span.status.status_code is StatusCode.UNSET
    assert span.name == "resilience r"


def test_an_unnamed_policy_names_its_span_after_its_kind(
    sdk: dict[str, Any], exporter: InMemorySpanExporter, reader: InMemoryMetricReader
) -> None:
    """Without a name: the span is named for the kind, and no pipeline attribute is set."""
    with telemetry.instrument(rs.Bulkhead(2), **sdk) as handle:
        assert handle.target.call(lambda: 1) == 1
    (span,) = spans(exporter)
    assert span.name == "resilience bulkhead"
    assert points(collect(reader)["resilience.pipeline.duration"]) == [
        ({OUTCOME: "success"}, (1, 0.0))
    ]


# -- no SDK: cheap, and nothing recorded ------------------------------------------------


def test_no_op_providers_leave_the_chain_alone() -> None:
    """With no-op providers instrument() only subscribes: the chain is not swapped."""
    retry = rs.Retry(2)
    chains = retry._chains()
    handle = telemetry.instrument(
        retry, meter_provider=NoOpMeterProvider(), tracer_provider=NoOpTracerProvider()
    )
    assert (retry._sync_chain, retry._async_chain) == chains
    assert retry.call(lambda: 3) == 3
    assert len(retry._listeners) == 1
    handle.uninstrument()
    assert retry._listeners == ()


def test_global_providers_without_an_sdk_step_aside_at_the_first_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The API's global proxies with no SDK: the first call puts the original chain back."""
    retry = rs.Retry(2, name="quiet")
    original = retry._chains()
    fetch = retry(lambda: 3)
    with caplog.at_level(logging.DEBUG, logger="resilience"):
        handle = telemetry.instrument(retry)
        assert retry._sync_chain.__name__ == "first_call"  # type: ignore[union-attr]
        assert fetch() == 3
    assert (retry._sync_chain, retry._async_chain) == original  # no cost from now on
    assert "no OpenTelemetry SDK at the first call of Retry('quiet'" in caplog.text
    assert len(retry._listeners) == 1  # events still go to the API's proxies
    handle.uninstrument()
    assert retry._listeners == ()


async def test_the_first_async_call_resolves_too() -> None:
    """The async first call resolves the same way."""
    retry = rs.Retry(2)
    original = retry._chains()
    with telemetry.instrument(retry):
        assert await retry.acall(asyncio.sleep, 0, "a") == "a"
        assert (retry._sync_chain, retry._async_chain) == original


def test_an_sdk_set_before_the_first_call_is_picked_up(
    reader: InMemoryMetricReader,
    meter_provider: MeterProvider,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Instrumented before the SDK (a proxy meter provider, the global tracer proxy) works."""
    proxy = _ProxyMeterProvider()
    retry = rs.Retry(2, name="late")
    fetch = retry(lambda: "ok")
    with telemetry.instrument(retry, meter_provider=proxy) as handle:
        proxy.on_set_meter_provider(meter_provider)
        monkeypatch.setattr(trace_api, "_TRACER_PROVIDER", tracer_provider)
        assert fetch() == "ok"
        assert retry._sync_chain.__name__ == "instrumented"  # type: ignore[union-attr]
        assert asyncio.run(retry.acall(asyncio.sleep, 0, "a")) == "a"
        assert handle._resolve() == handle._full  # resolved once
        handle.uninstrument()
        assert handle._resolve() == handle._original  # a late first call finds it removed
    assert points(collect(reader)["resilience.pipeline.duration"])[0][1][0] == 2
    assert [span.name for span in spans(exporter)] == ["resilience late"] * 2


def test_an_sdk_set_after_the_first_call_still_gets_the_events(
    reader: InMemoryMetricReader, meter_provider: MeterProvider, clock: FakeClock
) -> None:
    """Set up late, the SDK gets the events through the API's proxy, not the durations."""
    proxy = _ProxyMeterProvider()
    retry = rs.Retry(2, backoff=0, clock=clock)
    with telemetry.instrument(retry, meter_provider=proxy, tracer_provider=NoOpTracerProvider()):
        assert retry.call(lambda: 1) == 1  # resolved: no SDK
        proxy.on_set_meter_provider(meter_provider)
        assert retry.call(flaky(clock, 1)) == "ok"
    found = collect(reader)
    assert "resilience.pipeline.duration" not in found
    assert events(reader) == {("retry", "retry_scheduled"): 1}


# -- the handle ------------------------------------------------------------------------


def test_instrument_validates_and_refuses_twice(sdk: dict[str, Any]) -> None:
    """Bad arguments are refused by name; a target is instrumented once at a time."""
    with pytest.raises(TypeError, match=r"^can only instrument a resilience.Middleware"):
        telemetry.instrument(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^attempt_spans must be a bool"):
        telemetry.instrument(rs.Retry(), attempt_spans=1)  # type: ignore[arg-type]
    retry = rs.Retry(name="once")
    handle = telemetry.instrument(retry, **sdk)
    assert repr(handle).endswith("active)")
    with pytest.raises(ValueError, match="already instrumented"):
        telemetry.instrument(retry, **sdk)
    handle.uninstrument()
    handle.uninstrument()  # twice is harmless
    assert repr(handle).endswith("removed)")
    telemetry.instrument(retry, **sdk).uninstrument()


def test_uninstrument_stops_everything(
    sdk: dict[str, Any], reader: InMemoryMetricReader, clock: FakeClock
) -> None:
    """After uninstrument() the decorated function calls the original chain again."""
    retry = rs.Retry(2, backoff=0, clock=clock)
    fetch = retry(flaky(clock, 1))
    original = retry._sync_chain
    telemetry.instrument(retry, **sdk).uninstrument()
    assert retry._sync_chain is original
    assert fetch() == "ok"
    assert collect(reader).get("resilience.events") is None


def test_event_names() -> None:
    """Each event type has its name; rejections only for CircuitOutcome; custom by class."""
    error = ConnectionError()
    assert telemetry.event_name(rs.events.RetryEvent("r", 1, 0.1, error)) == "retry_scheduled"
    closed, opened = rs.CircuitState.CLOSED, rs.CircuitState.OPEN
    assert telemetry.event_name(rs.events.CircuitStateChange(None, closed, opened, 0.0)) == (
        "circuit_opened"
    )
    success = rs.events.CircuitOutcome(None, "success", None, False, None)
    assert telemetry.event_name(success) is None
    bulkhead_wait = rs.events.BulkheadEvent(None, "waited", 0.5)
    assert telemetry.event_name(bulkhead_wait) == "waited"
    assert telemetry.event_name(rs.events.LimitChange(None, 1, 2, None, 1, False, 0.0)) == (
        "limit_changed"
    )

    class Custom:
        error = "not an exception"

    assert telemetry.event_name(Custom()) == "Custom"


def test_a_custom_layers_events_are_counted_by_class_name(
    sdk: dict[str, Any], reader: InMemoryMetricReader
) -> None:
    """A custom middleware that emits its own events is counted too, with its error."""

    class Shed:
        def __init__(self, error: BaseException) -> None:
            self.error = error

    class Shedder(rs.Middleware):
        kind = "shedder"

        def wrap(self, next: rs.Endpoint, /) -> rs.Endpoint:
            def shed(fn: Any, args: Any, kwargs: Any) -> Any:
                self._emit(Shed(OverflowError()))
                return next(fn, args, kwargs)

            return shed

        def awrap(self, next: rs.AsyncEndpoint, /) -> rs.AsyncEndpoint:
            return next

    with telemetry.instrument(rs.Pipeline([Shedder()], name="p"), **sdk) as handle:
        assert handle.target.call(lambda: 2) == 2
    assert points(collect(reader)["resilience.events"]) == [
        (
            {
                PIPELINE_NAME: "p",
                POLICY_TYPE: "shedder",
                EVENT: "Shed",
                ERROR_TYPE: "OverflowError",
            },
            1,
        )
    ]


# -- the timeout's own event -------------------------------------------------------------


def test_timeout_event_only_from_the_layer_whose_deadline_fired(clock: FakeClock) -> None:
    """An inner Timeout cut short by an outer one sends nothing; the outer sends one."""
    outer = rs.Timeout(1, clock=clock, name="outer")
    inner = rs.Timeout(5, clock=clock, name="inner")
    seen: list[object] = []
    pipeline = rs.Pipeline([outer, inner])
    pipeline.subscribe(seen.append)
    with pytest.raises(rs.TimeoutExceeded):
        pipeline.call(lambda: clock.advance(2))
    assert [(type(e).__name__, e.name) for e in seen] == [("TimeoutEvent", "outer")]  # type: ignore[attr-defined]
    event = seen[0]
    assert isinstance(event, rs.events.TimeoutEvent)
    assert event.seconds == 1
    assert isinstance(event.error, rs.TimeoutExceeded)


async def test_async_timeout_sends_its_event() -> None:
    """An async call cancelled at the deadline sends one TimeoutEvent."""
    clock = FakeClock(auto_advance=False)
    timeout = rs.Timeout(2, clock=clock, name="users")
    seen: list[object] = []
    timeout.subscribe(seen.append)
    task = asyncio.create_task(timeout.acall(asyncio.Event().wait))
    await asyncio.sleep(0)
    clock.advance(2)
    with pytest.raises(rs.TimeoutExceeded):
        await task
    assert len(seen) == 1
    assert isinstance(seen[0], rs.events.TimeoutEvent)


def test_walk_away_timeout_sends_its_event_only_for_its_own_deadline() -> None:
    """Walk-away: its own deadline sends an event; an earlier outer deadline does not."""
    clock = FakeClock(auto_advance=False)
    seen: list[object] = []
    timeout = rs.Timeout(2, sync_mode="walk_away", clock=clock, name="legacy")
    timeout.subscribe(seen.append)
    release = threading.Event()

    def run(layer: rs.Middleware, advance: float) -> BaseException:
        started = threading.Event()
        outcome: list[BaseException] = []

        def stuck() -> None:
            started.set()
            release.wait(10)

        def caller() -> None:
            try:
                layer.call(stuck)
            except BaseException as error:
                outcome.append(error)

        thread = threading.Thread(target=caller)
        thread.start()
        assert started.wait(10)
        clock.advance(advance)
        thread.join(10)
        return outcome[0]

    assert isinstance(run(timeout, 2), rs.TimeoutExceeded)
    assert [type(e).__name__ for e in seen] == ["TimeoutEvent"]
    outer_first = rs.Pipeline([rs.Timeout(1, clock=clock, name="outer"), timeout])
    assert isinstance(run(outer_first, 1), rs.TimeoutExceeded)
    assert len(seen) == 1  # the outer deadline fired, not the walk-away one
    release.set()
    assert timeout.drain(10)


# -- logging ---------------------------------------------------------------------------


def records(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "resilience"]


def test_a_successful_call_logs_nothing_at_info(
    caplog: pytest.LogCaptureFixture, clock: FakeClock
) -> None:
    """The happy path, and a call that succeeds after a retry, stay below INFO."""
    pipeline = rs.Pipeline(
        [rs.Fallback(value=0), rs.Retry(3, backoff=0, clock=clock), rs.CircuitBreaker()]
    )
    with caplog.at_level(logging.INFO, logger="resilience"):
        assert pipeline.call(lambda: 1) == 1
        assert pipeline.call(flaky(clock, 1)) == "ok"
    assert records(caplog) == []


def test_one_record_per_notable_event(caplog: pytest.LogCaptureFixture, clock: FakeClock) -> None:
    """Retries at DEBUG; giving up, rejections, timeouts and fallbacks at INFO, once each."""
    retry = rs.Retry(2, backoff=0, clock=clock, name="r")
    with caplog.at_level(logging.DEBUG, logger="resilience"):
        with pytest.raises(ConnectionError):
            retry.call(flaky(clock, 5))
        with pytest.raises(rs.TimeoutExceeded):
            rs.Timeout(1, clock=clock, name="t").call(lambda: clock.advance(1))
        assert rs.Fallback(value=0, name="f").call(flaky(clock, 1)) == 0
        breaker = rs.CircuitBreaker(name="b")
        breaker.isolate()
        with pytest.raises(rs.CircuitOpenError):
            breaker.call(lambda: 1)
        faults = rs.FaultInjector(latency=0.5, latency_rate=1.0, clock=clock, name="chaos")
        assert faults.call(lambda: 2) == 2
    assert records(caplog) == [
        (
            "DEBUG",
            "resilience: Retry 'r' retrying in 0s after attempt 1 failed: ConnectionError('down')",
        ),
        (
            "INFO",
            "resilience: Retry 'r' gave up after 2 attempt(s) (attempts): ConnectionError('down')",
        ),
        ("INFO", "resilience: Timeout 't' fired after 1s"),
        ("INFO", "resilience: Fallback 'f' served a substitute for ConnectionError('down')"),
        ("INFO", "resilience: circuit breaker 'b' closed -> isolated"),
        ("INFO", "resilience: rejected: circuit breaker 'b' is isolated"),
        ("DEBUG", records(caplog)[-1][1]),
    ]
    assert records(caplog)[-1][1].startswith("resilience: FaultInjector 'chaos' injects FaultPlan(")


class BlockWatchingClock(FakeClock):
    """A FakeClock that tells the test when a thread blocks on it, waiting in a queue."""

    def __init__(self) -> None:
        super().__init__()
        self.blocked = threading.Event()

    def wait_future(self, future: concurrent.futures.Future[Any], deadline: float) -> None:
        self.blocked.set()
        super().wait_future(future, deadline)


def test_queue_waits_log_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    """A call that waited for a bulkhead slot logs its wait at DEBUG."""
    clock = BlockWatchingClock()
    bulkhead = rs.Bulkhead(1, max_queue=1, max_wait=10, name="pool", clock=clock)
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        inside.set()
        release.wait(10)

    holder = threading.Thread(target=bulkhead.call, args=(hold,))
    holder.start()
    assert inside.wait(10)
    with caplog.at_level(logging.DEBUG, logger="resilience"):
        waiter = threading.Thread(target=bulkhead.call, args=(lambda: None,))
        waiter.start()
        assert clock.blocked.wait(30), "the second call never blocked in the queue"
        assert bulkhead.queued == 1
        release.set()
        waiter.join(30)
    holder.join(30)
    assert not waiter.is_alive(), "the queued call never ended"
    assert not holder.is_alive(), "the holding call never ended"
    assert [level for level, _ in records(caplog)] == ["DEBUG"]
    assert records(caplog)[0][1].startswith("resilience: Bulkhead 'pool': a call waited")


def test_the_private_names_read_from_opentelemetry_api_are_still_there() -> None:
    """telemetry.sdk_behind reads two private names of opentelemetry-api. This fails loudly if a
    release renames them; meanwhile the library treats a missing name as "an SDK is set"
    (every call timed and traced: slower, but no data lost)."""
    from opentelemetry import metrics as api_metrics
    from opentelemetry import trace as api_trace

    assert hasattr(api_trace, "_TRACER_PROVIDER")
    # No global SDK in this suite: the global meter hands out the API's proxy instruments.
    histogram = api_metrics.get_meter("resilience.tests").create_histogram("probe")
    assert hasattr(histogram, "_real_instrument"), type(histogram)
    assert telemetry.sdk_behind(object(), "_renamed_in_a_future_release") is True
    assert telemetry.sdk_behind(api_trace, "_TRACER_PROVIDER") is (
        api_trace._TRACER_PROVIDER is not None
    )
