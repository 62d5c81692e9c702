"""Tests of `resilience.Keyed`: routing, one policy per key under races, eviction."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import resilience as rs
from modes import run_plain
from resilience.metrics import KeyedMetrics
from resilience.testing import FakeClock


def boom() -> None:
    raise ConnectionError("down")


def ok() -> str:
    return "ok"


class Factory:
    """Makes a breaker per key and counts how many it made of each."""

    def __init__(self, **options: Any) -> None:
        self.made: Counter[Any] = Counter()
        self.options = options
        self.lock = threading.Lock()

    def __call__(self, key: Any) -> rs.CircuitBreaker:
        with self.lock:
            self.made[key] += 1
        return rs.CircuitBreaker(name=f"api:{key}", **self.options)


def breakers() -> tuple[rs.Keyed, Factory]:
    factory = Factory(minimum_calls=2, failure_ratio=0.5, open_seconds=30)
    return rs.Keyed(factory, key="host"), factory


async def test_each_key_has_its_own_breaker(mode: str) -> None:
    keyed, factory = breakers()
    for _ in range(2):
        with rs.tags(host="a"), pytest.raises(ConnectionError):
            await run_plain(mode, keyed, boom)
    with rs.tags(host="a"), pytest.raises(rs.CircuitOpenError):
        await run_plain(mode, keyed, ok)
    with rs.tags(host="b"):
        assert await run_plain(mode, keyed, ok) == "ok"
    assert factory.made == {"a": 1, "b": 1}
    a, b = keyed.policy_for("a"), keyed.policy_for("b")
    assert isinstance(a, rs.CircuitBreaker)
    assert isinstance(b, rs.CircuitBreaker)
    assert a.state is rs.CircuitState.OPEN
    assert b.state is rs.CircuitState.CLOSED


async def test_a_key_from_the_arguments_or_a_function_of_the_context(mode: str) -> None:
    seen: list[Any] = []

    def factory(key: Any) -> rs.Middleware:
        seen.append(key)
        return rs.Retry(1)

    by_args = rs.Keyed(factory, key_from_args=lambda user, **_: user % 2)
    for user in (1, 2, 3):
        assert await run_plain(mode, by_args, lambda user: user * 10, user) == user * 10
    by_context = rs.Keyed(factory, key=lambda ctx: (ctx.tags["tenant"], ctx.pipeline))
    with rs.tags(tenant="acme"):
        await run_plain(mode, by_context, ok)
    assert seen == [1, 0, ("acme", None)]


async def test_a_missing_tag_is_a_key_error_before_anything_runs(mode: str) -> None:
    keyed, factory = breakers()
    calls = []
    with pytest.raises(KeyError, match="no tag 'host'"):
        await run_plain(mode, keyed, lambda: calls.append(1))
    assert calls == []
    assert factory.made == {}


def test_one_policy_per_key_when_threads_race() -> None:
    keyed, factory = breakers()
    barrier = threading.Barrier(16)

    def one(index: int) -> str:
        barrier.wait(10.0)
        with rs.tags(host=f"h{index % 2}"):
            return keyed.call(ok)

    with ThreadPoolExecutor(16) as pool:
        assert list(pool.map(one, range(16))) == ["ok"] * 16
    assert factory.made == {"h0": 1, "h1": 1}
    assert keyed.metrics().created == 2


async def test_one_policy_per_key_when_tasks_race() -> None:
    keyed, factory = breakers()
    gate = asyncio.Event()

    async def one(index: int) -> str:
        await gate.wait()
        with rs.tags(host=f"h{index % 3}"):
            return await keyed.acall(asyncio.sleep, 0, "ok")

    tasks = [asyncio.create_task(one(index)) for index in range(30)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*tasks) == ["ok"] * 30
    assert factory.made == {"h0": 1, "h1": 1, "h2": 1}


def test_counts_stay_exact_under_threads() -> None:
    keyed = rs.Keyed(lambda key: rs.CircuitBreaker(window_calls=1000), key="host")

    def many(index: int) -> None:
        for call in range(200):
            with rs.tags(host=f"h{(index + call) % 4}"):
                keyed.call(ok)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(many, range(8)))
    per_key = keyed.metrics().per_key
    assert sorted(per_key) == ["h0", "h1", "h2", "h3"]
    assert [per_key[key].calls for key in sorted(per_key)] == [400, 400, 400, 400]


# -- eviction -----------------------------------------------------------------------------------


def call_on(keyed: rs.Keyed, host: str, fn: Any = ok) -> Any:
    with rs.tags(host=host):
        return keyed.call(fn)


def test_the_least_recently_used_key_goes_past_max_keys() -> None:
    keyed = rs.Keyed(lambda key: rs.CircuitBreaker(), key="host", max_keys=3)
    for host in "abc":
        call_on(keyed, host)
    call_on(keyed, "a")  # a is now the most recent
    call_on(keyed, "d")
    assert keyed.keys() == ["c", "a", "d"]
    assert keyed.metrics().evicted == 1
    assert keyed.policy_for("b") is None


def test_an_idle_key_goes_after_idle_seconds(clock: FakeClock) -> None:
    keyed = rs.Keyed(lambda key: rs.CircuitBreaker(), key="host", idle_seconds=10, clock=clock)
    call_on(keyed, "a")
    clock.advance(5)
    call_on(keyed, "b")
    clock.advance(6)  # a idle 11 s, b 6 s
    call_on(keyed, "c")
    assert keyed.keys() == ["b", "c"]
    clock.advance(10)
    assert keyed.evict_idle() == 2
    assert keyed.keys() == []
    clock.advance(100)
    call_on(keyed, "a")  # a new policy for a key seen before
    assert keyed.metrics().created == 4


def test_a_key_with_a_call_in_flight_is_never_evicted() -> None:
    keyed = rs.Keyed(lambda key: rs.Bulkhead(max_concurrent=5), key="host", max_keys=1)
    entered, release = threading.Event(), threading.Event()

    def hold() -> str:
        entered.set()
        release.wait(10.0)
        return "held"

    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(call_on, keyed, "a", hold)
        assert entered.wait(10.0)
        call_on(keyed, "b")
        assert keyed.keys() == ["a", "b"]
        assert keyed.metrics().pinned == 1
        release.set()
        assert held.result(10.0) == "held"
    call_on(keyed, "c")
    assert keyed.keys() == ["c"]
    assert keyed.metrics().pinned == 0


def test_an_open_breaker_is_kept_until_it_closes(clock: FakeClock) -> None:
    keyed = rs.Keyed(
        lambda key: rs.CircuitBreaker(minimum_calls=1, open_seconds=30, clock=clock),
        key="host",
        max_keys=1,
        idle_seconds=5,
        clock=clock,
    )
    with pytest.raises(ConnectionError):
        call_on(keyed, "down", boom)
    clock.advance(10)
    call_on(keyed, "up")
    assert keyed.keys() == ["down", "up"]  # idle and past max_keys, but open: kept
    with pytest.raises(rs.CircuitOpenError):
        call_on(keyed, "down")
    clock.advance(31)
    assert call_on(keyed, "down") == "ok"  # the trial closes it
    clock.advance(10)
    call_on(keyed, "other")
    assert keyed.keys() == ["other"]


def test_a_drained_throttle_is_kept_until_full(clock: FakeClock) -> None:
    keyed = rs.Keyed(
        lambda key: rs.Throttle(rate=1, per=10.0, burst=1, max_wait=0, clock=clock),
        key="host",
        max_keys=1,
        clock=clock,
    )
    call_on(keyed, "a")
    call_on(keyed, "b")  # a's bucket is empty: a new one would let a burst through
    assert keyed.keys() == ["a", "b"]
    with pytest.raises(rs.ThrottledError):
        call_on(keyed, "a")
    clock.advance(10)
    call_on(keyed, "c")
    assert keyed.keys() == ["c"]


# -- events, metrics, tags, construction ------------------------------------------------------


def test_listeners_hear_keys_made_later_until_they_unsubscribe() -> None:
    keyed, _ = breakers()
    heard: list[Any] = []
    stop = keyed.subscribe(heard.append)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            call_on(keyed, "new", boom)
    assert any(isinstance(event, rs.events.CircuitStateChange) for event in heard)
    count = len(heard)
    stop()
    with pytest.raises(rs.CircuitOpenError):
        call_on(keyed, "new")
    assert len(heard) == count


def test_metrics_are_bounded_and_most_recent_first() -> None:
    keyed, _ = breakers()
    for host in ["a", "b", "c", "d"]:
        call_on(keyed, host)
    metrics = keyed.metrics(limit=2)
    assert isinstance(metrics, KeyedMetrics)
    assert (metrics.keys, metrics.created, metrics.evicted) == (4, 4, 0)
    assert list(metrics.per_key) == ["d", "c"]
    assert keyed.metrics(limit=0).per_key == {}


async def test_the_key_is_a_tag_only_when_asked(mode: str) -> None:
    seen = []
    quiet = rs.Keyed(lambda key: rs.Retry(1), key_from_args=lambda x: x)
    loud = rs.Keyed(lambda key: rs.Retry(1), key_from_args=lambda x: x, tag="tenant")
    for keyed in (quiet, loud):
        await run_plain(mode, keyed, lambda x: seen.append(dict(rs.current().tags)), "acme")
    assert seen == [{}, {"tenant": "acme"}]


async def test_in_a_pipeline_each_retry_is_routed(mode: str) -> None:
    factory = Factory(minimum_calls=10)
    keyed = rs.Keyed(factory, key="host")
    attempts = Counter()

    def flaky() -> str:
        attempts[rs.current().attempt] += 1
        if rs.current().attempt < 3:
            raise ConnectionError("again")
        return "ok"

    pipeline = rs.Pipeline([rs.Retry(3, backoff=0.0), keyed])
    with rs.tags(host="x"):
        assert await run_plain(mode, pipeline, flaky) == "ok"
    breaker = keyed.policy_for("x")
    assert isinstance(breaker, rs.CircuitBreaker)
    assert breaker.metrics().calls == 3
    assert factory.made == {"x": 1}


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({"factory": None, "key": "host"}, TypeError, "factory must be"),
        ({}, TypeError, "exactly one of key"),
        ({"key": "host", "key_from_args": len}, TypeError, "exactly one of key"),
        ({"key": ""}, TypeError, "key must be"),
        ({"key": 3}, TypeError, "key must be"),
        ({"key": "host", "max_keys": 0}, ValueError, "max_keys"),
        ({"key": "host", "idle_seconds": -1}, ValueError, "idle_seconds"),
        ({"key": "host", "tag": ""}, TypeError, "tag must be"),
    ],
)
def test_bad_arguments_are_refused(options: dict[str, Any], error: type, words: str) -> None:
    options.setdefault("factory", lambda key: rs.Retry(1))
    with pytest.raises(error, match=words):
        rs.Keyed(**options)


def test_a_factory_that_makes_no_policy_is_refused_at_the_call() -> None:
    keyed = rs.Keyed(lambda key: "not a policy", key="host")  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="returned str, not a resilience policy"):
        call_on(keyed, "a")
    assert keyed.keys() == []
