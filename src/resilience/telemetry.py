"""OpenTelemetry metrics and traces for pipelines and policies, built on the event hooks.

::

    from resilience import telemetry

    telemetry.instrument(users_get)  # the global providers: no-ops until the app sets an SDK

`instrument` subscribes to the layers' events (a counter, span events) and
swaps the target's prebuilt chain for one that times each call and each
attempt (two histograms, a span per call). Gauges read the policies' own
``metrics()`` when a reader collects. Only ``opentelemetry-api`` is used:
this module never sets a provider. See docs/telemetry.md for the set-up and
the table of instruments.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

from opentelemetry import context as _otel_context
from opentelemetry import metrics as _metrics
from opentelemetry import trace as _trace
from opentelemetry.metrics import (
    CallbackOptions,
    Counter,
    Histogram,
    Meter,
    MeterProvider,
    NoOpMeterProvider,
    Observation,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, TracerProvider
from opentelemetry.util.types import AttributeValue

from . import __version__, _shells, _shells_sync
from ._adaptive import AdaptiveLimiter
from ._adaptive_throttler import AdaptiveThrottler
from ._bulkhead import Bulkhead
from ._circuit_breaker import CircuitBreaker
from ._circuit_store import CircuitState
from ._clock import Clock, validate_clock
from ._context import ATTEMPT, PIPELINE, VAR
from ._events import (
    ATTEMPT_NUMBER,
    CIRCUIT_STATE,
    ERROR_TYPE,
    EVENT,
    OUTCOME,
    PIPELINE_NAME,
    POLICY_NAME,
    POLICY_TYPE,
    Described,
    ResilienceEvent,
)
from ._middleware import AsyncEndpoint, Endpoint, Middleware, terminal
from ._pipeline import Pipeline
from ._throttle import Throttle

__all__ = [  # the attribute names (resilience._events), and what this module adds
    "ATTEMPT_NUMBER",
    "CIRCUIT_STATE",
    "DURATION_BUCKETS",
    "ERROR_TYPE",
    "EVENT",
    "OUTCOME",
    "PIPELINE_NAME",
    "POLICY_NAME",
    "POLICY_TYPE",
    "SCOPE",
    "Instrumentation",
    "event_name",
    "instrument",
    "sdk_behind",
]

logger = logging.getLogger("resilience")

SCOPE: Final = "resilience"
"""The one instrumentation scope of every meter and tracer, with the package version."""

DURATION_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    30.0,
)
"""Bucket bounds in seconds advised to the SDK for both duration histograms."""

_RENAMED = object()


def sdk_behind(proxy: object, private_name: str) -> bool:
    """Whether an SDK stands behind one of opentelemetry-api's global proxies, now.

    The one place this module reads opentelemetry-api's private names: a
    proxy instrument's ``_real_instrument`` and the module attribute
    ``opentelemetry.trace._TRACER_PROVIDER`` stay None until the application
    sets an SDK. Should a release rename them, the answer is True: calls are
    then timed and traced as with an SDK (slower, but nothing is lost), and
    ``tests/test_telemetry.py`` fails loudly so that this is noticed.
    """
    return getattr(proxy, private_name, _RENAMED) is not None


#: ``(proxy, private name)`` to ask `sdk_behind`, or None: the signal is on or off for good.
Probe = tuple[object, str] | None

Attributes = dict[str, AttributeValue]


# -- events -> names ---------------------------------------------------------------------


def _describe(event: object) -> Described | None:
    """The event's name, its error, and the details that go on its span event only.

    Events describe themselves (`resilience.events.ResilienceEvent`); a custom
    layer's own event is counted under its class name, with its ``error``.
    """
    if isinstance(event, ResilienceEvent):
        return event.describe()
    error = getattr(event, "error", None)
    return type(event).__name__, error if isinstance(error, BaseException) else None, {}


def event_name(event: object) -> str | None:
    """The ``resilience.event`` value an event is counted under (None: not counted).

    ``retry_scheduled``, ``retries_exhausted``, ``retry_budget_exhausted``,
    ``circuit_opened``, ``circuit_half_opened``, ``circuit_closed``,
    ``circuit_isolated``, ``circuit_disabled``, ``rejected``, ``waited``,
    ``limit_changed``, ``timed_out``, ``fault_injected``, ``fallback_served``;
    a custom layer's event is counted under its class name.
    """
    described = _describe(event)
    return None if described is None else described[0]


def _error_type(error: BaseException) -> str:
    return type(error).__qualname__


# -- the instruments of one meter provider, shared by every instrumentation using it ----------


#: The gauges read from a policy's ``metrics()``: name, unit, description, policy, field.
_GAUGES: tuple[tuple[str, str, str, type[Any], str], ...] = (
    ("bulkhead.in_flight", "{call}", "Calls holding a bulkhead slot.", Bulkhead, "in_flight"),
    ("bulkhead.queued", "{call}", "Calls waiting for a bulkhead slot.", Bulkhead, "queued"),
    ("throttle.tokens", "{token}", "Tokens in the throttle's bucket.", Throttle, "available"),
    ("throttle.queued", "{call}", "Calls waiting for throttle tokens.", Throttle, "queued"),
    (
        "adaptive_limiter.limit",
        "{call}",
        "The adaptive limiter's current limit.",
        AdaptiveLimiter,
        "limit",
    ),
    (
        "adaptive_throttler.probability",
        "1",
        "The probability that the adaptive throttler rejects the next call locally.",
        AdaptiveThrottler,
        "probability",
    ),
    (
        "adaptive_limiter.in_flight",
        "{call}",
        "Calls holding an adaptive limiter slot.",
        AdaptiveLimiter,
        "in_flight",
    ),
    (
        "adaptive_limiter.queued",
        "{call}",
        "Calls waiting for an adaptive limiter slot.",
        AdaptiveLimiter,
        "queued",
    ),
)


class _Signals:
    """The instruments of one meter, and the layers reporting through them (counted)."""

    def __init__(self, meter: Meter) -> None:
        self.events: Counter = meter.create_counter(
            "resilience.events",
            unit="{event}",
            description="Notable events of the resilience policies.",
        )
        self.call_duration: Histogram = meter.create_histogram(
            "resilience.pipeline.duration",
            unit="s",
            description="Duration of calls through an instrumented pipeline or policy.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.attempt_duration: Histogram = meter.create_histogram(
            "resilience.attempt.duration",
            unit="s",
            description="Duration of each call of the protected function (one per attempt).",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.lock = threading.Lock()
        # id(layer) -> [layer, instrumentations using it, unsubscribe]
        self.layers: dict[int, list[Any]] = {}
        for name, unit, description, observe in self._gauges():
            meter.create_observable_gauge(
                name, callbacks=[_callback(observe)], unit=unit, description=description
            )

    def _gauges(self) -> list[tuple[str, str, str, Callable[[], Iterator[Observation]]]]:
        """The observable gauges: name, unit, description, and what they read at collection."""
        states = (
            "resilience.circuit_breaker.state",
            "1",
            "1 for the breaker's current state, 0 for the others.",
            self._breaker_states,
        )
        return [states] + [
            (f"resilience.{name}", unit, description, self._gauge(kind, field))
            for name, unit, description, kind, field in _GAUGES
        ]

    def _snapshot(self, kind: type[Any]) -> list[Any]:
        with self.lock:
            return [entry[0] for entry in self.layers.values() if isinstance(entry[0], kind)]

    def _breaker_states(self) -> Iterator[Observation]:
        for breaker in self._snapshot(CircuitBreaker):
            now = breaker.state
            base = _policy_attributes(breaker)
            for state in CircuitState:
                yield Observation(1 if state is now else 0, {**base, CIRCUIT_STATE: state.value})

    def _gauge(self, kind: type[Any], field: str) -> Callable[[], Iterator[Observation]]:
        def observe() -> Iterator[Observation]:
            for layer in self._snapshot(kind):
                yield Observation(getattr(layer.metrics(), field), _policy_attributes(layer))

        return observe

    # -- subscriptions, counted: a layer shared by two pipelines reports once -------------

    def attach(self, layer: Middleware) -> None:
        with self.lock:
            entry = self.layers.get(id(layer))
            if entry is not None:
                entry[1] += 1
                return
            self.layers[id(layer)] = [layer, 1, layer.subscribe(self._listener(layer))]

    def detach(self, layer: Middleware) -> None:
        with self.lock:
            entry = self.layers[id(layer)]
            entry[1] -= 1
            if entry[1]:
                return
            del self.layers[id(layer)]
        entry[2]()

    def _listener(self, layer: Middleware) -> Callable[[object], None]:
        policy = _policy_attributes(layer)
        add = self.events.add

        def on_event(event: object) -> None:
            described = _describe(event)
            if described is None:
                return
            name, error, details = described
            attributes: Attributes = {**policy, EVENT: name}
            pipeline = VAR.get()[PIPELINE]
            if pipeline is not None:
                attributes[PIPELINE_NAME] = pipeline
            if error is not None:
                attributes[ERROR_TYPE] = _error_type(error)
            add(1, attributes)
            span = _trace.get_current_span()
            if span.is_recording():
                span.add_event(f"resilience.{name}", {**attributes, **details})

        return on_event


def _callback(
    observe: Callable[[], Iterator[Observation]],
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        return list(observe())

    return callback


def _policy_attributes(layer: Middleware) -> Attributes:
    attributes: Attributes = {POLICY_TYPE: layer.kind}
    if layer.name is not None:
        attributes[POLICY_NAME] = layer.name
    return attributes


_GLOBAL_KEY = object()
_SIGNALS: dict[object, _Signals] = {}
_SIGNALS_BY_PROVIDER: weakref.WeakKeyDictionary[MeterProvider, _Signals] = (
    weakref.WeakKeyDictionary()
)
# id(target) -> its handle, which holds the target until uninstrument()
_INSTRUMENTED: dict[int, Instrumentation] = {}
_LOCK = threading.RLock()


def _signals_for(meter_provider: MeterProvider | None) -> _Signals:
    """One set of instruments per meter provider: the SDK warns on duplicates."""
    if meter_provider is None or meter_provider is _metrics.get_meter_provider():
        signals = _SIGNALS.get(_GLOBAL_KEY)
        if signals is None:
            signals = _SIGNALS[_GLOBAL_KEY] = _Signals(_metrics.get_meter(SCOPE, __version__))
        return signals
    signals = _SIGNALS_BY_PROVIDER.get(meter_provider)
    if signals is None:
        meter = _metrics.get_meter(SCOPE, __version__, meter_provider=meter_provider)
        signals = _SIGNALS_BY_PROVIDER[meter_provider] = _Signals(meter)
    return signals


def _leaves(layer: Middleware) -> Iterator[Middleware]:
    if isinstance(layer, Pipeline):
        for inner in layer.layers:
            yield from _leaves(inner)
    else:
        yield layer


# -- the handle -------------------------------------------------------------------------------


class Instrumentation:
    """What `instrument` did to one pipeline or policy; `uninstrument` undoes it.

    Also a context manager that uninstruments on exit.
    """

    def __init__(
        self,
        target: Middleware,
        signals: _Signals,
        tracer: Tracer,
        metrics_state: tuple[bool, Any],
        traces_state: tuple[bool, Any],
        attempt_spans: bool,
        clock: Clock | None,
    ) -> None:
        self.target = target
        """The pipeline or policy instrumented."""
        self.attempt_spans = attempt_spans
        """Whether each attempt gets a child span."""
        self._signals = signals
        self._tracer = tracer
        self._metrics_on, self._metrics_probe = metrics_state
        self._traces_on, self._traces_probe = traces_state
        self._now = time.perf_counter if clock is None else clock.monotonic
        self._layers = list(_leaves(target))
        self._active = True
        label = target.name or target.kind
        self._span_name = f"resilience {label}"
        self._base: Attributes = {} if target.name is None else {PIPELINE_NAME: target.name}
        self._original = target._chains()
        self._full: tuple[Endpoint, AsyncEndpoint] | None = None
        for layer in self._layers:
            signals.attach(layer)
        off = not (self._metrics_on or self._metrics_probe is not None)
        off = off and not (self._traces_on or self._traces_probe is not None)
        if off:
            pass  # no-op providers: nothing to time, nothing to trace
        elif self._metrics_on or self._traces_on:
            self._install(self._build())
        else:  # the API's global providers, no SDK yet: decide at the first call
            self._install(self._first_call())

    def __repr__(self) -> str:
        state = "active" if self._active else "removed"
        return f"Instrumentation({self.target!r}, {state})"

    def uninstrument(self) -> None:
        """Put the original chain back and stop listening; a second call does nothing."""
        with _LOCK:
            if not self._active:
                return
            self._active = False
            if self.target._sync_chain is not self._original[0]:
                self._install(self._original)
            if _INSTRUMENTED.get(id(self.target)) is self:
                del _INSTRUMENTED[id(self.target)]
        for layer in self._layers:
            self._signals.detach(layer)

    def __enter__(self) -> Instrumentation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.uninstrument()

    # -- chains -----------------------------------------------------------------------------

    def _install(self, chains: tuple[Endpoint, AsyncEndpoint]) -> None:
        self.target._set_chains(*chains)

    def _resolve(self) -> tuple[Endpoint, AsyncEndpoint]:
        """At the first call: the timed chains if an SDK is set by now, else the original."""
        with _LOCK:
            if not self._active:
                return self._original
            if self._full is not None:
                return self._full
            metering = self._metrics_on or _asked(self._metrics_probe)
            tracing = self._traces_on or _asked(self._traces_probe)
            if metering or tracing:
                chains = self._build()
            else:
                chains = self._original
                logger.debug(
                    "resilience: no OpenTelemetry SDK at the first call of %r: "
                    "events are reported, durations and call spans are not; "
                    "instrument it again after setting up the SDK",
                    self.target,
                )
            self._install(chains)
            return chains

    def _first_call(self) -> tuple[Endpoint, AsyncEndpoint]:
        """Chains that resolve the global providers once, at the first call, then step aside."""
        resolve = self._resolve

        def first_call(
            fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            return resolve()[0](fn, args, kwargs)

        async def afirst_call(
            fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            return await resolve()[1](fn, args, kwargs)

        return first_call, afirst_call

    def _build(self) -> tuple[Endpoint, AsyncEndpoint]:
        """The timed, traced chains: the target's layers around an attempt hook."""
        begin, attempt, end = self._begin_call, self._begin_attempt, self._end
        sync_inner = self.target.wrap(_shells_sync.timed(terminal, attempt, end, True))
        async_inner = self.target.awrap(_shells.timed(terminal, attempt, end, True))
        self._full = (
            _shells_sync.timed(sync_inner, begin, end, False),
            _shells.timed(async_inner, begin, end, False),
        )
        return self._full

    # -- one call or attempt: begun, then ended with its outcome ---------------------------

    def _metering(self) -> bool:
        return self._metrics_on or _asked(self._metrics_probe)

    def _tracing(self) -> bool:
        return self._traces_on or _asked(self._traces_probe)

    def _begin_call(self) -> _Opened:
        """Start timing (and tracing) a call through the target."""
        span = token = None
        if self._tracing():
            span = self._tracer.start_span(
                self._span_name, kind=SpanKind.INTERNAL, attributes=self._base
            )
            token = _otel_context.attach(_trace.set_span_in_context(span))
        record = self._signals.call_duration.record if self._metering() else None
        return record, self._base, self._now(), span, token

    def _begin_attempt(self) -> _Opened | None:
        """Start timing (and, with attempt spans, tracing) an attempt; None: nothing to do."""
        metering = self._metering()
        tracing = self.attempt_spans and self._tracing()
        if not (metering or tracing):
            return None
        attributes: Attributes = {**self._base, ATTEMPT_NUMBER: VAR.get()[ATTEMPT]}
        span = token = None
        if tracing:
            span = self._tracer.start_span(
                f"{self._span_name} attempt", kind=SpanKind.INTERNAL, attributes=attributes
            )
            token = _otel_context.attach(_trace.set_span_in_context(span))
        record = self._signals.attempt_duration.record if metering else None
        return record, attributes, self._now(), span, token

    def _end(self, opened: _Opened, error: BaseException | None) -> None:
        """Record the duration with its outcome, and end the span."""
        record, base, started, span, token = opened
        seconds = self._now() - started
        if error is None:
            attributes = {**base, OUTCOME: "success"}
        else:
            outcome = "failure" if isinstance(error, Exception) else "cancelled"
            attributes = {**base, OUTCOME: outcome, ERROR_TYPE: _error_type(error)}
        if record is not None:
            record(seconds, attributes)
        if span is not None:
            span.set_attributes(attributes)
            if isinstance(error, Exception):
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, _error_type(error)))
            span.end()
            if token is not None:
                _otel_context.detach(token)


