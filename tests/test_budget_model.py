"""`resilience.RetryBudget` against a reference of Finagle's budget, step by step.

The reference keeps every slice's net tokens in a dict keyed by the slice's
absolute number (``int(now // (ttl / 10))``) and sums the last ten when asked:
no ring of slots, no tally, no edge, no folding. Deposits add a deposit's
worth (1000 tokens, none with a ratio of 0) to the slice they happen in; a
withdrawal costs ``int(1000 / ratio)`` tokens (1 with a ratio of 0) and is
allowed when the window's tokens plus the reserve (``min_per_second * ttl``
withdrawals' worth) cover it; ``update`` rescales what the window holds to
the new withdrawal, as the budget's documentation says.

Only reading the budget (a balance, its metrics, a withdrawal) moves its
window; deposits and time passing do not. The test reads it only now and then,
so deposits made across a slice's edge with no read between them are checked
too.

A hypothesis test drives a budget and the reference with the same steps on
a clock that starts anywhere, with any ttl between 1 and 60 seconds (so slice
widths are not powers of two) and steps of any length, and compares them
after every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import resilience as rs
from resilience.testing import FakeClock

SCALE = 1000
SLICES = 10

MODEL_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
"""Randomised: each run draws new examples from the run's seed (tests/conftest.py prints it;
RESILIENCE_HYPOTHESIS_SEED replays it)."""


@dataclass
class Reference:
    ratio: float
    floor: float
    ttl: float
    slices: dict[int, int] = field(default_factory=dict)
    deposits: int = 0
    withdrawals: int = 0
    refused: int = 0

    @property
    def deposit_amount(self) -> int:
        return SCALE if self.ratio else 0

    @property
    def withdraw_amount(self) -> int:
        return int(SCALE / self.ratio) if self.ratio else 1

    @property
    def reserve(self) -> int:
        return int(self.floor * self.ttl * self.withdraw_amount)

    def slice(self, now: float) -> int:
        return int(now // (self.ttl / SLICES))

    def tokens(self, now: float) -> int:
        current = self.slice(now)
        window = sum(v for k, v in self.slices.items() if current - SLICES < k <= current)
        return window + self.reserve

    def deposit(self, now: float) -> None:
        self.deposits += 1
        key = self.slice(now)
        self.slices[key] = self.slices.get(key, 0) + self.deposit_amount

    def withdraw(self, now: float) -> bool:
        cost = self.withdraw_amount
        if self.tokens(now) >= cost:
            key = self.slice(now)
            self.slices[key] = self.slices.get(key, 0) - cost
            self.withdrawals += 1
            return True
        self.refused += 1
        return False

    def balance(self, now: float) -> int:
        return max(0, self.tokens(now) // self.withdraw_amount)

    def update(self, now: float, ratio: float, floor: float) -> None:
        old = self.withdraw_amount
        current = self.slice(now)
        self.slices = {k: v for k, v in self.slices.items() if current - SLICES < k <= current}
        self.ratio, self.floor = ratio, floor
        factor = self.withdraw_amount / old
        self.slices = {k: int(v * factor) for k, v in self.slices.items()}


ratios = st.sampled_from([0.0, 0.1, 0.2, 0.25, 0.3, 1 / 3, 0.5, 0.7, 1.0, 2.5, 10.0])
floors = st.sampled_from([0.0, 0.05, 0.1, 0.5, 1.0, 2.0])
#: Every kind of step but `update` (tests/test_redis_models.py runs those on Redis).
STEPS_BUT_UPDATE = (
    st.tuples(st.just("deposit"), st.integers(1, 30)),
    st.tuples(st.just("withdraw"), st.integers(1, 6)),
    # In windows (ttl) of time: a few slices at a time, or up to more than a window.
    st.tuples(
        st.just("advance"),
        st.one_of(
            st.integers(0, 14).map(lambda n: n / SLICES),  # whole slices: onto an edge
            st.integers(0, 14).map(lambda n: n / SLICES + 0.01),  # whole slices, and a bit
            st.floats(0.0, 0.25),
            st.floats(0.0, 1.5),
        ),
    ),
    st.tuples(st.just("balance"), st.just(0)),
)
steps = st.one_of(*STEPS_BUT_UPDATE, st.tuples(st.just("update"), st.tuples(ratios, floors)))


@MODEL_SETTINGS
@given(
    ratio=ratios,
    floor=floors,
    ttl=st.floats(1.0, 60.0),
    start=st.one_of(
        st.just(0.0),
        st.integers(-50, 50).map(float),
        st.floats(-300.0, 300.0),
        st.floats(-1e6, 1e7),
    ),
    plan=st.lists(steps, max_size=80),
)
def test_the_budget_follows_the_reference(
    ratio: float, floor: float, ttl: float, start: float, plan: list[tuple[str, Any]]
) -> None:
    clock = FakeClock(start)
    budget = rs.RetryBudget(ratio, min_per_second=floor, ttl=ttl, clock=clock)
    model = Reference(ratio, floor, ttl)
    for kind, value in plan:
        now = clock.monotonic()
        if kind == "deposit":
            for _ in range(value):
                budget.deposit()
                model.deposit(now)
        elif kind == "withdraw":
            for _ in range(value):
                assert budget.try_withdraw() == model.withdraw(now), (kind, now)
        elif kind == "advance":
            clock.advance(value * ttl)
        elif kind == "update":
            new_ratio, new_floor = value
            budget.update(ratio=new_ratio, min_per_second=new_floor)
            model.update(now, new_ratio, new_floor)
        else:  # Reading the budget moves its window: only this step and withdrawals do.
            assert budget.balance == model.balance(now), (kind, value, now)
            metrics = budget.metrics()
            assert (metrics.deposits, metrics.withdrawals, metrics.refused) == (
                model.deposits,
                model.withdrawals,
                model.refused,
            )
            assert metrics.balance == model.balance(now)
    assert budget.balance == model.balance(clock.monotonic())
