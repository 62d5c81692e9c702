"""The chaos demo: a flaky service, many clients, with and without protection.

Run it with ``python -m resilience demo`` (``--help`` for the options). It
simulates, in this process and in real time:

* a downstream service whose faults come from a `FaultInjector`: about 30 %
  errors, about 10 % slow answers, and a hard outage in the middle of each
  run during which every call hangs until the caller gives up;
* many concurrent clients calling it in a loop, first unprotected, then
  through a pipeline: Fallback > Retry > CircuitBreaker > Bulkhead > Timeout.

It ends with a side-by-side table. Every figure in it is measured in the
run; nothing is estimated.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import backoff
from ._bulkhead import Bulkhead
from ._circuit_breaker import CircuitBreaker, CircuitStateChange
from ._context import CallContext
from ._errors import TimeoutExceeded
from ._fallback import Fallback, FallbackContext, FallbackEvent
from ._faults import FaultInjector
from ._pipeline import Pipeline
from ._retry import Retry
from ._timeout import Timeout

__all__ = [
    "DemoOptions",
    "Downstream",
    "RunResult",
    "format_table",
    "main",
    "parse",
    "protected_pipeline",
    "run_demo",
]

FALLBACK_ANSWER = {"stock": None, "stale": True}


@dataclass(frozen=True)
class DemoOptions:
    """What to simulate; the command-line options map one to one."""

    duration: float = 7.5
    """Seconds per run (two runs: unprotected, then protected)."""
    clients: int = 50
    interval: float = 0.1
    """Mean seconds between two requests of one client (open loop)."""
    error_rate: float = 0.3
    slow_rate: float = 0.1
    slow_seconds: float = 1.0
    outage_start: float = 0.4
    """When the outage starts, as a fraction of the run."""
    outage_length: float = 0.2
    """How long it lasts, as a fraction of the run."""
    outage_hang: float = 3.0
    """Seconds a call hangs during the outage before the connection drops."""
    seed: int = 7
    quiet: bool = False


@dataclass
class RunResult:
    """What one run measured."""

    label: str
    requests: int = 0
    fresh: int = 0  # answered by the service itself
    fallbacks: int = 0  # answered by the fallback (stale but usable)
    failed: int = 0
    downstream_calls: int = 0  # calls that reached the service, retries included
    trips: int = 0
    latencies: list[float] = field(default_factory=list)
    timeline: list[tuple[float, bool, float]] = field(default_factory=list)
    # ^ (seconds since start, answered, latency) per request

    @property
    def answered(self) -> int:
        return self.fresh + self.fallbacks

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return math.nan
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
        return ordered[index]


class Downstream:
    """The flaky service: its faults come from one seeded FaultInjector."""

    def __init__(self, options: DemoOptions, started: Callable[[], float]) -> None:
        self.options = options
        self.calls = 0
        self._started = started
        random_source = random.Random(options.seed)
        self.faults = FaultInjector(
            error=ConnectionError("downstream: connection reset"),
            error_rate=options.error_rate,
            latency=lambda _: options.slow_seconds,
            latency_rate=options.slow_rate,
            seed=random_source,
            name="downstream",
        )
        self.outage = FaultInjector(
            latency=options.outage_hang,
            error=ConnectionError("downstream: outage"),
            enabled=self._in_outage,
            name="outage",
        )
        self._pipeline = Pipeline([self.outage, self.faults], name="downstream")
        self._jitter = random.Random(options.seed + 1)

    def _in_outage(self, _: CallContext) -> bool:
        fraction = self._started() / self.options.duration
        start = self.options.outage_start
        return start <= fraction < start + self.options.outage_length

    async def _answer(self, sku: int) -> dict[str, Any]:
        await asyncio.sleep(self._jitter.uniform(0.005, 0.02))  # normal service time
        return {"stock": sku % 50, "stale": False}

    async def get_stock(self, sku: int) -> dict[str, Any]:
        """One call to the service (what a client's HTTP call would be)."""
        self.calls += 1
        return await self._pipeline.acall(self._answer, sku)


def _last_good_stock(context: FallbackContext) -> dict[str, Any]:
    """The last stock figure the service gave for this SKU, marked stale; or "unknown"."""
    if context.last_good is None:
        return FALLBACK_ANSWER
    return {**context.last_good, "stale": True}


def protected_pipeline(options: DemoOptions) -> tuple[Pipeline, CircuitBreaker]:
    """The stack the demo recommends, outermost first."""
    breaker = CircuitBreaker(
        failure_ratio=0.8,  # well above the 40 % of attempts that fail on a normal day
        minimum_calls=20,
        window_seconds=1.0,
        window_buckets=10,
        open_seconds=backoff.exponential(0.25, maximum=1.0),
        half_open_calls=1,
        name="downstream",
    )
    pipeline = (
        Pipeline.builder("stock.get")
        .add(Fallback(handler=_last_good_stock, last_good=True, max_age=5.0, name="stale-stock"))
        .add(
            Retry(
                attempts=3,
                on=(ConnectionError, TimeoutExceeded),
                backoff=backoff.exponential(0.02, maximum=0.2, jitter="full", seed=options.seed),
                name="stock.retry",
            )
        )
        .add(breaker)
        .add(Bulkhead(max(1, options.clients), max_queue=options.clients // 2, max_wait=0.1))
        .add(Timeout(0.25, name="stock.timeout"))
        .build()
    )
    return pipeline, breaker


class _Run:
    """One simulated run: clients sending requests on an open loop, and a progress line."""

    def __init__(
        self,
        label: str,
        options: DemoOptions,
        call: Callable[[Downstream, int], Awaitable[dict[str, Any]]],
        on_tick: Callable[[float, RunResult], str] | None,
    ) -> None:
        self.label, self.options, self.call, self.on_tick = label, options, call, on_tick
        self.result = RunResult(label)
        self.loop = asyncio.get_running_loop()
        self.start = self.loop.time()
        self.service = Downstream(options, self.elapsed)
        self.rng = random.Random(options.seed + 2)
        self.in_flight: set[asyncio.Task[None]] = set()

    def elapsed(self) -> float:
        return self.loop.time() - self.start

    async def request(self, sku: int) -> None:
        result = self.result
        began = self.loop.time()
        try:
            answer = await self.call(self.service, sku)
        except Exception:
            result.failed += 1
            answered = False
        else:
            answered = True
            if answer.get("stale"):
                result.fallbacks += 1
            else:
                result.fresh += 1
        took = self.loop.time() - began
        result.requests += 1
        result.latencies.append(took)
        result.timeline.append((began - self.start, answered, took))

    async def client(self, index: int) -> None:
        # Open loop: a client sends its next request on schedule, whether or
        # not the last one has come back, as independent users would. Both
        # runs therefore offer the service the same load.
        sku = index * 1_000_000
        while self.elapsed() < self.options.duration:
            sku += 1
            task = asyncio.create_task(self.request(sku))
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)
            await asyncio.sleep(self.rng.uniform(0.5, 1.5) * self.options.interval)

    async def progress(self) -> None:
        second = 0
        while self.elapsed() < self.options.duration:
            await asyncio.sleep(1.0)
            second += 1
            if not self.options.quiet:
                done = self.result.requests
                rate = 100.0 * self.result.answered / done if done else 0.0
                extra = self.on_tick(self.elapsed(), self.result) if self.on_tick else ""
                print(
                    f"  {self.label:<12} t={second:>3}s  requests done={done:>6}"
                    f"  answered={rate:5.1f}%  downstream calls started="
                    f"{self.service.calls:>6}{extra}",
                    flush=True,
                )

    async def __call__(self) -> tuple[RunResult, Downstream]:
        watcher = asyncio.create_task(self.progress())
        await asyncio.gather(*(self.client(i) for i in range(self.options.clients)))
        while self.in_flight:  # the requests still out when the run ends
            await asyncio.gather(*list(self.in_flight))
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        self.result.downstream_calls = self.service.calls
        return self.result, self.service


async def _run(
    label: str,
    options: DemoOptions,
    call: Callable[[Downstream, int], Awaitable[dict[str, Any]]],
    on_tick: Callable[[float, RunResult], str] | None = None,
) -> tuple[RunResult, Downstream]:
    return await _Run(label, options, call, on_tick)()


async def run_demo(options: DemoOptions) -> tuple[RunResult, RunResult]:
    """Run the two simulations one after the other and return what they measured."""

    async def unprotected(service: Downstream, sku: int) -> dict[str, Any]:
        return await service.get_stock(sku)

    if not options.quiet:
        print(f"Run 1 of 2: {options.clients} clients call the service directly")
    bare, _ = await _run("unprotected", options, unprotected)

    pipeline, breaker = protected_pipeline(options)
    trips = 0
    fallbacks = 0

    def count(event: object) -> None:
        nonlocal trips, fallbacks
        if isinstance(event, CircuitStateChange) and event.new.value == "open":
            trips += 1
        elif isinstance(event, FallbackEvent):
            fallbacks += 1

    pipeline.subscribe(count)

    async def protected(service: Downstream, sku: int) -> dict[str, Any]:
        return await pipeline.acall(service.get_stock, sku)

    def breaker_state(_: float, __: RunResult) -> str:
        return f"  breaker={breaker.state.value}"

    if not options.quiet:
        print(f"Run 2 of 2: the same clients through {pipeline!r}")
    guarded, _ = await _run("protected", options, protected, on_tick=breaker_state)
    guarded.trips = trips
    if fallbacks != guarded.fallbacks:  # pragma: no cover - a bug in the demo itself
        raise AssertionError(f"fallback events {fallbacks} != stale answers {guarded.fallbacks}")
    return bare, guarded


def format_table(bare: RunResult, guarded: RunResult) -> str:
    """The side-by-side comparison, as aligned text."""

    def pct(part: int, whole: int) -> str:
        return f"{100.0 * part / whole:.1f}%" if whole else "n/a"

    def ms(seconds: float) -> str:
        return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.0f} ms"

    def amplification(run: RunResult) -> str:
        if not run.requests:
            return "n/a"
        return f"{run.downstream_calls} ({run.downstream_calls / run.requests:.2f} per request)"

    rows: list[tuple[str, str, str]] = [
        ("requests made", str(bare.requests), str(guarded.requests)),
        (
            "answered (fresh + fallback)",
            pct(bare.answered, bare.requests),
            pct(guarded.answered, guarded.requests),
        ),
        ("fresh answers", pct(bare.fresh, bare.requests), pct(guarded.fresh, guarded.requests)),
        ("fallbacks served", str(bare.fallbacks), str(guarded.fallbacks)),
        ("errors seen by callers", str(bare.failed), str(guarded.failed)),
        ("p50 latency", ms(bare.percentile(0.5)), ms(guarded.percentile(0.5))),
        ("p99 latency", ms(bare.percentile(0.99)), ms(guarded.percentile(0.99))),
        ("calls reaching the service", amplification(bare), amplification(guarded)),
        ("breaker trips", "-", str(guarded.trips)),
    ]
    head = ("", "unprotected", "protected")
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(3)]
    lines = [
        "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        )
        for row in [head, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot(bare: RunResult, guarded: RunResult, path: str, duration: float) -> None:
    """Success rate and p99 latency per second for both runs (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit(
            "--plot needs matplotlib: "
            "pip install 'resilience-layers[plot]' (or pip install matplotlib)"
        ) from None
    seconds = max(1, math.ceil(duration))
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for run in (bare, guarded):
        rates, p99s = [], []
        for second in range(seconds):
            window = [t for t in run.timeline if second <= t[0] < second + 1]
            rates.append(100.0 * sum(ok for _, ok, _ in window) / len(window) if window else 0)
            took = sorted(latency for _, _, latency in window)
            p99s.append(took[min(len(took) - 1, int(0.99 * len(took)))] * 1000 if took else 0)
        top.plot(range(seconds), rates, label=run.label)
        bottom.plot(range(seconds), p99s, label=run.label)
    top.set_ylabel("answered (%)")
    bottom.set_ylabel("p99 latency (ms)")
    bottom.set_xlabel("seconds into the run")
    top.legend()
    figure.tight_layout()
    figure.savefig(path)


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


# The command line: flag, parser of its value, help (the field is the flag's name).
_FLAGS: tuple[tuple[str, Callable[[str], Any], str], ...] = (
    ("--duration", _positive, "seconds per run; there are two runs"),
    ("--clients", _count, "concurrent clients"),
    ("--error-rate", _fraction, "share of calls that fail"),
    ("--slow-rate", _fraction, "share of calls that are slow"),
    ("--slow-seconds", _positive, "how slow a slow call is"),
    ("--outage-length", _fraction, "share of each run the service is down"),
    ("--seed", int, "seed of the fault injection"),
)


def parse(argv: Sequence[str]) -> tuple[DemoOptions, str | None]:
    parser = argparse.ArgumentParser(
        prog="python -m resilience demo",
        description="Simulate a flaky service called by many clients, without and with "
        "a resilience pipeline, and compare.",
    )
    defaults = DemoOptions()
    names = [flag[2:].replace("-", "_") for flag, _, _ in _FLAGS]
    for (flag, kind, text), name in zip(_FLAGS, names, strict=True):
        default = getattr(defaults, name)
        parser.add_argument(flag, type=kind, default=default, help=f"{text} (default %(default)s)")
    parser.add_argument("--plot", metavar="FILE.png", help="draw both runs (needs matplotlib)")
    parser.add_argument("--quiet", action="store_true", help="print only the final table")
    args = parser.parse_args(list(argv))
    given = {name: getattr(args, name) for name in names}
    return DemoOptions(**given, quiet=args.quiet), args.plot


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m resilience demo``."""
    options, plot_path = parse(sys.argv[2:] if argv is None else argv)
    if not options.quiet:
        start = options.outage_start * options.duration
        print(
            f"A downstream service fails {options.error_rate:.0%} of calls, is slow "
            f"({options.slow_seconds:g}s) for {options.slow_rate:.0%}, and goes down from "
            f"t={start:.1f}s for {options.outage_length * options.duration:.1f}s "
            f"(calls hang {options.outage_hang:g}s).\n"
        )
    began = time.perf_counter()
    bare, guarded = asyncio.run(run_demo(options))
    print()
    print(format_table(bare, guarded))
    if not options.quiet:
        print(f"\n(two runs of {options.duration:g}s, {time.perf_counter() - began:.1f}s in all)")
    if plot_path:
        plot(bare, guarded, plot_path, options.duration)
        print(f"plot written to {plot_path}")
    return 0
