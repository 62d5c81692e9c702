"""OpenTelemetry metrics and traces for a pipeline, read back from the SDK's in-memory exporters.

A "prices" pipeline (Fallback > Retry > CircuitBreaker > Timeout) calls a
service that fails for a while, then recovers. `resilience.telemetry.instrument`
reports it to an SDK meter provider and tracer provider made here (no global
provider is set). The script then prints what an OpenTelemetry backend would
receive: the event counter, the duration histograms, the breaker gauge, and
the span of one call with its span events. A fake clock makes it instant.

Needs the SDK:  pip install opentelemetry-sdk
Run it:         python examples/telemetry.py
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import resilience as rs
from resilience import telemetry
from resilience.testing import FakeClock

# -- the SDK: in production a PeriodicExportingMetricReader and a BatchSpanProcessor --------
reader = InMemoryMetricReader()
meter_provider = MeterProvider(metric_readers=[reader])
spans = InMemorySpanExporter()
tracer_provider = TracerProvider()
tracer_provider.add_span_processor(SimpleSpanProcessor(spans))

# -- the pipeline and a flaky service ------------------------------------------------------
clock = FakeClock()
healthy = False


def price(sku: str) -> float:
    clock.advance(0.04)  # the service takes 40 ms
    if not healthy:
        raise ConnectionError("prices service unreachable")
    return 9.99


prices = (
    rs.Pipeline.builder("prices")
    .add(rs.Fallback(value=0.0, name="cached"))
    .add(rs.Retry(attempts=2, backoff=0.1, clock=clock, name="retry"))
    .add(rs.CircuitBreaker(consecutive_failures=4, open_seconds=5, clock=clock, name="breaker"))
    .add(rs.Timeout(1, clock=clock, name="deadline"))
    .build()
)
get_price = prices(price)  # decorated before instrument(): instrumented all the same

handle = telemetry.instrument(
    prices, meter_provider=meter_provider, tracer_provider=tracer_provider, clock=clock
)

answers = [get_price("sku-1") for _ in range(4)]  # failures, the breaker opens: fallback
clock.advance(5)
healthy = True
answers += [get_price("sku-1") for _ in range(3)]  # a trial call closes it again


# -- what a backend would receive -----------------------------------------------------------
def metrics() -> dict[str, Any]:
    data = reader.get_metrics_data()
    assert data is not None
    (scope,) = data.resource_metrics[0].scope_metrics
    print(f"instrumentation scope: {scope.scope.name} {scope.scope.version}")
    return {metric.name: metric for metric in scope.metrics}


found = metrics()  # gauges are read now, at collection
handle.uninstrument()
print(f"answers: {answers}")

print("\nresilience.events {event}:")
counted: Counter[str] = Counter()
for point in found["resilience.events"].data.data_points:
    attrs = point.attributes or {}
    key = f"{attrs['resilience.policy.name']:8s} {attrs['resilience.event']}"
    error = attrs.get("error.type")
    counted[key + (f" ({error})" if error else "")] += point.value
for key, count in sorted(counted.items()):
    print(f"  {count:3d}  {key}")

print("\nresilience.pipeline.duration (s), by outcome:")
for point in found["resilience.pipeline.duration"].data.data_points:
    attrs = point.attributes or {}
    print(f"  {attrs['resilience.outcome']:8s} calls={point.count} total={point.sum:.2f}s")

print("\nresilience.attempt.duration (s), by attempt and outcome:")
for point in sorted(
    found["resilience.attempt.duration"].data.data_points,
    key=lambda p: (
        (p.attributes or {})["resilience.attempt.number"],
        (p.attributes or {})["resilience.outcome"],
    ),
):
    attrs = point.attributes or {}
    print(
        f"  attempt {attrs['resilience.attempt.number']} {attrs['resilience.outcome']:8s}"
        f" {attrs.get('error.type', ''):16s} n={point.count} mean={point.sum / point.count:.3f}s"
    )

states = {
    (point.attributes or {})["resilience.circuit_breaker.state"]: point.value
    for point in found["resilience.circuit_breaker.state"].data.data_points
}
print(f"\nresilience.circuit_breaker.state: {states}")

finished = spans.get_finished_spans()
print(f"\n{len(finished)} spans; the second call's:")
second = finished[1]
print(f"  {second.name}  status={second.status.status_code.name}")
for event in second.events:
    print(f"    - {event.name}")

# -- the assertions keep this example honest ---------------------------------------------
assert answers == [0.0, 0.0, 0.0, 0.0, 9.99, 9.99, 9.99]
assert counted["breaker  circuit_opened"] == 1
assert counted["breaker  circuit_half_opened"] == 1
assert counted["breaker  circuit_closed"] == 1
assert counted["breaker  rejected (CircuitOpenError)"] == 2
assert counted["cached   fallback_served (ConnectionError)"] == 2
assert counted["cached   fallback_served (CircuitOpenError)"] == 2
assert states == {"closed": 1, "open": 0, "half_open": 0, "isolated": 0, "disabled": 0}
assert len(finished) == 7
assert [event.name for event in second.events] == [
    "resilience.retry_scheduled",
    "resilience.circuit_opened",
    "resilience.retries_exhausted",
    "resilience.fallback_served",
]
print("\nok")
