"""The Redis-backed stores against the same models as the in-process policies.

The hypothesis models of ``test_circuit_breaker_model.py`` (and the others
imported below) drive a policy on a `resilience.testing.FakeClock` and
compare it with a reference after every step. Here the same machines drive
policies whose state lives in a real redis-server (``backend=``), in the
*strict* mode, where every decision is made by a script on the server.

Time: the scripts normally read the server's ``TIME``; these backends are
made with ``RedisBackend(clock=the fake clock)``, a seam for tests and
simulations in which each request carries ``clock.monotonic()`` and the
script uses it as ``now``. Everything else runs as in production: the same
scripts, the same keys, the same Python side.

What is compared, and what is not:

* Only strict mode. Local-first serves the common case in the process from
  leases and syncs every interval: approximate by design (the fleet's
  bound, not each decision), so it cannot follow a step-by-step model.
* The background sync does not run (`TestSyncedBackend`): the test runs it
  (`RedisBackend.flush`) after every call, before the clock moves. This is
  what the real sync does within a few milliseconds of a failure, a trial
  or a slot given back (it is woken at once); a success of a closed breaker
  waits for the next request or interval, and the server counts an outcome
  when it arrives, so in a process an outcome may land up to one sync
  interval later than the model says. The test pins that interval to zero.

Per policy:

* CircuitBreaker (the breaker model's machine, count and time windows):
  every decision, the state, and the metrics read from the server, exactly
  (``shared`` aside: it says where they came from); the ``retry_after`` of
  a rejection within 1e-9 s: it is the server's answer carried onto the
  process's clock (``now + retry_after``, later minus ``now``).
* Throttle (the throttle model's sync steps, its float tolerance): every
  grant, wait and refusal, the wait told, ``available`` (the bucket in
  Redis); new settings (``update``: the bucket keeps its tokens) on a clock
  that starts at zero. In Redis the bucket is kept in absolute times (GCRA's
  TAT), which round by an ulp of the clock's reading, where the in-process
  bucket counts from its epoch, and the model's tolerance is made for that;
  a new, slower rate stretches that rounding (by the ratio of the rates), so
  at months of uptime an update may move a grant by more than the model
  allows (nanoseconds at 2**19 s going from 100 to 1 token a second). Not
  the asyncio waiters' model: in Redis a waiter reserves its tokens and
  sleeps, with no queue in the process to cancel from, first come first
  served only by the order of the reservations.
* Bulkhead (the bulkhead model, on the real clock, timed by the server):
  after every step, ``in_flight`` and ``available`` read from Redis are the
  model's. In one process the process's own slots and queue cap the calls
  before they ask the fleet, so this checks that the holders in Redis are
  exactly the calls running (each admitted once, each given back, new
  limits applied), not the fleet's queueing, which is not first come first
  served across processes.
* RetryBudget: against `FleetBudget`, the budget as the Redis store states
  it (ratio per deposit, exactly), not the in-process reference, whose whole
  tokens make a deposit worth a hair more (see `FleetBudget`). Not
  ``update``: in Redis a new ratio applies at once to the deposits in the
  window; in process the tokens already there keep their worth.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, run_state_machine_as_test

import test_budget_model as budget_model
import test_bulkhead_model as bulkhead_model
import test_circuit_breaker_model as breaker_model
import test_throttle_model as throttle_model
from redis_support import no_retry
from resilience import Bulkhead, CircuitBreaker, RetryBudget, Throttle
from resilience.metrics import RetryBudgetMetrics
from resilience.redis import RedisBackend
from resilience.testing import FakeClock

pytestmark = pytest.mark.redis

#: Fewer examples than the in-process models: every step is a few round trips.
REDIS_MODEL_SETTINGS = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    database=None,
)
"""Randomised, as the in-process models (the run's seed replays it)."""

REDIS_THROTTLE_SETTINGS = settings(
    throttle_model.MODEL_SETTINGS,
    max_examples=60,
    # The client is made once per test, for every example (each has keys of its own).
    suppress_health_check=[
        *throttle_model.MODEL_SETTINGS.suppress_health_check,
        HealthCheck.function_scoped_fixture,
    ],
)

REDIS_BULKHEAD_SETTINGS = settings(
    bulkhead_model.MODEL_SETTINGS,
    max_examples=30,
    suppress_health_check=[
        *bulkhead_model.MODEL_SETTINGS.suppress_health_check,
        HealthCheck.function_scoped_fixture,
    ],
)

REDIS_BUDGET_SETTINGS = settings(
    budget_model.MODEL_SETTINGS,
    max_examples=100,
    suppress_health_check=[
        *budget_model.MODEL_SETTINGS.suppress_health_check,
        HealthCheck.function_scoped_fixture,
    ],
)


#: The socket timeout of the tests' clients: generous, for a loaded machine.
TIMEOUT = 2.0

#: Real seconds a call may wait for the fleet's slots in the bulkhead model: a safety net.
FLEET_HANG = 3.0

_prefixes = itertools.count()


class TestSyncedBackend(RedisBackend):
    """A strict backend timed by a fake clock whose sync the test runs (no thread)."""

    __test__ = False  # not a test class, despite its name

    def start(self) -> None:
        """No background sync: the test calls `flush` itself, at known clock times."""


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """One client for the test's backends (each example gets its own prefix)."""
    client = redis.Redis.from_url(
        redis_url,
        socket_timeout=TIMEOUT,
        socket_connect_timeout=TIMEOUT,
        retry=no_retry(),
        health_check_interval=0,
    )
    yield client
    client.close()


def strict_backend(client: redis.Redis, clock: Any, **options: Any) -> TestSyncedBackend:
    """A strict backend on ``client``, timed by ``clock`` (None: the server), with keys of
    its own."""
    return TestSyncedBackend(
        client=client,
        prefix=f"model{next(_prefixes)}",
        mode="strict",
        timeout=TIMEOUT,
        clock=clock,
        **options,
    )


def on_redis(machine: type[Any], client: redis.Redis) -> type[Any]:
    """``machine`` with its client: hypothesis makes the machines, so it is a class attribute."""
    return type(machine.__name__, (machine,), {"client": client})


# -- CircuitBreaker ------------------------------------------------------------------------


class RedisBreakerMachine(breaker_model.BreakerMachine):
    """The breaker model's machine on a breaker whose state lives in Redis (strict)."""

    client: redis.Redis
    backend: TestSyncedBackend

    def make(self, config: breaker_model.Config) -> CircuitBreaker:
        self.backend = strict_backend(self.client, self.clock)
        return config.breaker(self.clock, name="model", backend=self.backend)

    def same_wait(self, got: float | None, expected: float | None) -> bool:
        if got is None or expected is None:
            return got is expected
        return math.isclose(got, expected, rel_tol=0.0, abs_tol=1e-9)

    def invoke(self, mode: breaker_model.Mode, body: Callable[[], object]) -> object:
        try:
            return super().invoke(mode, body)
        finally:  # the sync sends the outcome (or the trial given back) before time moves
            self.backend.flush()

    @invariant()
    def agrees_with_the_model(self) -> None:
        assert self.clock.monotonic() == self.model.now
        # The metrics first: reading them learns the server's state, which `state` reports.
        metrics = self.breaker.metrics()
        assert metrics.shared
        assert replace(metrics, shared=False) == self.model.metrics()
        assert self.breaker.state is self.model.state


class RedisTimeWindowMachine(RedisBreakerMachine):
    """The same, with a time-based window (buckets on the server)."""

    window = "seconds"


def test_count_window_breaker_on_redis_follows_the_model(redis_client: redis.Redis) -> None:
    """Strict, count window: every sequence of steps leaves the state in Redis as the model's."""
    machine = on_redis(RedisBreakerMachine, redis_client)
    run_state_machine_as_test(machine, settings=REDIS_MODEL_SETTINGS)


def test_time_window_breaker_on_redis_follows_the_model(redis_client: redis.Redis) -> None:
    """Strict, time window: every sequence of steps leaves the state in Redis as the model's."""
    machine = on_redis(RedisTimeWindowMachine, redis_client)
    run_state_machine_as_test(machine, settings=REDIS_MODEL_SETTINGS)


# -- Throttle ------------------------------------------------------------------------------


def throttle_on_redis(
    client: redis.Redis,
) -> Callable[[throttle_model.Config, FakeClock], Throttle]:
    """Makes the throttle of a configuration with its bucket in Redis, begun now."""

    def make(config: throttle_model.Config, clock: FakeClock) -> Throttle:
        throttle = config.throttle(clock, name="model", backend=strict_backend(client, clock))
        throttle.metrics()  # the fleet's bucket begins with its first request: now, as here
        return throttle

    return make


@REDIS_THROTTLE_SETTINGS
@given(data=st.data())
def test_throttle_on_redis_follows_the_model(
    redis_client: redis.Redis, data: st.DataObject
) -> None:
    """Strict: try_acquire, acquire (reserving, then waiting on the clock) and call decide
    as the exact bucket, within the model's float tolerance, on the bucket in Redis, on a
    clock that starts anywhere (months of uptime too)."""
    steps = tuple(kind for kind in throttle_model.SYNC_STEPS if kind != "update")
    throttle_model.run_sync_steps(data, throttle_on_redis(redis_client), steps)


@REDIS_THROTTLE_SETTINGS
@given(data=st.data())
def test_throttle_update_on_redis_follows_the_model(
    redis_client: redis.Redis, data: st.DataObject
) -> None:
    """Strict, with update among the steps: new settings keep the bucket's tokens in Redis
    as in process, on a clock that starts at zero (see the module docs)."""
    throttle_model.run_sync_steps(data, throttle_on_redis(redis_client), start_at=st.just(0.0))


# -- Bulkhead ------------------------------------------------------------------------------


@REDIS_BULKHEAD_SETTINGS
@given(data=st.data())
def test_bulkhead_on_redis_follows_the_model(
    redis_client: redis.Redis, data: st.DataObject
) -> None:
    """Calls started, ended and cancelled, and new limits: the holders in Redis are the calls
    the model runs, after every step (this process's queue in front of them as in process)."""

    def make(limit: int, max_queue: int) -> Bulkhead:
        # Timed by the server: the bulkhead model runs on the real clock. Leases far longer
        # than an example, as nothing renews them here (the sync does not run). A correct
        # store never makes a call wait for the fleet (this process's slots cap it first);
        # max_wait only bounds the wait of one that is wrong (a call would wait for ever).
        backend = strict_backend(redis_client, None, lease_seconds=60.0)
        return Bulkhead(
            limit, max_queue=max_queue, max_wait=FLEET_HANG, name="model", backend=backend
        )

    asyncio.run(bulkhead_model.run_bulkhead(data, make, shared=True))


# -- RetryBudget ---------------------------------------------------------------------------


@dataclass
class FleetBudget:
    """The fleet's budget as `resilience.redis` states it, plainly: over the window of ``ttl``
    seconds (ten slices, numbered by ``now // (ttl / 10)`` as in process), the retries
    allowed are ``ratio`` per deposit plus ``min_per_second * ttl``, less the withdrawals.

    The in-process budget (the reference of test_budget_model.py) counts in whole tokens,
    Finagle's way: a deposit is 1000, a retry ``int(1000 / ratio)``, so a deposit is worth a
    hair more than ``ratio`` retries (0.7003 for 0.7) and, after hundreds of deposits, it
    may allow one retry more than the fleet's budget, which counts ``ratio`` exactly (357
    deposits at 0.7: 250 retries in process, 249 in Redis). The windows, the slices and
    their ends are the same.
    """

    ratio: float
    floor: float
    ttl: float
    deposits: dict[int, int] = field(default_factory=dict)
    withdrawals: dict[int, int] = field(default_factory=dict)
    refused: int = 0

    def slice(self, now: float) -> int:
        return int(now // (self.ttl / budget_model.SLICES))

    def window(self, counts: dict[int, int], now: float) -> int:
        current = self.slice(now)
        return sum(v for k, v in counts.items() if current - budget_model.SLICES < k <= current)

    def retries(self, now: float) -> float:
        deposits, withdrawals = self.window(self.deposits, now), self.window(self.withdrawals, now)
        return deposits * self.ratio + self.floor * self.ttl - withdrawals

    def deposit(self, now: float, count: int) -> None:
        key = self.slice(now)
        self.deposits[key] = self.deposits.get(key, 0) + count

    def withdraw(self, now: float) -> bool:
        if self.retries(now) >= 1:
            key = self.slice(now)
            self.withdrawals[key] = self.withdrawals.get(key, 0) + 1
            return True
        self.refused += 1
        return False

    def metrics(self, now: float) -> RetryBudgetMetrics:
        return RetryBudgetMetrics(
            balance=max(0, int(self.retries(now))),
            deposits=self.window(self.deposits, now),
            withdrawals=self.window(self.withdrawals, now),
            refused=self.refused,
            shared=True,
        )


#: The budget model's steps but `update`: in Redis a new ratio applies to the deposits in
#: the window at once; in process the tokens already there keep their worth.
budget_steps = st.one_of(*budget_model.STEPS_BUT_UPDATE)


@REDIS_BUDGET_SETTINGS
@given(
    ratio=budget_model.ratios,
    floor=budget_model.floors,
    ttl=st.floats(1.0, 60.0),
    start=st.one_of(st.just(0.0), st.floats(-300.0, 300.0), st.floats(-1e6, 1e7)),
    plan=st.lists(budget_steps, max_size=60),
)
def test_budget_on_redis_follows_the_fleet_reference(
    redis_client: redis.Redis,
    ratio: float,
    floor: float,
    ttl: float,
    start: float,
    plan: list[tuple[str, Any]],
) -> None:
    """Deposits (sent by the sync before the clock moves), withdrawals decided in Redis, time
    passing: every decision, the balance and the window's counts are the reference's."""
    clock = FakeClock(start)
    backend = strict_backend(redis_client, clock)
    budget = RetryBudget(
        ratio, min_per_second=floor, ttl=ttl, clock=clock, name="model", backend=backend
    )
    model = FleetBudget(ratio, floor, ttl)
    for kind, value in plan:
        now = clock.monotonic()
        if kind == "deposit":
            for _ in range(value):
                budget.deposit()
            backend.flush()  # the sync sends them before the clock moves
            model.deposit(now, value)
        elif kind == "withdraw":
            for _ in range(value):
                assert budget.try_withdraw() == model.withdraw(now), (kind, now)
        elif kind == "advance":
            clock.advance(value * ttl)
        else:
            assert budget.balance == model.metrics(now).balance, (kind, now)
            assert budget.metrics() == model.metrics(now), (kind, now)
    assert budget.metrics() == model.metrics(clock.monotonic())


@pytest.mark.parametrize("where", ["process", "redis"])
def test_a_deposit_on_a_slice_edge_ages_with_that_slice(
    redis_client: redis.Redis, where: str
) -> None:
    """Slices are numbered by ``now // width``, in process and in Redis alike: a deposit at
    1.0 with slices of 0.1 s is in slice 9 (1.0 / 0.1 rounds to 10.0), so it has left the
    window of ten slices at 1.95, in slice 19."""
    clock = FakeClock(1.0)
    backend = strict_backend(redis_client, clock) if where == "redis" else None
    budget = RetryBudget(
        1.0, min_per_second=0.0, ttl=1.0, clock=clock, name="edge", backend=backend
    )
    budget.deposit()
    if backend is not None:
        backend.flush()
    assert budget.balance == 1
    clock.advance(0.9)  # 1.9: slice 18, the window is slices 9 to 18
    assert budget.balance == 1
    clock.advance(0.05)  # 1.95: slice 19
    assert budget.balance == 0
    assert not budget.try_withdraw()


@pytest.mark.parametrize("where", ["process", "redis"])
def test_a_call_on_a_bucket_edge_ages_with_that_bucket(
    redis_client: redis.Redis, where: str
) -> None:
    """A breaker's time window numbers its buckets by ``now // width``, in process and in
    Redis alike: with buckets of 0.1 s, a call at 1.0 is in bucket 9 and has left the window
    at 1.95 (bucket 19); a call at 1.05 (bucket 10) is still in it at 2.0 (bucket 19 too,
    though 2.0 / 0.1 rounds to 20.0)."""
    clock = FakeClock(1.0)
    backend = strict_backend(redis_client, clock) if where == "redis" else None
    breaker = CircuitBreaker(
        failure_ratio=1.0,
        window_seconds=1.0,
        window_buckets=10,
        clock=clock,
        name="edge",
        backend=backend,
    )

    def succeed() -> str:
        return "ok"

    def calls_in_the_window() -> int:
        if backend is not None:
            backend.flush()  # the sync sends the successes before the clock moves
        return breaker.metrics().calls

    breaker.call(succeed)
    assert calls_in_the_window() == 1
    clock.advance(0.05)
    breaker.call(succeed)
    assert calls_in_the_window() == 2
    clock.advance(0.9)  # 1.95
    assert calls_in_the_window() == 1
    clock.advance(0.05)  # 2.0
    assert calls_in_the_window() == 1


def test_the_clock_of_a_backend_must_be_a_clock(redis_client: redis.Redis) -> None:
    """``clock=`` takes a clock instance, as a policy's ``clock=`` does: not its class."""
    with pytest.raises(TypeError, match="clock must provide monotonic"):
        RedisBackend(client=redis_client, timeout=TIMEOUT, clock=FakeClock)  # type: ignore[arg-type]


def test_a_bucket_kept_as_a_bare_time_is_read_with_the_request_settings(
    redis_client: redis.Redis,
) -> None:
    """A bucket kept by an older version (its TAT alone) keeps its tokens: 0.5 s owed at 10
    tokens a second, burst 10, is 5 tokens."""
    clock = FakeClock(100.0)
    backend = strict_backend(redis_client, clock)
    throttle = Throttle(10, 1.0, burst=10, clock=clock, name="old", backend=backend)
    redis_client.set(backend.key("throttle", "old", "bucket"), "100.5")
    assert throttle.metrics().available == 5.0
    assert throttle.try_acquire(5)
    assert not throttle.try_acquire(1)
