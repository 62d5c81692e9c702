"""Keyed policies: a breaker per host and a rate per tenant, on a fake clock.

    python examples/keyed.py

One dead host trips its own breaker and no other; each tenant gets its own
5 calls per second; idle keys are forgotten, but the dead host's open
breaker is kept until it closes.
"""

from __future__ import annotations

import resilience as rs
from resilience.testing import FakeClock

clock = FakeClock()

per_host = rs.Keyed(
    lambda host: rs.CircuitBreaker(
        name=f"api:{host}", minimum_calls=3, open_seconds=30, clock=clock
    ),
    key="host",
    idle_seconds=60,
    clock=clock,
)
per_tenant = rs.Keyed(
    lambda tenant: rs.Throttle(rate=5, per=1.0, burst=5, max_wait=0, clock=clock),
    key_from_args=lambda tenant, request: tenant,
    clock=clock,
)


def call_host(path: str) -> str:
    if rs.current().tags["host"] == "db-2":
        raise ConnectionError("db-2 is down")
    return f"ok {path}"


def handle(tenant: str, request: int) -> str:
    return f"{tenant}#{request}"


def main() -> None:
    outcomes: dict[str, list[str]] = {}
    for round_ in range(6):
        for host in ("db-1", "db-2", "db-3"):
            with rs.tags(host=host):
                try:
                    per_host.call(call_host, f"/r{round_}")
                    outcome = "ok"
                except rs.CircuitOpenError:
                    outcome = "open"
                except ConnectionError:
                    outcome = "error"
            outcomes.setdefault(host, []).append(outcome)
    for host, seen in outcomes.items():
        print(f"{host}: {' '.join(seen)}")

    admitted = {"acme": 0, "globex": 0}
    for request in range(10):
        for tenant in admitted:
            if tenant == "globex" and request >= 3:
                continue  # globex sends only 3 requests
            try:
                per_tenant.call(handle, tenant, request)
                admitted[tenant] += 1
            except rs.ThrottledError:
                pass
    print(f"admitted in one second, 5 per tenant: {admitted}")

    clock.advance(61)
    with rs.tags(host="db-4"):
        per_host.call(call_host, "/new")
    print(f"after a minute idle, the hosts held: {per_host.keys()} (db-2's breaker is open)")
    print(per_host.metrics(limit=0))


if __name__ == "__main__":
    main()
