"""`resilience.Throttle` against a reference token bucket in exact arithmetic.

The model is the textbook token bucket in `fractions.Fraction`: at most
``burst`` tokens, refilled at ``rate / per`` tokens a second, kept as the
(absolute) time ``full_at`` at which it is full again, with the queue's rules
as the specification states them: first come, first served; a waiter is
charged from when its tokens came due (or from when it joined), by up to its
own cost; a grant that its waiter never used goes back to the bucket;
``update`` keeps the tokens (no more than the new burst); a head that sleeps
on its timer looks again when the timer fires, not when an update makes its
tokens come sooner.

Two hypothesis tests drive a throttle and the model with the same steps, on
a clock that starts anywhere (zero, negative, months of uptime), with rates,
periods and bursts of any float, and compare them after every step: sync
steps on an auto-advancing clock (`try_acquire`, `acquire`, `call`,
`update`), and asyncio waiters on a manual clock that the test advances,
cancels and pokes with `update` before they run.

The throttle counts a wait of a nanosecond (and a few ulps of the clock) as
none, and the model decides by the same rule, exactly. Floats round and the
model does not: a decision within the throttle's float error of that edge may
go either way. There the model follows both branches and keeps those that
agree with what the throttle did (`Chooser`, `explore`); elsewhere only the
exact answer is allowed. The clock is never left within a hair of a timer,
so no timer fires in doubt.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import resilience as rs
from resilience.testing import FakeClock

MODEL_SETTINGS = settings(
    max_examples=70,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
"""Randomised: each run draws new examples from the run's seed (tests/conftest.py prints it;
RESILIENCE_HYPOTHESIS_SEED replays it)."""

MAX_BRANCHES = 8
"""Branches of the model kept alive at once (more than one only after decisions in doubt)."""
MAX_PATHS = 256
"""Ways through one step explored from one branch (each decision in doubt doubles them)."""

State = Literal["waiting", "granted", "refused", "cancelled"]
WAITING: State = "waiting"
GRANTED: State = "granted"
REFUSED: State = "refused"
CANCELLED: State = "cancelled"

UNSET: Any = object()
"""An argument left out."""

ZERO = Fraction(0)

SLACK = 1e-9
"""The throttle counts a wait of up to this, plus four ulps of the clock's reading, as no wait
(so that a sleeper woken at the computed instant is not sent back to sleep by a rounding)."""


class Mismatch(AssertionError):
    """The throttle did something that this branch of the model does not allow."""


class Chooser:
    """The decisions in doubt of one branch of the model; see `explore`."""

    def __init__(self, path: list[bool]) -> None:
        self.path = path
        self.taken: list[bool] = []
        self.alternatives: list[list[bool]] = []

    def due(self, margin: Fraction, tolerance: float) -> bool:
        """``margin <= 0`` exactly; within ``tolerance`` of 0, either (each is explored)."""
        exact = margin <= 0
        if abs(margin) > tolerance:
            return exact
        if len(self.taken) < len(self.path):
            choice = self.path[len(self.taken)]
        else:
            choice = exact
            self.alternatives.append([*self.taken, not exact])
        self.taken.append(choice)
        return choice


# -- the reference model ------------------------------------------------------------------


@dataclass
class Entry:
    """One caller that asked for tokens, as the model sees it."""

    index: int
    cost: Fraction
    since: Fraction
    """Clock time it asked."""
    give_up: Fraction | None
    """Clock time its wait ends (None: no end)."""
    state: State = WAITING
    timer: Fraction | None = None
    """While it sleeps on a timer (only a head does): when the timer fires."""
    retry_after: Fraction | None = None
    """For a refusal on arrival: the wait it was told."""


@dataclass
class Model:
    """The token bucket and its FIFO queue, exactly, in absolute clock time."""

    start: Fraction
    rate: Fraction
    per: Fraction
    burst: Fraction
    follows: bool
    """The burst was left to its default: it follows the rate."""
    fixed_cost: Fraction
    max_wait: float | None
    full_at: Fraction = ZERO
    rejected: int = 0
    queue: list[Entry] = field(default_factory=list)
    entries: dict[int, Entry] = field(default_factory=dict)
    admissions: list[tuple[Fraction, Fraction, int | None]] = field(default_factory=list)
    """``(when, cost, waiter)`` of every grant still standing."""
    history: list[tuple[Fraction, Fraction, Fraction]] = field(default_factory=list)
    """``(from when, tokens a second, burst)`` of every setting in force."""

    @classmethod
    def new(
        cls,
        *,
        start: float,
        rate: float,
        per: float,
        burst: float | None,
        cost: float,
        initial: float | None,
        max_wait: float | None,
    ) -> Model:
        now = Fraction(start)
        model = cls(
            start=now,
            rate=Fraction(rate),
            per=Fraction(per),
            burst=Fraction(max(rate, 1.0) if burst is None else burst),
            follows=burst is None,
            fixed_cost=Fraction(cost),
            max_wait=max_wait,
        )
        tokens = model.burst if initial is None else Fraction(initial)
        model.full_at = now + (model.burst - tokens) / model.speed
        model.history.append((now, model.speed, model.burst))
        return model

    @property
    def speed(self) -> Fraction:
        """Tokens a second."""
        return self.rate / self.per

    def tokens(self, now: Fraction) -> Fraction:
        return self.burst - max(ZERO, self.full_at - now) * self.speed

    def wait(self, cost: Fraction, now: Fraction) -> Fraction:
        """Seconds from ``now`` until the bucket holds ``cost`` tokens (<= 0: they are there)."""
        return (max(self.full_at, now) - now) + (cost - self.burst) / self.speed

    def rounding(self, now: Fraction) -> float:
        """Seconds by which the throttle's float arithmetic may stray, near ``now``.

        Its own slack (a grant due within a nanosecond and a few ulps of the clock counts
        as due), then the rounding of its sums of times since its epoch.
        """
        span = abs(now - self.start) + abs(self.full_at - self.start) + self.burst / self.speed
        return 4e-9 + 16 * math.ulp(float(now)) + 512 * math.ulp(float(span))

    def fastest(self) -> float:
        """The highest rate in force so far: a rounding in seconds then was the most tokens."""
        return float(max(speed for _, speed, _ in self.history))

    def tolerance(self, now: Fraction) -> float:
        """Seconds within which a timer or a told wait may stray, near ``now``."""
        return self.rounding(now) * (1 + self.fastest() / float(self.speed))

    def due(self, wait: Fraction, now: Fraction, choose: Chooser) -> bool:
        """Whether a ``wait`` computed at ``now`` is none, as the throttle decides it.

        Exactly: within its slack. Only a wait within the throttle's float error of the edge
        of the slack may go either way.
        """
        span = abs(now - self.start) + abs(self.full_at - self.start) + self.burst / self.speed
        error = (2e-12 + 512 * math.ulp(float(span))) * (1 + self.fastest() / float(self.speed))
        return choose.due(wait - Fraction(SLACK + 4 * math.ulp(float(now))), error)

    def token_tolerance(self, now: Fraction) -> float:
        """Tokens within which `available` may stray from the model's."""
        biggest = max(burst for _, _, burst in self.history)
        return self.rounding(now) * (float(self.speed) + self.fastest()) + 1e-12 * float(biggest)

    def head(self) -> Entry | None:
        return self.queue[0] if self.queue else None

    # -- the bucket

    def take(
        self, cost: Fraction, now: Fraction, entry: Entry | None = None, key: int | None = None
    ) -> None:
        """Take ``cost`` at ``now``; a waiter is charged from when it came due, one cost at most.

        ``key`` names the caller of a grant without a wait.
        """
        step = cost / self.speed
        start = now if entry is None else max(entry.since, now - step)
        self.full_at = max(self.full_at, start) + step
        self.admissions.append((now, cost, key if entry is None else entry.index))

    def give_back(self, entry: Entry) -> None:
        """The tokens a waiter was granted and never used return to the bucket."""
        self.full_at -= entry.cost / self.speed
        self.admissions = [item for item in self.admissions if item[2] != entry.index]

    def update(
        self, now: Fraction, rate: float = UNSET, per: float = UNSET, burst: float = UNSET
    ) -> None:
        """New settings; the bucket keeps its tokens, no more than the new burst."""
        tokens = max(ZERO, self.tokens(now))
        if rate is not UNSET:
            self.rate = Fraction(rate)
        if per is not UNSET:
            self.per = Fraction(per)
        if burst is not UNSET:
            self.burst = Fraction(burst)
            self.follows = False
        elif self.follows:
            self.burst = Fraction(max(float(self.rate), 1.0))
        self.full_at = now + (self.burst - min(tokens, self.burst)) / self.speed
        self.history.append((now, self.speed, self.burst))

    # -- the queue

    def serve(self, now: Fraction, choose: Chooser) -> None:
        """Grant waiters from the head, first come first served, while their tokens are there."""
        while self.queue:
            head = self.queue[0]
            if not self.due(self.wait(head.cost, now), now, choose):
                return
            del self.queue[0]
            head.state = GRANTED
            self.take(head.cost, now, head)

    def arrive(
        self, index: int, cost: float, limit: float | None, now: Fraction, choose: Chooser
    ) -> Entry:
        """A caller asks for ``cost`` tokens and may wait ``limit`` seconds (None: no limit)."""
        exact_cost = Fraction(cost)
        entry = Entry(index, exact_cost, now, None if limit is None else now + Fraction(limit))
        self.entries[index] = entry
        if not self.queue and self.due(self.wait(exact_cost, now), now, choose):
            entry.state = GRANTED
            self.take(exact_cost, now, key=index)
            return entry
        pending = sum((waiting.cost for waiting in self.queue), ZERO)
        wait = self.wait(pending + exact_cost, now)
        if limit is not None and not self.due(wait - Fraction(limit), now, choose):
            entry.state = REFUSED
            entry.retry_after = wait
            self.rejected += 1
            return entry
        self.queue.append(entry)
        self.serve(now, choose)  # its first round serves the queue
        if entry.give_up is not None and entry.give_up <= now:
            self.expire(now, choose, [entry])
        return entry

    def expire(self, now: Fraction, choose: Chooser, entries: list[Entry]) -> None:
        """Waiters whose wait ended look one last time (serving the queue first), then leave."""
        for entry in entries:
            if entry.state != WAITING:
                continue
            self.serve(now, choose)
            if entry.state != WAITING:
                continue
            self.queue.remove(entry)
            entry.state = REFUSED
            self.rejected += 1
            self.serve(now, choose)

    def cancel(self, entry: Entry, now: Fraction, choose: Chooser) -> None:
        """A waiting caller is cancelled: it leaves, giving back a grant it did not use yet."""
        if entry.state == WAITING:
            self.queue.remove(entry)
        else:
            assert entry.state == GRANTED, entry
            self.give_back(entry)
        entry.state = CANCELLED
        self.serve(now, choose)

    def look(self, now: Fraction, before: int | None, woken: set[int]) -> None:
        """A new head, or one whose timer fired, sets its timer for its tokens (or its end)."""
        head = self.head()
        if head is None or (head.index == before and head.index not in woken):
            return
        at = now + max(ZERO, self.wait(head.cost, now))
        head.timer = at if head.give_up is None else min(at, head.give_up)

    def move(
        self,
        now: Fraction,
        update: dict[str, float] | None,
        cancels: list[int],
        choose: Chooser,
    ) -> None:
        """The clock moved to ``now``; then an update, then cancellations, then the timers."""
        before = None if self.head() is None else self.queue[0].index
        woken = {
            entry.index for entry in self.queue if entry.timer is not None and entry.timer <= now
        }
        expiring = sorted(
            (entry for entry in self.queue if entry.give_up is not None and entry.give_up <= now),
            key=lambda entry: (entry.give_up, entry.index),
        )
        if update is not None:
            self.update(now, **update)
            self.serve(now, choose)
        for index in cancels:
            self.cancel(self.entries[index], now, choose)
        if woken or expiring:
            self.serve(now, choose)
        self.expire(now, choose, expiring)
        self.look(now, before, woken)

    def event_times(self) -> list[Fraction]:
        """When timers will fire: heads' (granted or not) and waits' ends."""
        times = [entry.timer for entry in self.entries.values() if entry.timer is not None]
        times += [entry.give_up for entry in self.queue if entry.give_up is not None]
        return times

    # -- what the throttle must show

    def check(self, seen: Seen) -> None:
        now = seen.now
        if (seen.rejected, seen.queued) != (self.rejected, len(self.queue)):
            raise Mismatch(
                f"rejected/queued {seen.rejected}/{seen.queued}, "
                f"model {self.rejected}/{len(self.queue)}"
            )
        tokens = max(ZERO, self.tokens(now))
        if abs(tokens - Fraction(seen.available)) > self.token_tolerance(now):
            raise Mismatch(f"available {seen.available!r}, model {float(tokens)!r} at {now}")
        for index, actual in seen.states.items():
            entry = self.entries[index]
            allowed = {entry.state}
            if entry.state == GRANTED and entry.timer is not None and entry.timer > now:
                allowed.add(WAITING)  # granted while asleep on its timer: it runs when that fires
            if actual not in allowed:
                raise Mismatch(f"caller {index} is {actual}, model {entry}")
            if actual != WAITING:
                entry.timer = None  # done: its timer no longer matters
            told = seen.retry_after.get(index)
            if (
                entry.retry_after is not None
                and told is not None
                and abs(Fraction(told) - entry.retry_after) > self.tolerance(now)
            ):
                raise Mismatch(f"caller {index} told {told!r}, model {entry.retry_after}")


