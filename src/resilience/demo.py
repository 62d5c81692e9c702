"""The chaos demo: a flaky service, many clients, three ways of calling it.

Run it with ``python -m resilience demo`` (``--help`` for the options). It
runs, in this process and in real time:

* a downstream service whose faults come from a `FaultInjector`: about 30 %
  errors, about 10 % slow answers, and a hard outage in the middle of each
  run during which every call hangs until the caller gives up;
* many concurrent clients calling it on an open loop, three times:
  unprotected; with naive retries (Retry > Timeout: no breaker, no budget,
  the retry storm); and through the recommended pipeline, Fallback > Retry
  (with a retry budget) > CircuitBreaker > Bulkhead > Timeout.

It prints the best fresh share the fault profile allows, computed, then a
side-by-side table. Every figure in the table is measured in the run.
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
from dataclasses import dataclass
from typing import Any

from . import backoff
from ._budget import RetryBudget
from ._bulkhead import Bulkhead
from ._circuit_breaker import CircuitBreaker
from ._context import CallContext
from ._errors import CircuitOpenError, TimeoutExceeded
from ._fallback import Fallback, FallbackContext
from ._faults import FaultInjector
from ._pipeline import Pipeline
from ._retry import Retry
from ._timeout import Timeout
from .simulate import Recorder, Report, _table, plot_reports

__all__ = [
    "ATTEMPTS",
    "ATTEMPT_TIMEOUT",
    "DemoOptions",
    "Downstream",
    "best_fresh_share",
    "format_table",
    "main",
    "naive_pipeline",
    "parse",
    "protected_pipeline",
    "retry_through_bound",
    "run_demo",
]

FALLBACK_ANSWER = {"stock": None, "stale": True}
ATTEMPTS = 3
"""Attempts per request in the retrying runs."""
ATTEMPT_TIMEOUT = 0.1
"""Seconds one attempt may take in the retrying runs."""


@dataclass(frozen=True)
class DemoOptions:
    """What to simulate; the command-line options map one to one."""

    duration: float = 5.0
    """Seconds per run (three runs)."""
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

    @property
    def outage(self) -> tuple[float, float]:
        """The outage's (start, end), in seconds from the start of a run."""
        start = self.outage_start * self.duration
        return start, start + self.outage_length * self.duration


def _attempt_odds(options: DemoOptions) -> tuple[float, float, float]:
    """(succeeds, fails fast, fails slowly) for one attempt outside the outage.

    The injector draws the slow answer and the error independently; a slow
    answer longer than `ATTEMPT_TIMEOUT` is a failure too.
    """
    slow = options.slow_rate if options.slow_seconds > ATTEMPT_TIMEOUT else 0.0
    return (1.0 - slow) * (1.0 - options.error_rate), (1.0 - slow) * options.error_rate, slow


def best_fresh_share(options: DemoOptions) -> float:
    """The share of fresh answers the fault profile allows, nothing fresh during the outage.

    With ``p`` the chance that one attempt fails, `ATTEMPTS` attempts
    succeed with probability ``1 - p**ATTEMPTS`` outside the outage, and the
    outage takes its share of the run: ``(1 - outage_length) * (1 - p**3)``.
    """
    succeeds, _, _ = _attempt_odds(options)
    return (1.0 - options.outage_length) * (1.0 - (1.0 - succeeds) ** ATTEMPTS)


def retry_through_bound(options: DemoOptions, step: float = 0.001) -> float:
    """The fresh share when every request retries through the outage, whatever the load.

    A request arriving late in the outage can be answered fresh by a retry
    that lands after it. For each arrival time ``t`` (spread evenly over the
    run) this follows the attempts: an attempt during the outage hangs
    until `ATTEMPT_TIMEOUT`; outside it, it succeeds, fails fast (after the
    mean service time) or fails slowly (at the timeout), with the odds of
    `_attempt_odds`; each retry first waits the mean of the backoff. Naive
    retries come close to it, at the load the table shows.
    """
    start, end = options.outage
    succeeds, fast, slow = _attempt_odds(options)
    service = 0.0125  # the mean normal service time (Downstream._answer)

    def chance(t: float, attempt: int) -> float:
        if attempt > ATTEMPTS:
            return 0.0
        pause = 0.01 * 2 ** (attempt - 1)  # the mean of exponential(0.02, jitter="full")
        if start <= t < end:
            return chance(t + ATTEMPT_TIMEOUT + pause, attempt + 1)
        return (
            succeeds
            + fast * chance(t + service + pause, attempt + 1)
            + slow * chance(t + ATTEMPT_TIMEOUT + pause, attempt + 1)
        )

    count = max(1, round(options.duration / step))
    return math.fsum(chance((i + 0.5) * step, 1) for i in range(count)) / count


