"""The Redis circuit store's own cases against a real redis-server: edges the shared tests miss.

Each backend here is timed by a `FakeClock` (the scripts take ``now`` from it), runs no
background sync (the test syncs with ``flush``) and can be made to fail on command
(`Backend.fail`), so every case is deterministic.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

import resilience as rs
from redis_support import no_retry
from resilience import backoff
from resilience.events import BackendErrorEvent
from resilience.metrics import CircuitMetrics
from resilience.redis import RedisBackend
from resilience.testing import FakeClock

pytestmark = pytest.mark.redis

_prefixes = itertools.count()


class Boom(Exception):
    pass


def boom() -> None:
    raise Boom


def ignored() -> None:
    raise KeyError("not counted")


def failing_calls(breaker: rs.CircuitBreaker, count: int) -> None:
    for _ in range(count):
        with pytest.raises(Boom):
            breaker.call(boom)


class Backend(RedisBackend):
    """A backend on a fake clock, synced by the test, whose Redis fails while told to.

    A failure rests the backend as a real one does (its requests are refused without
    being sent, `available` is False) until `recover`.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(retry_interval=60, **options)
        self.broken: Exception | None = None
        self.wakes = 0
        self.held: tuple[threading.Event, threading.Event] | None = None
        self.async_requests = 0

    def start(self) -> None:
        """No background sync: the test calls `flush`."""

    def wake(self, *, urgent: bool = True) -> None:
        self.wakes += 1

    def fail(self, error: Exception | None = None) -> None:
        """From now on Redis fails (by default: it refuses connections)."""
        self.broken = error or redis.ConnectionError("Error connecting to 127.0.0.1:1")

    def recover(self) -> None:
        self.broken = None
        self._down_until = 0.0

    def run(self, script: str, keys: list[str], args: list[Any]) -> list[Any]:
        self._check()
        if self.broken is not None:
            raise self._failed(self.broken)
        reply = super().run(script, keys, args)
        held, self.held = self.held, None
        if held is not None:  # the answer arrives, and waits to be taken
            answered, go = held
            answered.set()
            assert go.wait(10)
        return reply

    def hold_next_answer(self) -> tuple[threading.Event, threading.Event]:
        """The next answer is held: the first event is set when it came, the second frees it."""
        self.held = (threading.Event(), threading.Event())
        return self.held

    async def arun(self, script: str, keys: list[str], args: list[Any]) -> list[Any]:
        self.async_requests += 1
        self._check()
        if self.broken is not None:
            raise self._failed(self.broken)
        return await super().arun(script, keys, args)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    made = redis.Redis.from_url(
        redis_url, socket_timeout=2.0, socket_connect_timeout=2.0, retry=no_retry()
    )
    yield made
    made.close()


class Fleet:
    """Backends ("processes") sharing one prefix and one fake clock."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.clock = FakeClock(100.0)
        self.prefix = f"cs{next(_prefixes)}"

    def backend(self, mode: str = "strict", **options: Any) -> Backend:
        options.setdefault("on_backend_error", "local")
        return Backend(
            client=self.client,
            prefix=self.prefix,
            mode=mode,
            timeout=2.0,
            clock=self.clock,
            **options,
        )

    def breaker(
        self, backend: Backend | None = None, name: str = "b", **rules: Any
    ) -> rs.CircuitBreaker:
        return rs.CircuitBreaker(
            name=name, backend=backend or self.backend(), clock=self.clock, **rules
        )

    def tripped_in_the_process(self, backend: Backend) -> rs.CircuitBreaker:
        """A breaker opened in the process while Redis is down, whose break (1 s) is over."""
        breaker = self.breaker(
            backend, consecutive_failures=1, open_seconds=1, half_open_calls=1, ignore=KeyError
        )
        backend.fail()
        failing_calls(breaker, 1)
        self.clock.advance(1)
        return breaker


@pytest.fixture
def fleet(client: redis.Redis) -> Fleet:
    return Fleet(client)


def keys_of(breaker: rs.CircuitBreaker) -> tuple[str, str]:
    """The breaker's keys in Redis: its state and its window."""
    backend = breaker.backend
    assert isinstance(backend, RedisBackend)
    return backend.key("circuit_breaker", "b", "state"), backend.key(
        "circuit_breaker", "b", "window"
    )


