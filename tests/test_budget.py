"""Tests of `resilience.RetryBudget` and `Retry(budget=...)`: Finagle's arithmetic, fake time."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import resilience as rs
from modes import run_plain
from resilience._backend import Backend, Unavailable
from resilience.testing import EventRecorder, FakeClock


class Down:
    """A dependency that fails every call and counts the calls that reach it."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        raise ConnectionError(f"down ({self.calls})")


def notes(error: BaseException) -> list[str]:
    return list(getattr(error, "__notes__", []))


# -- construction ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"ratio": -0.1}, ValueError, r"^ratio must be >= 0"),
        ({"ratio": 1000.5}, ValueError, r"^ratio must be <= 1000"),
        ({"ratio": math.nan}, ValueError, r"^ratio must be a finite number"),
        ({"ratio": "0.2"}, TypeError, r"^ratio must be a number"),
        ({"min_per_second": -1}, ValueError, r"^min_per_second must be >= 0"),
        ({"min_per_second": True}, TypeError, r"^min_per_second must be a number"),
        ({"ttl": 0.5}, ValueError, r"^ttl must be between 1 and 60 seconds"),
        ({"ttl": 61}, ValueError, r"^ttl must be between 1 and 60 seconds"),
        ({"ttl": -1}, ValueError, r"^ttl must be > 0"),
        ({"ttl": "10"}, TypeError, r"^ttl must be a number of seconds"),
        ({"clock": object()}, TypeError, r"^clock"),
        ({"name": 3}, TypeError, r"^name"),
    ],
)
def test_bad_arguments_fail_at_construction(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    """Every bad argument is refused by the constructor, naming the parameter."""
    with pytest.raises(error, match=message):
        rs.RetryBudget(**kwargs)


def test_retry_refuses_what_is_not_a_budget() -> None:
    """Retry(budget=...) takes a RetryBudget or None, nothing else."""
    with pytest.raises(TypeError, match=r"^budget must be a RetryBudget or None, got int"):
        rs.Retry(budget=5)  # type: ignore[arg-type]


def test_defaults_repr_and_describe() -> None:
    """Finagle's defaults: 20 % of calls, 10 retries a second, 10 s; shown by repr and describe."""
    clock = FakeClock()
    budget = rs.RetryBudget(name="users", ttl=timedelta(seconds=10), clock=clock)
    assert (budget.ratio, budget.min_per_second, budget.ttl) == (0.2, 10.0, 10.0)
    assert repr(budget) == "RetryBudget('users', ratio=0.2, min_per_second=10, ttl=10)"
    assert budget.clock is clock
    assert budget.deposits
    assert budget.balance == 100  # the reserve: 10 a second over 10 s
    retry = rs.Retry(3, backoff=0, budget=budget, clock=clock)
    assert retry.describe()["budget"] is budget
    assert repr(retry).endswith(
        ", budget=RetryBudget('users', ratio=0.2, min_per_second=10, ttl=10))"
    )
    assert "budget" not in rs.Retry(3).settings()


# -- Finagle's arithmetic --------------------------------------------------------------------------


def test_each_deposit_earns_a_ratio_of_a_retry() -> None:
    """With no reserve, five calls earn one retry at ratio 0.2; a withdrawal spends it."""
    budget = rs.RetryBudget(0.2, min_per_second=0, clock=FakeClock())
    assert budget.balance == 0
    for _ in range(4):
        budget.deposit()
    assert budget.balance == 0
    assert not budget.try_withdraw()
    budget.deposit()
    assert budget.balance == 1
    assert budget.try_withdraw()
    assert budget.balance == 0
    assert budget.metrics() == rs.metrics.RetryBudgetMetrics(
        balance=0, deposits=5, withdrawals=1, refused=1
    )


def test_a_ratio_above_one_allows_several_retries_per_call() -> None:
    """ratio=2 lets every call be retried twice, as Finagle's percentCanRetry does."""
    budget = rs.RetryBudget(2, min_per_second=0, clock=FakeClock())
    budget.deposit()
    assert budget.balance == 2
    assert budget.try_withdraw()
    assert budget.try_withdraw()
    assert not budget.try_withdraw()


def test_the_reserve_alone_and_no_budget_at_all() -> None:
    """ratio=0 leaves only the reserve; with no reserve either, nothing is ever retried."""
    reserve_only = rs.RetryBudget(0, min_per_second=2, ttl=5, clock=FakeClock())
    for _ in range(100):
        reserve_only.deposit()
    assert reserve_only.balance == 10  # 2 a second over 5 s; calls earn nothing
    empty = rs.RetryBudget(0, min_per_second=0, clock=FakeClock())
    empty.deposit()
    assert empty.balance == 0
    assert not empty.try_withdraw()


def test_deposits_expire_after_ttl_in_tenths_of_it(clock: FakeClock) -> None:
    """A deposit counts for the ten slices of ttl / 10 from the one it fell in, then expires."""
    budget = rs.RetryBudget(0.2, min_per_second=0, ttl=10, clock=clock)
    clock.advance(0.5)
    for _ in range(50):
        budget.deposit()  # slice 0 ([0 s, 1 s))
    assert budget.balance == 10
    clock.advance(9.49)  # 9.99 s: slice 9, the window is slices 0 to 9
    assert budget.balance == 10
    clock.advance(0.01)  # 10 s: slice 10, slice 0 has left the window
    assert budget.balance == 0


def test_withdrawals_expire_too_so_the_reserve_comes_back(clock: FakeClock) -> None:
    """Spending the reserve is forgotten after ttl, as in Finagle's leaky bucket."""
    budget = rs.RetryBudget(0.2, min_per_second=1, ttl=3, clock=clock)
    assert [budget.try_withdraw() for _ in range(4)] == [True, True, True, False]
    clock.advance(2.9)
    assert budget.balance == 0
    clock.advance(0.1)
    assert budget.balance == 3


def test_a_long_silence_clears_every_slice(clock: FakeClock) -> None:
    """After more than ttl without calls, the window is empty however many slices passed."""
    budget = rs.RetryBudget(1, min_per_second=0, ttl=1, clock=clock)
    for _ in range(7):
        budget.deposit()
    clock.advance(3600)
    assert budget.balance == 0
    budget.deposit()  # the first deposit of a new slice takes the slow way
    budget.deposit()
    assert budget.balance == 2
    assert budget.metrics().deposits == 9


def test_a_withdraw_only_view_shares_the_balance_and_never_deposits(clock: FakeClock) -> None:
    """withdraw_only() is Finagle's WithdrawOnlyRetryBudget: same account, no deposits."""
    budget = rs.RetryBudget(1, min_per_second=0, clock=clock, name="db")
    view = budget.withdraw_only()
    assert not view.deposits
    assert repr(view) == "RetryBudget('db', ratio=1, min_per_second=0, ttl=10, withdraw_only=True)"
    view.deposit()
    assert budget.balance == 0
    budget.deposit()
    assert view.balance == 1
    assert view.try_withdraw()
    assert budget.balance == 0
    assert view.metrics() == budget.metrics()


def test_the_bounds_of_ttl_and_ratio_are_allowed() -> None:
    """ttl may be exactly 1 or 60 seconds, and ratio exactly 1000 (a retry costs one token)."""
    assert rs.RetryBudget(ttl=1, clock=FakeClock()).ttl == 1.0
    assert rs.RetryBudget(ttl=60, clock=FakeClock()).ttl == 60.0
    budget = rs.RetryBudget(1000, min_per_second=0, clock=FakeClock())
    budget.deposit()
    assert budget.balance == 1000


def test_a_reserve_must_be_a_finite_number_of_tokens() -> None:
    """min_per_second * ttl * a withdrawal's tokens must be finite; just below the limit is fine."""
    with pytest.raises(ValueError, match=r"^min_per_second must be at most about"):
        rs.RetryBudget(0.2, min_per_second=1e304, ttl=10)  # 1e305 * 5000 tokens
    with pytest.raises(ValueError, match=r"^min_per_second must be at most about"):
        rs.RetryBudget(0, min_per_second=1e308, ttl=10)  # 1e309 retries of one token
    assert rs.RetryBudget(0, min_per_second=1e307, ttl=10, clock=FakeClock()).balance == int(
        1e307 * 10.0
    )


def test_a_deposit_counts_in_the_slice_its_time_falls_in(clock: FakeClock) -> None:
    """A deposit made right at a slice's start belongs to that slice, not the one before.

    With ttl=5 a slice is 0.5 s: a deposit at 0.5 s (slice 1) still counts at
    5.0 s, when slice 0 has left the window; so does one at 1.0 s (slice 2)
    made after the budget was last read in slice 1, at 5.5 s.
    """
    budget = rs.RetryBudget(1, min_per_second=0, ttl=5, clock=clock)
    clock.advance(0.5)
    budget.deposit()
    clock.advance(4.5)
    assert budget.balance == 1

    clock = FakeClock()
    budget = rs.RetryBudget(1, min_per_second=0, ttl=5, clock=clock)
    clock.advance(0.75)
    assert budget.balance == 0  # the window moves to slice 1
    clock.advance(0.25)
    budget.deposit()  # 1.0 s: slice 2
    clock.advance(4.5)
    assert budget.balance == 1


def test_the_first_deposit_of_a_later_slice_counts_in_that_slice(clock: FakeClock) -> None:
    """A deposit at 0 s and five at 5 s (ttl 10, ratio 0.2): at 10 s the five still count."""
    budget = rs.RetryBudget(0.2, min_per_second=0, ttl=10, clock=clock)
    budget.deposit()
    clock.advance(5.0)
    for _ in range(5):
        budget.deposit()
    clock.advance(5.0)
    assert budget.balance == 1
    assert budget.metrics().deposits == 6


def test_slices_are_floored_below_zero() -> None:
    """On a clock that reads below zero, -0.5 s is in slice -1 and -9.5 s in slice -10."""
    clock = FakeClock(-0.5)
    budget = rs.RetryBudget(1, min_per_second=0, ttl=10, clock=clock)
    budget.deposit()
    clock.advance(9.0)  # 8.5 s: slices -1 to 8
    assert budget.balance == 1
    clock.advance(1.0)  # 9.5 s: slice -1 has left
    assert budget.balance == 0

    clock = FakeClock(-9.5)
    budget = rs.RetryBudget(1, min_per_second=0, ttl=10, clock=clock)
    budget.deposit()
    clock.advance(9.0)  # -0.5 s: slices -10 to -1
    assert budget.balance == 1
    clock.advance(1.0)
    assert budget.balance == 0


def test_slices_that_leave_the_window_are_emptied_to_nothing(clock: FakeClock) -> None:
    """With ratio 0 a token is a retry: moving the window adds none to the reserve."""
    budget = rs.RetryBudget(0, min_per_second=1, ttl=10, clock=clock)
    assert budget.balance == 10
    clock.advance(3.0)  # three slices emptied
    assert budget.balance == 10
    clock.advance(60.0)  # the whole window emptied
    assert budget.balance == 10
    assert [budget.try_withdraw() for _ in range(11)] == [True] * 10 + [False]


class BudgetModel:
    """Finagle's budget written the plain way: every deposit and withdrawal kept with its slice."""

    def __init__(self, ratio: float, min_per_second: float, ttl: float) -> None:
        self.deposit_amount = 1000 if ratio else 0
        self.withdraw_amount = int(1000 / ratio) if ratio else 1
        self.reserve = int(min_per_second * ttl * self.withdraw_amount)
        self.width = ttl / 10
        self.entries: list[tuple[int, int]] = []  # (slice, tokens)

    def tokens(self, now: float) -> int:
        current = int(now // self.width)
        return self.reserve + sum(t for s, t in self.entries if current - 10 < s <= current)

    def deposit(self, now: float) -> None:
        self.entries.append((int(now // self.width), self.deposit_amount))

    def try_withdraw(self, now: float) -> bool:
        if self.tokens(now) < self.withdraw_amount:
            return False
        self.entries.append((int(now // self.width), -self.withdraw_amount))
        return True

    def balance(self, now: float) -> int:
        return max(0, self.tokens(now) // self.withdraw_amount)


@settings(max_examples=60, deadline=None)
@given(
    ratio=st.sampled_from([0.0, 0.1, 0.2, 0.5, 1.0, 3.0]),
    min_per_second=st.sampled_from([0, 1, 2.5]),
    ttl=st.sampled_from([1.0, 2.0, 10.0]),
    steps=st.lists(
        st.tuples(
            st.sampled_from(["deposit", "withdraw", "balance"]),
            st.sampled_from([0.0, 0.0, 0.05, 0.3, 1.0, 7.0]),
        ),
        max_size=80,
    ),
)
def test_the_budget_matches_a_plain_model(
    ratio: float, min_per_second: float, ttl: float, steps: list[tuple[str, float]]
) -> None:
    """Any sequence of deposits, withdrawals and waits: same answers as the plain model."""
    clock = FakeClock()
    budget = rs.RetryBudget(ratio, min_per_second=min_per_second, ttl=ttl, clock=clock)
    model = BudgetModel(ratio, min_per_second, ttl)
    for action, wait in steps:
        clock.advance(wait)
        now = clock.monotonic()
        if action == "deposit":
            budget.deposit()
            model.deposit(now)
        elif action == "withdraw":
            assert budget.try_withdraw() == model.try_withdraw(now)
        else:
            assert budget.balance == model.balance(now)
    assert budget.balance == model.balance(clock.monotonic())


# -- Retry(budget=...) -----------------------------------------------------------------------------


async def test_a_call_deposits_once_and_each_retry_withdraws(mode: str, clock: FakeClock) -> None:
    """One call with two retries is one deposit and two withdrawals, not three deposits."""
    budget = rs.RetryBudget(0.2, min_per_second=1, ttl=10, clock=clock)
    retry = rs.Retry(3, backoff=0, budget=budget, clock=clock)
    down = Down()
    with pytest.raises(ConnectionError):
        await run_plain(mode, retry, down)
    assert down.calls == 3
    assert budget.metrics() == rs.metrics.RetryBudgetMetrics(
        balance=8, deposits=1, withdrawals=2, refused=0
    )


async def test_a_refused_retry_raises_the_last_error_with_a_note_and_an_event(
    mode: str, clock: FakeClock
) -> None:
    """When the budget says no, the last error is raised at once, noted, and an event is sent."""
    budget = rs.RetryBudget(0.2, min_per_second=0, clock=clock, name="inventory")
    retry = rs.Retry(5, backoff=1.0, budget=budget, clock=clock, name="stock")
    down = Down()
    with (
        EventRecorder().watch(retry) as recorder,
        pytest.raises(ConnectionError, match=r"down \(1\)") as caught,
    ):
        await run_plain(mode, retry, down)
    assert down.calls == 1
    assert clock.sleeps == []  # refused before any wait
    assert notes(caught.value) == [
        "resilience: Retry 'stock' stopped after 1 attempt(s): its retry budget "
        "'inventory' is exhausted"
    ]
    [event] = recorder.of(rs.events.RetryBudgetExhausted)
    assert event == rs.events.RetryBudgetExhausted("stock", "inventory", 1, caught.value)
    assert recorder.of(rs.events.RetryEvent) == []


async def test_a_refused_result_retry_returns_the_last_result(mode: str, clock: FakeClock) -> None:
    """An on_result retry that the budget refuses returns the result it has."""
    budget = rs.RetryBudget(0, min_per_second=0, clock=clock)
    retry = rs.Retry(3, on_result=lambda value: value == "busy", budget=budget, clock=clock)
    with EventRecorder().watch(retry) as recorder:
        assert await run_plain(mode, retry, lambda: "busy") == "busy"
    [event] = recorder.of(rs.events.RetryBudgetExhausted)
    assert (event.error, event.result, event.budget) == (None, "busy", None)


async def test_the_budget_is_not_asked_when_no_retry_would_follow(
    mode: str, clock: FakeClock
) -> None:
    """Errors that are not retried, and the last attempt, withdraw nothing."""
    budget = rs.RetryBudget(clock=clock)
    once = rs.Retry(1, budget=budget, clock=clock)
    with pytest.raises(ConnectionError):
        await run_plain(mode, once, Down())
    picky = rs.Retry(3, on=KeyError, budget=budget, clock=clock)
    with pytest.raises(ConnectionError):
        await run_plain(mode, picky, Down())
    assert await run_plain(mode, picky, lambda: "fine") == "fine"
    metrics = budget.metrics()
    assert (metrics.deposits, metrics.withdrawals, metrics.refused) == (3, 0, 0)


async def test_a_withdraw_only_inner_retry_leaves_one_deposit_per_call(
    mode: str, clock: FakeClock
) -> None:
    """Nested Retry layers sharing a budget count a call once when the inner one only withdraws."""
    budget = rs.RetryBudget(0.2, min_per_second=0, clock=clock)
    inner = rs.Retry(2, backoff=0, budget=budget.withdraw_only(), clock=clock)
    outer = rs.Retry(2, backoff=0, budget=budget, clock=clock)
    with pytest.warns(rs.PipelineOrderWarning):
        pipeline = rs.Pipeline.builder().add(outer).add(inner).build()
    for _ in range(10):
        with pytest.raises(ConnectionError):
            await run_plain(mode, pipeline, Down())
    metrics = budget.metrics()
    assert metrics.deposits == 10
    assert metrics.withdrawals == 2  # 10 calls earn 2 retries at 0.2


async def test_a_refusal_is_logged(
    mode: str, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused retry is logged at INFO under 'resilience', naming the Retry and the attempts."""
    budget = rs.RetryBudget(0, min_per_second=0, clock=clock)
    retry = rs.Retry(3, backoff=0, budget=budget, clock=clock, name="stock")
    with (
        caplog.at_level(logging.INFO, logger="resilience"),
        pytest.raises(ConnectionError, match=r"down \(1\)"),
    ):
        await run_plain(mode, retry, Down())
    logged = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "resilience"]
    assert logged == [
        (
            logging.INFO,
            "resilience: Retry 'stock' stopped after 1 attempt(s): its retry budget is exhausted",
        )
    ]


async def test_a_budget_and_a_backoff_that_reads_the_elapsed_time(mode: str) -> None:
    """With both, a call deposits once and the backoff still sees the time since the first try."""
    clock = FakeClock(50.0)
    budget = rs.RetryBudget(0.2, min_per_second=1, ttl=10, clock=clock)
    elapsed: list[float] = []

    def delay(outcome: rs.backoff.RetryOutcome) -> float:
        elapsed.append(outcome.elapsed)
        return 1.0

    def slow_failure() -> None:
        clock.advance(0.5)
        raise ConnectionError("slow")

    retry = rs.Retry(3, backoff=rs.backoff.from_outcome(delay), budget=budget, clock=clock)
    with pytest.raises(ConnectionError, match="slow"):
        await run_plain(mode, retry, slow_failure)
    assert elapsed == [0.5, 2.0]
    metrics = budget.metrics()
    assert (metrics.deposits, metrics.withdrawals, metrics.refused) == (1, 2, 0)


# -- the scenario of the issue ---------------------------------------------------------------------


async def offer(mode: str, retry: rs.Retry, clock: FakeClock, per_second: int, seconds: int) -> int:
    """Offer ``per_second`` calls a second for ``seconds`` to a dependency that always fails."""
    down = Down()
    for _ in range(per_second * seconds):
        with pytest.raises(ConnectionError):
            await run_plain(mode, retry, down)
        clock.advance(1 / per_second)
    return down.calls


async def test_a_budget_caps_the_load_on_a_failing_dependency(mode: str) -> None:
    """100 % failures under steady load: with a 0.2 budget, calls <= 1.2x offered + the floor.

    The floor is the reserve, ``min_per_second * ttl`` retries per ttl window:
    10 * 10 * ceil(60 / 10) = 600 over 60 s. Without a budget, attempts=3
    triples the load.
    """
    per_second, seconds = 100, 60
    offered = per_second * seconds
    clock = FakeClock()
    budget = rs.RetryBudget(0.2, min_per_second=10, ttl=10, clock=clock)
    budgeted = rs.Retry(3, backoff=0, budget=budget, clock=clock)
    reached = await offer(mode, budgeted, clock, per_second, seconds)
    floor = 10 * 10 * math.ceil(seconds / 10)
    assert reached <= 1.2 * offered + floor
    assert reached >= 1.2 * offered + 0.95 * floor  # and it does let that many through
    unbudgeted = rs.Retry(3, backoff=0, clock=clock)
    assert await offer(mode, unbudgeted, clock, per_second, seconds) == 3 * offered


async def test_one_budget_caps_several_pipelines_together(mode: str, clock: FakeClock) -> None:
    """Two pipelines to one dependency share one budget: their retries are capped together."""
    budget = rs.RetryBudget(0.2, min_per_second=0, clock=clock)
    first = rs.Pipeline.builder("a").add(rs.Retry(3, backoff=0, budget=budget, clock=clock)).build()
    second = (
        rs.Pipeline.builder("b").add(rs.Retry(4, backoff=0, budget=budget, clock=clock)).build()
    )
    down = Down()
    for index in range(500):
        with pytest.raises(ConnectionError):
            await run_plain(mode, first if index % 2 else second, down)
        clock.advance(0.01)
    assert down.calls == 500 + 100  # 5 s of calls, all inside one ttl: 0.2 x 500 retries


# -- concurrency -----------------------------------------------------------------------------------


def test_eight_threads_count_every_deposit_and_withdrawal_exactly() -> None:
    """8 threads deposit 5,000 times each, then withdraw until refused: the counts are exact."""
    clock = FakeClock()
    budget = rs.RetryBudget(0.2, min_per_second=0, clock=clock)
    start = threading.Barrier(8)
    allowed: list[int] = []
    lock = threading.Lock()

    def deposit() -> None:
        start.wait()
        for _ in range(5000):
            budget.deposit()

    def withdraw() -> None:
        start.wait()
        count = 0
        while budget.try_withdraw():
            count += 1
        with lock:
            allowed.append(count)

    for work in (deposit, withdraw):
        threads = [threading.Thread(target=work) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sum(allowed) == 8000
    assert budget.metrics() == rs.metrics.RetryBudgetMetrics(
        balance=0, deposits=40000, withdrawals=8000, refused=8
    )


async def test_a_thousand_tasks_through_one_budgeted_retry(clock: FakeClock) -> None:
    """1,000 concurrent tasks: one deposit each; each retry that reached the dependency withdrew."""
    budget = rs.RetryBudget(0.2, min_per_second=0, clock=clock)
    retry = rs.Retry(3, backoff=0, budget=budget, clock=clock)
    calls = 0

    async def down() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        raise ConnectionError("down")

    results = await asyncio.gather(
        *(retry.acall(down) for _ in range(1000)), return_exceptions=True
    )
    assert all(isinstance(result, ConnectionError) for result in results)
    metrics = budget.metrics()
    assert metrics.deposits == 1000
    assert calls == 1000 + metrics.withdrawals
    assert metrics.withdrawals == 200


# -- read-only settings and runtime updates ------------------------------------------------


def test_settings_are_read_only() -> None:
    """budget.ratio = ... was accepted and changed nothing: now it raises."""
    budget = rs.RetryBudget(0.2)
    for attribute in ("ratio", "min_per_second", "ttl", "name"):
        with pytest.raises(AttributeError):
            setattr(budget, attribute, 1)
    assert budget.ratio == 0.2


def test_update_changes_the_ratio_and_keeps_the_balance_in_retries() -> None:
    """update(ratio=): the retries already allowed stay; new calls earn at the new ratio."""
    clock = FakeClock()
    budget = rs.RetryBudget(0.1, min_per_second=0, clock=clock)
    for _ in range(20):
        budget.deposit()
    assert budget.balance == 2
    budget.update(ratio=0.5)
    assert (budget.ratio, budget.balance) == (0.5, 2)
    for _ in range(4):
        budget.deposit()
    assert budget.balance == 4
    budget.update(min_per_second=1)  # a floor of ttl * 1 retries on top
    assert budget.balance == 14
    with pytest.raises(ValueError, match=r"^ratio must be >= 0"):
        budget.update(ratio=-1)
    assert budget.ratio == 0.5


def test_a_withdraw_only_view_follows_an_update() -> None:
    """Views share the account: what the budget allows, they allow."""
    clock = FakeClock()
    budget = rs.RetryBudget(0.5, min_per_second=0, clock=clock)
    view = budget.withdraw_only()
    for _ in range(4):
        budget.deposit()
        view.deposit()  # does nothing
    assert view.balance == 2
    budget.update(ratio=1.0)
    assert (view.ratio, view.balance) == (1.0, 2)
    assert [view.try_withdraw() for _ in range(3)] == [True, True, False]


def test_update_to_and_from_no_ratio() -> None:
    """From ratio 0 calls start to earn; back to 0 they stop, the reserve alone is left."""
    clock = FakeClock()
    budget = rs.RetryBudget(0, min_per_second=0, clock=clock)
    budget.update(ratio=0.5)
    budget.deposit()
    budget.deposit()
    assert budget.balance == 1
    budget.update(ratio=0, min_per_second=1)  # the window's retry is kept
    assert budget.balance == 11
    for _ in range(5):
        budget.deposit()
    assert budget.balance == 11
    assert [budget.try_withdraw() for _ in range(12)] == [True] * 11 + [False]


def test_update_counts_the_deposits_made_before_it_at_the_old_ratio() -> None:
    """Four calls at ratio 0.5 are two retries, still there after update(ratio=0)."""
    budget = rs.RetryBudget(0.5, min_per_second=0, clock=FakeClock())
    for _ in range(4):
        budget.deposit()
    budget.update(ratio=0)
    assert budget.balance == 2


def test_update_keeps_each_slice_in_whole_retries() -> None:
    """Half a retry in each of two slices is no retry once update(ratio=0) counts retries."""
    clock = FakeClock()
    budget = rs.RetryBudget(0.5, min_per_second=1, ttl=10, clock=clock)
    budget.deposit()
    clock.advance(1.0)
    budget.deposit()
    assert budget.balance == 11  # 10 from the reserve, 1 from the two calls
    budget.update(ratio=0)
    assert budget.balance == 10


# -- a budget shared through a backend -------------------------------------------------------------


class FleetBudget(Backend):
    """A stand-in for RedisBackend kept in the test: the fleet's budget answers what it is told."""

    mode = "strict"

    def __init__(self, on_backend_error: Any = "local") -> None:
        self.on_backend_error = on_backend_error
        self.allow = True
        """What the fleet answers to a withdrawal."""
        self.down: Unavailable | None = None
        """Set: every request fails with it."""
        self.failures: list[tuple[str, Unavailable, str]] = []
        self.withdrawals = 0

    def attach(self, kind: str, name: str, policy: Any) -> FleetBudget:
        assert kind == "retry_budget"
        return self

    def withdraw(self) -> bool:
        if self.down is not None:
            raise self.down
        self.withdrawals += self.allow
        return self.allow

    def read(self) -> tuple[int, int, int]:
        if self.down is not None:
            raise self.down
        return 7, 30, self.withdrawals

    def failed(self, operation: str, problem: Unavailable, action: str) -> None:
        self.failures.append((operation, problem, action))


def test_the_fleet_decides_a_withdrawal_and_its_refusals_are_counted_here() -> None:
    """With a backend the fleet allows or refuses; each refusal is counted once by this process."""
    fleet = FleetBudget()
    budget = rs.RetryBudget(0, min_per_second=0, backend=fleet, name="db", clock=FakeClock())
    assert budget.try_withdraw()  # the local budget, empty, is not asked
    fleet.allow = False
    assert not budget.try_withdraw()
    assert not budget.try_withdraw()
    assert budget.metrics() == rs.metrics.RetryBudgetMetrics(7, 30, 1, 2, shared=True)
    assert budget.balance == 7
    fleet.down = Unavailable(ConnectionError("gone"), 1.0)
    assert budget.metrics() == rs.metrics.RetryBudgetMetrics(0, 0, 0, 2)  # this process's own
    assert fleet.failures == []


@pytest.mark.parametrize(
    ("action", "allowed"), [("local", [True, False]), ("open", [True, True]), ("closed", [False])]
)
def test_a_failed_withdrawal_is_reported_and_decided_by_on_backend_error(
    action: str, allowed: list[bool]
) -> None:
    """The backend's failure is reported; local asks this process's budget, open allows, closed
    refuses."""
    fleet = FleetBudget(on_backend_error=action)
    fleet.down = problem = Unavailable(ConnectionError("gone"), 1.0)
    budget = rs.RetryBudget(0, min_per_second=0.1, ttl=10, backend=fleet, name="db")
    assert [budget.try_withdraw() for _ in allowed] == allowed
    assert fleet.failures == [("withdraw", problem, action)] * len(allowed)


def test_a_withdraw_only_view_asks_the_same_fleet() -> None:
    """The view of a shared budget has its backend and withdraws from the fleet."""
    fleet = FleetBudget()
    budget = rs.RetryBudget(0, min_per_second=0, backend=fleet, name="db", clock=FakeClock())
    view = budget.withdraw_only()
    assert view.backend is fleet
    assert view.try_withdraw()
    assert fleet.withdrawals == 1
    fleet.allow = False
    assert not view.try_withdraw()
    assert budget.metrics().refused == 1


# -- events and snapshots --------------------------------------------------------------------------


def test_a_refusal_event_describes_itself() -> None:
    """RetryBudgetExhausted is the retry_budget_exhausted event, with the attempts made."""
    error = ConnectionError("down")
    event = rs.events.RetryBudgetExhausted("stock", "inventory", 2, error)
    assert event.describe() == ("retry_budget_exhausted", error, {"resilience.retry.attempts": 2})


def test_metrics_of_a_local_budget_are_not_shared() -> None:
    """A budget without a backend reports its own numbers, marked not shared (and not shown)."""
    budget = rs.RetryBudget(0.2, min_per_second=0, clock=FakeClock())
    budget.deposit()
    metrics = budget.metrics()
    assert metrics.shared is False
    assert rs.metrics.RetryBudgetMetrics(0, 1, 0, 0).shared is False
    assert repr(metrics) == "RetryBudgetMetrics(balance=0, deposits=1, withdrawals=0, refused=0)"
