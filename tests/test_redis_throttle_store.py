"""The Redis throttle store's own cases against a real redis-server: edges the shared tests miss.

Each backend here is timed by a `FakeClock` (the script takes ``now`` from it: Redis's time),
runs no background sync (the test syncs with ``flush``) and can be made to fail on command
(`Backend.fail`), so every case is deterministic. A throttle may run on a clock of its own
(the process's): a local-first lease expires on it while Redis's time stands still, so the
fleet's bucket does not refill under the test.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import resilience as rs
from redis_support import no_retry
from resilience.redis import RedisBackend
from resilience.testing import FakeClock

pytestmark = pytest.mark.redis

_prefixes = itertools.count()


class Backend(RedisBackend):
    """A backend on a fake clock, synced by the test, whose Redis fails while told to.

    It keeps the sizes of the leases Redis granted (local-first) and the wake-ups asked of
    the sync (True: urgent).
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(retry_interval=60, **options)
        self.broken: Exception | None = None
        self.leases: list[float] = []
        self.wakes: list[bool] = []

    def start(self) -> None:
        """No background sync: the test calls `flush`."""

    def wake(self, *, urgent: bool = True) -> None:
        self.wakes.append(urgent)

    def fail(self) -> None:
        """From now on Redis refuses connections."""
        self.broken = redis.ConnectionError("Error connecting to 127.0.0.1:1")

    def recover(self) -> None:
        self.broken = None
        self._down_until = 0.0

    def run(self, script: str, keys: list[str], args: list[Any]) -> list[Any]:
        self._check()
        if self.broken is not None:
            raise self._failed(self.broken)
        reply = super().run(script, keys, args)
        if args[0] == "l" and float(reply[0]) >= 0:
            self.leases.append(float(reply[0]))
        return reply


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    made = redis.Redis.from_url(
        redis_url, socket_timeout=2.0, socket_connect_timeout=2.0, retry=no_retry()
    )
    yield made
    made.close()


class Fleet:
    """Backends ("processes") sharing one prefix and Redis's fake clock."""

    def __init__(self, client: redis.Redis, start: float = 100.0) -> None:
        self.client = client
        self.clock = FakeClock(start)
        self.prefix = f"ts{next(_prefixes)}"

    def backend(self, mode: str = "strict", **options: Any) -> Backend:
        options.setdefault("on_backend_error", "closed")  # a script error fails the test
        return Backend(
            client=self.client,
            prefix=self.prefix,
            mode=mode,
            timeout=2.0,
            clock=self.clock,
            **options,
        )

    def throttle(
        self,
        rate: float,
        backend: RedisBackend | None = None,
        clock: FakeClock | None = None,
        **settings: Any,
    ) -> rs.Throttle:
        settings.setdefault("name", "t")
        return rs.Throttle(
            rate, backend=backend or self.backend(), clock=clock or self.clock, **settings
        )

    def available(self, throttle: rs.Throttle) -> float:
        """The tokens in the fleet's bucket, as another process reads them."""
        other = self.throttle(throttle.rate, per=throttle.per, burst=throttle.burst)
        return other.available


@pytest.fixture
def fleet(client: redis.Redis) -> Fleet:
    return Fleet(client)


class GaveUp(Exception):
    pass


class GivingUp(FakeClock):
    """A process clock on which whoever sleeps gives up at once (as if cancelled)."""

    def sleep(self, seconds_: float) -> None:
        raise GaveUp


def refusal(throttle: rs.Throttle, cost: float = 1, **options: Any) -> float:
    """The ``retry_after`` of an acquisition that must be refused."""
    with pytest.raises(rs.ThrottledError) as refused:
        throttle.acquire(cost, **options)
    assert refused.value.retry_after is not None
    return refused.value.retry_after


# -- strict: one round trip a call ------------------------------------------------------------


def test_a_strict_throttle_admits_its_burst_then_says_when_the_next_token_comes(
    fleet: Fleet,
) -> None:
    throttle = fleet.throttle(2, per=10)  # a token every 5 s
    assert throttle.try_acquire()
    throttle.acquire()
    assert not throttle.try_acquire()
    assert refusal(throttle) == pytest.approx(5.0)
    assert fleet.clock.sleeps == []  # the tokens granted at once were not waited for
    fleet.clock.advance(5)
    assert throttle.try_acquire()


