"""The Redis-backed policies against a real redis-server: one behaviour, every backend.

Two backends with the same prefix stand for two processes (each has its own
connection, its own local view and its own background sync); the tests that
need real processes are in test_redis_fleet.py. In local-first mode a test
calls ``backend.flush()`` where a process would wait for its next sync, so
both modes show the same behaviour here.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from redis.crc import key_slot

import resilience as rs
from redis_support import free_port
from resilience.events import BackendErrorEvent
from resilience.redis import RedisBackend
from resilience.stores import MemoryCircuitStore
from resilience.testing import FakeClock

pytestmark = pytest.mark.redis

MODES = ["strict", "local-first"]
_prefixes = itertools.count()


class Boom(Exception):
    pass


def boom() -> None:
    raise Boom


Backends = Callable[..., RedisBackend]


@pytest.fixture
def backends(redis_url: str) -> Iterator[Backends]:
    """Make backends (one per 'process') sharing a prefix unique to the test; closed after."""
    made: list[RedisBackend] = []
    prefix = f"t{next(_prefixes)}"

    def make(mode: str = "strict", url: str = redis_url, **options: Any) -> RedisBackend:
        options.setdefault("prefix", prefix)
        options.setdefault("timeout", 1.0)  # a loaded machine must not time a request out
        backend = RedisBackend.from_url(url, mode=mode, **options)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()
        backend.client.close()


def sync_of(backend: RedisBackend) -> None:
    """What the background sync does at its next interval, now."""
    backend.flush()


def timed_by(clock: FakeClock, backends: Backends, mode: str) -> RedisBackend:
    """A backend on ``clock`` that the test alone syncs (``sync_of``).

    The background sync is never woken and its interval never ends within a test: a sync
    of its own, sent before the test moves the clock and answered after, would date the
    answer's break from the moved clock.
    """
    backend = backends(mode, clock=clock, sync_interval=10.0)
    backend.wake = lambda urgent=True: None  # type: ignore[method-assign, misc]
    return backend


# -- construction -----------------------------------------------------------------------------


def test_a_policy_with_a_backend_needs_a_name(backends: Backends) -> None:
    backend = backends()
    for make in (
        lambda: rs.CircuitBreaker(backend=backend),
        lambda: rs.Throttle(10, backend=backend),
        lambda: rs.Bulkhead(2, backend=backend),
        lambda: rs.RetryBudget(backend=backend),
    ):
        with pytest.raises(ValueError, match="needs a name"):
            make()


def test_a_backend_must_be_a_backend() -> None:
    with pytest.raises(TypeError, match="backend must be"):
        rs.Throttle(10, name="x", backend="redis://127.0.0.1:6379")  # type: ignore[arg-type]


def test_one_name_per_kind_and_backend_in_a_process(backends: Backends) -> None:
    backend = backends()
    rs.Throttle(10, name="same", backend=backend)
    with pytest.raises(ValueError, match="already holds a throttle named 'same'"):
        rs.Throttle(10, name="same", backend=backend)
    rs.Bulkhead(1, name="same", backend=backend)  # another kind may share the name


def test_a_breaker_takes_a_store_or_a_backend_not_both(backends: Backends) -> None:
    with pytest.raises(ValueError, match="a store or a backend"):
        rs.CircuitBreaker(name="b", store=MemoryCircuitStore(), backend=backends())


def test_a_shared_bulkhead_is_not_thread_isolated(backends: Backends) -> None:
    with pytest.raises(ValueError, match="isolation"):
        rs.Bulkhead(2, name="b", isolation="thread", backend=backends())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mode": "eventual"}, "mode must be"),
        ({"on_backend_error": "ignore"}, "on_backend_error must be"),
        ({"prefix": ""}, "prefix must be"),
        ({"prefix": "a{b}"}, "prefix must be"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": 10}, "timeout must be at most 5"),
        ({"sync_interval": 60}, "sync_interval must be between"),
        ({"lease_seconds": 0.01}, "lease_seconds must be at least"),
        ({"key_ttl": 0}, "key_ttl"),
    ],
)
def test_bad_backend_settings_are_refused(
    redis_url: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        RedisBackend.from_url(redis_url, **options)


def test_a_client_that_could_wait_or_retry_unbounded_is_refused(redis_url: str) -> None:
    """redis-py's defaults: no socket timeout and (since 6) retries; either breaks the bound."""
    with pytest.raises(ValueError, match="must time out within"):
        RedisBackend(client=redis.Redis.from_url(redis_url))
    with pytest.raises(TypeError, match=r"client must be a redis\.Redis"):
        RedisBackend(client=object())