#: A call or attempt begun: ``(record, attributes, started, span, context token)``.
_Opened = tuple[Callable[[float, Attributes], None] | None, Attributes, float, Span | None, Any]


def _asked(probe: Probe) -> bool:
    """Whether the probe finds an SDK now (no probe: no SDK to find)."""
    return probe is not None and sdk_behind(*probe)


def _metrics_state(signals: _Signals, provider: MeterProvider | None) -> tuple[bool, Probe]:
    """``(always on, probe)``: on for good, off for good, or to be asked per call."""
    if isinstance(provider, NoOpMeterProvider):
        return False, None
    histogram = signals.call_duration
    if isinstance(histogram, _metrics.NoOpHistogram):
        return False, None
    if not sdk_behind(histogram, "_real_instrument"):
        return False, (histogram, "_real_instrument")  # the API's proxy, no SDK yet
    return True, None


def _traces_state(tracer: Tracer) -> tuple[bool, Probe]:
    """``(always on, probe)``: on for good, off for good, or to be asked per call."""
    if isinstance(tracer, _trace.NoOpTracer):
        return False, None
    if isinstance(tracer, _trace.ProxyTracer) and not sdk_behind(_trace, "_TRACER_PROVIDER"):
        return False, (_trace, "_TRACER_PROVIDER")  # the API's proxy, no SDK yet
    return True, None