def test_a_strict_throttle_takes_each_calls_tokens_in_its_own_round_trip(fleet: Fleet) -> None:
    backend = fleet.backend()
    throttle = fleet.throttle(100, backend=backend)
    for _ in range(5):
        throttle.acquire()
    assert backend.round_trips == 5
    assert fleet.available(throttle) == pytest.approx(95)


def test_a_call_that_may_wait_sleeps_for_the_time_redis_gave(fleet: Fleet) -> None:
    throttle = fleet.throttle(1, per=4, max_wait=10)
    throttle.acquire()
    throttle.acquire()  # reserves the next token, 4 s away
    assert fleet.clock.sleeps == [4.0]
    assert refusal(throttle, max_wait=3) == pytest.approx(4.0)  # not reserved
    throttle.acquire(max_wait=None)
    assert fleet.clock.sleeps == [4.0, 4.0]


def test_no_limit_on_the_wait_reserves_however_far_the_tokens_are(fleet: Fleet) -> None:
    process = FakeClock(0.0)  # the waiters sleep here; Redis's time stands still
    throttle = fleet.throttle(1, per=4, clock=process, max_wait=None)
    for _ in range(4):
        throttle.acquire()
    assert process.sleeps == [4.0, 8.0, 12.0]
    assert fleet.available(throttle) == 0.0  # overdrawn by the reservations: none, not less


def test_a_call_that_costs_nothing_is_admitted_by_an_empty_bucket(fleet: Fleet) -> None:
    throttle = fleet.throttle(1, per=60)
    throttle.acquire()
    assert throttle.try_acquire(0)
    throttle.acquire(0)
    assert fleet.clock.sleeps == []


def test_initial_tokens_start_the_fleets_bucket(fleet: Fleet) -> None:
    throttle = fleet.throttle(4, per=4, initial_tokens=1)
    assert throttle.try_acquire()
    assert not throttle.try_acquire()
    fleet.clock.advance(2)
    assert throttle.available == pytest.approx(2.0)


def test_the_fleets_tokens_are_read_from_redis(fleet: Fleet) -> None:
    throttle = fleet.throttle(4, per=4, burst=3.5)
    throttle.acquire()
    assert fleet.available(throttle) == pytest.approx(2.5)
    assert throttle.metrics().shared


def test_the_bucket_expires_after_the_key_ttl(fleet: Fleet) -> None:
    throttle = fleet.throttle(4, backend=fleet.backend(key_ttl=50), name="ttl")
    throttle.acquire()
    key = fleet.backend().key("throttle", "ttl", "bucket")
    assert 48 < fleet.client.ttl(key) <= 50


def test_a_waiter_that_gives_up_gives_its_tokens_back_at_the_next_sync(fleet: Fleet) -> None:
    backend = fleet.backend()
    throttle = fleet.throttle(1, per=10, backend=backend, clock=GivingUp(), max_wait=30)
    throttle.acquire()
    with pytest.raises(GaveUp):
        throttle.acquire()
    assert backend.wakes == [False]  # a sync soon, not at once
    assert refusal(throttle, max_wait=0) == pytest.approx(20.0)  # behind the reserved token
    backend.flush()
    assert refusal(throttle, max_wait=0) == pytest.approx(10.0)  # given back
    backend.flush()
    assert refusal(throttle, max_wait=0) == pytest.approx(10.0)  # once


def test_the_background_sync_gives_a_waiters_tokens_back(fleet: Fleet, client: redis.Redis) -> None:
    class Syncing(RedisBackend):
        """A backend with its background sync, which tells when it gave tokens back."""

        given_back = threading.Event()

        def run(self, script: str, keys: list[str], args: list[Any]) -> list[Any]:
            reply = super().run(script, keys, args)
            if args[0] == "g":
                self.given_back.set()
            return reply

    backend = Syncing(client=client, prefix=fleet.prefix, timeout=2.0, clock=fleet.clock)
    try:
        throttle = fleet.throttle(1, per=10, backend=backend, clock=GivingUp(), max_wait=30)
        throttle.acquire()
        with pytest.raises(GaveUp):
            throttle.acquire()
        assert backend.given_back.wait(10)
        assert refusal(throttle, max_wait=0) == pytest.approx(10.0)
    finally:
        backend.close()