class Downstream:
    """The flaky service: its faults come from one seeded FaultInjector."""

    def __init__(self, options: DemoOptions, started: Callable[[], float]) -> None:
        self.options = options
        self.calls: list[float] = []
        """When each call reached the service (seconds since the run started)."""
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
        start, end = self.options.outage
        return start <= self._started() < end

    async def _answer(self, sku: int) -> dict[str, Any]:
        await asyncio.sleep(self._jitter.uniform(0.005, 0.02))  # normal service time
        return {"stock": sku % 50, "stale": False}

    async def get_stock(self, sku: int) -> dict[str, Any]:
        """One call to the service (what a client's HTTP call would be)."""
        self.calls.append(self._started())
        return await self._pipeline.acall(self._answer, sku)


def _last_good_stock(context: FallbackContext) -> dict[str, Any]:
    """The last stock figure the service gave for this SKU, marked stale; or "unknown"."""
    if context.last_good is None:
        return FALLBACK_ANSWER
    return {**context.last_good, "stale": True}


def _retry(options: DemoOptions, *on: type[Exception], **budget: Any) -> Retry:
    return Retry(
        attempts=ATTEMPTS,
        on=(ConnectionError, TimeoutExceeded, *on),
        backoff=backoff.exponential(0.02, maximum=0.2, jitter="full", seed=options.seed),
        name="stock.retry",
        **budget,
    )


def naive_pipeline(options: DemoOptions) -> Pipeline:
    """What many services do: retry every failure, each attempt with a timeout; nothing else."""
    return (
        Pipeline.builder("stock.naive")
        .add(_retry(options))
        .add(Timeout(ATTEMPT_TIMEOUT, name="stock.timeout"))
        .build()
    )


