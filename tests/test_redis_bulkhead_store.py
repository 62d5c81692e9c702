"""The Redis bulkhead store's own cases against a real redis-server: edges the shared tests miss.

The store is driven directly (``bulkhead._shared``), on a fake clock that times the
scripts too (``RedisBackend(clock=...)``). Another process's slot is a member written
into the holders key with the end of its lease; a failed request is one that raises
`Unavailable` before Redis sees it, or after Redis applied it (its answer lost).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

import resilience as rs
from resilience._backend import Unavailable
from resilience._redis_bulkhead import UNCOUNTED, SharedBulkhead
from resilience.redis import RedisBackend
from resilience.testing import FakeClock

pytestmark = pytest.mark.redis

_names = itertools.count()
START = 100.0
#: The leases of these tests: renewed once a third of it (0.5 s) has passed.
LEASE = 1.5


class BoundedClock(FakeClock):
    """A fake clock (auto-advancing) that fails the test once read too often: a wait
    that would never end fails instead of hanging."""

    def __init__(self) -> None:
        super().__init__(START)
        self.reads = 0

    def monotonic(self) -> float:
        self.reads += 1
        if self.reads > 5000:
            raise AssertionError("the clock was read 5000 times: a wait that never ends")
        return super().monotonic()


@pytest.fixture
def clock() -> BoundedClock:
    return BoundedClock()


@pytest.fixture
def direct(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client, to read and write the holders as another process would."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def backend(redis_url: str, clock: BoundedClock) -> Iterator[RedisBackend]:
    """A backend timed by ``clock``, whose background sync runs only when woken."""
    made = RedisBackend.from_url(
        redis_url,
        mode="strict",
        prefix=f"bs{next(_names)}",
        clock=clock,
        lease_seconds=LEASE,
        sync_interval=10,
        timeout=1.0,  # a loaded machine must not time a request out
    )
    yield made
    made.close()
    made.client.close()


def store_of(backend: RedisBackend, clock: FakeClock, limit: int = 1) -> SharedBulkhead:
    bulkhead = rs.Bulkhead(limit, name="db", backend=backend, clock=clock)
    store = bulkhead._shared
    assert isinstance(store, SharedBulkhead)
    return store


def holders_key(backend: RedisBackend) -> str:
    return backend.key("bulkhead", "db", "holders")


def held_elsewhere(direct: redis.Redis, backend: RedisBackend, until: float) -> None:
    """Another process holds a slot, its lease ending at ``until``."""
    direct.zadd(holders_key(backend), {"elsewhere:1": until})


def record_wakes(monkeypatch: pytest.MonkeyPatch, backend: RedisBackend) -> list[bool]:
    """The background sync's wake-ups asked for (``urgent`` of each); the sync stays asleep."""
    wakes: list[bool] = []
    monkeypatch.setattr(backend, "wake", lambda urgent=True: wakes.append(urgent))
    return wakes


def fail_once(monkeypatch: pytest.MonkeyPatch, backend: RedisBackend, *, applied: bool) -> None:
    """The backend's next request fails: before Redis sees it, or after it was ``applied``."""
    real_run, real_arun = backend.run, backend.arun

    def restore() -> Unavailable:
        monkeypatch.setattr(backend, "run", real_run)
        monkeypatch.setattr(backend, "arun", real_arun)
        return Unavailable(TimeoutError("no answer"), 0.0, sent=applied)

    def run(script: str, keys: list[str], args: list[Any]) -> list[Any]:
        failure = restore()
        if applied:
            real_run(script, keys, args)
        raise failure

    async def arun(script: str, keys: list[str], args: list[Any]) -> list[Any]:
        failure = restore()
        if applied:
            await real_arun(script, keys, args)
        raise failure

    monkeypatch.setattr(backend, "run", run)
    monkeypatch.setattr(backend, "arun", arun)


Take = Callable[[SharedBulkhead, float | None], str | None]


def take_sync(store: SharedBulkhead, give_up: float | None) -> str | None:
    return store.take(give_up)


def take_async(store: SharedBulkhead, give_up: float | None) -> str | None:
    return asyncio.run(store.atake(give_up))