def test_the_settings_show_the_backend(backends: Backends) -> None:
    backend = backends()
    breaker = rs.CircuitBreaker(name="shown", backend=backend)
    assert breaker.settings()["backend"] == repr(backend)
    assert breaker.describe()["backend"].startswith("RedisBackend(127.0.0.1:")
    assert "RedisBackend(127.0.0.1:" in repr(backend)
    assert "mode='strict'" in repr(backend)


# -- CircuitBreaker ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_failures_in_one_process_open_the_breaker_for_another(
    backends: Backends, mode: str
) -> None:
    here, there = backends(mode), backends(mode)
    mine = rs.CircuitBreaker(name="payments", consecutive_failures=3, backend=here)
    theirs = rs.CircuitBreaker(name="payments", consecutive_failures=3, backend=there)
    assert theirs.call(lambda: 1) == 1
    for _ in range(3):
        with pytest.raises(Boom):
            mine.call(boom)
    sync_of(here)
    sync_of(there)
    with pytest.raises(rs.CircuitOpenError) as refused:
        theirs.call(lambda: 1)
    assert refused.value.retry_after is not None
    assert 0 < refused.value.retry_after <= 30
    assert theirs.state is rs.CircuitState.OPEN
    metrics = theirs.metrics()
    assert metrics.shared
    assert metrics.state is rs.CircuitState.OPEN
    assert metrics.consecutive_failures == 3
    assert metrics.trips == 1


def test_reading_a_shared_breakers_metrics_teaches_the_process_its_state(
    backends: Backends,
) -> None:
    """Local-first: a process that reads the fleet's metrics refuses calls here from then on,
    without waiting for its next sync."""
    clock = FakeClock(auto_advance=False)
    here, there = timed_by(clock, backends, "local-first"), timed_by(clock, backends, "local-first")
    mine = rs.CircuitBreaker(name="read", consecutive_failures=1, backend=here, clock=clock)
    theirs = rs.CircuitBreaker(name="read", consecutive_failures=1, backend=there, clock=clock)
    with pytest.raises(Boom):
        mine.call(boom)
    sync_of(here)
    assert theirs.metrics().state is rs.CircuitState.OPEN
    before = there.round_trips
    with pytest.raises(rs.CircuitOpenError):
        theirs.call(lambda: 1)
    assert there.round_trips == before  # refused here, from what the read taught it


def test_a_breaker_alone_on_a_backend_starts_its_background_sync(backends: Backends) -> None:
    """Local-first: a failure reaches the fleet through the background sync, with no flush by
    hand, also when the breaker is the backend's only policy."""
    here, there = backends("local-first", sync_interval=0.01), backends("strict")
    mine = rs.CircuitBreaker(name="alone", consecutive_failures=1, backend=here)
    theirs = rs.CircuitBreaker(name="alone", consecutive_failures=1, backend=there)
    with pytest.raises(Boom):
        mine.call(boom)
    for _ in range(300):  # 3 s at most, in 10 ms looks
        if theirs.metrics().state is rs.CircuitState.OPEN:
            break
        threading.Event().wait(0.01)
    assert theirs.metrics().state is rs.CircuitState.OPEN


@pytest.mark.parametrize("mode", MODES)
def test_the_window_counts_every_process_exactly(backends: Backends, mode: str) -> None:
    here, there = backends(mode), backends(mode)
    rules: dict[str, Any] = {"failure_ratio": 0.5, "minimum_calls": 10, "window_calls": 10}
    mine = rs.CircuitBreaker(name="ratio", backend=here, **rules)
    theirs = rs.CircuitBreaker(name="ratio", backend=there, **rules)
    for _ in range(5):
        mine.call(lambda: None)
    for _ in range(4):
        with pytest.raises(Boom):
            theirs.call(boom)
    sync_of(here)
    sync_of(there)
    metrics = mine.metrics()
    assert (metrics.calls, metrics.failures, metrics.state) == (9, 4, rs.CircuitState.CLOSED)
    with pytest.raises(Boom):
        mine.call(boom)
    sync_of(here)
    metrics = theirs.metrics()
    assert (metrics.calls, metrics.failures, metrics.state) == (10, 5, rs.CircuitState.OPEN)


