"""`RetryBudget`: retries allowed up to a share of recent calls, plus a floor.

The budget is Finagle's ``RetryBudget`` (``com.twitter.finagle.service``):

* every call *deposits* once, however many attempts it then makes;
* every retry must *withdraw*, and is refused when the balance is too low;
* deposits and withdrawals expire after about ``ttl`` seconds: they are
  kept in ten slices of ``ttl / 10`` seconds, and a slice is emptied when it
  falls out of the window (Finagle's ``WindowedAdder``);
* a constant reserve of ``min_per_second * ttl`` retries sits on top, so a
  client that has just started, or calls rarely, can still retry.

The arithmetic is in integers, scaled as Finagle scales it: a deposit is
1000 tokens, a withdrawal ``int(1000 / ratio)`` tokens (5000 for 0.2), and
the reserve ``min_per_second * ttl`` withdrawals' worth. Over any window of
``ttl`` seconds a budget therefore allows at most ``ratio`` retries per call
plus ``min_per_second * ttl`` retries.

The deposit is on every call's path, so it takes no lock: while the current
slice lasts, it is one atomic ``next()`` on a `Tally`. The lock is taken at
the first deposit of a new slice and by withdrawals, which happen only after
a failure; they fold the tallied deposits into the slice they belong to.
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from ._backend import Backend, Unavailable, check_backend
from ._clock import Clock, validate_clock
from ._events import Described, ResilienceEvent
from ._tally import Tally
from ._validate import number, optional_name
from ._validate import seconds as _seconds

__all__ = ["RetryBudget", "RetryBudgetExhausted", "RetryBudgetMetrics"]

#: Tokens per deposit: integer tokens allow ratios below 1 (Finagle's ScaleFactor).
SCALE = 1000
#: Time slices per window (Finagle's WindowedAdder uses 10).
SLICES = 10

_UNSET: Any = object()


@dataclass(frozen=True, slots=True)
class RetryBudgetExhausted(ResilienceEvent):
    """Sent to a `Retry`'s listeners when its budget refused a retry.

    The Retry then raises the last error at once (or returns the last
    result, when the retry was asked for by ``on_result``).
    """

    name: str | None
    """The Retry's name."""
    budget: str | None
    """The budget's name."""
    attempt: int
    """Attempts made so far (1-based): the one that failed last."""
    error: BaseException | None
    """The error that will be raised, or None when a result was to be retried."""
    result: Any = None
    """The rejected result that will be returned, for ``on_result`` retries."""

    event = "retry_budget_exhausted"

    def describe(self) -> Described:
        return self.event, self.error, {"resilience.retry.attempts": self.attempt}


@dataclass(frozen=True, slots=True)
class RetryBudgetMetrics:
    """A snapshot of a `RetryBudget`."""

    balance: int
    """Retries the budget would allow now."""
    deposits: int
    """Calls deposited since the budget was made."""
    withdrawals: int
    """Retries allowed since the budget was made."""
    refused: int
    """Retries refused since the budget was made."""
    shared: bool = field(default=False, repr=False)
    """True when read from a backend shared by processes: the fleet's balance, and its
    deposits and withdrawals over the window (``ttl``)."""