@dataclass
class Seen:
    """What the throttle shows after a step."""

    now: Fraction
    available: float
    queued: int
    rejected: int
    states: dict[int, State] = field(default_factory=dict)
    retry_after: dict[int, float] = field(default_factory=dict)


def explore(models: list[Model], step: Callable[[Model, Chooser], None]) -> list[Model]:
    """Run ``step`` on every branch of every model: the branches that agree with the throttle."""
    survivors: list[Model] = []
    errors: list[str] = []
    for model in models:
        paths: list[list[bool]] = [[]]
        for explored in itertools.count(1):
            if not paths:
                break
            if explored > MAX_PATHS:
                raise AssertionError(f"more than {MAX_PATHS} ways through a step: too many doubts")
            branch = copy.deepcopy(model)
            chooser = Chooser(paths.pop())
            try:
                step(branch, chooser)
            except Mismatch as error:
                errors.append(str(error))
            else:
                if branch not in survivors:  # two roads often lead to the same state
                    survivors.append(branch)
            paths.extend(chooser.alternatives)
    if not survivors:
        raise AssertionError("the throttle left the model: " + " | ".join(errors[:3]))
    return survivors[:MAX_BRANCHES]


def check_bound(model: Model, slack: Fraction) -> None:
    """Over any window [a, b] the grants total at most burst + rate * (b - a) / per + slack."""
    history = model.history
    times = [when for when, _, _ in history]

    def refilled(until: Fraction) -> Fraction:
        """Tokens a second, integrated from the start to ``until``."""
        total = ZERO
        for k, (when, speed, _) in enumerate(history):
            end = times[k + 1] if k + 1 < len(times) else None
            if until <= when:
                break
            total += ((until if end is None else min(until, end)) - when) * speed
        return total

    def segment(at: Fraction) -> int:
        """The first setting in force at ``at`` (an update at that instant comes after it)."""
        k = 0
        while k + 1 < len(times) and times[k + 1] < at:
            k += 1
        return k

    grants = sorted((when, cost) for when, cost, _ in model.admissions)
    refills = [refilled(when) for when, _ in grants]
    segments = [segment(when) for when, _ in grants]
    last_segments = [max(k for k, when in enumerate(times) if when <= at) for at, _ in grants]
    for i, (a, _) in enumerate(grants):
        total = ZERO
        burst = ZERO
        k = segments[i]
        for j in range(i, len(grants)):
            b, cost = grants[j]
            total += cost
            while k <= last_segments[j]:
                burst = max(burst, history[k][2])
                k += 1
            limit = burst + refills[j] - refills[i] + slack
            assert total <= limit + 4 * Fraction(model.token_tolerance(b)), (
                f"{float(total)} tokens granted in [{float(a)}, {float(b)}], "
                f"more than {float(limit)}"
            )