@pytest.mark.parametrize("mode", MODES)
def test_half_open_lets_exactly_its_trials_through_the_fleet(backends: Backends, mode: str) -> None:
    clock = FakeClock(auto_advance=False)  # the scripts' time: no load can stretch a trial
    here, there = timed_by(clock, backends, mode), timed_by(clock, backends, mode)
    rules: dict[str, Any] = {"consecutive_failures": 1, "open_seconds": 0.2, "half_open_calls": 2}
    breakers = [
        rs.CircuitBreaker(name="trials", backend=here, clock=clock, **rules),
        rs.CircuitBreaker(name="trials", backend=there, clock=clock, **rules),
    ]
    with pytest.raises(Boom):
        breakers[0].call(boom)
    sync_of(here)
    retry_after = breakers[0].metrics().retry_after
    assert retry_after is not None
    clock.advance(retry_after + 0.02)
    release = threading.Event()
    entered = threading.Semaphore(0)
    outcomes: list[str] = []

    def trial(breaker: rs.CircuitBreaker) -> None:
        def held() -> None:
            entered.release()
            assert release.wait(10)

        try:
            breaker.call(held)
            outcomes.append("ran")
        except rs.CircuitOpenError:
            outcomes.append("refused")

    threads = [threading.Thread(target=trial, args=(breakers[i % 2],)) for i in range(6)]
    for thread in threads:
        thread.start()
    for _ in range(2):
        assert entered.acquire(timeout=10)
    for _ in range(4000):  # the four refused threads end on their own
        if len(outcomes) == 4:
            break
        release.wait(0.005)
    assert outcomes == ["refused"] * 4
    release.set()
    for thread in threads:
        thread.join(10)
    assert sorted(outcomes) == ["ran", "ran", "refused", "refused", "refused", "refused"]
    sync_of(here)
    sync_of(there)
    assert breakers[1].metrics().state is rs.CircuitState.CLOSED


@pytest.mark.parametrize("mode", MODES)
def test_the_ratio_rule_decides_once_the_trials_left_cannot_change_it(
    backends: Backends, mode: str
) -> None:
    """Four trials, failure_ratio=0.5: three successes close the breaker for the fleet while
    the fourth trial still runs (at most 1 failure of 4 is left), as the memory store does."""
    clock = FakeClock(auto_advance=False)
    here, there = timed_by(clock, backends, mode), timed_by(clock, backends, mode)
    rules: dict[str, Any] = {
        "failure_ratio": 0.5,
        "minimum_calls": 2,
        "window_calls": 2,
        "open_seconds": 0.2,
        "half_open_calls": 4,
        "half_open_rule": "ratio",
    }
    first = rs.CircuitBreaker(name="ratio", backend=here, clock=clock, **rules)
    second = rs.CircuitBreaker(name="ratio", backend=there, clock=clock, **rules)
    for _ in range(2):
        with pytest.raises(Boom):
            first.call(boom)
    sync_of(here)
    retry_after = first.metrics().retry_after
    assert retry_after is not None
    clock.advance(retry_after + 0.02)
    release, entered = threading.Event(), threading.Event()

    def held() -> str:
        entered.set()
        assert release.wait(10)
        return "late"

    outcome: list[str] = []
    thread = threading.Thread(target=lambda: outcome.append(first.call(held)))
    thread.start()
    try:
        assert entered.wait(10)
        for count in range(1, 4):
            assert second.call(lambda: "ok") == "ok"
            sync_of(there)
            state = second.metrics().state
            expected = rs.CircuitState.CLOSED if count == 3 else rs.CircuitState.HALF_OPEN
            assert state is expected, count
    finally:
        release.set()
        thread.join(10)
    assert outcome == ["late"]
    sync_of(here)
    assert first.metrics().state is rs.CircuitState.CLOSED