# -- rules and states --------------------------------------------------------------------------


def test_new_thresholds_apply_to_the_fleets_breaker(fleet: Fleet) -> None:
    backend = fleet.backend()
    breaker = fleet.breaker(backend, consecutive_failures=5)
    breaker.update(consecutive_failures=2)
    failing_calls(breaker, 2)
    backend.flush()
    assert breaker.state is rs.CircuitState.OPEN


def test_from_the_ninth_trip_in_a_row_the_eighth_break_repeats(fleet: Fleet) -> None:
    """Eight break durations travel with each request: the ninth trip takes the eighth."""
    backend = fleet.backend()
    breaker = fleet.breaker(backend, consecutive_failures=1, open_seconds=backoff.linear(1.0))
    failing_calls(breaker, 1)
    for trip in range(2, 10):
        backend.flush()
        fleet.clock.advance(trip - 1)  # the break of the trip before
        failing_calls(breaker, 1)  # the trial fails
    backend.flush()
    assert breaker.metrics().retry_after == 8.0


@pytest.mark.parametrize("mode", ["strict", "local-first"])
def test_a_control_applies_in_the_process_at_once(fleet: Fleet, mode: str) -> None:
    backend = fleet.backend(mode)
    breaker = fleet.breaker(backend)
    assert breaker.call(lambda: 1) == 1
    changes: list[rs.CircuitState] = []
    breaker.subscribe(lambda event: changes.append(event.new))
    breaker.isolate()
    assert changes == [rs.CircuitState.ISOLATED]
    with pytest.raises(rs.CircuitOpenError, match="isolated"):
        breaker.call(lambda: 1)


def a_trial_given_back(fleet: Fleet) -> tuple[Backend, rs.CircuitBreaker]:
    """A breaker of one half-open trial, tripped and broken for 1 s, whose trial was given back."""
    backend = fleet.backend()
    breaker = fleet.breaker(
        backend, consecutive_failures=1, open_seconds=1, half_open_calls=1, ignore=KeyError
    )
    failing_calls(breaker, 1)
    backend.flush()
    fleet.clock.advance(1)
    with pytest.raises(KeyError):
        breaker.call(ignored)  # the only trial, given back
    return backend, breaker


def test_a_trial_given_back_frees_its_slot_for_the_fleet(fleet: Fleet) -> None:
    backend, breaker = a_trial_given_back(fleet)
    assert backend.wakes == 2  # the failure and the trial: the fleet should know now
    assert breaker.call(lambda: 2) == 2  # the slot is free again
    assert backend.wakes == 3  # the trial's success


def test_a_success_or_a_call_given_back_waits_for_the_next_request(fleet: Fleet) -> None:
    backend = fleet.backend()
    breaker = fleet.breaker(backend, ignore=KeyError)
    with pytest.raises(KeyError):
        breaker.call(ignored)
    assert breaker.call(lambda: 1) == 1
    assert backend.wakes == 0
    before = backend.round_trips
    backend.flush()
    assert backend.round_trips == before + 1  # the success
    backend.flush()
    assert backend.round_trips == before + 1  # strict: nothing to send, no request


def test_a_late_success_of_a_closed_breaker_does_not_count_once_it_opened(fleet: Fleet) -> None:
    backend = fleet.backend("local-first")
    breaker = fleet.breaker(backend, consecutive_failures=2)
    backend.flush()  # the fleet's breaker is closed: calls go through the lane

    def outlives_the_trip() -> int:
        failing_calls(breaker, 2)
        backend.flush()  # open
        return 1

    assert breaker.call(outlives_the_trip) == 1
    backend.flush()
    metrics = breaker.metrics()
    assert (metrics.state, metrics.consecutive_failures) == (rs.CircuitState.OPEN, 2)