# -- strategies ------------------------------------------------------------------------------

# Where the clock starts: zero, small, negative, or months of uptime.
starts = (
    st.sampled_from([0.0, 1e-3, -7.25, 12_345.678, 1e8])
    | st.floats(-1e4, 1e4)
    | st.floats(1e4, 1e8)
)
rates = st.sampled_from([1.0, 3.0, 0.7, 10.0, 250.0]) | st.floats(0.05, 500.0)
pers = st.sampled_from([1.0, 0.25, 2.5, 60.0]) | st.floats(0.01, 100.0)
bursts = st.none() | st.sampled_from([1.0, 2.0, 3.5, 10.0]) | st.floats(0.5, 50.0)
shares = st.sampled_from([0.0, 0.25, 0.5, 1.0]) | st.floats(0.0, 1.0)
"""A cost as a share of the burst."""
waiter_shares = st.sampled_from([0.25, 0.5, 1.0]) | st.floats(0.0, 1.0)
"""The same for a caller that may wait: seldom nothing."""
waits = st.sampled_from([0.0, 0.5, 3.0]) | st.floats(1e-3, 20.0)
"""A max_wait in seconds."""


@dataclass(frozen=True)
class Config:
    """A throttle's construction."""

    rate: float
    per: float
    burst: float | None
    cost: float
    initial: float | None
    max_wait: float | None

    def throttle(self, clock: FakeClock, **extra: Any) -> rs.Throttle:
        """The throttle of this configuration (and ``extra``, say a backend)."""
        return rs.Throttle(
            self.rate,
            self.per,
            burst=self.burst,
            max_wait=self.max_wait,
            cost=self.cost,
            initial_tokens=self.initial,
            clock=clock,
            **extra,
        )

    def model(self, start: float) -> Model:
        return Model.new(
            start=start,
            rate=self.rate,
            per=self.per,
            burst=self.burst,
            cost=self.cost,
            initial=self.initial,
            max_wait=self.max_wait,
        )


