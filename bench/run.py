"""Happy-path overhead per call: resilience beside its peers, in one process, one run.

    python bench/run.py            # full run, writes docs/benchmarks.md
    python bench/run.py --quick    # a short run for CI (prints only)

Each figure is the median of REPEATS runs of N calls, in ns per call. The
overhead column subtracts the bare call of the same kind (sync or async), and
the targets are checked as ratios against peers measured in the same run,
because the machine's speed varies from run to run and host to host.
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import resilience as rs

N = 20_000
REPEATS = 7


def work(x: int = 1) -> int:
    return x + 1


async def awork(x: int = 1) -> int:
    return x + 1


def time_sync(fn: Callable[[], Any]) -> float:
    samples = []
    for _ in range(REPEATS):
        start = time.perf_counter_ns()
        for _ in range(N):
            fn()
        samples.append((time.perf_counter_ns() - start) / N)
    return statistics.median(samples)


def time_async(make: Callable[[], Awaitable[Any]]) -> float:
    async def run() -> float:
        samples = []
        for _ in range(REPEATS):
            start = time.perf_counter_ns()
            for _ in range(N):
                await make()
            samples.append((time.perf_counter_ns() - start) / N)
        return statistics.median(samples)

    return asyncio.run(run())


def measure() -> dict[str, float]:
    rows: dict[str, float] = {}

    def row(name: str, ns: float) -> None:
        rows[name] = ns
        print(f"{name:48s} {ns:9.0f} ns/call", flush=True)

    row("bare sync", time_sync(work))
    row("bare async", time_async(awork))

    retry = rs.Retry(attempts=3)
    coop = rs.Timeout(10)
    both = rs.Pipeline.builder("b").add(rs.Retry(attempts=3)).add(rs.Timeout(10)).build()
    fallback = rs.Fallback(value=0)
    degraded = (
        rs.Pipeline.builder("d")
        .add(rs.Fallback(value=0))
        .add(rs.Retry(attempts=3))
        .add(rs.Timeout(10))
        .build()
    )
    row("resilience Retry sync (decorated)", time_sync(retry(work)))
    row("resilience Retry sync (.call)", time_sync(lambda: retry.call(work)))
    row("resilience Timeout sync (cooperative)", time_sync(coop(work)))
    row("resilience Retry > Timeout sync", time_sync(both(work)))
    row("resilience Fallback sync (decorated)", time_sync(fallback(work)))
    row("resilience Fallback > Retry > Timeout sync", time_sync(degraded(work)))
    breaker = rs.CircuitBreaker()
    row("resilience CircuitBreaker sync (decorated)", time_sync(breaker(work)))
    throttle = rs.Throttle(1e9)  # spare capacity: the bucket never runs short
    bulkhead = rs.Bulkhead(1000)
    row("resilience Throttle sync (decorated)", time_sync(throttle(work)))
    row("resilience Bulkhead sync (decorated)", time_sync(bulkhead(work)))
    row("resilience Retry > Throttle sync", time_sync(rs.Pipeline([retry, throttle])(work)))
    row("resilience Retry > Bulkhead sync", time_sync(rs.Pipeline([retry, bulkhead])(work)))
    isolated = rs.Bulkhead(4, isolation="thread")
    row("resilience Bulkhead sync (thread isolation)", time_sync(isolated(work)))
    row("resilience Retry async (decorated)", time_async(retry(awork)))
    row("resilience Throttle async (decorated)", time_async(throttle(awork)))
    row("resilience Bulkhead async (decorated)", time_async(bulkhead(awork)))
    row("resilience CircuitBreaker async (decorated)", time_async(breaker(awork)))
    row("resilience Timeout async", time_async(coop(awork)))
    row("resilience Retry > Timeout async", time_async(both(awork)))
    row("resilience Fallback async (decorated)", time_async(fallback(awork)))
    row("resilience Fallback > Retry > Timeout async", time_async(degraded(awork)))

    # Adaptive limits and retry budgets (issue 7).
    adaptive = rs.AdaptiveLimiter()
    control = rs.Retry(attempts=3)  # measured right beside the budget, whose cost is the gap
    budgeted = rs.Retry(attempts=3, budget=rs.RetryBudget())
    shedder = rs.AdaptiveThrottler()
    row("resilience AdaptiveLimiter sync (decorated)", time_sync(adaptive(work)))
    row("resilience AdaptiveLimiter async (decorated)", time_async(adaptive(awork)))
    row("resilience Retry sync (beside the budget)", time_sync(control(work)))
    row("resilience Retry + budget sync (decorated)", time_sync(budgeted(work)))
    row("resilience Retry async (beside the budget)", time_async(control(awork)))
    row("resilience Retry + budget async (decorated)", time_async(budgeted(awork)))
    row("resilience AdaptiveThrottler sync (decorated)", time_sync(shedder(work)))
    row("resilience AdaptiveThrottler async (decorated)", time_async(shedder(awork)))

    import tenacity

    row(
        "tenacity retry sync",
        time_sync(tenacity.retry(stop=tenacity.stop_after_attempt(3), reraise=True)(work)),
    )
    row(
        "tenacity retry async",
        time_async(tenacity.retry(stop=tenacity.stop_after_attempt(3), reraise=True)(awork)),
    )
    try:
        import backoff
        import stamina
    except ImportError:
        print("(stamina/backoff not installed: skipped)")
    else:
        row("stamina retry sync", time_sync(stamina.retry(on=ValueError, attempts=3)(work)))
        row("stamina retry async", time_async(stamina.retry(on=ValueError, attempts=3)(awork)))
        row(
            "backoff on_exception sync",
            time_sync(backoff.on_exception(backoff.expo, ValueError, max_tries=3)(work)),
        )

    import pybreaker

    legacy = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
    row("pybreaker call sync", time_sync(lambda: legacy.call(work)))
    try:
        import aiobreaker
        import circuitbreaker
        import purgatory
    except ImportError:
        print("(circuitbreaker/aiobreaker/purgatory not installed: skipped)")
    else:
        fabfuel = circuitbreaker.circuit(failure_threshold=5, recovery_timeout=30)
        row("circuitbreaker sync", time_sync(fabfuel(work)))
        fabfuel_async = circuitbreaker.circuit(failure_threshold=5, recovery_timeout=30)
        row("circuitbreaker async", time_async(fabfuel_async(awork)))
        aio = aiobreaker.CircuitBreaker(fail_max=5)
        row("aiobreaker async", time_async(lambda: aio.call_async(awork)))
        factory = purgatory.AsyncCircuitBreakerFactory(default_threshold=5)
        row("purgatory async", time_async(factory("bench")(awork)))

    async def with_asyncio_timeout() -> int:
        async with asyncio.timeout(10):
            return await awork()

    row("asyncio.timeout async", time_async(with_asyncio_timeout))
    semaphore = asyncio.Semaphore(1000)

    async def through_semaphore() -> int:
        async with semaphore:
            return await awork()

    row("asyncio.Semaphore async", time_async(through_semaphore))
    try:
        import aiolimiter
    except ImportError:
        print("(aiolimiter not installed: skipped)")
    else:
        limiter = aiolimiter.AsyncLimiter(1e9, 1)

        async def through_aiolimiter() -> int:
            async with limiter:
                return await awork()

        row("aiolimiter acquire async", time_async(through_aiolimiter))
    try:
        import hyx.bulkhead
    except ImportError:
        print("(hyx not installed: skipped)")
    else:
        row("hyx bulkhead async", time_async(hyx.bulkhead.bulkhead(1000, 2000)(awork)))
    try:
        import hyx.retry
        import hyx.timeout
    except ImportError:
        print("(hyx not installed: skipped)")
    else:
        row("hyx retry async", time_async(hyx.retry.retry(on=ValueError, attempts=3)(awork)))
        hyx_timeout: list[Callable[[], Awaitable[int]]] = []

        async def through_hyx_timeout() -> int:
            if not hyx_timeout:  # hyx binds the running loop when it decorates
                hyx_timeout.append(hyx.timeout.timeout(10)(awork))
            return await hyx_timeout[0]()

        row("hyx timeout async", time_async(through_hyx_timeout))

    # Telemetry (issue 6): the full pipeline with and without telemetry.instrument().
    # "no SDK" is the API's global providers, which this benchmark never sets. A 5 % gap
    # is about 70 ns, below the noise of one timing on a busy machine, so the plain and
    # instrumented pipelines are timed in alternation, seven rounds, and each figure is
    # its quietest round (the minimum of the rounds' medians).
    from resilience import telemetry

    def full_pipeline() -> rs.Pipeline:
        return (
            rs.Pipeline.builder("full")
            .add(rs.Fallback(value=0))
            .add(rs.Retry(attempts=3))
            .add(rs.CircuitBreaker())
            .add(rs.Timeout(10))
            .add(rs.Bulkhead(1000))
            .build()
        )

    plain, quiet = full_pipeline(), full_pipeline()
    telemetry.instrument(quiet)
    for kind, timer, fn in (("sync", time_sync, work), ("async", time_async, awork)):
        rounds: dict[str, list[float]] = {"plain": [], "quiet": []}
        for _ in range(7):
            rounds["plain"].append(timer(plain(fn)))
            rounds["quiet"].append(timer(quiet(fn)))
        row(f"resilience full pipeline {kind}", min(rounds["plain"]))
        row(f"resilience full pipeline {kind} + instrument(), no SDK", min(rounds["quiet"]))
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            SimpleSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )
        from opentelemetry.trace import NoOpTracerProvider
    except ImportError:
        print("(opentelemetry-sdk not installed: skipped)")
    else:

        class Discard(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        traced = TracerProvider()  # samples every call: the worst case
        traced.add_span_processor(SimpleSpanProcessor(Discard()))
        metered, both_signals = full_pipeline(), full_pipeline()
        telemetry.instrument(
            metered,
            meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]),
            tracer_provider=NoOpTracerProvider(),
        )
        telemetry.instrument(
            both_signals,
            meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]),
            tracer_provider=traced,
        )
        row("resilience full pipeline sync + SDK metrics", time_sync(metered(work)))
        row("resilience full pipeline async + SDK metrics", time_async(metered(awork)))
        row("resilience full pipeline sync + SDK metrics, traces", time_sync(both_signals(work)))
        row(
            "resilience full pipeline async + SDK metrics, traces",
            time_async(both_signals(awork)),
        )
    return rows


TARGETS = [
    # (ours, peer, ratio the overheads must stay under, why); ours may be a pair
    # (with, without): the cost of the one layer that "with" adds to "without".
    (
        "resilience Retry sync (decorated)",
        "tenacity retry sync",
        0.5 / 12,
        "Retry alone <= 0.5 us sync where tenacity adds 12 us",
    ),
    (
        "resilience Retry async (decorated)",
        "hyx retry async",
        0.7 / 0.9,
        "Retry alone <= 0.7 us async where hyx adds 0.9 us",
    ),
    (
        "resilience Timeout sync (cooperative)",
        "tenacity retry sync",
        0.3 / 12,
        "cooperative Timeout <= 0.3 us where tenacity adds 12 us",
    ),
    (
        "resilience Fallback sync (decorated)",
        "tenacity retry sync",
        0.5 / 12,
        "Fallback alone <= 0.5 us sync (the entry cost Retry has too) where tenacity adds 12 us",
    ),
    (
        ("resilience Fallback > Retry > Timeout sync", "resilience Retry > Timeout sync"),
        "tenacity retry sync",
        0.2 / 12,
        "Fallback adds <= 0.2 us sync to a pipeline where tenacity adds 12 us",
    ),
    (
        ("resilience Fallback > Retry > Timeout async", "resilience Retry > Timeout async"),
        "hyx retry async",
        0.2 / 0.9,
        "Fallback adds <= 0.2 us async to a pipeline where hyx's retry adds 0.9 us",
    ),
    (
        "resilience CircuitBreaker sync (decorated)",
        "circuitbreaker sync",
        1.0,
        "closed CircuitBreaker sync no slower than circuitbreaker, the fastest Python breaker",
    ),
    (
        "resilience CircuitBreaker async (decorated)",
        "circuitbreaker async",
        1.0,
        "closed CircuitBreaker async no slower than circuitbreaker",
    ),
    (
        "resilience CircuitBreaker sync (decorated)",
        "pybreaker call sync",
        0.5,
        "closed CircuitBreaker sync at least 2x faster than pybreaker",
    ),
    (
        "resilience Throttle sync (decorated)",
        "tenacity retry sync",
        0.5 / 12,
        "Throttle <= 0.5 us sync (the entry cost Retry has too) where tenacity adds 12 us",
    ),
    (
        "resilience Throttle async (decorated)",
        "aiolimiter acquire async",
        1.0,
        "Throttle async no slower than aiolimiter's acquire",
    ),
    (
        "resilience Bulkhead sync (decorated)",
        "tenacity retry sync",
        0.5 / 12,
        "Bulkhead <= 0.5 us sync (the entry cost Retry has too) where tenacity adds 12 us",
    ),
    (
        "resilience Bulkhead async (decorated)",
        "asyncio.Semaphore async",
        1.0,
        "Bulkhead async no slower than an asyncio.Semaphore",
    ),
    (
        "resilience Timeout async",
        "asyncio.timeout async",
        2.5 / 3.7,
        "async Timeout <= 2.5 us where asyncio.timeout adds 3.7 us",
    ),
    # Adaptive limits and retry budgets (issue 7): tenacity's sync retry is the yardstick
    # of the machine's speed (12 us where the targets were set).
    (
        "resilience AdaptiveLimiter sync (decorated)",
        "tenacity retry sync",
        1.0 / 12,
        "AdaptiveLimiter <= 1 us sync where tenacity adds 12 us",
    ),
    (
        "resilience AdaptiveLimiter async (decorated)",
        "tenacity retry sync",
        1.0 / 12,
        "AdaptiveLimiter <= 1 us async where tenacity adds 12 us sync",
    ),
    (
        ("resilience Retry + budget sync (decorated)", "resilience Retry sync (beside the budget)"),
        "tenacity retry sync",
        0.2 / 12,
        "a RetryBudget's deposit adds <= 0.2 us sync where tenacity adds 12 us",
    ),
    (
        (
            "resilience Retry + budget async (decorated)",
            "resilience Retry async (beside the budget)",
        ),
        "tenacity retry sync",
        0.2 / 12,
        "a RetryBudget's deposit adds <= 0.2 us async where tenacity adds 12 us sync",
    ),
    (
        "resilience AdaptiveThrottler sync (decorated)",
        "tenacity retry sync",
        1.0 / 12,
        "AdaptiveThrottler <= 1 us sync where tenacity adds 12 us",
    ),
    # Telemetry (issue 6): what instrument() adds with no SDK, against the pipeline's own
    # overhead (not the call's), measured in alternation in the same run.
    (
        (
            "resilience full pipeline sync + instrument(), no SDK",
            "resilience full pipeline sync",
        ),
        "resilience full pipeline sync",
        0.05,
        "instrument() with no SDK adds <= 5% to the full pipeline, sync",
    ),
    (
        (
            "resilience full pipeline async + instrument(), no SDK",
            "resilience full pipeline async",
        ),
        "resilience full pipeline async",
        0.05,
        "instrument() with no SDK adds <= 5% to the full pipeline, async",
    ),
]


def report(rows: dict[str, float]) -> str:
    bare = {"sync": rows["bare sync"], "async": rows["bare async"]}

    def overhead(name: str) -> float:
        return rows[name] - bare["async" if "async" in name else "sync"]

    def cost(ours: str | tuple[str, str]) -> float:
        """A row's overhead, or for (with, without) what the extra layer adds."""
        if isinstance(ours, tuple):
            return rows[ours[0]] - rows[ours[1]]
        return overhead(ours)

    lines = [
        "| benchmark | ns per call | overhead over a bare call (ns) |",
        "|---|---:|---:|",
    ]
    for name, ns in rows.items():
        extra = "" if name.startswith("bare") else f"{overhead(name):.0f}"
        lines.append(f"| {name} | {ns:.0f} | {extra} |")
    lines += [
        "",
        "| target | ours (ns) | peer (ns) | ratio | limit | met |",
        "|---|---:|---:|---:|---:|:-:|",
    ]
    for ours, peer, limit, why in TARGETS:
        needed = [*ours, peer] if isinstance(ours, tuple) else [ours, peer]
        if any(name not in rows for name in needed):
            continue
        ratio = cost(ours) / overhead(peer)
        lines.append(
            f"| {why} | {cost(ours):.0f} | {overhead(peer):.0f} | {ratio:.3f} | "
            f"{limit:.3f} | {'yes' if ratio <= limit else 'NO'} |"
        )
    return "\n".join(lines)


def main() -> None:
    global N, REPEATS
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a short run that writes nothing")
    options = parser.parse_args()
    if options.quick:
        N, REPEATS = 2_000, 3
    rows = measure()
    table = report(rows)
    print()
    print(table)
    if not options.quick:
        out = pathlib.Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
        # bench/suite.py owns the page from its marker on: keep that part.
        old = out.read_text() if out.exists() else ""
        marker = "<!-- bench/suite.py:"
        tail = "\n" + old[old.index(marker) :] if marker in old else ""
        out.write_text(
            "# Benchmarks\n\n"
            "Generated by `bench/run.py` (`nox -s bench`); do not edit by hand.\n\n"
            f"Python {sys.version.split()[0]} on {platform.machine()}, "
            f"median of {REPEATS} runs of {N:,} calls. Overheads subtract the bare call; "
            "targets are ratios against peers measured in the same run.\n\n" + table + "\n" + tail
        )
        print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