def test_the_end_of_an_outage_is_logged_so_the_next_one_is_too(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    backend = fleet.backend()
    breaker = fleet.breaker(backend)
    for _ in range(2):
        backend.fail()
        assert breaker.call(lambda: 1) == 1
        assert breaker.call(lambda: 1) == 1  # the same outage: not logged again
        backend.recover()
        assert breaker.call(lambda: 1) == 1
    logged = [r.getMessage() for r in caplog.records if r.name == "resilience"]
    failed = [m for m in logged if "the backend failed" in m]
    back = [m for m in logged if "the backend answers again" in m]
    assert (len(failed), len(back)) == (2, 2)


def test_a_trial_out_longer_than_half_open_max_seconds_reopens_the_breaker(fleet: Fleet) -> None:
    backend = fleet.backend()
    breaker = fleet.breaker(
        backend,
        consecutive_failures=1,
        open_seconds=backoff.linear(1.0),
        half_open_calls=1,
        half_open_max_seconds=5,
    )
    store = breaker.store
    failing_calls(breaker, 1)
    backend.flush()
    fleet.clock.advance(1)
    late = store.acquire()  # the trial, which does not come back
    assert late >= 0
    fleet.clock.advance(4.5)
    assert store.acquire() < 0  # its slot is taken
    assert breaker.state is rs.CircuitState.HALF_OPEN
    fleet.clock.advance(0.5)
    assert store.acquire() < 0  # out for half_open_max_seconds: a failed trial
    assert breaker.metrics().state is rs.CircuitState.OPEN
    assert breaker.metrics().retry_after == 2.0  # the second trip in a row
    fleet.clock.advance(2)
    assert store.acquire() >= 0  # the next trial
    store.release(late)  # the late trial, given back: it frees no slot of the new trials
    backend.flush()
    assert store.acquire() < 0


def test_trials_out_and_trials_done_both_take_a_slot(fleet: Fleet) -> None:
    backend = fleet.backend()
    breaker = fleet.breaker(backend, consecutive_failures=1, open_seconds=1, half_open_calls=3)
    failing_calls(breaker, 1)
    backend.flush()
    fleet.clock.advance(1)
    store = breaker.store
    assert store.acquire() >= 0  # a trial out
    assert breaker.call(lambda: 1) == 1  # a trial done
    assert store.acquire() >= 0  # another trial out
    with pytest.raises(rs.CircuitOpenError, match="trial calls are taken"):
        breaker.call(lambda: 1)
    assert breaker.metrics().rejected == 1


def test_slow_trials_are_judged_by_the_slow_call_ratio(fleet: Fleet) -> None:
    backend = fleet.backend()
    breaker = fleet.breaker(
        backend,
        failure_ratio=0.5,
        minimum_calls=1,
        slow_call_seconds=1,
        slow_call_ratio=0.6,
        open_seconds=1,
        half_open_calls=3,
        half_open_rule="ratio",
    )
    failing_calls(breaker, 1)
    backend.flush()
    fleet.clock.advance(1)

    def slow() -> int:
        fleet.clock.advance(2)
        return 1

    assert breaker.call(lambda: 1) == 1
    assert breaker.call(slow) == 1
    metrics = breaker.metrics()
    assert (metrics.state, metrics.calls, metrics.slow_calls) == (rs.CircuitState.HALF_OPEN, 2, 1)
    assert breaker.call(slow) == 1  # 2 of 3 trials slow: over the ratio
    assert breaker.metrics().state is rs.CircuitState.OPEN


def test_a_trial_given_back_frees_one_slot(fleet: Fleet) -> None:
    backend = fleet.backend()
    breaker = fleet.breaker(backend, consecutive_failures=1, open_seconds=1, half_open_calls=2)
    failing_calls(breaker, 1)
    backend.flush()
    fleet.clock.advance(1)
    store = breaker.store
    first, second = store.acquire(), store.acquire()
    assert min(first, second) >= 0
    store.release(first)
    backend.flush()
    assert store.acquire() >= 0  # in the slot given back
    assert store.acquire() < 0


def half_open_after(
    fleet: Fleet,
    breaker: rs.CircuitBreaker,
    failures: int,
    trials: tuple[Callable[[], object], ...],
) -> None:
    """Trip ``breaker`` with ``failures``, wait out its break of 1 s, run ``trials`` as trial
    calls and send their outcomes (with a read of the metrics)."""
    failing_calls(breaker, failures)
    assert breaker.metrics().state is rs.CircuitState.OPEN
    fleet.clock.advance(1)
    for fn in trials:
        with contextlib.suppress(Boom):
            breaker.call(fn)
    breaker.metrics()


def test_lowering_half_open_calls_to_the_trials_done_closes_the_fleet_s_breaker(
    fleet: Fleet,
) -> None:
    """Two trials of three succeeded: with two asked for, the next request closes the breaker
    and the call is admitted, instead of being refused as if trials were still to run."""
    breaker = fleet.breaker(consecutive_failures=1, open_seconds=1, half_open_calls=3)
    half_open_after(fleet, breaker, 1, (lambda: 1, lambda: 2))
    breaker.update(half_open_calls=2)
    assert breaker.call(lambda: 3) == 3
    assert breaker.metrics().state is rs.CircuitState.CLOSED


def test_lowering_half_open_calls_under_the_ratio_rule_judges_the_fleet_s_trials(
    fleet: Fleet,
) -> None:
    """2 failed trials of 4 done reopen the breaker once 4 are asked for; later, 1 failed of 3
    done closes it though only 2 are asked for (the ratio is of all the trials done)."""
    breaker = fleet.breaker(
        failure_ratio=0.5,
        minimum_calls=2,
        window_calls=2,
        open_seconds=1,
        half_open_calls=6,
        half_open_rule="ratio",
    )
    half_open_after(fleet, breaker, 2, (boom, boom, lambda: 1, lambda: 2))
    assert breaker.state is rs.CircuitState.HALF_OPEN  # 2 of 6: the last two decide
    breaker.update(half_open_calls=4)
    metrics = breaker.metrics()
    assert (metrics.state, metrics.trips) == (rs.CircuitState.OPEN, 2)
    fleet.clock.advance(1)
    for fn in (boom, lambda: 1, lambda: 2):
        with contextlib.suppress(Boom):
            breaker.call(fn)
    assert breaker.metrics().state is rs.CircuitState.HALF_OPEN  # 1 of 4: the last decides
    breaker.update(half_open_calls=2)
    assert breaker.metrics().state is rs.CircuitState.CLOSED


def test_raising_half_open_calls_lets_the_fleet_run_more_trials(fleet: Fleet) -> None:
    breaker = fleet.breaker(consecutive_failures=1, open_seconds=1, half_open_calls=2)
    half_open_after(fleet, breaker, 1, (lambda: 1,))
    breaker.update(half_open_calls=3)
    for _ in range(2):
        assert breaker.metrics().state is rs.CircuitState.HALF_OPEN
        assert breaker.call(lambda: 2) == 2
    assert breaker.metrics().state is rs.CircuitState.CLOSED


def test_trials_out_when_half_open_calls_is_lowered_decide_as_they_end(fleet: Fleet) -> None:
    """One trial done, two out, one asked for: the fleet's breaker waits for the trials out,
    and closes when the last of them is given back."""
    backend = fleet.backend()
    breaker = fleet.breaker(backend, consecutive_failures=1, open_seconds=1, half_open_calls=3)
    half_open_after(fleet, breaker, 1, (lambda: 1,))
    store = breaker.store
    first, second = store.acquire(), store.acquire()
    assert min(first, second) >= 0
    breaker.update(half_open_calls=1)
    assert breaker.metrics().state is rs.CircuitState.HALF_OPEN
    store.release(first)
    backend.flush()
    assert breaker.metrics().state is rs.CircuitState.HALF_OPEN  # a trial still out
    store.release(second)
    assert breaker.metrics().state is rs.CircuitState.CLOSED


def test_an_old_bucket_of_a_time_window_is_deleted(fleet: Fleet) -> None:
    backend = fleet.backend()
    breaker = fleet.breaker(backend, consecutive_failures=10, window_seconds=10, window_buckets=5)
    failing_calls(breaker, 1)
    backend.flush()
    fleet.clock.advance(2)
    failing_calls(breaker, 1)
    backend.flush()
    window = keys_of(breaker)[1]
    assert fleet.client.hlen(window) == 2
    fleet.clock.advance(9)  # the first bucket is out of the window
    assert breaker.metrics().failures == 1
    assert fleet.client.hlen(window) == 1


def test_at_the_end_of_the_break_the_wait_is_zero(fleet: Fleet) -> None:
    backend = fleet.backend()
    breaker = fleet.breaker(backend, consecutive_failures=1, open_seconds=3)
    failing_calls(breaker, 1)
    backend.flush()
    fleet.clock.advance(2.5)
    with pytest.raises(rs.CircuitOpenError) as refused:
        breaker.call(lambda: 1)
    assert refused.value.retry_after == 0.5
    fleet.clock.advance(0.5)
    metrics = breaker.metrics()
    assert (metrics.state, metrics.retry_after) == (rs.CircuitState.OPEN, 0.0)


def test_local_first_counts_the_calls_of_a_breaker_closed_again(fleet: Fleet) -> None:
    backend = fleet.backend("local-first")
    breaker = fleet.breaker(backend, consecutive_failures=1, open_seconds=1, half_open_calls=1)
    failing_calls(breaker, 1)
    backend.flush()
    fleet.clock.advance(1)
    assert breaker.call(lambda: 1) == 1  # the trial closes the breaker
    backend.flush()
    assert breaker.state is rs.CircuitState.CLOSED
    for _ in range(3):
        assert breaker.call(lambda: 2) == 2  # through the lane
    backend.flush()
    assert breaker.metrics().calls == 3
    failing_calls(breaker, 1)
    backend.flush()
    assert breaker.metrics().state is rs.CircuitState.OPEN


def test_local_first_sends_the_lane_s_successes_before_the_failures_after_them(
    fleet: Fleet,
) -> None:
    backend = fleet.backend("local-first")
    breaker = fleet.breaker(backend, consecutive_failures=5)
    backend.flush()  # the fleet's breaker is closed: calls go through the lane
    assert breaker.call(lambda: 1) == 1
    failing_calls(breaker, 1)
    backend.flush()
    metrics = breaker.metrics()
    assert (metrics.calls, metrics.consecutive_failures) == (2, 1)


def test_an_answer_overtaken_by_a_newer_one_is_not_taken(fleet: Fleet) -> None:
    backend = fleet.backend()
    breaker = fleet.breaker(backend, consecutive_failures=1)
    answered, go = backend.hold_next_answer()
    reader = threading.Thread(target=breaker.metrics)  # read while the breaker is closed
    reader.start()
    try:
        assert answered.wait(10)
        failing_calls(breaker, 1)
        backend.flush()  # the newer answer: open
    finally:
        go.set()
        reader.join(10)
    assert breaker.state is rs.CircuitState.OPEN


@pytest.mark.parametrize("fails", [False, True])
def test_an_async_call_asks_redis_without_blocking_its_event_loop(
    fleet: Fleet, fails: bool
) -> None:
    backend = fleet.backend()
    breaker = fleet.breaker(backend, consecutive_failures=1)

    async def ok() -> int:
        return 4

    async def calls() -> None:
        assert await breaker.acall(ok) == 4
        if fails:
            backend.fail()
        assert await breaker.acall(ok) == 4  # decided in the process when Redis fails

    asyncio.run(calls())
    assert backend.async_requests == 2


def test_local_first_refuses_in_the_process_until_the_break_is_over(fleet: Fleet) -> None:
    backend = fleet.backend("local-first")
    breaker = fleet.breaker(backend, consecutive_failures=1, open_seconds=10)
    failing_calls(breaker, 1)
    backend.flush()  # the fleet's breaker is open
    before = backend.round_trips
    with pytest.raises(rs.CircuitOpenError):
        breaker.call(lambda: 1)
    with pytest.raises(rs.CircuitOpenError):
        asyncio.run(breaker.acall(asyncio.sleep, 0, 1))
    assert backend.round_trips == before  # refused here, without asking
    assert breaker.metrics().rejected == 2
    fleet.clock.advance(10)
    assert breaker.call(lambda: 5) == 5  # the trial, admitted by the fleet's breaker
    assert backend.round_trips == before + 2


# -- the keys' lifetime and large batches ------------------------------------------------------


def expiring_soon(client: redis.Redis, *keys: str) -> list[bool]:
    """For each key: does it expire within 5 s (not renewed since it was cut to 5 s)?"""
    return [0 <= client.pttl(key) <= 5000 for key in keys]


@pytest.mark.parametrize("window", ["calls", "seconds"])
def test_a_new_window_gets_the_ttl_of_the_keys(fleet: Fleet, window: str) -> None:
    backend = fleet.backend(key_ttl=100)
    size: dict[str, Any] = {"window_seconds": 10} if window == "seconds" else {}
    breaker = fleet.breaker(backend, consecutive_failures=10, **size)
    breaker.metrics()  # the keys' TTL renewed: no window yet
    fleet.clock.advance(1)
    failing_calls(breaker, 1)
    backend.flush()  # a window made by this failure, without renewing the keys' TTL
    assert 5000 < fleet.client.pttl(keys_of(breaker)[1]) <= 100_000


def test_the_keys_ttl_is_renewed_every_quarter_of_it(fleet: Fleet) -> None:
    backend = fleet.backend(key_ttl=100)
    breaker = fleet.breaker(backend, consecutive_failures=10)
    failing_calls(breaker, 1)
    backend.flush()
    keys = keys_of(breaker)
    for key in keys:
        fleet.client.expire(key, 5)
    fleet.clock.advance(24.5)
    failing_calls(breaker, 1)  # the window grows: its TTL is not renewed on every call
    backend.flush()
    assert expiring_soon(fleet.client, *keys) == [True, True]
    fleet.clock.advance(0.5)  # a quarter of the TTL since the last renewal
    assert breaker.call(lambda: 1) == 1
    assert expiring_soon(fleet.client, *keys) == [False, False]


def test_a_batch_of_ten_thousand_successes_fills_a_window_of_ten_thousand(fleet: Fleet) -> None:
    backend = fleet.backend("local-first")
    breaker = fleet.breaker(backend, window_calls=10_000, minimum_calls=10_000)
    backend.flush()
    for _ in range(10_000):
        breaker.call(lambda: None)
    backend.flush()  # one sync sends them all
    for _ in range(2_500):
        breaker.call(lambda: None)
    backend.flush()  # the oldest 2 500 leave the window
    metrics = breaker.metrics()
    assert (metrics.calls, metrics.shared) == (10_000, True)
    assert fleet.client.llen(keys_of(breaker)[1]) == 10_000


# -- while Redis is down -----------------------------------------------------------------------


def test_new_thresholds_apply_while_deciding_in_the_process(fleet: Fleet) -> None:
    backend = fleet.backend()
    breaker = fleet.breaker(backend, consecutive_failures=5)
    backend.fail()
    assert breaker.call(lambda: 1) == 1  # deciding here from now on
    breaker.update(consecutive_failures=1)
    failing_calls(breaker, 1)
    assert breaker.state is rs.CircuitState.OPEN


def test_a_breaker_opened_in_the_process_tells_its_own_wait(fleet: Fleet) -> None:
    backend = fleet.backend()
    breaker = fleet.breaker(backend, consecutive_failures=1, open_seconds=10)
    backend.fail()
    failing_calls(breaker, 1)
    assert backend.wakes == 0  # decided here: nothing for the fleet to hear of
    fleet.clock.advance(4)
    with pytest.raises(rs.CircuitOpenError) as refused:
        breaker.call(lambda: 1)
    assert refused.value.retry_after == 6.0


def test_a_trial_given_back_in_the_process_frees_its_slot_there(fleet: Fleet) -> None:
    backend = fleet.backend()
    breaker = fleet.tripped_in_the_process(backend)
    wakes = backend.wakes
    with pytest.raises(KeyError):
        breaker.call(ignored)  # the trial, given back
    assert backend.wakes == wakes  # nothing for the fleet to hear of
    assert breaker.call(lambda: 2) == 2  # the next trial: the slot came back
    assert breaker.state is rs.CircuitState.CLOSED


@pytest.mark.parametrize("ends", ["given back", "succeeding"])
def test_a_trial_admitted_in_the_process_may_end_after_redis_is_back(
    fleet: Fleet, ends: str
) -> None:
    backend = fleet.backend()
    breaker = fleet.tripped_in_the_process(backend)

    def back_then_ends() -> int:
        backend.recover()
        assert breaker.metrics().shared  # the fleet's state again
        if ends == "given back":
            ignored()
        return 3

    if ends == "given back":
        with pytest.raises(KeyError):
            breaker.call(back_then_ends)
    else:
        assert breaker.call(back_then_ends) == 3
    assert breaker.call(lambda: 3) == 3
    assert breaker.state is rs.CircuitState.CLOSED


@pytest.mark.parametrize("control", ["isolate", "disable"])
def test_a_forced_state_holds_when_redis_fails(fleet: Fleet, control: str) -> None:
    backend = fleet.backend()
    breaker = fleet.breaker(backend, consecutive_failures=1)
    getattr(breaker, control)()
    backend.fail()
    if control == "isolate":
        with pytest.raises(rs.CircuitOpenError):
            breaker.call(lambda: 1)
        assert breaker.state is rs.CircuitState.ISOLATED
    else:
        failing_calls(breaker, 2)
        assert breaker.state is rs.CircuitState.DISABLED


@pytest.mark.parametrize("action", ["open", "closed"])
def test_metrics_without_redis_are_the_last_view_of_the_fleet(fleet: Fleet, action: str) -> None:
    backend = fleet.backend(on_backend_error=action)
    breaker = fleet.breaker(backend, consecutive_failures=2, open_seconds=10)
    failing_calls(breaker, 2)
    backend.flush()
    fleet.clock.advance(4)
    backend.fail()
    metrics = breaker.metrics()
    assert metrics == CircuitMetrics(
        state=rs.CircuitState.OPEN,
        calls=0,
        failures=0,
        slow_calls=0,
        consecutive_failures=2,
        seconds_in_state=0.0,
        retry_after=6.0,
        trips=0,
        rejected=0,
    )
    assert not metrics.shared


def test_metrics_while_deciding_in_the_process_are_the_process_s(fleet: Fleet) -> None:
    backend = fleet.backend()
    breaker = fleet.breaker(backend, consecutive_failures=5)
    backend.fail()
    failing_calls(breaker, 3)
    metrics = breaker.metrics()
    assert (metrics.calls, metrics.failures, metrics.shared) == (3, 3, False)


@pytest.mark.parametrize("operation", ["call", "acall", "metrics", "reset"])
def test_outcomes_survive_a_request_that_fails(fleet: Fleet, operation: str) -> None:
    """A failure recorded before a request that fails is sent with the next one."""
    backend = fleet.backend()
    breaker = fleet.breaker(backend, consecutive_failures=5)
    failing_calls(breaker, 1)
    backend.fail()
    if operation == "call":
        assert breaker.call(lambda: 1) == 1
    elif operation == "acall":
        assert asyncio.run(breaker.acall(asyncio.sleep, 0, 1)) == 1
    elif operation == "reset":
        with pytest.raises(rs.BackendUnavailableError):
            breaker.reset()
    else:
        breaker.metrics()
    backend.recover()
    assert breaker.metrics().consecutive_failures == 1


def test_a_trial_given_back_while_redis_fails_is_given_back_when_it_answers(
    fleet: Fleet,
) -> None:
    backend, breaker = a_trial_given_back(fleet)
    backend.fail()
    backend.flush()  # its slot does not reach Redis
    backend.recover()
    assert breaker.call(lambda: 2) == 2  # the slot came back with this request
    assert breaker.metrics().state is rs.CircuitState.CLOSED


def test_the_sync_leaves_a_resting_backend_alone(fleet: Fleet) -> None:
    backend = fleet.backend(on_backend_error="closed")
    breaker = fleet.breaker(backend)
    events: list[object] = []
    breaker.subscribe(events.append)
    assert breaker.call(lambda: 1) == 1
    backend.fail()
    with pytest.raises(rs.BackendUnavailableError):
        breaker.call(lambda: 1)
    assert len(events) == 1
    backend.flush()  # the backend rests after the failure: no request, nothing to report
    assert len(events) == 1


def test_the_sync_of_a_breaker_that_never_heard_from_redis_tries_it(fleet: Fleet) -> None:
    backend = fleet.backend("local-first", on_backend_error="closed")
    breaker = fleet.breaker(backend)
    events: list[BackendErrorEvent] = []
    breaker.subscribe(lambda event: events.append(event))
    backend.fail()
    breaker.metrics()  # fails: the backend rests, and the breaker knows nothing of the fleet
    backend.flush()
    assert [event.operation for event in events] == ["sync"]


@pytest.mark.parametrize("action", ["local", "closed"])
def test_local_first_stops_taking_the_lane_when_a_sync_fails(
    fleet: Fleet, action: str, caplog: pytest.LogCaptureFixture
) -> None:
    backend = fleet.backend("local-first", on_backend_error=action)
    breaker = fleet.breaker(backend, consecutive_failures=1)
    backend.flush()  # the fleet's breaker is closed: calls go through the lane
    backend.fail()
    backend.flush()
    assert not [record for record in caplog.records if record.levelname == "ERROR"]
    if action == "closed":
        with pytest.raises(rs.BackendUnavailableError):
            breaker.call(lambda: 1)
    else:
        failing_calls(breaker, 1)  # decided in the process, which opens
        with pytest.raises(rs.CircuitOpenError):
            breaker.call(lambda: 1)


@pytest.mark.parametrize("action", ["local", "open"])
def test_a_success_after_a_failed_sync_is_sent_after_the_failure_before_it(
    fleet: Fleet, action: str
) -> None:
    backend = fleet.backend("local-first", on_backend_error=action)
    breaker = fleet.breaker(backend, consecutive_failures=5)
    backend.flush()  # the fleet's breaker is closed: calls go through the lane

    def outlives_a_failed_sync() -> int:
        failing_calls(breaker, 1)
        backend.fail()
        backend.flush()
        return 1

    assert breaker.call(outlives_a_failed_sync) == 1
    backend.recover()
    backend.flush()
    assert breaker.metrics().consecutive_failures == 0


def test_a_success_in_the_lane_ends_the_failures_the_process_knows_of(fleet: Fleet) -> None:
    backend = fleet.backend("local-first", on_backend_error="open")
    breaker = fleet.breaker(backend, consecutive_failures=5)
    failing_calls(breaker, 1)
    backend.flush()
    assert breaker.call(lambda: 1) == 1  # through the lane
    backend.fail()
    assert breaker.metrics().consecutive_failures == 0  # what the process knows


def test_outcomes_kept_while_redis_is_down_are_the_newest_ten_thousand(fleet: Fleet) -> None:
    backend = fleet.backend("local-first")
    breaker = fleet.breaker(backend, consecutive_failures=20_000)
    backend.flush()  # the fleet's breaker is closed: calls go through the lane
    backend.fail()
    failing_calls(breaker, 10_001)
    backend.flush()  # fails: the outcomes wait, and the process decides alone
    backend.recover()
    backend.flush()
    assert breaker.metrics().consecutive_failures == 10_000