@st.composite
def configs(draw: st.DrawFn) -> Config:
    rate = draw(rates)
    burst = draw(bursts)
    full = max(rate, 1.0) if burst is None else burst
    return Config(
        rate=rate,
        per=draw(pers),
        burst=burst,
        cost=full * draw(shares),
        initial=draw(st.none() | shares.map(lambda share: full * share)),
        max_wait=draw(st.none() | waits),
    )


def draw_advance(data: st.DataObject, model: Model, now: Fraction) -> float:
    """Seconds to move: any, a number of tokens' worth, or up to when some cost comes due."""
    interval = float(model.per / model.rate)
    kinds = ["seconds", "tokens", "due"]
    head = model.head()
    if head is not None and head.timer is not None:
        kinds.append("past the head")  # it wakes late, and is charged from when it came due
    kind = data.draw(st.sampled_from(kinds), label="advance by")
    if kind == "seconds":
        seconds = data.draw(st.just(0.0) | st.floats(0.0, 10.0), label="seconds")
    elif kind == "tokens":
        seconds = data.draw(st.floats(0.0, 2.0), label="bursts") * float(model.burst) * interval
    elif kind == "due":
        share = data.draw(shares, label="cost share")
        seconds = max(0.0, float(model.wait(model.burst * Fraction(share), now)))
    else:
        assert head is not None
        assert head.timer is not None
        late = data.draw(st.floats(0.0, 1.5), label="bursts late") * float(model.burst) * interval
        seconds = max(0.0, float(head.timer - now)) + late
    return seconds


