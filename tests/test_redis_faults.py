"""Redis failing under the shared policies: a partition, latency, dropped connections, a crash.

The backend talks to Redis through a `TcpProxy` (tests/redis_support.py)
that the test breaks on command. Every protected call must come back within
the backend's timeout (plus its own policy's waits, none here), follow
``on_backend_error``, and never let a redis-py error out; when Redis is back,
the policies share their state again.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import resilience as rs
from redis_support import RedisServer, TcpProxy
from resilience.redis import RedisBackend

pytestmark = pytest.mark.redis

#: The backend's bound on one Redis operation, and what a call may take in all on this
#: (shared, 2-core) machine: the bound, a connection attempt, and scheduling noise.
TIMEOUT = 0.05
LONGEST = 0.5
_prefixes = itertools.count()


@pytest.fixture
def through_proxy(redis_proxy: TcpProxy) -> Iterator[Callable[..., RedisBackend]]:
    made: list[RedisBackend] = []
    prefix = f"f{next(_prefixes)}"

    def make(action: str, **options: Any) -> RedisBackend:
        options.setdefault("retry_interval", 0.05)
        backend = RedisBackend.from_url(
            redis_proxy.url, prefix=prefix, on_backend_error=action, timeout=TIMEOUT, **options
        )
        made.append(backend)
        return backend

    yield make
    redis_proxy.restore()
    for backend in made:
        backend.close()


def policies(backend: RedisBackend) -> list[rs.Middleware]:
    return [
        rs.CircuitBreaker(name="p", consecutive_failures=100, backend=backend),
        rs.Throttle(1000, name="p", backend=backend),
        rs.Bulkhead(10, name="p", backend=backend),
    ]


def timed_calls(policy: rs.Middleware, count: int) -> tuple[list[str], float]:
    """Sync and async calls through ``policy``: what each did, and the longest one took."""
    outcomes: list[str] = []
    longest = 0.0

    def one(call: Callable[[], Any]) -> None:
        nonlocal longest
        started = time.monotonic()
        try:
            call()
            outcomes.append("ran")
        except rs.BackendUnavailableError:
            outcomes.append("refused")
        longest = max(longest, time.monotonic() - started)

    async def ok() -> None:
        return None

    for _ in range(count):
        one(lambda: policy.call(lambda: None))
        one(lambda: asyncio.run(policy.acall(ok)))
    return outcomes, longest


@pytest.mark.parametrize("fault", ["blackhole", "delay", "reset"])
@pytest.mark.parametrize(
    ("action", "expected"), [("local", "ran"), ("open", "ran"), ("closed", "refused")]
)
def test_every_call_keeps_its_bound_and_follows_on_backend_error(
    through_proxy: Callable[..., RedisBackend],
    redis_proxy: TcpProxy,
    fault: str,
    action: str,
    expected: str,
) -> None:
    backend = through_proxy(action, mode="strict")
    shared = policies(backend)
    for policy in shared:
        policy.call(lambda: None)  # connected, with state in Redis
    if fault == "blackhole":
        redis_proxy.blackhole()
    elif fault == "delay":
        redis_proxy.delay(1.0)
    else:
        redis_proxy.reset_all()
    for policy in shared:
        outcomes, longest = timed_calls(policy, 5)
        assert longest < LONGEST, (policy, longest)
        if fault == "reset":  # connections dropped, the server fine: a reconnect may serve some
            assert set(outcomes) <= {"ran", expected}
        else:
            assert set(outcomes) == {expected}, (policy, outcomes)
    budget = rs.RetryBudget(ratio=0, min_per_second=1, name="p", backend=backend)
    started = time.monotonic()
    allowed = budget.try_withdraw()
    assert time.monotonic() - started < LONGEST
    if fault != "reset":
        assert allowed is (action != "closed")


def test_the_policies_share_again_when_redis_answers(
    through_proxy: Callable[..., RedisBackend], redis_proxy: TcpProxy
) -> None:
    # retry_interval=0: no rest after a failure, so Redis is asked again as soon as it is back
    here = through_proxy("local", mode="local-first", retry_interval=0)
    there = through_proxy("local", mode="local-first", retry_interval=0)
    mine = rs.CircuitBreaker(name="again", consecutive_failures=2, backend=here)
    theirs = rs.CircuitBreaker(name="again", consecutive_failures=2, backend=there)
    assert theirs.call(lambda: 1) == 1
    redis_proxy.blackhole()
    for _ in range(2):  # decided here while Redis is away: this process's breaker opens
        with pytest.raises(ValueError, match="down"):
            mine.call(_fail)
        here.flush()
    with pytest.raises(rs.CircuitOpenError):
        mine.call(lambda: 1)
    redis_proxy.restore()
    mine.reset()  # back on the fleet's state
    for _ in range(2):
        with pytest.raises(ValueError, match="down"):
            mine.call(_fail)
    here.flush()
    there.flush()
    with pytest.raises(rs.CircuitOpenError):
        theirs.call(lambda: 1)
    assert theirs.metrics().shared


def _fail() -> None:
    raise ValueError("down")


def test_a_crash_of_redis_mid_run(redis_server: RedisServer, redis_url: str) -> None:
    """Threads call through a shared breaker and throttle while redis-server is SIGKILLed and
    started again on its port: no call fails for a reason of Redis's, none waits past the
    bound, and the restarted (empty) server holds the fleet's state again."""
    backend = RedisBackend.from_url(
        redis_url, prefix="crash", timeout=TIMEOUT, retry_interval=0.05, mode="strict"
    )
    breaker = rs.CircuitBreaker(name="crash", consecutive_failures=1000, backend=backend)
    throttle = rs.Throttle(100_000, name="crash", backend=backend)
    stop = threading.Event()
    problems: list[BaseException] = []
    longest = [0.0]
    calls = [0]

    def caller() -> None:
        for _ in range(100_000):
            if stop.is_set():
                return
            started = time.monotonic()
            try:
                throttle.call(breaker.call, lambda: None)
            except BaseException as error:  # any escape is the failure looked for
                problems.append(error)
                return
            longest[0] = max(longest[0], time.monotonic() - started)
            calls[0] += 1

    threads = [threading.Thread(target=caller) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        threading.Event().wait(0.2)
        redis_server.kill()
        threading.Event().wait(0.3)
        redis_server.start()
        threading.Event().wait(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        redis_server.ensure_running()
    assert problems == []
    assert calls[0] > 100
    assert longest[0] < LONGEST
    assert throttle.metrics().shared  # Redis again (the scripts were loaded anew)
    for _ in range(1000):
        breaker.call(lambda: None)
    assert breaker.metrics().calls == 100  # a full window, counted in the new server
    backend.close()
