"""Tests of `resilience.AdaptiveThrottler`: the SRE book's formula, checked against a model."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

import resilience as rs
from modes import run_plain
from resilience.testing import EventRecorder, FakeClock


class Overloaded(Exception):
    """The backend refused a request: it is over its capacity."""


class Backend:
    """Accepts at most ``capacity`` requests per second of the clock, refuses the rest."""

    def __init__(self, clock: FakeClock, capacity: int) -> None:
        self.clock = clock
        self.capacity = capacity
        self.second = -1
        self.used = 0
        self.received = 0
        self.accepted = 0

    def __call__(self) -> str:
        self.received += 1
        second = int(self.clock.monotonic())
        if second != self.second:
            self.second, self.used = second, 0
        if self.used >= self.capacity:
            raise Overloaded("over capacity")
        self.used += 1
        self.accepted += 1
        return "ok"


class Draws(random.Random):
    """A random source that always draws the same number: 0.0 always rejects, 1.0 never does."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


class Model:
    """The SRE formula over the same sliding window, written the plain way: counts per slice."""

    def __init__(self, k: float, seconds: float, buckets: int, seed: int) -> None:
        self.k = k
        self.width = seconds / buckets
        self.buckets = buckets
        self.random = random.Random(seed)
        self.requests: dict[int, int] = {}
        self.accepts: dict[int, int] = {}

    def decide(self, now: float) -> bool:
        """True if the request arriving at ``now`` is rejected; it is a request either way."""
        bucket = int(now // self.width)
        recent = range(bucket - self.buckets + 1, bucket + 1)
        requests = sum(self.requests.get(b, 0) for b in recent)
        accepts = sum(self.accepts.get(b, 0) for b in recent)
        self.requests[bucket] = self.requests.get(bucket, 0) + 1
        p = max(0.0, (requests - self.k * accepts) / (requests + 1))
        return p > 0 and self.random.random() < p

    def accept(self, now: float) -> None:
        bucket = int(now // self.width)
        self.accepts[bucket] = self.accepts.get(bucket, 0) + 1


# -- construction ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"k": 0.9}, ValueError, r"^k must be >= 1"),
        ({"k": "2"}, TypeError, r"^k must be a number"),
        ({"window_seconds": 0}, ValueError, r"^window_seconds must be > 0"),
        ({"window_buckets": 0}, ValueError, r"^window_buckets must be >= 1"),
        ({"refused_on": 3}, TypeError, r"^refused_on"),
        ({"refused_result": 1}, TypeError, r"^refused_result must be callable"),
        ({"seed": 1.5}, TypeError, r"^seed must be an int or a random.Random"),
        ({"clock": object()}, TypeError, r"^clock"),
        ({"name": 1}, TypeError, r"^name"),
    ],
)
def test_bad_arguments_fail_at_construction(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    """Every bad argument is refused by the constructor, naming the parameter."""
    with pytest.raises(error, match=message):
        rs.AdaptiveThrottler(**kwargs)


def test_defaults_settings_and_repr() -> None:
    """K = 2 over the book's two minutes, in 10 slices; rejections, timeouts, refusals refused."""
    throttler = rs.AdaptiveThrottler(name="search", window_seconds=timedelta(minutes=2))
    assert throttler.settings() == {
        "k": 2.0,
        "window_seconds": 120.0,
        "window_buckets": 10,
        "refused_on": (rs.RejectedError, TimeoutError, ConnectionError),
        "refused_result": None,
    }
    assert repr(throttler) == (
        "AdaptiveThrottler('search', k=2, window_seconds=120, window_buckets=10)"
    )
    assert throttler.describe()["kind"] == "adaptive_throttler"
    assert throttler.probability == 0.0
    seeded = rs.AdaptiveThrottler(seed=random.Random(5))
    assert isinstance(seeded.random, random.Random)


# -- the formula -----------------------------------------------------------------------------------


async def test_rejections_follow_the_formula_exactly(mode: str) -> None:
    """With a seed, every local rejection is the one the formula and the same draws give.

    A backend that takes 20 requests a second is offered 100 a second: K=2
    lets about 2 x 20 through and rejects the rest locally, and recovers
    once the backend can take them all again.
    """
    clock = FakeClock()
    throttler = rs.AdaptiveThrottler(
        2.0, window_seconds=10, window_buckets=10, refused_on=Overloaded, seed=42, clock=clock
    )
    model = Model(2.0, 10, 10, seed=42)
    backend = Backend(clock, capacity=1000)
    decisions: list[bool] = []
    expected: list[bool] = []
    sent_while_overloaded = 0
    for step in range(6000):  # 60 s at 100 calls a second
        now = clock.monotonic()
        backend.capacity = 20 if 10 <= now < 40 else 1000
        before = backend.received
        rejected = model.decide(now)
        expected.append(rejected)
        try:
            await run_plain(mode, throttler, backend)
        except rs.ThrottledError:
            decisions.append(True)
        except Overloaded:
            decisions.append(False)
        else:
            decisions.append(False)
            model.accept(now)
        if 30 <= now < 40:
            sent_while_overloaded += backend.received - before
        clock.advance(0.01)
        assert decisions == expected, step
    assert sum(decisions) > 1000
    assert 2 * 20 * 10 * 0.85 <= sent_while_overloaded <= 2 * 20 * 10 * 1.15
    assert decisions[-100:] == [False] * 100  # recovered
    metrics = throttler.metrics()
    assert metrics.rejected == sum(decisions)
    assert metrics.requests == metrics.accepts >= 990  # 10 s of calls (float time: +-1)
    assert metrics.probability == 0.0


async def test_a_healthy_backend_is_never_throttled(mode: str, clock: FakeClock) -> None:
    """While everything is accepted, requests == accepts and the probability stays 0."""
    throttler = rs.AdaptiveThrottler(clock=clock, seed=1)
    for _ in range(500):
        assert await run_plain(mode, throttler, lambda: "ok") == "ok"
        clock.advance(0.1)
    assert throttler.metrics() == rs.metrics.AdaptiveThrottlerMetrics(
        requests=500, accepts=500, probability=0.0, rejected=0
    )


async def test_what_counts_as_accepted(mode: str, clock: FakeClock) -> None:
    """Refusals, timeouts, rejections and refused results are not accepts; other errors are."""
    throttler = rs.AdaptiveThrottler(
        clock=clock, refused_result=lambda response: response == 503, seed=Draws(1.0)
    )

    def raising(error: BaseException) -> Callable[[], None]:
        def fn() -> None:
            raise error

        return fn

    for error in (ConnectionError("down"), TimeoutError(), rs.CircuitOpenError("open")):
        with pytest.raises(type(error)):
            await run_plain(mode, throttler, raising(error))
    assert await run_plain(mode, throttler, lambda: 503) == 503
    assert throttler.metrics().accepts == 0
    with pytest.raises(KeyError):
        await run_plain(mode, throttler, raising(KeyError("no such user")))
    assert await run_plain(mode, throttler, lambda: 200) == 200
    metrics = throttler.metrics()
    assert (metrics.requests, metrics.accepts) == (6, 2)


@pytest.mark.parametrize("kind", [KeyboardInterrupt, SystemExit, GeneratorExit])
def test_control_flow_counts_neither_way(clock: FakeClock, kind: type[BaseException]) -> None:
    """Control flow passes through and counts nothing: one Ctrl-C used to count as a refusal,
    making the next call 50 % likely to be rejected."""
    throttler = rs.AdaptiveThrottler(clock=clock, seed=Draws(0.0))

    def interrupted() -> None:
        raise kind

    with pytest.raises(kind):
        throttler.call(interrupted)
    metrics = throttler.metrics()
    assert (metrics.requests, metrics.accepts, metrics.probability) == (0, 0, 0.0)
    assert throttler.call(lambda: "next") == "next"  # Draws(0.0) would reject at any p > 0


async def test_cancellation_counts_neither_way(clock: FakeClock) -> None:
    """A call cancelled from outside says nothing about the backend: not counted."""
    throttler = rs.AdaptiveThrottler(clock=clock)
    started = asyncio.Event()

    async def hangs() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(throttler.acall(hangs))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    metrics = throttler.metrics()
    assert (metrics.requests, metrics.accepts) == (0, 0)


async def test_a_local_rejection_is_a_throttled_error_with_an_event(
    mode: str, clock: FakeClock
) -> None:
    """The rejection names the throttler and the counts; an event carries the probability."""
    throttler = rs.AdaptiveThrottler(clock=clock, seed=Draws(0.0), name="search")

    def down() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        await run_plain(mode, throttler, down)
    with (
        EventRecorder().watch(throttler) as recorder,
        pytest.raises(rs.ThrottledError) as caught,
    ):
        await run_plain(mode, throttler, down)
    assert str(caught.value) == (
        "adaptive throttler 'search' rejected the call locally "
        "(p=0.50: the backend accepted 0 of the last 1 requests)"
    )
    assert (caught.value.name, caught.value.retry_after) == ("search", None)
    assert recorder.of(rs.events.AdaptiveThrottlerEvent) == [
        rs.events.AdaptiveThrottlerEvent("search", 0.5, 1, 0, caught.value)
    ]
    assert throttler.metrics().rejected == 1


def test_the_window_forgets_old_requests(clock: FakeClock) -> None:
    """Counts leave the window slice by slice, and all at once after a long silence."""
    throttler = rs.AdaptiveThrottler(
        window_seconds=10, window_buckets=5, clock=clock, seed=Draws(1.0)
    )

    def down() -> None:
        raise ConnectionError("down")

    for _ in range(3):
        with pytest.raises(ConnectionError):
            throttler.call(down)
    clock.advance(4)
    with pytest.raises(ConnectionError):
        throttler.call(down)
    assert throttler.metrics().requests == 4
    clock.advance(6)  # 10 s: the first slice has left the window
    assert throttler.metrics().requests == 1
    clock.advance(1000)
    assert throttler.metrics() == rs.metrics.AdaptiveThrottlerMetrics(0, 0, 0.0, 0)


# -- concurrency -----------------------------------------------------------------------------------


def test_eight_threads_count_every_request_and_accept_exactly() -> None:
    """8 threads, 1,000 calls each, through one throttler: 8,000 requests and 8,000 accepts."""
    throttler = rs.AdaptiveThrottler(clock=FakeClock())
    start = threading.Barrier(8)

    def hammer() -> None:
        start.wait()
        for _ in range(1000):
            throttler.call(lambda: None)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert throttler.metrics() == rs.metrics.AdaptiveThrottlerMetrics(8000, 8000, 0.0, 0)


async def test_a_thousand_tasks_count_exactly(clock: FakeClock) -> None:
    """1,000 concurrent tasks: 1,000 requests, 500 accepted, the rest refused by the backend."""
    throttler = rs.AdaptiveThrottler(clock=clock, seed=Draws(1.0))

    async def half(i: int) -> int:
        await asyncio.sleep(0)
        if i % 2:
            raise ConnectionError("refused")
        return i

    results = await asyncio.gather(
        *(throttler.acall(half, i) for i in range(1000)), return_exceptions=True
    )
    assert sum(isinstance(r, ConnectionError) for r in results) == 500
    assert throttler.metrics() == rs.metrics.AdaptiveThrottlerMetrics(1000, 500, 0.0, 0)


def test_update_changes_k_for_the_next_call() -> None:
    """update(k=) reaches the calls of a throttler already wrapped (the shell reads it)."""
    clock = FakeClock()
    throttler = rs.AdaptiveThrottler(k=1000, seed=1, clock=clock)
    refusing = False

    @throttler
    def backend() -> None:
        if refusing:
            raise ConnectionError

    for _ in range(20):
        backend()
    refusing = True
    for _ in range(60):  # k=1000: 20 accepts cover them all, nothing is rejected here
        with pytest.raises(ConnectionError):
            backend()
    assert throttler.metrics().probability == 0.0
    throttler.update(k=1.0)
    assert throttler.k == 1.0
    assert throttler.metrics().probability == pytest.approx(60 / 81)
    rejected = 0
    for _ in range(50):
        try:
            backend()
        except rs.ThrottledError:
            rejected += 1
        except ConnectionError:
            pass
    assert rejected > 20
    with pytest.raises(ValueError, match="k"):
        throttler.update(k=0.5)
    assert throttler.k == 1.0
