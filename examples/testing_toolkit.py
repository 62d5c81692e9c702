"""The testing toolkit without pytest: count attempts, record events, switch waits off.

A pipeline with a retry and a breaker is exercised against a fault injector,
and every claim is checked with an assert. No real time passes.

Run it:  python examples/testing_toolkit.py
"""

from __future__ import annotations

import resilience as rs
from resilience.testing import EventRecorder, FaultScope, attempts, set_testing

chaos = rs.FaultInjector(error_rate=0.0, seed=42, name="chaos")
breaker = rs.CircuitBreaker(consecutive_failures=4, name="inventory")
inventory = (
    rs.Pipeline.builder("inventory")
    .add(rs.Fallback(value={"stock": None}))
    .add(rs.Retry(attempts=3, on=rs.InjectedFault, backoff=5.0))  # 5 s between attempts
    .add(breaker)
    .add(chaos)
    .build()
)


def stock(sku: str) -> dict[str, int]:
    return {"stock": 12}


def main() -> None:
    counted = attempts(stock)
    faults = FaultScope()
    with set_testing(instant_waits=True), EventRecorder().watch(inventory) as events:
        assert inventory.call(counted, "a") == {"stock": 12}
        counted.assert_count(1)
        print("healthy: 1 attempt, answer", {"stock": 12})

        faults.update(chaos, error_rate=1.0)  # every call now fails before reaching stock()
        assert inventory.call(counted, "a") == {"stock": None}
        assert inventory.call(counted, "a") == {"stock": None}
        faults.restore()
        counted.assert_count(1)  # injected errors never reached the function

        retries = events.of(rs.events.RetryEvent)
        opened = [
            c for c in events.of(rs.events.CircuitStateChange) if c.new is rs.CircuitState.OPEN
        ]
        print(
            f"outage: {len(retries)} retries scheduled (waits made instant), "
            f"{len(opened)} breaker trip, {len(events.of(rs.events.FallbackEvent))} fallbacks"
        )
        assert [r.delay for r in retries] == [0.0, 0.0, 0.0]
        assert len(opened) == 1
        assert breaker.state is rs.CircuitState.OPEN
    assert chaos.settings()["enabled"] is True
    assert "error_rate" not in chaos.settings()  # the scope put the rate back to 0
    print("after the scope: chaos is back to", chaos)


if __name__ == "__main__":
    main()
