"""Tune a client pipeline before it ships: the seed's cache-service client, simulated.

    python examples/simulate.py

The cache service answers in about 2 ms (p99 20 ms), fails 2 % of calls,
serves 10 calls at once and refuses more (its Bulkhead, max_queue=0), and
goes down for five seconds in the middle (a bad deploy: calls hang). Its
clients send 500 requests a second. Everything runs in virtual time: each
40-second run takes well under a second.

1. The article's client (Retry 3 > Timeout 200 ms > CircuitBreaker) against
   no protection, and against the same layers with the timeout innermost.
   In the article's order the breaker never sees a hung call fail: the
   timeout cancels it first, and a cancelled call does not count. It stays
   closed through the outage while the retries triple the load.
2. A sweep of the reordered client's attempts and break duration.
"""

from __future__ import annotations

from typing import Any

import resilience as rs
from resilience import simulate as sim

SERVICE = sim.Service(
    latency=sim.lognormal(0.002, 0.02),
    error_rate=0.02,
    capacity=10,
    max_queue=0,
    outages=[sim.Outage(start=20.0, length=5.0, hang=10.0)],
)

RETRY = {"retry": {"attempts": 3, "backoff": {"exponential": {"initial": 0.01}}}}
BREAKER = {"circuit_breaker": {"ref": "cache-server"}}
CONFIG: dict[str, Any] = {
    "pipelines": {
        "article": {"layers": [RETRY, {"timeout": 0.2}, BREAKER]},
        "reordered": {"layers": [RETRY, BREAKER, {"timeout": 0.2}]},
    },
    "policies": {
        "cache-server": {
            "circuit_breaker": {"failure_ratio": 0.6, "minimum_calls": 20, "open_seconds": 1.0}
        }
    },
}


def main() -> None:
    reports = sim.compare(
        {
            "unprotected": None,
            "article": sim.from_config(CONFIG, "article"),
            "reordered": sim.from_config(CONFIG, "reordered"),
        },
        SERVICE,
        rate=500,
        duration=40.0,
        seed=1,
    )
    print(sim.format_reports(reports.values()))
    article, reordered = reports["article"], reports["reordered"]
    assert article.trips == 0 < reordered.trips
    assert reordered.outage_load is not None
    assert article.outage_load is not None
    assert reordered.outage_load < 1 < article.outage_load

    print()

    def client(clock: rs.Clock, attempts: int, open_seconds: float) -> rs.Middleware:
        overrides = {
            "retry.attempts": attempts,
            "policies.cache-server.open_seconds": open_seconds,
        }
        return sim.from_config(CONFIG, "reordered", overrides=overrides)(clock)

    points = sim.sweep(
        client,
        SERVICE,
        {"attempts": [1, 2, 3], "open_seconds": [0.25, 1.0, 4.0]},
        rate=500,
        duration=40.0,
        seed=1,
    )
    print(sim.format_sweep(points))
    best = max(points, key=lambda point: (point.report.fresh_share, -point.report.p99))
    print(f"\nmost fresh answers: {best.params}")


if __name__ == "__main__":
    main()
