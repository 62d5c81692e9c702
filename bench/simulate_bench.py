"""The simulator: its speed, and its figures against closed forms.

    python bench/simulate_bench.py            # 1,000,000 requests (about a minute)
    python bench/simulate_bench.py --quick    # a smoke run: 20,000 requests

**Speed.** One run of 1,000,000 requests arriving at 1,000 per second (so
1,000 virtual seconds) through a five-layer pipeline, Fallback > Retry (with
a budget) > CircuitBreaker > Bulkhead > Timeout, to a service with
log-normal latency (median 10 ms, p99 80 ms), 10 % errors, a capacity of 20
and a 100-second outage. Target: at most 60 s of wall time on this machine.

**Closed forms** (the same checks as tests/test_simulate.py, with more
requests): the share of requests that succeed with ``k`` attempts against an
error rate ``p`` is ``1 - p**k``; the mean time in an M/M/1 system (Poisson
arrivals at ``l``, exponential service at rate ``m``, one server) is
``1 / (m - l)``. Target: within 2 %.
"""

from __future__ import annotations

import argparse
import sys
import time

import resilience as rs
from resilience import backoff
from resilience import simulate as sim


def five_layers(clock: rs.Clock) -> rs.Pipeline:
    return (
        rs.Pipeline.builder("bench")
        .add(rs.Fallback(handler=lambda _: "stale", name="fallback"))
        .add(
            rs.Retry(
                attempts=3,
                backoff=backoff.exponential(0.01, maximum=0.1, jitter="full"),
                budget=rs.RetryBudget(ratio=0.5, clock=clock),
                clock=clock,
            )
        )
        .add(
            rs.CircuitBreaker(
                failure_ratio=0.5,
                minimum_calls=20,
                window_seconds=1.0,
                open_seconds=1.0,
                clock=clock,
            )
        )
        .add(rs.Bulkhead(50, max_queue=50, max_wait=0.1, clock=clock))
        .add(rs.Timeout(0.1, clock=clock))
        .build()
    )


def speed(requests: int) -> float:
    seconds = requests / 1000
    service = sim.Service(
        latency=sim.lognormal(0.01, 0.08),
        error_rate=0.1,
        capacity=20,
        outages=[sim.Outage(0.4 * seconds, 0.1 * seconds)],
    )
    began = time.perf_counter()
    report = sim.run(five_layers, service, rate=1000, requests=requests, seed=1)
    took = time.perf_counter() - began
    print(sim.format_reports([report]))
    print(
        f"\n{requests:,} requests through five layers: {took:.1f} s "
        f"({took / requests * 1e6:.1f} µs each)"
    )
    return took


def closed_forms(requests: int) -> float:
    worst = 0.0
    for attempts in (1, 2, 3, 5):
        report = sim.run(
            lambda clock, k=attempts: rs.Retry(attempts=k, clock=clock),
            sim.Service(latency=0.01, error_rate=0.4),
            rate=100,
            requests=requests,
            seed=attempts,
        )
        expected = 1 - 0.4**attempts
        error = report.fresh_share / expected - 1
        worst = max(worst, abs(error))
        print(
            f"retry, {attempts} attempts at 40 % errors: "
            f"{report.fresh_share:.4f} vs {expected:.4f} ({error:+.2%})"
        )
    for load in (0.3, 0.5, 0.7, 0.8):
        service = sim.Service(latency=sim.exponential(0.01), capacity=1)
        # The sample mean's spread grows steeply with the load: more requests at high load.
        count = int(requests * max(1.0, (0.3 / (1 - load)) ** 2))
        report = sim.run(None, service, rate=100 * load, requests=count, seed=11)
        expected = 1 / (100 - 100 * load)
        error = report.mean_latency() / expected - 1
        worst = max(worst, abs(error))
        print(
            f"M/M/1 at load {load}: mean time {report.mean_latency() * 1000:.3f} ms "
            f"vs {expected * 1000:.3f} ms ({error:+.2%})"
        )
    print(f"worst deviation from a closed form: {worst:.2%} (target 2 %)")
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    took = speed(20_000 if args.quick else 1_000_000)
    worst = closed_forms(20_000 if args.quick else 500_000)
    if not args.quick and (took > 60 or worst > 0.02):
        print("a target is missed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