class _Account:
    """The state that a budget and its withdraw-only views share; see the module docs.

    ``slots[n % SLICES]`` holds the tokens deposited minus withdrawn during
    slice ``n`` (slices are numbered by absolute time, ``int(now // width)``),
    for the ``SLICES`` slices up to ``latest``. Deposits of the current slice
    sit in ``tally`` until the next `sync` folds them in: a deposit takes the
    lock-free way only while ``now < edge``, the end of slice ``latest``, so
    every tallied deposit belongs to that slice.
    """

    __slots__ = (
        "clock",
        "deposit_amount",
        "edge",
        "folded",
        "latest",
        "min_per_second",
        "mutex",
        "ratio",
        "refused",
        "reserve",
        "slots",
        "tally",
        "ttl",
        "width",
        "withdraw_amount",
        "withdrawals",
    )

    def __init__(self, ratio: float, min_per_second: float, ttl: float, clock: Clock) -> None:
        self.clock = clock
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.ttl = ttl
        # With no ratio, calls earn nothing and a retry costs 1: all credit is the reserve.
        self.deposit_amount = SCALE if ratio else 0
        self.withdraw_amount = int(SCALE / ratio) if ratio else 1
        self.reserve = int(min_per_second * ttl * self.withdraw_amount)
        self.width = ttl / SLICES
        self.slots = [0] * SLICES
        self.latest = int(clock.monotonic() // self.width)
        self.edge = (self.latest + 1) * self.width
        self.tally = Tally()
        self.folded = 0  # deposits already moved from the tally into a slot
        self.mutex = threading.Lock()
        self.withdrawals = 0
        self.refused = 0

    def rescale(self, ratio: float, min_per_second: float) -> None:
        """New amounts (`RetryBudget.update`), the window's balance kept in retries."""
        with self.mutex:
            self.sync(self.clock.monotonic())
            old_withdraw = self.withdraw_amount
            self.ratio, self.min_per_second = ratio, min_per_second
            self.deposit_amount = SCALE if ratio else 0
            self.withdraw_amount = int(SCALE / ratio) if ratio else 1
            self.reserve = int(min_per_second * self.ttl * self.withdraw_amount)
            factor = self.withdraw_amount / old_withdraw
            self.slots = [int(amount * factor) for amount in self.slots]

    def sync(self, now: float) -> None:
        """Fold the tallied deposits into their slice, then move the window to ``now``."""
        total = self.tally.total()
        fresh = total - self.folded
        if fresh:
            self.folded = total
            self.slots[self.latest % SLICES] += fresh * self.deposit_amount
        bucket = int(now // self.width)
        latest = self.latest
        if bucket <= latest:
            return
        if bucket - latest >= SLICES:
            self.slots = [0] * SLICES
        else:
            for number_ in range(latest + 1, bucket + 1):
                self.slots[number_ % SLICES] = 0
        self.latest = bucket
        self.edge = (bucket + 1) * self.width

    def tokens(self) -> int:
        """Tokens available now: the window's net deposits plus the reserve (lock held)."""
        return sum(self.slots) + self.reserve

    def deposit_late(self) -> None:
        """The first deposit of a new slice: move the window on, then count it."""
        with self.mutex:
            self.sync(self.clock.monotonic())
            next(self.tally.counter)

    def try_withdraw(self) -> bool:
        with self.mutex:
            self.sync(self.clock.monotonic())
            cost = self.withdraw_amount
            if self.tokens() >= cost:
                self.slots[self.latest % SLICES] -= cost
                self.withdrawals += 1
                return True
            self.refused += 1
            return False

    def balance(self) -> int:
        with self.mutex:
            self.sync(self.clock.monotonic())
            return max(0, self.tokens() // self.withdraw_amount)

    def metrics(self) -> RetryBudgetMetrics:
        with self.mutex:
            self.sync(self.clock.monotonic())
            return RetryBudgetMetrics(
                balance=max(0, self.tokens() // self.withdraw_amount),
                deposits=self.folded,
                withdrawals=self.withdrawals,
                refused=self.refused,
            )


class RetryBudget:
    """Allow retries up to ``ratio`` of recent calls, plus ``min_per_second``: Finagle's budget.

    Every call deposits into the budget once; every retry asks it for a
    withdrawal first. Over any ``ttl`` seconds (default 10) it allows about
    ``ratio`` retries per call (default 0.2: a fifth of the calls may be
    retried once) plus ``min_per_second * ttl`` retries (default 10 a
    second), so a client that calls rarely can still retry.

    Give the same budget to every `Retry` that calls one dependency, in one
    pipeline or many: it bounds their retries together, so a failing
    dependency sees at most ``1 + ratio`` times the calls plus the floor,
    where ``attempts=3`` alone would triple them. When it refuses, the Retry
    raises the last error at once, with a note, and sends a
    `RetryBudgetExhausted` event.

    ``ratio`` may be 0 (only the floor) up to 1000; ``min_per_second`` may be
    0 (only the ratio); ``ttl`` is between 1 and 60 seconds, as in Finagle.
    Deposits cost one lock-free step; withdrawals take a short lock. It is
    safe to share between threads, tasks and event loops. `deposit`,
    `try_withdraw` and `balance` let other code use it directly.
    """

    __slots__ = ("__weakref__", "_account", "_deposits", "_name", "_shared", "backend", "deposit")

    def __init__(
        self,
        ratio: float = 0.2,
        *,
        min_per_second: float = 10,
        ttl: float | timedelta = 10.0,
        backend: Backend | None = None,
        clock: Clock | None = None,
        name: str | None = None,
    ) -> None:
        ttl_ = _seconds(ttl, "ttl")
        if not 1.0 <= ttl_ <= 60.0:
            raise ValueError(f"ttl must be between 1 and 60 seconds, got {ttl!r}")
        ratio_, floor = _amounts(ratio, min_per_second, ttl_)
        self._name = optional_name(name)
        self._account = _Account(ratio_, floor, ttl_, validate_clock(clock))
        self._deposits = True
        self.deposit: Callable[[], None] = _depositor(self._account)
        """Count one call (a `Retry` does it once per call, before the first attempt).

        A plain function made for this budget: the deposit is on every call's
        path, so it is one clock read and one atomic step, with no lock (with
        a backend too: the background sync sends the count).
        """
        self.backend = check_backend(backend, self._name, "RetryBudget")
        """Where the budget is shared with other processes (None: this process only)."""
        self._shared: Any = None
        if self.backend is not None:
            self._shared = self.backend.attach("retry_budget", self._name or "", self)

    @property
    def ratio(self) -> float:
        """Retries allowed per call deposited (over ``ttl``)."""
        return self._account.ratio

    @property
    def min_per_second(self) -> float:
        """Retries allowed per second on top of the ratio."""
        return self._account.min_per_second

    @property
    def ttl(self) -> float:
        """Seconds a deposit or a withdrawal counts for."""
        return self._account.ttl

    @property
    def name(self) -> str | None:
        """The budget's name."""
        return self._name

    def update(self, *, ratio: float = _UNSET, min_per_second: float = _UNSET) -> None:
        """Change the ratio or the floor, atomically, for this budget and its views.

        The balance of the window is kept in retries' worth: deposits made
        so far count at the new ratio from now on.
        """
        account = self._account
        new_ratio, new_floor = _amounts(
            account.ratio if ratio is _UNSET else ratio,
            account.min_per_second if min_per_second is _UNSET else min_per_second,
            account.ttl,
        )
        account.rescale(new_ratio, new_floor)

    @property
    def clock(self) -> Clock:
        """The clock that ages deposits and withdrawals."""
        return self._account.clock

    @property
    def deposits(self) -> bool:
        """False for a `withdraw_only` view: its `deposit` does nothing."""
        return self._deposits

    def __repr__(self) -> str:
        label = f"{self.name!r}, " if self.name else ""
        view = ", withdraw_only=True" if not self._deposits else ""
        return (
            f"RetryBudget({label}ratio={self.ratio:g}, min_per_second={self.min_per_second:g}, "
            f"ttl={self.ttl:g}{view})"
        )

    def try_withdraw(self) -> bool:
        """Take one retry from the budget: True if allowed, False (and nothing taken) if not.

        With a backend this asks the fleet's budget (one round trip); when the
        backend fails, ``on_backend_error`` decides: ``"local"`` asks this
        process's budget, ``"open"`` allows the retry, ``"closed"`` refuses it.
        """
        shared = self._shared
        if shared is not None:
            try:
                allowed: bool = shared.withdraw()
            except Unavailable as problem:
                action = shared.on_backend_error
                shared.failed("withdraw", problem, action)
                if action != "local":
                    return bool(action == "open")
            else:
                if not allowed:
                    with self._account.mutex:
                        self._account.refused += 1
                return allowed
        return self._account.try_withdraw()

    @property
    def balance(self) -> int:
        """How many retries the budget would allow now (the fleet's, with a backend)."""
        shared = self._shared
        if shared is not None:
            try:
                return int(shared.read()[0])
            except Unavailable:
                pass
        return self._account.balance()

    def metrics(self) -> RetryBudgetMetrics:
        """A consistent snapshot of the balance and the totals.

        With a backend: the fleet's balance, deposits and withdrawals over the
        window, read from it (one round trip), and this process's refusals.
        """
        shared = self._shared
        if shared is not None:
            try:
                balance, deposits, withdrawals = shared.read()
            except Unavailable:
                pass
            else:
                refused = self._account.refused
                return RetryBudgetMetrics(balance, deposits, withdrawals, refused, True)
        return self._account.metrics()

    def withdraw_only(self) -> RetryBudget:
        """A view of this budget that withdraws but never deposits.

        For a second `Retry` that retries the same calls (Finagle's
        ``WithdrawOnlyRetryBudget``, for its requeue and retry filters): the
        outer Retry deposits once per call, the inner one only withdraws, so
        a call is not counted twice.
        """
        view = object.__new__(RetryBudget)
        view._name = self._name
        view._account = self._account
        view._deposits = False
        view._shared = self._shared
        view.backend = self.backend
        view.deposit = _no_deposit
        return view


def _amounts(ratio: object, min_per_second: object, ttl: float) -> tuple[float, float]:
    """Checked ``ratio`` and ``min_per_second``."""
    ratio_ = number(ratio, "ratio", minimum=0.0)
    if ratio_ > SCALE:
        raise ValueError(f"ratio must be <= {SCALE}, got {ratio!r}")
    floor = number(min_per_second, "min_per_second", minimum=0.0)
    withdrawal = int(SCALE / ratio_) if ratio_ else 1
    if not math.isfinite(floor * ttl * withdrawal):
        raise ValueError(
            f"min_per_second must be at most about {sys.float_info.max / (ttl * withdrawal):.3g} "
            f"(its reserve of retries must be a finite number), got {min_per_second!r}"
        )
    return ratio_, floor


def _depositor(account: _Account) -> Callable[[], None]:
    """The deposit of one budget, as a plain function (see `RetryBudget.deposit`)."""
    monotonic = account.clock.monotonic
    step = account.tally.counter.__next__
    late = account.deposit_late

    def deposit() -> None:
        if monotonic() < account.edge:
            step()
        else:
            late()

    return deposit


def _no_deposit() -> None:
    """A withdraw-only view deposits nothing."""


def describe_budget(budget: RetryBudget) -> str:
    """How a Retry names its budget in notes."""
    return f"retry budget {budget.name!r}" if budget.name else "retry budget"
