"""Tests of the testing toolkit: set_testing, attempts, EventRecorder, the pytest fixtures."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

import pytest

import resilience as rs
from resilience.testing import (
    EventRecorder,
    FakeClock,
    FaultScope,
    attempts,
    set_testing,
)


def failing_twice() -> Callable[[], str]:
    """A function that fails on its first two calls, then returns "ok"."""
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise ConnectionError("flaky")
        return "ok"

    return flaky


# -- set_testing ------------------------------------------------------------------


def test_instant_waits_zero_every_retry_wait(clock: FakeClock) -> None:
    """With instant waits a Retry sleeps zero seconds, even past a retry_after hint."""
    retry = rs.Retry(3, backoff=30, clock=clock)
    with set_testing(instant_waits=True):
        assert retry.call(attempts(failing_twice())) == "ok"
    assert clock.sleeps == [0.0, 0.0]
    clock.sleeps.clear()
    retry.call(attempts(failing_twice()))
    assert clock.sleeps == [30.0, 30.0]  # restored


def test_max_attempts_caps_every_retry(clock: FakeClock) -> None:
    """A cap of one attempt turns every Retry into a single call."""
    retry = rs.Retry(5, clock=clock)
    counted = attempts(failing_twice())
    settings = set_testing(max_attempts=1)
    try:
        with pytest.raises(ConnectionError) as caught:
            retry.call(counted)
    finally:
        settings.restore()
    counted.assert_count(1)
    assert "gave up after 1 attempts" in caught.value.__notes__[0]
    counted = attempts(failing_twice())
    with set_testing(max_attempts=2), pytest.raises(ConnectionError):
        retry.call(counted)
    counted.assert_count(2)
    counted.reset()
    assert counted.count == 0


def test_inject_faults_off_and_back_on() -> None:
    """inject_faults=False lets every call through; leaving the block restores it."""
    injector = rs.FaultInjector(error=ConnectionError("injected"))
    with set_testing(inject_faults=False) as switches:
        assert injector.call(lambda: "real") == "real"
        assert switches is not None
    with pytest.raises(ConnectionError, match="injected"):
        injector.call(lambda: "real")


def test_switches_left_out_stay_as_they_are() -> None:
    """Each call changes only the switches it names; nesting restores in order."""
    with set_testing(max_attempts=1):
        with set_testing(instant_waits=True):
            from resilience._testing_mode import MODE

            assert (MODE.instant_waits, MODE.max_attempts) == (True, 1)
        assert (MODE.instant_waits, MODE.max_attempts) == (False, 1)
    assert MODE.max_attempts is None


def test_scopes_that_end_out_of_order_keep_each_others_switches() -> None:
    """Two overlapping scopes (threads, tasks) each put back only what they changed."""
    from resilience._testing_mode import MODE

    first = set_testing(instant_waits=True)
    second = set_testing(inject_faults=False)
    first.restore()  # ends first, though it started first
    assert (MODE.instant_waits, MODE.inject_faults) == (False, False)
    second.restore()
    assert (MODE.instant_waits, MODE.inject_faults, MODE.max_attempts) == (False, True, None)


async def test_overlapping_scopes_in_two_tasks_leak_nothing() -> None:
    """Task A sets instant_waits, task B inject_faults; A ends first: both come back."""
    from resilience._testing_mode import MODE

    a_set, b_set, a_done = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def task_a() -> None:
        with set_testing(instant_waits=True):
            a_set.set()
            await b_set.wait()
        a_done.set()

    async def task_b() -> None:
        await a_set.wait()
        with set_testing(inject_faults=False):
            b_set.set()
            await a_done.wait()

    await asyncio.gather(task_a(), task_b())
    assert (MODE.instant_waits, MODE.inject_faults, MODE.max_attempts) == (False, True, None)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"instant_waits": 1}, TypeError, r"^instant_waits must be a bool"),
        ({"inject_faults": "no"}, TypeError, r"^inject_faults must be a bool"),
        ({"max_attempts": 0}, ValueError, r"^max_attempts must be >= 1"),
    ],
)
def test_set_testing_checks_its_arguments(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    """Bad switches are refused, and nothing is changed."""
    with pytest.raises(error, match=message):
        set_testing(**kwargs)  # type: ignore[arg-type]


# -- attempts ----------------------------------------------------------------------


async def test_attempts_counts_sync_and_async_calls(clock: FakeClock) -> None:
    """The counter stands in for sync and async functions and records attempt numbers."""
    retry = rs.Retry(3, backoff=0, clock=clock)
    counted = attempts(failing_twice())
    assert retry.call(counted) == "ok"
    assert counted.seen == [1, 2, 3]

    async def fetch(user_id: int) -> int:
        return user_id

    acounted = attempts(fetch)
    assert await retry.acall(acounted, 7) == 7
    acounted.assert_count(1)
    assert acounted.__name__ == "fetch"  # type: ignore[attr-defined]
    assert repr(acounted) == "AttemptCounter('fetch', count=1)"


def test_assert_count_says_what_it_saw() -> None:
    """A wrong count fails with the expected and seen numbers."""
    counted = attempts(lambda: None)
    counted()
    with pytest.raises(AssertionError, match=r"expected 2 attempt\(s\).*got 1.*\[0\]"):
        counted.assert_count(2)
    with pytest.raises(TypeError, match=r"^fn must be callable"):
        attempts(3)  # type: ignore[arg-type]


def test_attempts_is_exact_across_threads() -> None:
    """Eight threads calling through one counter lose no count."""
    counted = attempts(lambda: None)

    def hammer() -> None:
        for _ in range(500):
            counted()

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counted.assert_count(4000)


# -- events ---------------------------------------------------------------------------


async def test_recorder_sees_every_layer_of_a_pipeline() -> None:
    """Retries, breaker transitions and rejections, fallbacks and faults all arrive."""
    clock = FakeClock()
    injector = rs.FaultInjector(error=ConnectionError("chaos"), name="chaos")
    breaker = rs.CircuitBreaker(consecutive_failures=2, clock=clock, name="db")
    pipeline = rs.Pipeline(
        [
            rs.Fallback(value="cached", name="fb"),
            rs.Retry(3, on=ConnectionError, backoff=0, clock=clock, name="r"),
            breaker,
            injector,
        ]
    )
    with EventRecorder().watch(pipeline) as recorder:
        assert pipeline.call(lambda: "real") == "cached"
        retries = recorder.of(rs.events.RetryEvent)
        assert [event.attempt for event in retries] == [1, 2]
        assert [type(event.error) for event in retries] == [ConnectionError, ConnectionError]
        assert [(c.old.value, c.new.value) for c in recorder.of(rs.events.CircuitStateChange)] == [
            ("closed", "open")
        ]
        rejections = recorder.of(rs.events.CircuitOutcome)
        assert [r.outcome for r in rejections] == ["rejected"]
        assert len(recorder.of(rs.events.FaultEvent)) == 2
        assert recorder.of(rs.events.FaultEvent)[0].name == "chaos"
        assert len(recorder.of(rs.events.FallbackEvent)) == 1
    recorder.clear()
    assert pipeline.call(lambda: "real") == "cached"
    assert recorder.events == []  # closed: nothing more is recorded


def test_unsubscribe_and_failing_listeners(caplog: pytest.LogCaptureFixture) -> None:
    """A listener that raises is logged; unsubscribing stops the events."""
    retry = rs.Retry(2, backoff=0)
    seen: list[object] = []

    def broken(event: object) -> None:
        raise RuntimeError("listener bug")

    stop_broken = retry.subscribe(broken)
    stop = retry.subscribe(seen.append)
    with caplog.at_level(logging.ERROR, logger="resilience"), pytest.raises(ConnectionError):
        retry.call(attempts(failing_twice()))
    # one retry was scheduled, then the attempts ran out
    assert [type(e) for e in seen] == [rs.events.RetryEvent, rs.events.RetriesExhausted]
    assert any("a listener of" in r.getMessage() for r in caplog.records)
    stop()
    stop()  # twice is harmless
    stop_broken()
    with pytest.raises(ConnectionError):
        retry.call(attempts(failing_twice()))
    assert len(seen) == 2
    with pytest.raises(TypeError, match=r"^listener must be callable"):
        retry.subscribe(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^can only watch"):
        EventRecorder().watch(object())  # type: ignore[arg-type]


# -- the pytest fixtures (registered by the package's pytest11 entry point) ---------


def test_fake_clock_fixture(fake_clock: FakeClock) -> None:
    """The fixture gives an auto-advancing FakeClock at 0."""
    rs.Retry(3, backoff=5, clock=fake_clock).call(attempts(failing_twice()))
    assert fake_clock.monotonic() == 10.0


def test_events_fixture(resilience_events: EventRecorder) -> None:
    """The events fixture records what the test watches."""
    retry = rs.Retry(3, backoff=0)
    resilience_events.watch(retry)
    retry.call(attempts(failing_twice()))
    assert len(resilience_events.of(rs.events.RetryEvent)) == 2


_SHARED = rs.FaultInjector(error_rate=0.0, name="shared")


def test_faults_fixture_changes_an_injector(resilience_faults: FaultScope) -> None:
    """The faults fixture turns an injector on for this test only..."""
    resilience_faults.update(_SHARED, error_rate=1.0)
    with pytest.raises(rs.InjectedFault):
        _SHARED.call(lambda: "real")
    resilience_faults.off()
    assert _SHARED.call(lambda: "real") == "real"


def test_faults_fixture_restored_the_injector() -> None:
    """...and the next test finds it as it was (runs after the previous one)."""
    assert _SHARED.call(lambda: "real") == "real"
    assert _SHARED.settings() == {"enabled": True}
    with pytest.raises(TypeError, match=r"^injector must be a FaultInjector"):
        FaultScope().update(object(), error_rate=1.0)  # type: ignore[arg-type]


async def test_attempts_in_async_pipeline_under_instant_waits() -> None:
    """The toolkit pieces work together on an async pipeline."""
    counted_calls = 0

    async def flaky() -> str:
        nonlocal counted_calls
        counted_calls += 1
        await asyncio.sleep(0)
        if counted_calls < 3:
            raise ConnectionError
        return "ok"

    counted = attempts(flaky)
    with set_testing(instant_waits=True):
        assert await rs.Retry(3, backoff=10).acall(counted) == "ok"
    counted.assert_count(3)


def test_watching_pipelines_that_share_a_layer_records_its_events_once() -> None:
    """watch(p1, p2) with a breaker in both: each of its events is recorded once."""
    shared = rs.CircuitBreaker(consecutive_failures=1, name="shared")
    first = rs.Pipeline([rs.Retry(1), shared])
    second = rs.Pipeline([shared])
    recorder = EventRecorder().watch(first, second)
    recorder.watch(shared)  # watching it again changes nothing

    def fail() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        first.call(fail)
    assert [type(event) for event in recorder.events] == [
        rs.events.CircuitStateChange,
        rs.events.RetriesExhausted,
    ]
    recorder.close()
    with pytest.raises(rs.CircuitOpenError):
        second.call(fail)
    assert len(recorder.events) == 2  # closed: nothing more
