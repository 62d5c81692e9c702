"""A circuit breaker in front of a flaky service, with a fallback and a fake clock.

The "inventory service" below fails for a while, then recovers. The breaker
opens after enough failures, the fallback serves a cached answer while it is
open, and a trial call after the break closes it again. A fake clock makes
the 10-second break pass instantly.

Run it:  python examples/circuit_breaker.py
"""

from __future__ import annotations

import resilience as rs
from resilience.testing import FakeClock

clock = FakeClock()
healthy = False
calls_reaching_the_service = 0


def stock_level(sku: str) -> int:
    """The dependency: fails while ``healthy`` is False."""
    global calls_reaching_the_service
    calls_reaching_the_service += 1
    if not healthy:
        raise ConnectionError("inventory service unreachable")
    return 42


def log_change(change: rs.events.CircuitStateChange) -> None:
    print(f"  [t={change.at:>4.0f}s] breaker {change.old.value} -> {change.new.value}")


breaker = rs.CircuitBreaker(
    failure_ratio=0.5,
    minimum_calls=4,
    window_calls=10,
    open_seconds=10,
    on_state_change=log_change,
    clock=clock,
    name="inventory",
)
cached = {"sku-1": 40}
inventory = (
    rs.Pipeline.builder("inventory.stock")
    .add(rs.Fallback(handler=lambda ctx: cached.get(ctx.args[0], 0)))
    .add(breaker)
    .build()
)


def main() -> None:
    global healthy
    print("The service is down:")
    for _ in range(6):
        level = inventory.call(stock_level, "sku-1")
        print(f"  stock=sku-1 -> {level} (state {breaker.state.value})")
    reached = calls_reaching_the_service
    print(f"  {reached} calls reached the service; the rest were cut off by the breaker")
    assert reached == 4, reached

    print("Ten seconds later the service is back:")
    healthy = True
    clock.advance(10)
    level = inventory.call(stock_level, "sku-1")
    print(f"  stock=sku-1 -> {level} (state {breaker.state.value})")
    assert level == 42
    assert breaker.state is rs.CircuitState.CLOSED

    metrics = breaker.metrics()
    print(f"  trips={metrics.trips} rejected={metrics.rejected}")
    assert metrics.rejected == 2


if __name__ == "__main__":
    main()