def test_tokens_to_give_back_while_redis_is_down_are_spent(fleet: Fleet) -> None:
    backend = fleet.backend()
    throttle = fleet.throttle(1, per=10, backend=backend, clock=GivingUp(), max_wait=30)
    throttle.acquire()
    with pytest.raises(GaveUp):
        throttle.acquire()
    backend.fail()
    backend.flush()  # fails quietly
    backend.recover()
    backend.flush()
    assert refusal(throttle, max_wait=0) == pytest.approx(20.0)


def test_redis_answering_again_is_logged(fleet: Fleet, caplog: pytest.LogCaptureFixture) -> None:
    backend = fleet.backend(on_backend_error="local")
    throttle = fleet.throttle(10, backend=backend)
    backend.fail()
    with caplog.at_level(logging.WARNING, logger="resilience"):
        assert throttle.try_acquire()  # decided in the process
        backend.recover()
        assert throttle.try_acquire()
    assert caplog.records[-1].getMessage().endswith("the backend answers again")


# -- new settings and new buckets ----------------------------------------------------------


def test_a_new_rate_keeps_the_tokens_and_refills_at_the_new_rate(fleet: Fleet) -> None:
    throttle = fleet.throttle(10, per=1, burst=10)
    throttle.acquire(6)
    throttle.update(rate=2)  # a token every 0.5 s
    assert throttle.available == pytest.approx(4)
    throttle.acquire(4)
    assert refusal(throttle) == pytest.approx(0.5)
    fleet.clock.advance(1)
    assert throttle.available == pytest.approx(2)


def test_a_smaller_burst_keeps_no_more_tokens_than_it_holds(fleet: Fleet) -> None:
    throttle = fleet.throttle(10, per=1, burst=10)
    throttle.acquire(6)
    throttle.update(burst=3)
    assert throttle.available == pytest.approx(3)
    throttle.update(burst=8)
    assert throttle.available == pytest.approx(3)
    fleet.clock.advance(10)
    assert throttle.available == pytest.approx(8)


def test_a_bucket_first_read_fills_from_then_on(fleet: Fleet) -> None:
    throttle = fleet.throttle(1, per=1, burst=10, initial_tokens=0)
    assert throttle.available == 0
    fleet.clock.advance(3)
    assert throttle.available == pytest.approx(3)


def test_a_bucket_first_refused_fills_from_then_on(fleet: Fleet) -> None:
    throttle = fleet.throttle(1, per=1, burst=10, initial_tokens=0)
    assert not throttle.try_acquire()
    fleet.clock.advance(3)
    assert throttle.try_acquire(3)


def test_reading_the_fleets_tokens_does_not_keep_the_bucket_alive(fleet: Fleet) -> None:
    throttle = fleet.throttle(4, name="read")
    throttle.acquire()
    key = fleet.backend().key("throttle", "read", "bucket")
    fleet.client.expire(key, 5)
    assert throttle.available == pytest.approx(3)
    assert fleet.client.ttl(key) <= 5


# -- local-first: leases --------------------------------------------------------------------


def leasing(fleet: Fleet, rate: float, **settings: Any) -> tuple[rs.Throttle, Backend, FakeClock]:
    """A local-first throttle whose leases last 2 s (sync every second) on its own clock."""
    backend = fleet.backend("local-first", sync_interval=1.0)
    process = FakeClock(0.0)
    settings.setdefault("burst", 100)
    return fleet.throttle(rate, backend=backend, clock=process, **settings), backend, process


@pytest.mark.parametrize(
    ("rate", "per", "burst", "cost", "calls", "leases"),
    [
        # The largest lease is the fleet's tokens of one lease (2 s): 10 per 2 s.
        (10, 2, 100, 1, 36, [1, 1, 2, 4, 8, 10, 10]),
        # ... or a quarter of the burst.
        (1000, 1, 40, 1, 36, [1, 1, 2, 4, 8, 10, 10]),
        # ... and never more than 1024 tokens.
        (1e6, 1, 1e5, 1, 3072, [1, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 1024]),
        # ... but at least a token.
        (1, 10, 10, 0.5, 8, [1, 1, 1, 1]),
    ],
)
def test_a_lease_used_up_before_it_expires_doubles_up_to_a_limit(
    fleet: Fleet,
    rate: float,
    per: float,
    burst: float,
    cost: float,
    calls: int,
    leases: list[float],
) -> None:
    throttle, backend, process = leasing(fleet, rate, per=per, burst=burst)
    for _ in range(calls):
        throttle.acquire(cost)
    assert backend.leases == leases
    assert fleet.available(throttle) == pytest.approx(burst - sum(leases))
    assert process.sleeps == []