TAKES = [pytest.param(take_sync, id="sync"), pytest.param(take_async, id="async")]

#: The pauses of a waiting call: from 2 ms, doubling, at most 50 ms.
PAUSES = [0.002, 0.004, 0.008, 0.016, 0.032, 0.05, 0.05]


# -- waiting for the fleet ----------------------------------------------------------------------


@pytest.mark.parametrize("take", TAKES)
def test_a_waiting_call_asks_again_after_growing_pauses_until_it_gives_up(
    backend: RedisBackend, clock: BoundedClock, direct: redis.Redis, take: Take
) -> None:
    store = store_of(backend, clock)
    held_elsewhere(direct, backend, until=1e9)
    assert take(store, START + 0.2) is None
    assert clock.sleeps[: len(PAUSES)] == pytest.approx(PAUSES)
    assert sum(clock.sleeps) == pytest.approx(0.2)
    assert clock.monotonic() >= START + 0.2


@pytest.mark.parametrize("take", TAKES)
def test_a_waiting_call_gets_the_slot_once_the_holders_lease_ends(
    backend: RedisBackend, clock: BoundedClock, direct: redis.Redis, take: Take
) -> None:
    store = store_of(backend, clock)
    held_elsewhere(direct, backend, until=START + 0.1)
    member = take(store, START + 1)
    assert member is not None
    assert clock.sleeps == pytest.approx(PAUSES[:6])  # 112 ms: the first ask past 100 ms
    assert direct.zrange(holders_key(backend), 0, -1) == [member.encode()]


@pytest.mark.parametrize("take", TAKES)
@pytest.mark.parametrize("give_up", [None, START], ids=["may not wait", "no time left"])
def test_a_call_that_may_not_wait_asks_once(
    backend: RedisBackend,
    clock: BoundedClock,
    direct: redis.Redis,
    take: Take,
    give_up: float | None,
) -> None:
    store = store_of(backend, clock)
    held_elsewhere(direct, backend, until=1e9)
    before = backend.round_trips
    assert take(store, give_up) is None
    assert clock.sleeps == []
    assert backend.round_trips == before + 1


def test_the_holders_name_the_process_and_its_calls_in_order(
    backend: RedisBackend, clock: BoundedClock, direct: redis.Redis
) -> None:
    store = store_of(backend, clock, limit=2)
    assert [store.try_take(), store.try_take()] == [
        f"{backend.process_id}:1",
        f"{backend.process_id}:2",
    ]
    assert direct.zcard(holders_key(backend)) == 2


# -- giving slots back ------------------------------------------------------------------------