def test_control_flow_is_not_counted_by_a_shared_breaker(backends: Backends) -> None:
    breaker = rs.CircuitBreaker(name="flow", consecutive_failures=1, backend=backends())

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        breaker.call(interrupted)

    async def cancelled() -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(breaker.acall(cancelled))
    metrics = breaker.metrics()
    assert (metrics.failures, metrics.state) == (0, rs.CircuitState.CLOSED)
    assert breaker.call(lambda: 2) == 2


@pytest.mark.parametrize("mode", MODES)
def test_async_calls_share_the_breaker_too(backends: Backends, mode: str) -> None:
    here, there = backends(mode), backends(mode)
    mine = rs.CircuitBreaker(name="async", consecutive_failures=2, backend=here)
    theirs = rs.CircuitBreaker(name="async", consecutive_failures=2, backend=there)

    async def fail() -> None:
        raise Boom

    async def ok() -> int:
        return 3

    async def main() -> None:
        assert await theirs.acall(ok) == 3
        for _ in range(2):
            with pytest.raises(Boom):
                await mine.acall(fail)
        sync_of(here)
        sync_of(there)
        with pytest.raises(rs.CircuitOpenError):
            await theirs.acall(ok)

    asyncio.run(main())


def test_local_first_admits_without_a_round_trip(backends: Backends) -> None:
    backend = backends("local-first", sync_interval=10)  # no background sync in between
    breaker = rs.CircuitBreaker(name="quiet", backend=backend)
    breaker.call(lambda: None)  # learns the fleet's state
    sync_of(backend)
    before = backend.round_trips
    for _ in range(1000):
        breaker.call(lambda: None)
    assert backend.round_trips - before == 0
    sync_of(backend)
    assert backend.round_trips - before == 1  # one sync carries the 1000 successes
    assert breaker.metrics().calls == 100  # the fleet's window is full: 100 calls


def test_strict_is_one_round_trip_per_call(backends: Backends) -> None:
    backend = backends("strict")
    breaker = rs.CircuitBreaker(name="strict", backend=backend)
    breaker.call(lambda: None)
    before = backend.round_trips
    for _ in range(50):
        breaker.call(lambda: None)
    assert backend.round_trips - before == 50


# -- Throttle ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_one_rate_for_every_process(backends: Backends, mode: str) -> None:
    here, there = backends(mode), backends(mode)
    throttles = [
        rs.Throttle(5, per=60, name="quota", backend=here),
        rs.Throttle(5, per=60, name="quota", backend=there),
    ]
    admitted = sum(throttles[i % 2].try_acquire() for i in range(40))
    assert admitted == 5  # 5 a minute: the bucket refills a token every 12 s
    with pytest.raises(rs.ThrottledError) as refused:
        throttles[1].call(lambda: None)
    assert refused.value.retry_after is not None
    assert 0 < refused.value.retry_after <= 12
    assert throttles[0].metrics().shared
    assert throttles[0].metrics().available < 1


def test_a_waiter_reserves_its_tokens_and_a_cancelled_one_gives_them_back(
    backends: Backends,
) -> None:
    backend = backends("strict")
    # The server times the reservation; the waiter sleeps on this clock, which never moves.
    clock = FakeClock(auto_advance=False)
    throttle = rs.Throttle(1, per=10, name="slow", max_wait=30, backend=backend, clock=clock)
    throttle.acquire()

    async def main() -> None:
        waiter = asyncio.create_task(throttle.aacquire())
        for _ in range(5000):  # until Redis has answered and the waiter sleeps (bounded)
            if clock.sleeps:
                break
            await asyncio.sleep(0.001)
        assert clock.sleeps
        assert clock.sleeps[0] > 9
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter

    asyncio.run(main())
    sync_of(backend)  # the tokens go back with the sync
    with pytest.raises(rs.ThrottledError) as refused:
        throttle.acquire(max_wait=0)
    # Given back: the next token is 10 s away, not 20 s (behind the cancelled waiter).
    assert refused.value.retry_after is not None
    assert refused.value.retry_after <= 10


@pytest.mark.parametrize("mode", MODES)
def test_a_throttle_with_a_cost_function_shares_too(backends: Backends, mode: str) -> None:
    throttle = rs.Throttle(10, per=60, name="bytes", cost=len, backend=backends(mode))
    throttle.call(lambda data: None, b"12345678")
    with pytest.raises(rs.ThrottledError):
        throttle.call(lambda data: None, b"123")