def draw_update(data: st.DataObject, model: Model, least: float) -> dict[str, float]:
    """Settings for `update` (maybe none): the burst always holds ``least``."""
    update: dict[str, float] = {}
    if data.draw(st.booleans(), label="new rate"):
        update["rate"] = data.draw(rates, label="rate")
    if data.draw(st.booleans(), label="new per"):
        update["per"] = data.draw(pers, label="per")
    rate = update.get("rate", float(model.rate))
    burst = data.draw(st.none() | bursts, label="burst")
    if burst is not None:
        update["burst"] = max(burst, least)
    elif model.follows and max(rate, 1.0) < least:
        update["burst"] = least
    return update


def seen(throttle: rs.Throttle, clock: FakeClock) -> Seen:
    metrics = throttle.metrics()
    return Seen(
        now=Fraction(clock.monotonic()),
        available=metrics.available,
        queued=metrics.queued,
        rejected=metrics.rejected,
    )


# -- sync steps on an auto-advancing clock ---------------------------------------------------


def stamp(clock: FakeClock, ran: list[float]) -> None:
    """The call a throttle admits: it notes when it ran."""
    ran.append(clock.monotonic())


SYNC_STEPS = ("advance", "try", "acquire", "call", "update")


@MODEL_SETTINGS
@given(data=st.data())
def test_sync_steps_follow_the_model(data: st.DataObject) -> None:
    """try_acquire, acquire (waiting on the clock), call and update decide as the exact bucket."""
    run_sync_steps(data, Config.throttle)


