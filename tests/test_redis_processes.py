"""Shared policies across real processes: 4 spawned workers, each with threads and asyncio tasks.

The workers are in redis_workers.py. Every worker is joined, or killed, at
the end of its test; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import queue
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

import redis_workers
import resilience as rs
from resilience.redis import RedisBackend

pytestmark = pytest.mark.redis

WORKERS = 4
SPAWN = multiprocessing.get_context("spawn")
_prefixes = itertools.count()


@pytest.fixture
def fleet() -> Iterator[list[Any]]:
    """The processes a test starts: joined at the end, killed if they do not end."""
    processes: list[Any] = []
    yield processes
    for process in processes:
        process.join(20)
        if process.is_alive():
            process.kill()
            process.join(5)


def settings(redis_url: str, mode: str = "strict", **more: Any) -> dict[str, Any]:
    backend = {"prefix": f"fleet{next(_prefixes)}-{os.getpid()}", "mode": mode}
    backend.update(more.pop("backend", {}))
    return {"url": redis_url, "backend": backend, **more}


def start(fleet: list[Any], target: Any, *args: Any) -> None:
    for worker in range(WORKERS):
        process = SPAWN.Process(target=target, args=(worker, *args), daemon=True)
        process.start()
        fleet.append(process)


_early: dict[int, list[tuple[int, str, Any]]] = {}


def collect(out: Any, what: str, count: int, timeout: float = 60) -> list[tuple[int, Any]]:
    """``count`` reports of kind ``what`` from the workers, bounded in time; reports of other
    kinds that come first are kept for a later call."""
    kept = _early.setdefault(id(out), [])
    found = [(worker, value) for worker, kind, value in kept if kind == what][:count]
    taken = 0
    for index, (_, kind, _) in enumerate(list(kept)):
        if kind == what and taken < len(found):
            kept.pop(index - taken)
            taken += 1
    deadline = time.monotonic() + timeout
    while len(found) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"only {len(found)} of {count} {what!r} reports in {timeout}s")
        with contextlib.suppress(queue.Empty):
            worker, kind, value = out.get(timeout=left)
            if kind == what:
                found.append((worker, value))
            else:
                kept.append((worker, kind, value))
    return found


def backend_for(config: dict[str, Any]) -> RedisBackend:
    return RedisBackend.from_url(config["url"], **config["backend"])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["strict", "local-first"])
def test_one_workers_failures_open_the_breaker_for_all(
    redis_url: str, fleet: list[Any], mode: str
) -> None:
    config = settings(redis_url, mode, rules={"consecutive_failures": 5, "open_seconds": 60})
    tripped, out = SPAWN.Event(), SPAWN.Queue()
    start(fleet, redis_workers.breaker_worker, config, tripped, out)
    collect(out, "ready", WORKERS)
    collect(out, "tripped", 1)
    seen = collect(out, "open_after", (WORKERS - 1) * 4)
    after = [value for _, value in seen]
    assert None not in after, "a worker never saw the breaker open"
    # Strict: the next call asks the server. Local-first: within a sync interval (50 ms)
    # and a round trip; 1 s leaves room for a loaded 2-core machine.
    assert max(after) < (0.5 if mode == "strict" else 1.0)
    checker = backend_for(config)
    metrics = rs.CircuitBreaker(name="shared", backend=checker).metrics()
    checker.close()
    assert metrics.state is rs.CircuitState.OPEN
    assert metrics.trips == 1


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["strict", "local-first"])
def test_half_open_admits_exactly_its_trials_in_the_whole_fleet(
    redis_url: str, fleet: list[Any], mode: str
) -> None:
    rules = {"consecutive_failures": 1, "open_seconds": 0.5, "half_open_calls": 3}
    config = settings(redis_url, mode, rules=rules)
    tripper = backend_for(config)
    breaker = rs.CircuitBreaker(name="shared", backend=tripper, **rules)
    with pytest.raises(redis_workers.Boom):
        breaker.call(redis_workers._fail)
    tripper.flush()
    assert breaker.metrics().state is rs.CircuitState.OPEN
    go, release, out = SPAWN.Event(), SPAWN.Event(), SPAWN.Queue()
    running = SPAWN.Value("i", 0)
    start(fleet, redis_workers.trial_worker, config, go, release, running, out)
    collect(out, "ready", WORKERS)
    retry_after = breaker.metrics().retry_after or 0.0
    time.sleep(retry_after + 0.05)  # the break ends by the server's clock: real time passes
    go.set()
    callers = WORKERS * (redis_workers.THREADS + redis_workers.TASKS)
    refused = collect(out, "refused", callers - 3)
    assert len(refused) == callers - 3
    assert running.value == 3  # exactly half_open_calls trials run, fleet-wide
    release.set()
    ran = collect(out, "ran", 3)
    assert len(ran) == 3
    for process in fleet:
        process.join(30)
    tripper.flush()
    assert breaker.metrics().state is rs.CircuitState.CLOSED
    tripper.close()


def _rate_run(redis_url: str, fleet: list[Any], mode: str, seconds: float, burst: int) -> int:
    rate = 200
    config = settings(
        redis_url,
        mode,
        throttle={"rate": rate, "burst": burst, "max_wait": 1.0},
        seconds=seconds,
    )
    out = SPAWN.Queue()
    start_at = time.time() + 3.0  # after every worker has started (spawn takes a while)
    start(fleet, redis_workers.rate_worker, config, start_at, out)
    collect(out, "ready", WORKERS)
    admitted = sum(value for _, value in collect(out, "admitted", WORKERS, timeout=seconds + 60))
    print(f"{mode}: {admitted} admitted in {seconds:g} s at {rate}/s (burst {burst})")
    return admitted


@pytest.mark.timeout(120)
def test_a_strict_throttle_keeps_the_fleet_within_two_percent_of_its_rate(
    redis_url: str, fleet: list[Any]
) -> None:
    seconds, rate, burst = 10.0, 200, 1
    admitted = _rate_run(redis_url, fleet, "strict", seconds, burst)
    expected = rate * seconds
    assert abs(admitted - expected) <= 0.02 * expected + burst, admitted


@pytest.mark.timeout(120)
def test_a_local_first_throttle_keeps_the_fleet_within_its_stated_bound(
    redis_url: str, fleet: list[Any]
) -> None:
    """Over t seconds at most burst + rate * (t + lease): a token leased may be spent up to a
    lease (2 x sync_interval = 0.1 s) after it left the bucket (_redis_throttle's docs)."""
    seconds, rate, burst = 5.0, 200, 20
    admitted = _rate_run(redis_url, fleet, "local-first", seconds, burst)
    assert admitted <= burst + rate * (seconds + 0.1), admitted
    assert admitted >= 0.95 * rate * seconds, admitted  # and the rate is not wasted


@pytest.mark.timeout(120)
def test_a_shared_bulkhead_never_has_more_holders_than_its_cap(
    redis_url: str, fleet: list[Any]
) -> None:
    cap = 3
    config = settings(
        redis_url, bulkhead={"max_concurrent": cap, "max_queue": 2, "max_wait": 0.05}, calls=40
    )
    holders, most = SPAWN.Value("i", 0), SPAWN.Value("i", 0)
    go, out = SPAWN.Event(), SPAWN.Queue()
    start(fleet, redis_workers.cap_worker, config, holders, most, go, out)
    collect(out, "ready", WORKERS)
    go.set()
    done = collect(out, "done", WORKERS, timeout=90)
    admitted = sum(value[0] for _, value in done)
    refused = sum(value[1] for _, value in done)
    calls = WORKERS * (redis_workers.THREADS + redis_workers.TASKS) * 40
    assert admitted + refused == calls
    assert most.value == cap  # reached, never passed
    assert holders.value == 0
    assert admitted >= cap


@pytest.mark.timeout(60)
def test_a_killed_holders_slots_come_back_within_lease_seconds(
    redis_url: str, fleet: list[Any]
) -> None:
    lease = 1.0
    config = settings(redis_url, backend={"lease_seconds": lease}, bulkhead={"max_concurrent": 2})
    holding = SPAWN.Event()
    process = SPAWN.Process(
        target=redis_workers.holding_worker, args=(config, 2, holding), daemon=True
    )
    process.start()
    fleet.append(process)
    assert holding.wait(30)
    backend = backend_for(config)
    bulkhead = rs.Bulkhead(name="shared", backend=backend, max_concurrent=2)
    assert bulkhead.metrics().in_flight == 2
    with pytest.raises(rs.BulkheadFullError):
        bulkhead.call(lambda: None)
    os.kill(process.pid, signal.SIGKILL)
    process.join(10)
    killed_at = time.monotonic()
    for _ in range(1000):  # 10 ms looks, bounded by the lease and a margin
        if bulkhead.metrics().in_flight == 0 or time.monotonic() - killed_at > lease + 2:
            break
        time.sleep(0.01)
    assert bulkhead.metrics().in_flight == 0
    assert time.monotonic() - killed_at <= lease + 0.5
    assert bulkhead.call(lambda: 6) == 6
    backend.close()