def test_a_slot_given_back_asks_the_sync_for_a_run_that_may_wait_for_a_request(
    backend: RedisBackend, clock: BoundedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_of(backend, clock)
    wakes = record_wakes(monkeypatch, backend)
    member = store.try_take()
    assert member is not None
    store.release(member)
    assert wakes == [False]
    store.release(UNCOUNTED)  # admitted while Redis was unavailable: nothing to give back
    assert wakes == [False]


def test_the_background_sync_gives_a_released_slot_back(
    backend: RedisBackend, clock: BoundedClock, direct: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_of(backend, clock)
    flushed = threading.Event()
    real_flush = store.flush

    def flush() -> None:
        real_flush()
        flushed.set()

    monkeypatch.setattr(store, "flush", flush)
    member = store.try_take()
    assert member is not None
    store.release(member)
    assert flushed.wait(10)  # woken: its interval (10 s) is not what runs it
    assert direct.zcard(holders_key(backend)) == 0


@pytest.mark.parametrize("take", TAKES)
def test_an_admission_whose_answer_is_lost_is_given_back_by_the_sync(
    backend: RedisBackend,
    clock: BoundedClock,
    direct: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    take: Take,
) -> None:
    store = store_of(backend, clock)
    wakes = record_wakes(monkeypatch, backend)
    fail_once(monkeypatch, backend, applied=True)
    with pytest.raises(Unavailable):
        take(store, None)
    assert direct.zcard(holders_key(backend)) == 1  # Redis admitted it all the same
    assert wakes == [False]
    backend.flush()
    assert direct.zcard(holders_key(backend)) == 0
    assert take(store, None) is not None


@pytest.mark.parametrize("failing", ["admission", "async admission", "sync", "count"])
def test_slots_given_back_during_a_failed_request_go_back_with_the_next_one(
    backend: RedisBackend,
    clock: BoundedClock,
    direct: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    failing: str,
) -> None:
    store = store_of(backend, clock)
    record_wakes(monkeypatch, backend)
    member = store.try_take()
    assert member is not None
    store.release(member)
    fail_once(monkeypatch, backend, applied=False)
    requests: dict[str, Callable[[], object]] = {
        "admission": store.try_take,
        "async admission": lambda: asyncio.run(store.atry_take()),
        "count": store.holders,
    }
    if failing == "sync":
        backend.flush()  # the sync keeps what failed to go
    else:
        with pytest.raises(Unavailable):
            requests[failing]()
    assert direct.zcard(holders_key(backend)) == 1
    backend.flush()
    assert direct.zcard(holders_key(backend)) == 0


def test_a_failed_admission_is_removed_again_until_its_lease_would_have_ended(
    backend: RedisBackend,
    clock: BoundedClock,
    direct: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It may land late: each sync removes it until a lease after the failure."""
    store = store_of(backend, clock)
    record_wakes(monkeypatch, backend)
    fail_once(monkeypatch, backend, applied=False)
    with pytest.raises(Unavailable):
        store.try_take()
    clock.advance(LEASE)
    member = f"{backend.process_id}:1"
    direct.zadd(holders_key(backend), {member: START + 2 * LEASE})  # it lands now
    backend.flush()
    assert direct.zcard(holders_key(backend)) == 0


# -- leases -----------------------------------------------------------------------------------


def test_the_sync_renews_a_lease_once_a_third_of_it_has_passed(
    backend: RedisBackend, clock: BoundedClock
) -> None:
    store = store_of(backend, clock)
    assert store.try_take() is not None
    before = backend.round_trips
    clock.advance(LEASE / 4)
    backend.flush()
    assert backend.round_trips == before  # nothing due: no round trip
    clock.advance(LEASE / 3 - LEASE / 4)  # a third of the lease, to the bit
    backend.flush()
    assert backend.round_trips == before + 1
    backend.flush()
    assert backend.round_trips == before + 1  # renewed: not due again for a third of a lease
    clock.advance(LEASE - LEASE / 3)  # the first lease ends now; the renewed one goes on
    assert store.holders() == 1


def test_an_admission_leaves_the_renewals_to_the_sync(
    backend: RedisBackend, clock: BoundedClock
) -> None:
    store = store_of(backend, clock, limit=2)
    assert store.try_take() is not None
    clock.advance(LEASE / 3)
    assert store.try_take() is not None
    clock.advance(LEASE - LEASE / 3)  # the first lease ends: it was not renewed
    assert store.holders() == 1


def test_a_slot_given_back_is_no_longer_renewed(
    backend: RedisBackend, clock: BoundedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_of(backend, clock)
    record_wakes(monkeypatch, backend)
    member = store.try_take()
    assert member is not None
    store.release(member)
    backend.flush()
    before = backend.round_trips
    clock.advance(LEASE)
    backend.flush()
    assert backend.round_trips == before


# -- reports ----------------------------------------------------------------------------------


def test_after_a_failure_the_backend_is_reported_back_once_a_request_gets_through(
    backend: RedisBackend,
    clock: BoundedClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = store_of(backend, clock)
    record_wakes(monkeypatch, backend)

    def back_again() -> int:
        return sum("the backend answers again" in record.getMessage() for record in caplog.records)

    failure = Unavailable(TimeoutError("no answer"), 0.0)
    with caplog.at_level(logging.WARNING, logger="resilience"):
        store.failed("acquire", failure, "local")
        member = store.try_take()
        assert member is not None
        assert back_again() == 1
        store.failed("acquire", failure, "local")
        store.release(member)
        fail_once(monkeypatch, backend, applied=False)
        backend.flush()  # fails: the release waits
        assert back_again() == 1
        backend.flush()
        assert back_again() == 2