def run_sync_steps(
    data: st.DataObject,
    make: Callable[[Config, FakeClock], rs.Throttle],
    kinds: tuple[str, ...] = SYNC_STEPS,
    start_at: st.SearchStrategy[float] | None = None,
) -> None:
    """Random sync steps of ``kinds`` on the throttle ``make`` builds, from a clock drawn from
    ``start_at`` (default `starts`), checked against the model (tests/test_redis_models.py
    runs them on a throttle in Redis)."""
    start = data.draw(starts if start_at is None else start_at, label="start")
    config = data.draw(configs(), label="config")
    clock = FakeClock(start)
    throttle = make(config, clock)
    models = [config.model(start)]
    for index in range(data.draw(st.integers(1, 40), label="steps")):
        model = models[0]
        t0 = Fraction(clock.monotonic())
        kind = data.draw(st.sampled_from(kinds), label="step")
        step: Callable[[Model, Chooser], None]
        if kind == "advance":
            clock.advance(draw_advance(data, model, t0))
            after = seen(throttle, clock)

            def step(model: Model, choose: Chooser, after: Seen = after) -> None:
                model.check(after)

        elif kind == "try":
            cost = float(model.burst) * data.draw(shares, label="cost share")
            got = throttle.try_acquire(cost)
            after = seen(throttle, clock)

            def step(
                model: Model,
                choose: Chooser,
                cost: float = cost,
                got: bool = got,
                after: Seen = after,
                t0: Fraction = t0,
            ) -> None:
                if model.queue:
                    raise Mismatch("a sync step left a waiter")
                expected = model.due(model.wait(Fraction(cost), t0), t0, choose)
                if expected:
                    model.take(Fraction(cost), t0)
                else:
                    model.rejected += 1
                if got != expected:
                    raise Mismatch(f"try_acquire({cost!r}) is {got}, model {expected}")
                model.check(after)

        elif kind == "update":
            update = draw_update(data, model, float(model.fixed_cost))
            throttle.update(**update)
            after = seen(throttle, clock)

            def step(
                model: Model,
                choose: Chooser,
                update: dict[str, float] = update,
                after: Seen = after,
                t0: Fraction = t0,
            ) -> None:
                model.update(t0, **update)
                model.check(after)

        else:
            max_wait: float | None = UNSET
            if kind == "acquire":
                cost = float(model.burst) * data.draw(shares, label="cost share")
                max_wait = data.draw(st.sampled_from([UNSET, None]) | waits, label="max_wait")
                limit = model.max_wait if max_wait is UNSET else max_wait
            else:
                cost, limit = float(model.fixed_cost), model.max_wait
            ran: list[float] = []
            try:
                if kind == "call":
                    throttle.call(stamp, clock, ran)
                elif max_wait is UNSET:
                    throttle.acquire(cost)
                else:
                    throttle.acquire(cost, max_wait=max_wait)
            except rs.ThrottledError as error:
                outcome: State = REFUSED
                told = {index: error.retry_after or 0.0}
            else:
                outcome, told = GRANTED, {}
            t1 = Fraction(clock.monotonic())
            assert ran in ([], [float(t1)])
            after = seen(throttle, clock)
            after.retry_after = told

            def step(
                model: Model,
                choose: Chooser,
                index: int = index,
                cost: float = cost,
                limit: float | None = limit,
                outcome: State = outcome,
                t0: Fraction = t0,
                t1: Fraction = t1,
                after: Seen = after,
                kind: str = kind,
            ) -> None:
                entry = model.arrive(index, cost, limit, t0, choose)
                if entry.state == WAITING:  # the only waiter: it sleeps until its tokens come
                    model.look(t0, None, set())
                    assert entry.timer is not None
                    tolerance = model.tolerance(t1)
                    if abs(t1 - entry.timer) > tolerance:
                        raise Mismatch(f"woke at {float(t1)!r}, model {float(entry.timer)!r}")
                    model.serve(t1, choose)
                    if entry.state == WAITING:  # its wait ended first
                        if entry.give_up is None or entry.give_up > t1 + Fraction(tolerance):
                            raise Mismatch(f"returned at {float(t1)!r}, model {entry}")
                        model.expire(t1, choose, [entry])
                elif t1 != t0:
                    raise Mismatch(f"the clock moved on a call the model did not queue: {entry}")
                if entry.state != outcome:
                    raise Mismatch(f"{kind} is {outcome}, model {entry}")
                entry.timer = None
                after.states = {}
                model.check(after)

        models = explore(models, step)
    check_bound(models[0], ZERO)


# -- asyncio waiters on a manual clock ---------------------------------------------------------


async def nothing() -> None:
    """The call a throttle admits."""


async def settle() -> None:
    """Let the loop run what is ready: fired timers, woken waiters, and what they wake."""
    for _ in range(20):
        await asyncio.sleep(0)


def state_of(task: asyncio.Task[None]) -> State:
    if not task.done():
        return WAITING
    if task.cancelled():
        return CANCELLED
    error = task.exception()
    if error is None:
        return GRANTED
    if isinstance(error, rs.ThrottledError):
        return REFUSED
    raise error