def test_async_calls_are_served_by_the_lease_too(fleet: Fleet) -> None:
    throttle, backend, process = leasing(fleet, 10, per=2)

    async def main() -> None:
        for _ in range(8):
            await throttle.aacquire()

    asyncio.run(main())
    assert backend.leases == [1, 1, 2, 4]
    assert fleet.available(throttle) == pytest.approx(92)
    assert process.sleeps == []


def test_a_local_first_process_admits_no_more_than_the_burst(fleet: Fleet) -> None:
    throttle, backend, _ = leasing(fleet, 1, per=100, burst=2)
    throttle.acquire()
    throttle.acquire()
    assert not throttle.try_acquire()
    with pytest.raises(rs.ThrottledError):
        throttle.acquire()
    assert backend.leases == [1, 1]


def test_a_lease_serves_calls_until_it_expires(fleet: Fleet) -> None:
    throttle, backend, process = leasing(fleet, 10, per=2)
    for _ in range(5):  # leases of 1, 1, 2 and 4 tokens: 3 left, for 2 s
        throttle.acquire()
    process.advance(1.5)
    throttle.acquire()
    assert backend.round_trips == 4
    process.advance(0.5)  # expired, with 2 tokens left
    throttle.acquire()
    assert backend.round_trips == 5


def test_a_lease_that_expires_as_it_runs_out_does_not_grow(fleet: Fleet) -> None:
    throttle, backend, process = leasing(fleet, 10, per=2)
    throttle.acquire()
    process.advance(2)
    throttle.acquire()
    throttle.acquire()
    assert backend.leases == [1, 1, 1]


def test_a_call_without_a_lease_may_wait_for_the_fleets_tokens(fleet: Fleet) -> None:
    throttle, _, process = leasing(fleet, 1, per=4, burst=1, max_wait=10)
    throttle.acquire()
    throttle.acquire()  # reserves the next token, 4 s away
    assert process.sleeps == [4.0]
    assert refusal(throttle, max_wait=5) == pytest.approx(8.0)  # Redis's time stood still


def test_a_refused_lease_leaves_the_process_as_it_was(fleet: Fleet) -> None:
    throttle, backend, _ = leasing(fleet, 10, per=2, burst=8)  # leases of 2 at most
    throttle.acquire()
    throttle.acquire()
    throttle.acquire(6)  # the bucket is empty
    with pytest.raises(rs.ThrottledError):
        throttle.acquire()
    fleet.clock.advance(100)  # full again
    throttle.acquire()  # a lease of 2 tokens: the one left serves the next call
    throttle.acquire()
    assert backend.leases == [1, 1, 6, 2]
    assert backend.round_trips == 5


def test_a_call_that_costs_nothing_renews_an_empty_lease(fleet: Fleet) -> None:
    throttle, backend, process = leasing(fleet, 1, per=100, burst=1)
    throttle.acquire()
    process.advance(2)  # expired; the fleet's bucket is still empty
    throttle.acquire(0)
    throttle.acquire(0)
    assert backend.leases == [1, 0]
    assert backend.round_trips == 2


@pytest.mark.parametrize(
    ("cost", "calls", "next_lease"),
    [
        (1, 9, 5),  # 7 of a lease of 8 go back: the next lease is halved, from 10
        (1, 11, 5),  # 5 of 8 (half of 10): halved
        (1, 12, 10),  # 4 of 8: less than half of 10: kept
        (0.5, 1, 1),  # half of a lease of 1: the next is no less than a token
    ],
)
def test_an_expired_lease_goes_back_at_the_next_sync_and_the_next_is_smaller(
    fleet: Fleet, cost: float, calls: int, next_lease: float
) -> None:
    throttle, backend, process = leasing(fleet, 10, per=2)
    for _ in range(calls):
        throttle.acquire(cost)
    leased = sum(backend.leases)
    process.advance(1.9)
    backend.flush()
    assert fleet.available(throttle) == pytest.approx(100 - leased)  # not yet expired: kept
    process.advance(0.1)
    backend.flush()
    assert fleet.available(throttle) == pytest.approx(100 - calls * cost)
    throttle.acquire(cost)
    backend.flush()
    assert backend.leases[-1] == next_lease
    assert fleet.available(throttle) == pytest.approx(100 - calls * cost - next_lease)
    trips = backend.round_trips
    for _ in range(int((next_lease - cost) / cost)):  # what is left of the lease serves calls
        throttle.acquire(cost)
    assert backend.round_trips == trips
    throttle.acquire(cost)
    assert backend.round_trips == trips + 1