def instrument(
    target: Middleware,
    *,
    meter_provider: MeterProvider | None = None,
    tracer_provider: TracerProvider | None = None,
    attempt_spans: bool = False,
    clock: Clock | None = None,
) -> Instrumentation:
    """Report a pipeline's (or a policy's) calls and events to OpenTelemetry.

    * a ``resilience.events`` counter and a span event for every event of
      every layer (nested pipelines included);
    * ``resilience.pipeline.duration`` for each call through ``target``, and
      ``resilience.attempt.duration`` for each call of the protected function;
    * a span per call (and per attempt, with ``attempt_spans=True``) when the
      tracer records;
    * gauges of the breakers', bulkheads', throttles' and adaptive limiters'
      state, read at collection.

    The providers default to the global ones of ``opentelemetry-api``; with
    those, whether to time and trace is decided at the first call (see
    docs/telemetry.md: set up the SDK first, or instrument again after).
    Functions decorated with ``target`` before this call are instrumented
    too. Returns an `Instrumentation`, whose `~Instrumentation.uninstrument`
    undoes all this; a target is instrumented once at a time.
    """
    if not isinstance(target, Middleware):
        raise TypeError(f"can only instrument a resilience.Middleware, got {type(target).__name__}")
    if not isinstance(attempt_spans, bool):
        raise TypeError(f"attempt_spans must be a bool, got {type(attempt_spans).__name__}")
    if clock is not None:
        clock = validate_clock(clock)
    with _LOCK:
        if id(target) in _INSTRUMENTED:
            raise ValueError(f"{target!r} is already instrumented: uninstrument() it first")
        signals = _signals_for(meter_provider)
        tracer = _trace.get_tracer(SCOPE, __version__, tracer_provider=tracer_provider)
        handle = Instrumentation(
            target,
            signals,
            tracer,
            _metrics_state(signals, meter_provider),
            _traces_state(tracer),
            attempt_spans,
            clock,
        )
        _INSTRUMENTED[id(target)] = handle
        return handle
