"""Beyond static thresholds: a retry budget, an adaptive limit and client-side throttling.

Three small stories, each on a fake clock so that minutes pass in
milliseconds and every run prints the same numbers:

1. A dependency fails every call. ``Retry(attempts=3)`` would triple the
   load on it; a shared ``RetryBudget`` keeps the retries to a fifth of the
   calls plus a floor.
2. A server has 64 workers, then loses half of them. An ``AdaptiveLimiter``
   finds the limit, then follows it down and back up, from latency alone.
3. A backend can take 20 calls a second of the 100 offered. An
   ``AdaptiveThrottler`` sheds the excess locally, sending about K = 2 times
   what the backend accepts.

Finally the three are stacked in one pipeline around a real call.

Run it:  python examples/adaptive.py
"""

from __future__ import annotations

import contextlib
import heapq

import resilience as rs
from resilience.testing import FakeClock


def retry_budget() -> None:
    print("1. A retry budget on a dependency that fails every call")
    per_second, seconds = 50, 30
    offered = per_second * seconds
    for label, with_budget in (("Retry(attempts=3)", False), ("+ RetryBudget()", True)):
        clock = FakeClock()
        budget = rs.RetryBudget(clock=clock) if with_budget else None
        retry = rs.Retry(3, backoff=0, budget=budget, clock=clock)
        reached = 0

        def down() -> None:
            nonlocal reached
            reached += 1
            raise ConnectionError("down")

        for _ in range(offered):
            with contextlib.suppress(ConnectionError):
                retry.call(down)
            clock.advance(1 / per_second)
        print(
            f"   {label:18s} {offered} calls offered, {reached} reached it "
            f"({reached / offered:.2f}x)"
        )
        if with_budget:
            floor = 10 * 10 * 3  # 10 retries a second over each 10 s window, 30 s
            assert reached <= 1.2 * offered + floor, reached
        else:
            assert reached == 3 * offered


def adaptive_limit() -> None:
    print("2. An adaptive limit on a server whose capacity changes")
    clock = FakeClock()
    limiter = rs.AdaptiveLimiter(rs.Vegas(seed=1), clock=clock, window_seconds=0.1)
    base = 0.020  # seconds a call takes on an idle server
    phases = [(8.0, 64), (6.0, 32), (6.0, 64)]
    gap = base / 80  # 4,000 calls a second: more than 64 workers can serve
    pending: list[tuple[float, int, rs.LimitPermit]] = []
    running = order = 0
    now = 0.0
    for seconds, capacity in phases:
        end = now + seconds
        while now < end:
            while pending and pending[0][0] <= now:
                at, _, permit = heapq.heappop(pending)
                clock.advance(at - clock.monotonic())
                running -= 1
                permit.record()
            clock.advance(now - clock.monotonic())
            permit = limiter.try_acquire()
            if permit is not None:
                running += 1
                order += 1
                latency = base * max(1.0, running / capacity)
                heapq.heappush(pending, (now + latency, order, permit))
            now += gap
        print(f"   capacity {capacity:2d} workers for {seconds:.0f} s -> limit {limiter.limit}")
        assert 0.75 * capacity <= limiter.limit <= 1.25 * capacity, limiter.limit


def adaptive_throttler() -> None:
    print("3. Client-side throttling of an overloaded backend")
    clock = FakeClock()
    throttler = rs.AdaptiveThrottler(k=2, window_seconds=30, seed=7, clock=clock)
    sent = accepted = 0
    used = second = 0

    def backend() -> str:
        nonlocal sent, accepted, used
        sent += 1
        if used >= 20:  # 20 calls a second, no more
            raise ConnectionRefusedError("over capacity")
        used += 1
        accepted += 1
        return "ok"

    for second in range(120):
        used = 0
        if second == 90:
            sent = accepted = 0  # measure the last 30 s, once the window is full
        for _ in range(100):
            with contextlib.suppress(rs.ThrottledError, ConnectionRefusedError):
                throttler.call(backend)
            clock.advance(0.01)
    ratio = sent / accepted
    print(
        f"   last 30 s: 100 calls/s offered, {sent / 30:.0f}/s sent, {accepted / 30:.0f}/s "
        f"accepted: {ratio:.2f}x (K = 2); rejection probability "
        f"{throttler.probability:.2f}"
    )
    assert 1.8 <= ratio <= 2.2, ratio


def together() -> None:
    print("4. All three in one pipeline, outermost first")
    budget = rs.RetryBudget(name="inventory")
    stock = (
        rs.Pipeline.builder("inventory.stock")
        .add(rs.Retry(3, on=ConnectionError, budget=budget))
        .add(rs.AdaptiveThrottler(name="inventory"))
        .add(rs.AdaptiveLimiter(name="inventory"))
        .add(rs.Timeout(0.5))
        .build()
    )
    answers = [stock.call(lambda sku: 42, f"sku-{i}") for i in range(100)]
    assert answers == [42] * 100
    for layer in stock.describe()["layers"]:
        print(f"   {layer['type']:18s} {layer.get('name') or ''}")
    print(f"   100 calls answered; budget balance {budget.balance} retries")


def main() -> None:
    retry_budget()
    adaptive_limit()
    adaptive_throttler()
    together()


if __name__ == "__main__":
    main()