def test_local_first_leases_tokens_in_batches(backends: Backends) -> None:
    backend = backends("local-first")
    throttle = rs.Throttle(10_000, name="fast", backend=backend)
    for _ in range(2000):
        throttle.call(lambda: None)
    assert backend.round_trips < 200  # the lease doubles while it is used up


# -- Bulkhead ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_one_cap_for_every_process(backends: Backends, mode: str) -> None:
    here, there = backends(mode), backends(mode)
    mine = rs.Bulkhead(2, name="db", backend=here)
    theirs = rs.Bulkhead(2, name="db", backend=there)
    with mine, theirs:
        with pytest.raises(rs.BulkheadFullError, match="all 2 slots are taken"):
            mine.call(lambda: None)
        assert theirs.metrics().in_flight == 2
        assert theirs.metrics().shared
    sync_of(here)
    sync_of(there)
    assert mine.metrics().in_flight == 0
    assert mine.call(lambda: 4) == 4


def test_a_slot_comes_back_after_an_error_and_a_cancellation(backends: Backends) -> None:
    backend = backends()
    bulkhead = rs.Bulkhead(1, name="back", backend=backend)
    with pytest.raises(Boom):
        bulkhead.call(boom)

    async def main() -> None:
        started = asyncio.Event()

        async def hold() -> None:
            started.set()
            await asyncio.Event().wait()

        task = asyncio.create_task(bulkhead.acall(hold))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    sync_of(backend)
    metrics = bulkhead.metrics()
    assert (metrics.in_flight, bulkhead.in_flight) == (0, 0)


def test_a_queued_call_gets_the_fleets_slot_when_it_comes_free(backends: Backends) -> None:
    here, there = backends(), backends()
    mine = rs.Bulkhead(1, name="queue", backend=here)
    theirs = rs.Bulkhead(1, name="queue", max_queue=1, max_wait=10, backend=there)
    admitted = threading.Event()
    mine.__enter__()
    thread = threading.Thread(target=lambda: theirs.call(admitted.set))
    thread.start()
    assert not admitted.wait(0.05)
    mine.__exit__(None, None, None)
    assert admitted.wait(10)
    thread.join(10)
    assert not thread.is_alive()


def test_a_lease_not_renewed_ends(backends: Backends) -> None:
    """A holder that stops renewing (its process died) loses its slot after lease_seconds."""
    here, there = backends(lease_seconds=0.3), backends(lease_seconds=0.3)
    lost = rs.Bulkhead(1, name="lease", backend=here)
    theirs = rs.Bulkhead(1, name="lease", backend=there)
    here.close()  # no more syncs: nothing renews its lease
    lost.__enter__()
    with pytest.raises(rs.BulkheadFullError):
        theirs.call(lambda: None)
    for _ in range(200):  # 0.3 s of lease, in 10 ms looks
        if theirs.metrics().in_flight == 0:
            break
        threading.Event().wait(0.01)
    assert theirs.call(lambda: 5) == 5


def test_a_call_longer_than_its_lease_keeps_its_slot_while_the_sync_renews_it(
    backends: Backends,
) -> None:
    clock = FakeClock(auto_advance=False)
    here = backends(lease_seconds=1, clock=clock, sync_interval=10)
    there = backends(lease_seconds=1, clock=clock)
    mine = rs.Bulkhead(1, name="long", backend=here, clock=clock)
    theirs = rs.Bulkhead(1, name="long", backend=there, clock=clock)
    with mine:
        for _ in range(3):  # 1.5 s in all, a renewal every 0.5 s
            clock.advance(0.5)
            sync_of(here)
        with pytest.raises(rs.BulkheadFullError):
            theirs.call(lambda: None)
    sync_of(here)
    assert theirs.call(lambda: 5) == 5


# -- RetryBudget ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_one_budget_for_every_process(backends: Backends, mode: str) -> None:
    here, there = backends(mode), backends(mode)
    mine = rs.RetryBudget(ratio=0.5, min_per_second=0, name="budget", backend=here)
    theirs = rs.RetryBudget(ratio=0.5, min_per_second=0, name="budget", backend=there)
    for _ in range(10):
        mine.deposit()
    sync_of(here)
    assert [theirs.try_withdraw() for _ in range(6)] == [True] * 5 + [False]
    assert not mine.try_withdraw()
    metrics = mine.metrics()
    assert (metrics.deposits, metrics.withdrawals, metrics.balance) == (10, 5, 0)
    assert metrics.shared
    assert mine.balance == 0


