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
* Everything the model checks is compared exactly, with one exception: the
  ``retry_after`` of a rejection is the server's answer carried onto the
  process's clock (``now + retry_after``, later minus ``now``), equal to
  the model's within float rounding (1e-9 s). The metrics, read from the
  server, are compared exactly (``shared`` aside: it says where they came
  from).
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, run_state_machine_as_test

import test_bulkhead_model as bulkhead_model
import test_circuit_breaker_model as breaker_model
import test_throttle_model as throttle_model
from redis_support import no_retry
from resilience import Bulkhead, CircuitBreaker, Throttle
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
    max_examples=80,
    # The client is made once per test, for every example (each has keys of its own).
    suppress_health_check=[
        *throttle_model.MODEL_SETTINGS.suppress_health_check,
        HealthCheck.function_scoped_fixture,
    ],
)

REDIS_BULKHEAD_SETTINGS = settings(
    bulkhead_model.MODEL_SETTINGS,
    max_examples=40,
    suppress_health_check=[
        *bulkhead_model.MODEL_SETTINGS.suppress_health_check,
        HealthCheck.function_scoped_fixture,
    ],
)

#: The throttle's sync steps but `update`: the bucket in Redis is a time (GCRA's TAT), which
#: a new rate rescales, where the in-process bucket keeps its tokens (see the module docs).
REDIS_THROTTLE_STEPS = tuple(kind for kind in throttle_model.SYNC_STEPS if kind != "update")

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


@REDIS_THROTTLE_SETTINGS
@given(data=st.data())
def test_throttle_on_redis_follows_the_model(
    redis_client: redis.Redis, data: st.DataObject
) -> None:
    """Strict: try_acquire, acquire (reserving, then waiting on the clock) and call decide
    as the exact bucket, within the model's float tolerance, on the bucket in Redis."""

    def make(config: throttle_model.Config, clock: FakeClock) -> Throttle:
        throttle = config.throttle(clock, name="model", backend=strict_backend(redis_client, clock))
        throttle.metrics()  # the fleet's bucket begins with its first request: now, as here
        return throttle

    throttle_model.run_sync_steps(data, make, REDIS_THROTTLE_STEPS)


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
