"""Huge and tiny settings: refused at construction, or carried out without overflowing mid-call."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from typing import Any

import pytest

import resilience as rs
from resilience import _clock


def work_done_once_the_caller_waits(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[int]]:
    """A function that returns only once its caller is blocked waiting for it."""
    waiting = threading.Event()
    real_wait = concurrent.futures.wait

    def wait(*args: Any, **kwargs: Any) -> Any:
        waiting.set()
        return real_wait(*args, **kwargs)

    monkeypatch.setattr(concurrent.futures, "wait", wait)
    ran: list[int] = []

    def work() -> str:
        ran.append(1)
        assert waiting.wait(10)
        return "done"

    return work, ran


def test_a_huge_walk_away_timeout_under_a_retry_runs_the_work_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Timeout(1e10, walk_away) used to raise OverflowError after submitting the work, so a
    Retry ran it three times; now the wait is done in rounds the platform takes."""
    work, ran = work_done_once_the_caller_waits(monkeypatch)
    timeout = rs.Timeout(1e10, sync_mode="walk_away", name="long")
    pipeline = rs.Pipeline([rs.Retry(3, backoff=0), timeout])
    assert pipeline.call(work) == "done"
    assert ran == [1]
    assert timeout.drain(10)


def test_an_isolated_bulkhead_under_a_huge_timeout_returns_its_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same for a thread-isolated Bulkhead waiting until a far deadline."""
    work, ran = work_done_once_the_caller_waits(monkeypatch)
    bulkhead = rs.Bulkhead(2, isolation="thread")
    pipeline = rs.Pipeline([rs.Retry(3, backoff=0), rs.Timeout(1e10), bulkhead])
    assert pipeline.call(work) == "done"
    assert ran == [1]
    assert bulkhead.drain(10)


def test_the_system_clock_sleeps_any_length_in_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """SystemClock.sleep(1e10) (a sync Retry honouring retry_after=1e10) no longer overflows:
    it sleeps in rounds no longer than the platform allows."""
    slept: list[float] = []
    monkeypatch.setattr(_clock.time, "sleep", slept.append)
    rs.SystemClock().sleep(1e10)
    assert sum(slept) == pytest.approx(1e10)
    assert max(slept) <= _clock.LONGEST_WAIT


def test_waiting_for_a_future_until_a_far_deadline_waits_in_rounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """concurrent.futures.wait overflows past threading.TIMEOUT_MAX: the wait is cut up."""
    timeouts: list[float] = []
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def wait(futures: Any, timeout: float) -> None:
        timeouts.append(timeout)
        future.set_result(None)

    monkeypatch.setattr(_clock.concurrent.futures, "wait", wait)
    rs.SystemClock().wait_future(future, time.monotonic() + 1e12)
    assert timeouts
    assert max(timeouts) <= _clock.LONGEST_WAIT


def test_a_sync_retry_honouring_a_huge_retry_after_keeps_its_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """retry_after=1e10 on the system clock: the Retry waits (in rounds; patched here to
    return at once) and the caller gets the original error, not an OverflowError."""
    slept: list[float] = []
    monkeypatch.setattr(_clock.time, "sleep", slept.append)

    class Busy(Exception):
        retry_after = 1e10

    def busy() -> None:
        raise Busy("come back much later")

    with pytest.raises(Busy, match="come back much later"):
        rs.Retry(2, on=Busy).call(busy)
    assert sum(slept) == pytest.approx(1e10)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: rs.Throttle(1e-320), r"^rate must give a token"),
        (lambda: rs.RetryBudget(min_per_second=1e308), r"^min_per_second must be at most"),
    ],
)
def test_values_that_would_overflow_are_refused_at_construction(make: Any, message: str) -> None:
    """Values whose arithmetic would overflow or turn into NaN fail clearly at construction."""
    with pytest.raises(ValueError, match=message):
        make()


def test_huge_limits_cost_nothing_up_front() -> None:
    """Bulkhead(10**30) and an AdaptiveLimiter with a huge limit build and work."""
    assert rs.Bulkhead(10**30).call(lambda: "ok") == "ok"
    limiter = rs.AdaptiveLimiter(initial_limit=10**12, max_limit=10**12)
    assert limiter.call(lambda: "ok") == "ok"
    assert limiter.metrics().in_flight == 0