def test_a_lease_lasts_twice_the_sync_interval(fleet: Fleet) -> None:
    backend = fleet.backend("local-first", sync_interval=2.0)
    process = FakeClock(0.0)
    throttle = fleet.throttle(10, backend=backend, clock=process, burst=100)
    for _ in range(3):  # leases of 1, 1 and 2: 1 left, for 4 s
        throttle.acquire()
    process.advance(3.9)
    throttle.acquire()
    assert backend.round_trips == 3
    throttle.acquire()  # a lease of 4: 3 left, for 4 s
    process.advance(4)
    throttle.acquire()
    assert backend.round_trips == 5


def test_a_sync_with_nothing_to_give_back_sends_nothing(fleet: Fleet) -> None:
    throttle, backend, process = leasing(fleet, 10, per=2)
    throttle.acquire()
    backend.flush()  # the lease is used up, not expired
    process.advance(2)
    backend.flush()  # expired, empty
    assert backend.round_trips == 1


# -- the script's tolerances ------------------------------------------------------------------

#: The spacing of floats from 2**31 s (68 years) on: 2**-21 s, about 0.5 us.
ULP = 2.0**-21


@pytest.mark.parametrize(("ulps", "admitted"), [(1, True), (3, True), (4, True), (5, False)])
def test_a_token_four_ulps_of_the_clock_away_is_there_now(
    client: redis.Redis, ulps: int, admitted: bool
) -> None:
    fleet = Fleet(client, start=2.0**31)
    throttle = fleet.throttle(1, per=1)
    throttle.acquire()
    fleet.clock.advance(1 - ulps * ULP)
    if admitted:
        throttle.acquire()
        assert fleet.clock.sleeps == []  # not even those ulps
    else:
        assert refusal(throttle) == pytest.approx(ulps * ULP)


#: The script's slack at time 0: a nanosecond and four ulps of 0 s.
SLACK = 1e-9 + 4 * 2.0**-53


def test_a_wait_of_exactly_the_slack_is_none(client: redis.Redis) -> None:
    fleet = Fleet(client, start=0.0)
    throttle = fleet.throttle(1, per=SLACK)  # a token every SLACK seconds
    throttle.acquire()
    throttle.acquire()  # the next token, SLACK seconds away
    assert fleet.clock.sleeps == []


def test_a_wait_of_exactly_the_slack_past_max_wait_is_within_it(client: redis.Redis) -> None:
    fleet = Fleet(client, start=0.0)
    throttle = fleet.throttle(1, per=SLACK, burst=2)
    throttle.acquire(2)
    throttle.acquire(2, max_wait=SLACK)  # 2 * SLACK away
    assert fleet.clock.sleeps == [2 * SLACK]


def test_a_token_half_a_nanosecond_away_is_there_now(fleet: Fleet) -> None:
    throttle = fleet.throttle(1, per=1)
    throttle.acquire()
    fleet.clock.advance(1 - 5e-10)
    assert throttle.try_acquire()


def test_a_lease_takes_a_token_a_billionth_short(client: redis.Redis) -> None:
    """A billionth of a token every 1000 s is 1 us, too long a wait for a strict call
    (refused), not for a lease."""
    fleet = Fleet(client, start=0.0)
    other = fleet.throttle(1, per=1000, burst=1)
    other.acquire(1e-9)
    with pytest.raises(rs.ThrottledError):
        other.acquire()
    throttle, backend, _ = leasing(fleet, 1, per=1000, burst=1)
    throttle.acquire()
    assert backend.leases == [1]


def test_a_lease_takes_the_whole_tokens_there_to_a_billionth(fleet: Fleet) -> None:
    throttle, backend, _ = leasing(fleet, 2, per=1, burst=16)  # leases of 4 at most
    for _ in range(4):  # leases of 1, 1 and 2: the next asks for 4
        throttle.acquire()
    other = fleet.throttle(2, per=1, burst=16)
    other.acquire(9 + 5e-10)  # 3 tokens left, less a billionth of a token
    throttle.acquire()
    assert backend.leases == [1, 1, 2, 3]