async def run_waiters(data: st.DataObject) -> None:
    start = data.draw(starts, label="start")
    config = data.draw(configs(), label="config")
    clock = FakeClock(start, auto_advance=False)
    throttle = config.throttle(clock)
    models = [config.model(start)]
    tasks: dict[int, asyncio.Task[None]] = {}
    told: dict[int, float] = {}

    def observe() -> Seen:
        after = seen(throttle, clock)
        after.states = {index: state_of(task) for index, task in tasks.items()}
        for index, task in tasks.items():
            if index not in told and after.states[index] == REFUSED:
                error = task.exception()
                assert isinstance(error, rs.ThrottledError)
                assert error.retry_after is not None
                told[index] = error.retry_after
        after.retry_after = dict(told)
        return after

    async def move(
        seconds: float, update: dict[str, float] | None, cancels: list[int]
    ) -> Callable[[Model, Chooser], None]:
        """Advance (never within a hair of a timer), update, cancel; then let the loop run."""
        model = models[0]
        now = Fraction(clock.monotonic())
        target = now + Fraction(seconds)
        events = model.event_times()
        for _ in range(len(events) + 1):  # step over any timer the clock would stop next to
            hair = 4 * model.tolerance(target)
            close = [when for when in events if abs(when - target) <= hair]
            if not close:
                break
            target = max(close) + Fraction(2 * hair)
        clock.advance(float(target - now))
        moved = Fraction(clock.monotonic())
        if update is not None:
            throttle.update(**update)
        for index in cancels:
            tasks[index].cancel()
        await settle()
        after = observe()

        def step(model: Model, choose: Chooser) -> None:
            model.move(moved, update, cancels, choose)
            model.check(after)

        return step

    for index in range(data.draw(st.integers(1, 40), label="steps")):
        model = models[0]
        now = Fraction(clock.monotonic())
        pending = [i for i, task in tasks.items() if not task.done()]
        kinds = ["join", "join", "move", "try"]  # callers come faster than tokens, often
        head = model.head()
        if head is not None and head.timer is not None:
            kinds += ["late", "poke", "grant and cancel"]
            if model.wait(head.cost, now) < head.timer - now:  # a faster rate: due sooner
                kinds += ["poke", "poke"]  # an update then grants it, asleep
        kind = data.draw(st.sampled_from(kinds), label="step")
        step: Callable[[Model, Chooser], None]
        if kind == "late":
            # Well past the head's tokens: it and those behind it are charged from when they
            # came due, by up to their own cost.
            assert head is not None
            assert head.timer is not None
            lag = data.draw(st.floats(0.0, 3.0), label="bursts late")
            seconds = max(0.0, float(head.timer - now)) + lag * float(model.burst / model.speed)
            step = await move(seconds, None, [])
        elif kind == "poke":
            # Part of the way to the head's timer, then an update: its serve grants a head whose
            # tokens a faster rate made come sooner (it sleeps on, until its timer fires).
            assert head is not None
            assert head.timer is not None
            share = data.draw(st.floats(0.0, 1.0), label="way to the head's timer")
            gap = max(ZERO, head.timer - now)
            due = min(gap, max(ZERO, model.wait(head.cost, now)))
            if due == gap:  # at most up to its timer
                due = ZERO  # else between its tokens (sooner, at a faster rate) and its timer
            seconds = float(due + (gap - due) * Fraction(share))
            least = max([float(model.fixed_cost)] + [float(entry.cost) for entry in model.queue])
            step = await move(seconds, draw_update(data, model, least), [])
        elif kind == "grant and cancel":
            # Past the head's tokens; update() grants it before its task can run, then it is
            # cancelled (with others maybe): it gives its tokens back.
            assert head is not None
            assert head.timer is not None
            lag = data.draw(st.just(0.0) | st.floats(0.0, 0.5), label="bursts late")
            seconds = max(0.0, float(head.timer - now)) + lag * float(model.burst / model.speed)
            others = [i for i in pending if i != head.index]
            cancels: list[int] = [head.index]
            if others:
                cancels += data.draw(
                    st.lists(st.sampled_from(others), unique=True, max_size=2), label="cancel too"
                )
            step = await move(seconds, {}, cancels)
        elif kind == "join":
            how = data.draw(st.sampled_from(["aacquire", "acall"]), label="how")
            if how == "acall":
                cost, limit = float(model.fixed_cost), model.max_wait
                task = asyncio.create_task(throttle.acall(nothing))
            else:
                cost = float(model.burst) * data.draw(waiter_shares, label="cost share")
                limit = data.draw(st.none() | waits, label="max_wait")
                hair = 8 * model.tolerance(now) + 1e-5
                if (
                    limit is not None
                    and limit > 0
                    and any(
                        abs(now + Fraction(limit) - when) <= hair for when in model.event_times()
                    )
                ):
                    limit = None  # waits that end together end in an order nobody promises
                task = asyncio.create_task(throttle.aacquire(cost, max_wait=limit))
            tasks[index] = task
            await settle()
            after = observe()

            def step(
                model: Model,
                choose: Chooser,
                index: int = index,
                cost: float = cost,
                limit: float | None = limit,
                after: Seen = after,
                now: Fraction = now,
            ) -> None:
                before = None if model.head() is None else model.queue[0].index
                model.arrive(index, cost, limit, now, choose)
                model.look(now, before, set())
                model.check(after)

        elif kind == "try":
            cost = float(model.burst) * data.draw(shares, label="cost share")
            got = throttle.try_acquire(cost)
            after = observe()

            def step(
                model: Model,
                choose: Chooser,
                cost: float = cost,
                got: bool = got,
                after: Seen = after,
                now: Fraction = now,
            ) -> None:
                expected = not model.queue and model.due(
                    model.wait(Fraction(cost), now), now, choose
                )
                if expected:
                    model.take(Fraction(cost), now)
                else:
                    model.rejected += 1
                if got != expected:
                    raise Mismatch(f"try_acquire({cost!r}) is {got}, model {expected}")
                model.check(after)

        else:
            seconds = 0.0
            if data.draw(st.booleans(), label="clock moves"):
                seconds = draw_advance(data, model, now)
            update: dict[str, float] | None = None
            if data.draw(st.booleans(), label="update"):
                least = max(
                    [float(model.fixed_cost)] + [float(entry.cost) for entry in model.queue]
                )
                update = draw_update(data, model, least)
            cancels = []
            if pending:
                cancels = data.draw(
                    st.lists(st.sampled_from(pending), unique=True, max_size=3), label="cancel"
                )
            step = await move(seconds, update, cancels)
        models = explore(models, step)

    # The end: every waiter still there is cancelled, and gives back what it was granted.
    pending = [i for i, task in tasks.items() if not task.done()]
    models = explore(models, await move(0.0, None, pending))
    assert throttle.queued == 0
    model = models[0]
    biggest = max((entry.cost for entry in model.entries.values()), default=ZERO)
    check_bound(model, biggest)  # one waiter's cost: the test wakes them late, on purpose


