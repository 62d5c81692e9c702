"""Torture: one shared pipeline under many threads and many tasks, with chaos.

Retry > Timeout > CircuitBreaker > Throttle > Bulkhead > FaultInjector, one
instance shared by every caller, with seeded random failures, random fake
latencies, random cancellations and a `FakeClock` that every sleeper pushes
forward (so deadlines, refills and breaks fire at random points of other
callers' calls). Afterwards: only the expected kinds of exception escaped,
the breaker's counts equal what the test counted, every slot and token came
back, nothing is left running, and the pipeline still serves calls.

The size is scaled by ``RESILIENCE_TORTURE_SCALE`` (default 0.04, a few
seconds here); ``RESILIENCE_TORTURE_SCALE=1`` runs the issue's full size:
16 threads x 50,000 calls, and 2,000 tasks x 125 calls.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections import Counter
from typing import Any

import pytest

import resilience as rs
from resilience.testing import FakeClock

SCALE = float(os.environ.get("RESILIENCE_TORTURE_SCALE", "0.04"))
THREADS = 16
CALLS_PER_THREAD = max(50, int(50_000 * SCALE))
TASKS = 2_000
CALLS_PER_TASK = max(5, int(125 * SCALE))
SEED = 20240608
# The per-test limit of pytest-timeout (60 s in pyproject.toml) grows with the size:
# each test takes ~2 s at the default scale and ~30-40 s at RESILIENCE_TORTURE_SCALE=1.
LIMIT = pytest.mark.timeout(max(60.0, 300.0 * SCALE))


class Abort(BaseException):
    """A sync stand-in for cancellation: control flow that no layer may count or keep."""


EXPECTED = (
    ValueError,  # the function's own failure, retried
    rs.InjectedFault,
    rs.TimeoutExceeded,
    rs.CircuitOpenError,
    rs.ThrottledError,
    rs.BulkheadFullError,
)


class Tally:
    """Counters shared by threads (one lock) and tasks."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.unexpected: list[BaseException] = []

    def add(self, key: str) -> None:
        with self.lock:
            self.counts[key] += 1


def build(
    clock: FakeClock,
    breaker: rs.CircuitBreaker,
    tally: Tally,
    seed: int,
    *,
    rate: float = 400,
    slots: int = 4,
) -> tuple[rs.Pipeline, rs.Throttle, rs.Bulkhead, rs.FaultInjector]:
    """The shared pipeline, with listeners counting what happens below the breaker."""
    latency_rng = random.Random(seed + 1)
    throttle = rs.Throttle(rate, burst=rate / 20, max_wait=0.004, clock=clock)
    bulkhead = rs.Bulkhead(slots, max_queue=slots * 2, max_wait=0.01, clock=clock)
    fault = rs.FaultInjector(
        error_rate=0.1,
        latency=lambda _: latency_rng.random() * 0.02,
        latency_rate=0.3,
        seed=seed,
        clock=clock,
    )
    pipeline = rs.Pipeline(
        [
            rs.Retry(attempts=3, backoff=0.001, clock=clock),
            rs.Timeout(0.05, clock=clock),
            breaker,
            throttle,
            bulkhead,
            fault,
        ],
        name="torture",
    )

    def seen(event: Any) -> None:
        if isinstance(event, rs.events.FaultEvent):
            if event.plan.error is not None:
                tally.add("below:injected")
        elif getattr(event, "outcome", None) == "rejected":
            tally.add(f"below:{type(event).__name__}")  # ThrottleEvent, BulkheadEvent

    for layer in (throttle, bulkhead, fault):
        layer.subscribe(seen)
    return pipeline, throttle, bulkhead, fault


def assert_returned(throttle: rs.Throttle, bulkhead: rs.Bulkhead, clock: FakeClock) -> None:
    """Every bulkhead slot and every throttle token comes back."""
    slots = bulkhead.metrics()
    assert (slots.in_flight, slots.available, slots.queued) == (0, bulkhead.max_concurrent, 0)
    assert throttle.metrics().queued == 0
    clock.advance(throttle.burst * throttle.per / throttle.rate)
    assert throttle.metrics().available == pytest.approx(throttle.burst)