def protected_pipeline(options: DemoOptions) -> tuple[Pipeline, CircuitBreaker]:
    """The stack the demo recommends, outermost first, and its breaker."""
    breaker = CircuitBreaker(
        # 37 % of attempts fail on a normal day: 60 % in half a second of about 350
        # attempts is far outside their spread, and reached soon after an outage begins.
        failure_ratio=0.6,
        # Errors come back before answers: the first 20 outcomes of a cold start are
        # mostly errors. 50 outcomes take in the first requests' answers too.
        minimum_calls=50,
        window_seconds=0.5,
        window_buckets=10,
        open_seconds=0.1,
        # Ten trials judged by the failure ratio: one trial judged alone would fail on a
        # normal day 37 % of the time and keep the breaker flapping after the outage.
        half_open_calls=25,
        half_open_rule="ratio",
        # A trial may take up to the attempt timeout; by default a trial still out after
        # the first break (0.2 s) would reopen the breaker, and one in ten calls is slow.
        half_open_max_seconds=2 * ATTEMPT_TIMEOUT,
        name="downstream",
    )
    pipeline = (
        Pipeline.builder("stock.get")
        .add(Fallback(handler=_last_good_stock, last_good=True, max_age=5.0, name="stale-stock"))
        # A normal day needs about 0.5 retries per request; the budget allows 0.7, so
        # during an outage the service sees at most 1.7 calls per request, not 3.
        .add(_retry(options, CircuitOpenError, budget=RetryBudget(ratio=0.7, min_per_second=10)))
        .add(breaker)
        .add(Bulkhead(max(1, options.clients), max_queue=options.clients // 2, max_wait=0.1))
        .add(Timeout(ATTEMPT_TIMEOUT, name="stock.timeout"))
        .build()
    )
    return pipeline, breaker


Call = Callable[[Downstream, int], Awaitable[dict[str, Any]]]


class _Run:
    """One run: clients sending requests on an open loop, and a progress line a second."""

    def __init__(
        self,
        label: str,
        options: DemoOptions,
        call: Call,
        on_tick: Callable[[], str] | None,
        record: Recorder,
    ) -> None:
        self.label, self.options, self.call, self.on_tick = label, options, call, on_tick
        self.record = record
        self.loop = asyncio.get_running_loop()
        self.start = self.loop.time()
        self.service = Downstream(options, self.elapsed)
        self.rng = random.Random(options.seed + 2)
        self.in_flight: set[asyncio.Task[None]] = set()

    def elapsed(self) -> float:
        return self.loop.time() - self.start

    async def request(self, sku: int) -> None:
        began = self.elapsed()
        try:
            answer = await self.call(self.service, sku)
        except Exception as error:
            self.record.failed(began, self.elapsed() - began, error)
        else:
            self.record.request(began, self.elapsed() - began, not answer.get("stale"))

    async def client(self, index: int) -> None:
        # Open loop: a client sends its next request on schedule, whether or
        # not the last one has come back, as independent users would. Every
        # run therefore offers the service the same load.
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
                outcomes = self.record.outcomes
                done = len(outcomes)
                fresh = 100.0 * outcomes.count(0) / done if done else 0.0
                extra = self.on_tick() if self.on_tick else ""
                print(
                    f"  {self.label:<14} t={second:>2}s  requests done={done:>5}"
                    f"  fresh={fresh:5.1f}%  calls reaching the service="
                    f"{len(self.service.calls):>5}{extra}",
                    flush=True,
                )

    async def __call__(self) -> Report:
        watcher = asyncio.create_task(self.progress())
        await asyncio.gather(*(self.client(i) for i in range(self.options.clients)))
        while self.in_flight:  # the requests still out when the run ends
            await asyncio.gather(*list(self.in_flight))
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        self.record.calls.extend(self.service.calls)
        return self.record.report(self.label, self.options.duration, [self.options.outage])


async def _run(
    label: str,
    options: DemoOptions,
    call: Call,
    pipeline: Pipeline | None = None,
    on_tick: Callable[[], str] | None = None,
) -> Report:
    record = Recorder()
    loop = asyncio.get_running_loop()
    started = loop.time()
    stop = None
    if pipeline is not None:
        stop = pipeline.subscribe(record.listener(lambda: loop.time() - started))
    try:
        return await _Run(label, options, call, on_tick, record)()
    finally:
        if stop is not None:
            stop()


async def run_demo(options: DemoOptions) -> list[Report]:
    """The three runs, one after the other: unprotected, naive retries, recommended."""

    async def unprotected(service: Downstream, sku: int) -> dict[str, Any]:
        return await service.get_stock(sku)

    if not options.quiet:
        print(f"Run 1 of 3: {options.clients} clients call the service directly")
    bare = await _run("unprotected", options, unprotected)

    naive = naive_pipeline(options)

    async def retrying(service: Downstream, sku: int) -> dict[str, Any]:
        return await naive.acall(service.get_stock, sku)

    if not options.quiet:
        print(f"Run 2 of 3: the same clients through {naive!r}")
    storm = await _run("naive retries", options, retrying, naive)

    pipeline, breaker = protected_pipeline(options)

    async def protected(service: Downstream, sku: int) -> dict[str, Any]:
        return await pipeline.acall(service.get_stock, sku)

    def breaker_state() -> str:
        return f"  breaker={breaker.state.value}"

    if not options.quiet:
        print(f"Run 3 of 3: the same clients through {pipeline!r}")
    guarded = await _run("recommended", options, protected, pipeline, breaker_state)
    return [bare, storm, guarded]


def format_table(reports: Sequence[Report]) -> str:
    """The side-by-side comparison, as aligned text."""

    def pct(report: Report, part: int) -> str:
        return f"{100.0 * part / report.requests:.1f}%" if report.requests else "n/a"

    def ms(seconds: float) -> str:
        return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.0f} ms"

    def load(value: float | None) -> str:
        return "n/a" if value is None or math.isnan(value) else f"{value:.2f}x"

    reasons = sorted({reason for r in reports for reason in r.fallbacks_by_reason})
    rows: list[tuple[str, ...]] = [
        ("requests made", *(str(r.requests) for r in reports)),
        ("answered (fresh + fallback)", *(pct(r, r.fresh + r.fallbacks) for r in reports)),
        ("fresh answers", *(pct(r, r.fresh) for r in reports)),
        ("fallbacks served", *(str(r.fallbacks) for r in reports)),
        *(
            (f"  for {reason}", *(str(r.fallbacks_by_reason.get(reason, 0)) for r in reports))
            for reason in reasons
        ),
        ("errors seen by callers", *(str(r.errors) for r in reports)),
        ("p50 latency", *(ms(r.p50) for r in reports)),
        ("p99 latency", *(ms(r.p99) for r in reports)),
        ("calls reaching the service", *(f"{r.service_calls}" for r in reports)),
        ("  per request", *(load(r.load) for r in reports)),
        ("  per request during the outage", *(load(r.outage_load) for r in reports)),
        (
            "breaker trips",
            *(str(r.trips) if r.trips or r.name == "recommended" else "-" for r in reports),
        ),
    ]
    return _table(("", *(r.name for r in reports)), rows)


def plot(reports: Sequence[Report], path: str) -> None:
    """Each run over time at 200 ms resolution (needs matplotlib): see `plot_reports`."""
    plot_reports(reports, path, resolution=0.2)


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
    ("--duration", _positive, "seconds per run; there are three runs"),
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
        description="Call a flaky service from many clients: unprotected, with naive retries, "
        "and through the recommended pipeline; compare.",
    )
    defaults = DemoOptions()
    names = [flag[2:].replace("-", "_") for flag, _, _ in _FLAGS]
    for (flag, kind, text), name in zip(_FLAGS, names, strict=True):
        default = getattr(defaults, name)
        parser.add_argument(flag, type=kind, default=default, help=f"{text} (default %(default)s)")
    parser.add_argument("--plot", metavar="FILE.png", help="draw the three runs (needs matplotlib)")
    parser.add_argument("--quiet", action="store_true", help="print only the final table")
    args = parser.parse_args(list(argv))
    given = {name: getattr(args, name) for name in names}
    return DemoOptions(**given, quiet=args.quiet), args.plot


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m resilience demo``."""
    options, plot_path = parse(sys.argv[2:] if argv is None else argv)
    best = best_fresh_share(options)
    if not options.quiet:
        start, end = options.outage
        print(
            f"A downstream service fails {options.error_rate:.0%} of calls, is slow "
            f"({options.slow_seconds:g}s) for {options.slow_rate:.0%}, and goes down from "
            f"t={start:.1f}s for {end - start:.1f}s (calls hang {options.outage_hang:g}s).\n"
        )
    began = time.perf_counter()
    reports = asyncio.run(run_demo(options))
    print()
    print(
        f"Best fresh share this fault profile allows ({ATTEMPTS} attempts of "
        f"{ATTEMPT_TIMEOUT:g}s, nothing fresh during the outage): {100 * best:.1f}%"
    )
    if not options.quiet:
        print(
            f"(Retrying through the outage, whatever the load, reaches "
            f"{100 * retry_through_bound(options):.1f}%: retries that land after it answer "
            "some requests made late in it.)"
        )
    print(format_table(reports))
    recommended = reports[-1]
    print(
        f"\nThe recommended pipeline answered {100 * recommended.fresh_share:.1f}% fresh, "
        f"{100 * (best - recommended.fresh_share):.1f} points from the best, and no caller "
        "saw an error."
        if recommended.errors == 0
        else f"\nThe recommended pipeline answered {100 * recommended.fresh_share:.1f}% fresh."
    )
    if not options.quiet:
        print(f"\n(three runs of {options.duration:g}s, {time.perf_counter() - began:.1f}s in all)")
    if plot_path:
        plot(reports, plot_path)
        print(f"plot written to {plot_path}")
    return 0