def test_a_retry_spends_the_shared_budget(backends: Backends) -> None:
    budget = rs.RetryBudget(ratio=0.0, min_per_second=0.1, name="retries", backend=backends())
    retry = rs.Retry(5, backoff=0, budget=budget)
    attempts = 0

    def failing() -> None:
        nonlocal attempts
        attempts += 1
        raise Boom

    with pytest.raises(Boom):
        retry.call(failing)
    assert attempts == 2  # 0.1 a second over 10 s: one retry in the whole fleet


def test_every_process_reads_the_fleet_balance_of_the_deposits(backends: Backends) -> None:
    here, there = backends(), backends()
    mine = rs.RetryBudget(ratio=0.5, min_per_second=0, name="budget", backend=here)
    theirs = rs.RetryBudget(ratio=0.5, min_per_second=0, name="budget", backend=there)
    for _ in range(8):
        mine.deposit()
    sync_of(here)
    assert theirs.balance == 4
    metrics = theirs.metrics()
    assert (metrics.balance, metrics.deposits, metrics.withdrawals) == (4, 8, 0)


def test_a_shared_budget_forgets_a_deposit_when_the_process_does(
    backends: Backends, redis_url: str
) -> None:
    """The fleet's window is cut in the process's ten slices: a deposit made late in the
    first slice of a 10 s window is gone from both once that slice is 10 s old, and its
    slice is gone from Redis."""
    clock = FakeClock(auto_advance=False)
    backend = backends(clock=clock)
    shared = rs.RetryBudget(ratio=1, min_per_second=0, name="budget", backend=backend)
    local = rs.RetryBudget(ratio=1, min_per_second=0, clock=clock)
    clock.advance(1000.95)  # late in a slice (1000 to 1001)
    shared.deposit()
    local.deposit()
    sync_of(backend)  # the server counts a deposit when it gets it
    clock.advance(9.0)
    assert (shared.balance, local.balance) == (1, 1)
    clock.advance(0.6)  # 1010.55: the deposit's slice is out of the window
    assert (shared.balance, local.balance) == (0, 0)
    client = redis.Redis.from_url(redis_url)
    assert client.hkeys(backend.key("retry_budget", "budget", "window")) == []
    client.close()


def test_the_reserve_of_a_shared_budget_is_min_per_second_over_its_ttl(
    backends: Backends,
) -> None:
    budget = rs.RetryBudget(ratio=0, min_per_second=1, ttl=20, name="budget", backend=backends())
    assert budget.balance == 20


def test_a_shared_budget_keeps_its_key_alive_while_it_is_used(
    backends: Backends, redis_url: str
) -> None:
    """Reading a budget nobody used writes nothing; a withdrawal from the reserve alone makes
    the key with a TTL; any later request renews it."""
    backend = backends(key_ttl=120)
    budget = rs.RetryBudget(ratio=0, min_per_second=1, name="budget", backend=backend)
    client = redis.Redis.from_url(redis_url)
    key = backend.key("retry_budget", "budget", "window")
    assert budget.balance == 10
    assert not client.exists(key)
    assert budget.try_withdraw()
    assert 0 < client.ttl(key) <= 120
    client.expire(key, 5)
    assert budget.balance == 9  # a read: nothing deposited, nothing withdrawn
    assert client.ttl(key) > 5
    client.close()


def test_the_background_sync_sends_the_deposits_of_a_budget(backends: Backends) -> None:
    """No flush by hand: attaching a budget starts the process's background sync."""
    here, there = backends("local-first", sync_interval=0.01), backends()
    mine = rs.RetryBudget(ratio=1, min_per_second=0, name="budget", backend=here)
    theirs = rs.RetryBudget(ratio=1, min_per_second=0, name="budget", backend=there)
    mine.deposit()
    for _ in range(300):  # 3 s at most, in 10 ms looks
        if theirs.balance:
            break
        threading.Event().wait(0.01)
    assert theirs.balance == 1