@MODEL_SETTINGS
@given(data=st.data())
def test_asyncio_waiters_follow_the_model(data: st.DataObject) -> None:
    """Waiters, timeouts, cancellations before and after a grant, and updates, as the model."""
    asyncio.run(run_waiters(data))


# -- bugs the model found ----------------------------------------------------------------------


async def test_a_head_granted_while_asleep_is_woken_at_once() -> None:
    """A sleeping head that a newcomer's round grants is woken at once, not at its old timer."""
    clock = FakeClock(auto_advance=False)
    throttle = rs.Throttle(1, burst=2, max_wait=None, clock=clock)
    throttle.acquire(2)
    ran: list[str] = []

    async def caller(name: str, cost: float) -> None:
        await throttle.aacquire(cost)
        ran.append(name)

    head = asyncio.create_task(caller("head", 2))
    await settle()  # asleep until t=2, its tokens at the rate of 1/s
    throttle.update(rate=100)  # they are there by t=0.02 now; it looks again at t=2, as documented
    clock.advance(1)
    await settle()
    newcomer = asyncio.create_task(caller("newcomer", 1))
    await settle()  # the newcomer's round grants the head, then itself
    assert throttle.queued == 0
    # Both run now, at t=1: the head is not left asleep until its old timer (t=2).
    assert sorted(ran) == ["head", "newcomer"]
    assert clock.monotonic() == 1
    await asyncio.gather(head, newcomer)


async def test_a_waiter_costlier_than_a_lowered_burst_does_not_block_the_queue() -> None:
    """update(burst=2) under a queued waiter for 4 tokens: nobody waits forever behind it."""
    clock = FakeClock(auto_advance=False)
    throttle = rs.Throttle(1, burst=4, max_wait=None, clock=clock)
    throttle.acquire(4)
    big = asyncio.create_task(throttle.aacquire(4))
    await settle()
    with contextlib.suppress(ValueError):  # refusing such a burst would be a fix too
        throttle.update(burst=2)
    small = asyncio.create_task(throttle.aacquire(1))
    try:
        for _ in range(5):
            clock.advance(100)
            await settle()
        assert big.done()  # served, or refused
        assert small.done()
    finally:
        for task in (big, small):
            task.cancel()
        await asyncio.gather(big, small, return_exceptions=True)


def test_a_thread_head_granted_while_asleep_is_woken_at_once() -> None:
    """The sync twin: a thread asleep on its timer, granted by another thread, returns now."""
    import threading

    clock = FakeClock(auto_advance=False)
    throttle = rs.Throttle(1, burst=2, max_wait=None, clock=clock)
    throttle.acquire(2)
    queued = threading.Event()
    done = threading.Event()

    def head() -> None:
        queued.set()
        throttle.acquire(2)
        done.set()

    thread = threading.Thread(target=head, daemon=True)
    thread.start()
    assert queued.wait(5)
    for _ in range(1000):  # until the head is in the queue
        if throttle.queued:
            break
        done.wait(0.001)
    assert throttle.queued == 1
    throttle.update(rate=100)
    clock.advance(1)
    throttle.acquire(1)  # its round grants the head, then itself
    assert done.wait(5), "the head slept on until its old timer (t=2)"
    assert clock.monotonic() == 1
    thread.join(5)
