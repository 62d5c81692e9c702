"""Policies shared through Redis: per-call overhead and round trips, beside the peers.

    python bench/shared_state.py            # the full run (about a minute)
    python bench/shared_state.py --quick    # a smoke run (a few seconds)

Starts its own redis-server (persistence off) on a free port of 127.0.0.1,
then times sync calls of a trivial function through each policy, in one
process, one call after the other:

* without a backend (the memory policy), and with a `RedisBackend` in each
  mode (``strict``, ``local-first``);
* the peers doing the same job against the same server: `limits` with its
  Redis storage (a moving-window `hit()` per call) beside our Throttle,
  pybreaker with its `CircuitRedisStorage` beside our CircuitBreaker.

Overheads are the median of several rounds, in microseconds per call, the
bare call subtracted; round trips per call count every request the
process's redis-py clients sent (a pipeline is one) over the calls made,
the background sync's included. The figures depend on
the machine and the load on it: compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import redis

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))

import resilience as rs
from redis_support import RedisServer
from resilience.redis import RedisBackend


def work() -> int:
    return 1


def per_call(call: Callable[[], Any], calls: int, rounds: int) -> float:
    """Median seconds per call over ``rounds`` rounds of ``calls`` calls."""
    for _ in range(min(calls, 200)):
        call()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            call()
        times.append((time.perf_counter() - started) / calls)
    return statistics.median(times)


class RoundTrips:
    """Requests sent by every sync redis-py client of this process: a command, a script, or
    a pipeline (one round trip however many commands it carries)."""

    count = 0

    @classmethod
    def install(cls) -> None:
        command = redis.Redis.execute_command
        execute = redis.client.Pipeline.execute

        def counted_command(self: redis.Redis, *args: Any, **options: Any) -> Any:
            if not isinstance(self, redis.client.Pipeline):
                cls.count += 1
            return command(self, *args, **options)

        def counted_execute(self: redis.client.Pipeline, *args: Any, **options: Any) -> Any:
            cls.count += 1
            return execute(self, *args, **options)

        redis.Redis.execute_command = counted_command  # type: ignore[method-assign]
        redis.client.Pipeline.execute = counted_execute  # type: ignore[method-assign]


class Bench:
    """The rows: each in-process setup timed on its own, the Redis ones in interleaved rounds
    (a round of each in turn), so that load on the machine falls on all of them alike."""

    def __init__(self, url: str, quick: bool) -> None:
        self.url = url
        self.quick = quick
        self.bare = per_call(work, 20_000, 5)
        self.rounds = 3 if quick else 7
        self.rows: list[tuple[str, str, float, float]] = []
        self.remote: list[tuple[str, str, Callable[[], Any]]] = []
        self.serial = 0
        self.backends: list[RedisBackend] = []

    def local(self, policy: str, setup: str, call: Callable[[], Any]) -> None:
        calls = 5_000 if self.quick else 50_000
        before = RoundTrips.count
        seconds = per_call(call, calls, self.rounds)
        trips = (RoundTrips.count - before) / (min(calls, 200) + calls * self.rounds)
        self.rows.append((policy, setup, max(0.0, seconds - self.bare) * 1e6, trips))

    def measure_remote(self) -> None:
        calls = 300 if self.quick else 1500
        times: dict[int, list[float]] = {index: [] for index in range(len(self.remote))}
        trips: dict[int, int] = dict.fromkeys(times, 0)
        for index, (_, _, call) in enumerate(self.remote):
            for _ in range(200):
                call()
        for _ in range(self.rounds):
            for index, (_, _, call) in enumerate(self.remote):
                before = RoundTrips.count
                started = time.perf_counter()
                for _ in range(calls):
                    call()
                times[index].append((time.perf_counter() - started) / calls)
                trips[index] += RoundTrips.count - before
        for index, (policy, setup, _) in enumerate(self.remote):
            overhead = max(0.0, statistics.median(times[index]) - self.bare) * 1e6
            self.rows.append((policy, setup, overhead, trips[index] / (calls * self.rounds)))

    def backend(self, mode: str) -> RedisBackend:
        self.serial += 1
        # A bound loose enough that a loaded machine does not turn a run into failures.
        backend = RedisBackend.from_url(
            self.url, prefix=f"bench{self.serial}", mode=mode, timeout=0.5
        )
        self.backends.append(backend)
        return backend

    def ours(self, policy: str, make: Callable[[RedisBackend | None], rs.Middleware]) -> None:
        self.local(policy, "memory", make(None)(work))
        if policy != "Bulkhead":  # a Bulkhead is strict in both modes
            self.local(policy, "redis local-first", make(self.backend("local-first"))(work))
        self.remote.append((policy, "redis strict", make(self.backend("strict"))(work)))


def peers(bench: Bench) -> None:
    import pybreaker
    from limits import RateLimitItemPerSecond
    from limits.storage import storage_from_string
    from limits.strategies import MovingWindowRateLimiter

    storage = storage_from_string(bench.url)
    limiter = MovingWindowRateLimiter(storage)
    item = RateLimitItemPerSecond(10**7)

    def limited() -> int:
        if not limiter.hit(item, "bench"):
            raise RuntimeError("refused")
        return work()

    bench.remote.append(("Throttle", "peer: limits (Redis, moving window)", limited))
    client = redis.Redis.from_url(bench.url)
    breaker = pybreaker.CircuitBreaker(
        fail_max=5,
        reset_timeout=30,
        state_storage=pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, client),
    )
    bench.remote.append(
        ("CircuitBreaker", "peer: pybreaker (CircuitRedisStorage)", lambda: breaker.call(work))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    options = parser.parse_args()
    RoundTrips.install()
    with RedisServer() as server:
        bench = Bench(server.url, options.quick)
        bench.ours(
            "CircuitBreaker",
            lambda b: (
                rs.CircuitBreaker(name="cb", backend=b) if b else rs.CircuitBreaker(name="cb")
            ),
        )
        bench.ours(
            "Throttle",
            lambda b: rs.Throttle(10**7, name="t", backend=b) if b else rs.Throttle(10**7),
        )
        bench.ours(
            "Bulkhead",
            lambda b: rs.Bulkhead(100, name="b", backend=b) if b else rs.Bulkhead(100),
        )
        peers(bench)
        bench.measure_remote()
        for backend in bench.backends:
            backend.close()
        bench.rows.sort(key=lambda row: ("memory local-first strict peer".find(row[1][:5]), 0))
        memory: dict[str, float] = {}
        print(f"bare call: {bench.bare * 1e9:.0f} ns")
        print("| policy | setup | overhead (us/call) | x memory | round trips/call |")
        print("|---|---|---:|---:|---:|")
        for policy, setup, overhead, trips in bench.rows:
            if setup == "memory":
                memory[policy] = overhead
            ratio = overhead / memory[policy] if memory.get(policy) else float("nan")
            print(f"| {policy} | {setup} | {overhead:.2f} | {ratio:.1f} | {trips:.3f} |")
        evals = [row for row in bench.rows if row[1] == "redis strict"]
        for policy, _, overhead, _ in evals:
            peer = [row for row in bench.rows if row[0] == policy and row[1].startswith("peer")]
            for _, name, theirs, _ in peer:
                print(f"{policy} strict vs {name}: {overhead / theirs:.2f}x the peer's cost")


if __name__ == "__main__":
    main()