def test_a_sync_with_no_new_deposit_costs_no_round_trip(backends: Backends) -> None:
    backend = backends("local-first", sync_interval=10)
    budget = rs.RetryBudget(ratio=1, min_per_second=0, name="budget", backend=backend)
    budget.deposit()
    sync_of(backend)
    sent = backend.round_trips
    sync_of(backend)
    assert backend.round_trips == sent
    assert budget.metrics().deposits == 1


def test_deposits_of_a_request_that_never_reached_redis_are_sent_with_the_next(
    backends: Backends, redis_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A withdrawal that failed to connect carried no deposit to the server: the next one
    carries them (counted once), and the backend says it answers again."""
    redis_server.kill()
    try:
        backend = backends(retry_interval=0)  # no connection made yet: the first one fails
        budget = rs.RetryBudget(ratio=1, min_per_second=0, name="budget", backend=backend)
        for _ in range(4):
            budget.deposit()
        assert budget.try_withdraw()  # decided in the process ("local")
    finally:
        redis_server.ensure_running()
    with caplog.at_level("WARNING", logger="resilience"):
        assert budget.try_withdraw()
    metrics = budget.metrics()
    assert (metrics.deposits, metrics.withdrawals) == (4, 1)
    assert any("the backend answers again" in r.getMessage() for r in caplog.records)


# -- time on the server -----------------------------------------------------------------------

#: (now, width) pairs: exact multiples, times on either side of zero, and quotients that
#: come out a hair under a whole number before the final rounding (8.78334037897173 / 0.7)
#: or a hair over it (1.3966531122908366 / 0.2).
_CUTS = [
    (0.0, 1.0),
    (10.0, 2.5),
    (10.5, 2.5),
    (0.3, 0.1),
    (-0.5, 1.0),
    (-10.0, 2.5),
    (-2.4076955335254446, 0.05),
    (-5.822212170348646, 0.2),
    (8.78334037897173, 0.7),
    (4.242581425248337, 0.7),
    (8662.476504086404, 0.3),
    (1.3966531122908366, 0.2),
    (5082.5918403564365, 0.7),
    (1_000_000.05, 0.1),
]


def test_the_scripts_cut_time_into_buckets_as_python_does(redis_url: str) -> None:
    """A time window's bucket (and a budget's slice) is ``now // width`` on the server too,
    to the bit, also for times before zero (a fake clock may start there)."""
    from resilience._redis_lua import _HELPERS

    client = redis.Redis.from_url(redis_url)
    try:
        cut = client.register_script(
            _HELPERS + "return num(floordiv(tonumber(ARGV[1]), tonumber(ARGV[2])))"
        )
        for now, width in _CUTS:
            assert float(cut(args=[repr(now), repr(width)])) == now // width, (now, width)
    finally:
        client.close()


# -- keys -------------------------------------------------------------------------------------


def test_every_key_expires_and_each_policy_is_in_one_cluster_slot(
    backends: Backends, redis_url: str
) -> None:
    backend = backends(key_ttl=120)
    breaker = rs.CircuitBreaker(name="k", window_seconds=10, backend=backend)
    with pytest.raises(Boom):
        breaker.call(boom)
    rs.Throttle(10, name="k", backend=backend).try_acquire()
    with rs.Bulkhead(1, name="k", backend=backend):
        budget = rs.RetryBudget(name="k", backend=backend)
        budget.deposit()
        budget.try_withdraw()
        sync_of(backend)
        client = redis.Redis.from_url(redis_url)
        keys = [key.decode() for key in client.scan_iter(f"{backend.prefix}:*")]
        assert len(keys) >= 5
        slots: dict[str, set[int]] = {}
        for key in keys:
            assert 0 < client.ttl(key) <= 120, key
            policy = key.split("{")[1].split("}")[0]
            slots.setdefault(policy, set()).add(key_slot(key.encode()))
        assert set(slots) == {"circuit_breaker:k", "throttle:k", "bulkhead:k", "retry_budget:k"}
        assert all(len(slot) == 1 for slot in slots.values())
        client.close()


# -- when Redis does not answer ---------------------------------------------------------------


def nowhere(backends: Backends, action: str) -> RedisBackend:
    """A backend whose server refuses connections (nothing listens on the port)."""
    return backends(
        url=f"redis://127.0.0.1:{free_port()}/0", on_backend_error=action, retry_interval=0
    )


def test_local_decides_in_the_process_while_redis_is_down(backends: Backends) -> None:
    backend = nowhere(backends, "local")
    breaker = rs.CircuitBreaker(name="down", consecutive_failures=2, backend=backend)
    events: list[object] = []
    breaker.subscribe(events.append)
    assert breaker.call(lambda: 1) == 1
    for _ in range(2):
        with pytest.raises(Boom):
            breaker.call(boom)
    with pytest.raises(rs.CircuitOpenError):
        breaker.call(lambda: 1)
    failures = [event for event in events if isinstance(event, BackendErrorEvent)]
    assert failures
    assert failures[0].action == "local"
    assert isinstance(failures[0].error, redis.ConnectionError)
    throttle = rs.Throttle(2, per=60, name="down", backend=backend)
    assert [throttle.try_acquire() for _ in range(3)] == [True, True, False]
    bulkhead = rs.Bulkhead(1, name="down", backend=backend)
    with bulkhead, pytest.raises(rs.BulkheadFullError):
        bulkhead.call(lambda: None)
    budget = rs.RetryBudget(ratio=0, min_per_second=0.1, name="down", backend=backend)
    assert [budget.try_withdraw() for _ in range(2)] == [True, False]


def test_open_admits_while_redis_is_down(backends: Backends) -> None:
    backend = nowhere(backends, "open")
    breaker = rs.CircuitBreaker(name="down", consecutive_failures=1, backend=backend)
    for _ in range(3):
        with pytest.raises(Boom):
            breaker.call(boom)
    assert breaker.call(lambda: 1) == 1
    throttle = rs.Throttle(1, per=60, name="down", backend=backend)
    assert all(throttle.try_acquire() for _ in range(5))
    bulkhead = rs.Bulkhead(1, name="down", backend=backend)
    with bulkhead:
        assert bulkhead.in_flight == 1
    budget = rs.RetryBudget(ratio=0, min_per_second=0, name="down", backend=backend)
    assert budget.try_withdraw()


def test_closed_refuses_while_redis_is_down(backends: Backends) -> None:
    backend = nowhere(backends, "closed")
    policies: list[rs.Middleware] = [
        rs.CircuitBreaker(name="down", backend=backend),
        rs.Throttle(100, name="down", backend=backend),
        rs.Bulkhead(1, name="down", backend=backend),
    ]
    for policy in policies:
        with pytest.raises(rs.BackendUnavailableError) as refused:
            policy.call(lambda: None)
        assert isinstance(refused.value, rs.RejectedError)
        assert isinstance(refused.value.__cause__, redis.ConnectionError)
        assert "its backend is unavailable" in str(refused.value)

        async def ok() -> None:
            return None

        with pytest.raises(rs.BackendUnavailableError):
            asyncio.run(policy.acall(ok))
    budget = rs.RetryBudget(ratio=1, name="down", backend=backend)
    assert not budget.try_withdraw()
    bulkhead = policies[2]
    assert isinstance(bulkhead, rs.Bulkhead)
    assert bulkhead.in_flight == 0  # the slot taken in the process went back


def test_a_backend_that_comes_back_is_used_again(backends: Backends, redis_server: Any) -> None:
    backend = backends(on_backend_error="closed", retry_interval=0)
    throttle = rs.Throttle(100, name="back", backend=backend)
    assert throttle.try_acquire()
    redis_server.kill()
    try:
        with pytest.raises(rs.BackendUnavailableError):
            throttle.call(lambda: None)
    finally:
        redis_server.ensure_running()
    assert throttle.try_acquire()
    assert throttle.metrics().shared


def test_a_dropped_policy_frees_its_name(backends: Backends) -> None:
    """A policy made again under the same name (a reload) once the first is gone."""
    import gc

    backend = backends()
    throttle = rs.Throttle(10, name="again", backend=backend)
    with pytest.raises(ValueError, match="already holds"):
        rs.Throttle(10, name="again", backend=backend)
    del throttle
    gc.collect()
    assert rs.Throttle(10, name="again", backend=backend).try_acquire()