@LIMIT
def test_threads_through_one_pipeline() -> None:
    """16 threads: only expected errors escape, breaker counts exact, all slots come back."""
    clock = FakeClock()
    tally = Tally()
    # A time window far longer than the run never forgets a call, and an
    # all-failures ratio never trips: the window's counts are exact totals.
    breaker = rs.CircuitBreaker(
        failure_ratio=1.0, minimum_calls=1_000, window_seconds=1e9, clock=clock
    )
    pipeline, throttle, bulkhead, _ = build(clock, breaker, tally, SEED)
    # Compared as sets: idle pool workers from earlier tests may exit meanwhile.
    threads_before = set(threading.enumerate())
    start = threading.Barrier(THREADS)

    def target(index: int) -> None:
        rng = random.Random(SEED * 100 + index)

        def work() -> int:
            roll = rng.random()
            if roll < 0.05:
                tally.add("below:ValueError")
                raise ValueError("boom")
            if roll < 0.07:
                tally.add("aborted")
                raise Abort
            if roll < 0.3:
                time.sleep(0)  # give the GIL away inside the bulkhead
            tally.add("below:ok")
            return 1

        start.wait()
        for _ in range(CALLS_PER_THREAD):
            try:
                pipeline.call(work)
            except EXPECTED as exc:
                tally.add(type(exc).__name__)
            except Abort:
                pass
            except BaseException as exc:
                with tally.lock:
                    tally.unexpected.append(exc)
            else:
                tally.add("returned")

    threads = [threading.Thread(target=target, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert set(threading.enumerate()) - threads_before == set()

    counts = tally.counts
    assert tally.unexpected == []
    outcomes = sum(counts[k] for k in ("returned", *(e.__name__ for e in EXPECTED)))
    assert outcomes + counts["aborted"] == THREADS * CALLS_PER_THREAD
    failures = sum(
        counts[k]
        for k in (
            "below:ValueError",
            "below:injected",
            "below:ThrottleEvent",
            "below:BulkheadEvent",
        )
    )
    assert failures > 0  # the chaos did happen
    assert counts["TimeoutExceeded"] > 0
    metrics = breaker.metrics()
    assert metrics.state is rs.CircuitState.CLOSED
    assert (metrics.calls, metrics.failures) == (counts["below:ok"] + failures, failures)
    assert (metrics.trips, metrics.rejected) == (0, 0)
    assert_returned(throttle, bulkhead, clock)
    assert pipeline.call(lambda: 7) == 7


@LIMIT
async def test_tasks_through_one_pipeline() -> None:
    """2,000 tasks, randomly cancelled: expected errors only, exact trips and rejections."""
    clock = FakeClock()
    tally = Tally()
    states: Counter[rs.CircuitState] = Counter()
    breaker = rs.CircuitBreaker(
        consecutive_failures=5,
        open_seconds=0.02,
        half_open_calls=2,
        ignore=rs.RejectedError,  # the throttle's and bulkhead's own refusals under load
        on_state_change=lambda change: states.update([change.new]),
        clock=clock,
    )
    pipeline, throttle, bulkhead, fault = build(
        clock, breaker, tally, SEED + 7, rate=200_000, slots=400
    )
    rng = random.Random(SEED + 8)
    done = asyncio.Event()

    async def work() -> int:
        roll = rng.random()
        if roll < 0.05:
            raise ValueError("boom")
        if roll < 0.3:
            await asyncio.sleep(0)  # let others in while holding the slot
        return 1

    async def caller() -> None:
        try:
            for _ in range(CALLS_PER_TASK):
                try:
                    await pipeline.acall(work)
                except EXPECTED as exc:
                    tally.add(type(exc).__name__)
                except asyncio.CancelledError:
                    raise
                except BaseException as exc:
                    tally.unexpected.append(exc)
                    return
                else:
                    tally.add("returned")
                await clock.asleep(rng.random() * 2e-6)  # think time, in fake time
        except asyncio.CancelledError:
            tally.add("cancelled")
            raise

    async def chaos(tasks: list[asyncio.Task[None]]) -> None:
        rounds = 0
        while not done.is_set():
            for _ in range(rng.randrange(4)):
                rng.choice(tasks).cancel()
            if rounds % 8 == 0:  # the dependency's health swings, under load
                fault.update(error_rate=(0.1, 0.02, 0.9)[rounds // 8 % 3])
            rounds += 1
            await asyncio.sleep(0)

    tasks = [asyncio.create_task(caller()) for _ in range(TASKS)]
    monkey = asyncio.create_task(chaos(tasks))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    done.set()
    await monkey

    assert tally.unexpected == []
    assert all(r is None or isinstance(r, asyncio.CancelledError) for r in results)
    assert tally.counts["cancelled"] == sum(isinstance(r, asyncio.CancelledError) for r in results)
    assert tally.counts["cancelled"] > 0
    assert tally.counts["TimeoutExceeded"] > 0
    assert asyncio.all_tasks() == {asyncio.current_task()}
    metrics = breaker.metrics()
    assert metrics.trips == states[rs.CircuitState.OPEN] > 0
    assert metrics.rejected == tally.counts["CircuitOpenError"] > 0
    assert_returned(throttle, bulkhead, clock)

    # Still alive: no trial slot, permit or deadline was left behind.
    fault.disable()
    clock.advance(1.0)
    for _ in range(3):
        assert await pipeline.acall(work_ok) == 1
    assert breaker.state is rs.CircuitState.CLOSED
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def work_ok() -> int:
    return 1
