"""`resilience.CircuitBreaker` against a plain reference model, and under concurrency.

The model below is written from the specification, not from the store: it
keeps a list of outcomes, the state, ``open_until`` and the half-open
counters, and recomputes every count from the list. A hypothesis state
machine drives both with the same calls, clock moves and manual controls,
and compares them after every step. The concurrency tests count exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from resilience import CircuitBreaker, CircuitOpenError, CircuitState, backoff
from resilience.metrics import CircuitMetrics
from resilience.testing import FakeClock

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN
ISOLATED = CircuitState.ISOLATED
DISABLED = CircuitState.DISABLED

HANG = 10.0
"""Only a safety net so that a broken breaker fails a test instead of hanging it."""

MODEL_SETTINGS = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    database=None,
)
"""Randomised: each run draws new examples from the run's seed (tests/conftest.py prints it;
RESILIENCE_HYPOTHESIS_SEED replays it)."""

Mode = Literal["sync", "async"]
Action = Literal["isolate", "disable", "reset"]
Unset = Literal["unset"]


class Boom(Exception):
    """A failure under every ``failure_on`` the model configures."""


class OtherError(Exception):
    """A failure only under the default ``failure_on`` (any Exception)."""


class Ignored(Boom):
    """Listed in ``ignore``; a `Boom` too, so ``ignore`` must win over ``failure_on``."""


def finish(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends to its end, without an event loop."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise AssertionError("the coroutine suspended")


# -- the reference model ------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """One breaker configuration, as the model reads it."""

    window_calls: int | None
    window_seconds: float | None
    window_buckets: int
    minimum_calls: int
    failure_ratio: float | Unset | None
    consecutive_failures: int | None
    slow_call_seconds: float | None
    slow_call_ratio: float
    half_open_calls: int
    open_seconds: float | tuple[float, float]
    """Fixed seconds, or ``(initial, maximum)`` of a doubling backoff."""
    failure_on: Literal["default", "types", "predicate"]
    ignore: Literal["types", "predicate"]
    failure_result: bool
    half_open_rule: Literal["first_failure", "ratio"] = "first_failure"

    def breaker(self, clock: FakeClock, **extra: Any) -> CircuitBreaker:
        """A breaker built with this configuration (and ``extra``, say a backend)."""
        kwargs: dict[str, Any] = {
            **extra,
            "minimum_calls": self.minimum_calls,
            "consecutive_failures": self.consecutive_failures,
            "slow_call_seconds": self.slow_call_seconds,
            "slow_call_ratio": self.slow_call_ratio,
            "half_open_calls": self.half_open_calls,
            "half_open_rule": self.half_open_rule,
            "clock": clock,
        }
        if self.window_seconds is None:
            kwargs["window_calls"] = self.window_calls
        else:
            kwargs["window_seconds"] = self.window_seconds
            kwargs["window_buckets"] = self.window_buckets
        if self.failure_ratio != "unset":
            kwargs["failure_ratio"] = self.failure_ratio
        if isinstance(self.open_seconds, tuple):
            initial, maximum = self.open_seconds
            kwargs["open_seconds"] = backoff.exponential(initial, maximum=maximum)
        else:
            kwargs["open_seconds"] = self.open_seconds
        if self.failure_on == "types":
            kwargs["failure_on"] = (Boom,)
        elif self.failure_on == "predicate":
            kwargs["failure_on"] = lambda error: isinstance(error, Boom)
        if self.ignore == "types":
            kwargs["ignore"] = Ignored
        else:
            kwargs["ignore"] = lambda error: isinstance(error, Ignored)
        if self.failure_result:
            kwargs["failure_result"] = lambda value: value == "bad"
        return CircuitBreaker(**kwargs)


BREAKS: list[float | tuple[float, float]] = [1.0, 2.5, (1.0, 4.0), (0.5, 8.0)]
"""Fixed breaks, and doubling ones as ``(initial, maximum)``."""


@st.composite
def configs(draw: st.DrawFn, window: Literal["calls", "seconds"]) -> Config:
    """Small breakers: windows of a few calls or seconds, short breaks, 1 to 3 trials."""
    if window == "calls":
        window_calls: int | None = draw(st.integers(1, 10))
        assert window_calls is not None
        window_seconds = None
        buckets = 10
        minimum_calls = draw(st.integers(1, window_calls))
    else:
        window_calls = None
        window_seconds = draw(
            st.sampled_from([0.7, 1.0, 2.9, 3.0]) | st.floats(0.3, 7.5, allow_subnormal=False)
        )
        buckets = draw(st.integers(1, 7))
        minimum_calls = draw(st.integers(1, 5))
    failure_ratio = draw(
        st.sampled_from(["unset", None, 0.1, 0.25, 0.3, 0.5, 0.6, 0.7, 0.75, 0.9, 1.0])
    )
    consecutive_failures = draw(st.none() | st.integers(1, 4))
    slow_call_seconds = draw(st.sampled_from([None, 0.5, 1.0]))
    if failure_ratio is None and consecutive_failures is None and slow_call_seconds is None:
        failure_ratio = "unset"  # a breaker with no rule at all is refused
    ratio_given = failure_ratio is not None and not (
        failure_ratio == "unset" and consecutive_failures is not None
    )
    return Config(
        window_calls=window_calls,
        window_seconds=window_seconds,
        window_buckets=buckets,
        minimum_calls=minimum_calls,
        failure_ratio=failure_ratio,
        consecutive_failures=consecutive_failures,
        slow_call_seconds=slow_call_seconds,
        slow_call_ratio=draw(st.sampled_from([0.3, 0.5, 1.0])),
        half_open_calls=draw(st.integers(1, 3)),
        open_seconds=draw(st.sampled_from(BREAKS)),
        failure_on=draw(st.sampled_from(["default", "types", "predicate"])),
        ignore=draw(st.sampled_from(["types", "predicate"])),
        failure_result=draw(st.booleans()),
        half_open_rule=draw(st.sampled_from(["first_failure", "ratio"]))
        if ratio_given
        else "first_failure",
    )


# Any durations (some on the slow-call thresholds exactly): the model measures a call as
# the breaker does, end minus start on the clock, so a rounding is the same on both sides.
durations = st.sampled_from([0.0, 0.5, 1.0]) | st.floats(0.0, 2.0, allow_subnormal=False)
advances = st.floats(0.0, 10.0, allow_subnormal=False)
# Where the clock starts: zero, small, negative, or months of uptime.
starts = st.sampled_from([0.0, 1e-3, -7.25, 12_345.678]) | st.floats(-1e4, 1e8)
modes: st.SearchStrategy[Mode] = st.sampled_from(["sync", "async"])
actions: st.SearchStrategy[Action] = st.sampled_from(["isolate", "disable", "reset"])
control_flow: st.SearchStrategy[type[BaseException]] = st.sampled_from(
    [KeyboardInterrupt, SystemExit, asyncio.CancelledError, GeneratorExit]
)


@dataclass(frozen=True)
class Outcome:
    """One recorded call: when it ended, whether it failed, whether it was slow."""

    ended: float
    failed: bool
    slow: bool


class Model:
    """The specification, executed as plainly as possible."""

    def __init__(self, config: Config, start: float = 0.0) -> None:
        self.config = config
        self.now = start
        self.state = CLOSED
        self.since = start
        self.epoch = 0
        self.outcomes: list[Outcome] = []
        self.consecutive = 0
        self.streak = 0
        self.open_until = 0.0
        self.in_flight = 0
        self.trials: list[Outcome] = []
        self.trips = 0
        self.rejected = 0

    # -- configuration, read the way the specification states it

    @property
    def failure_ratio(self) -> float | None:
        ratio = self.config.failure_ratio
        if ratio == "unset":
            return None if self.config.consecutive_failures is not None else 0.5
        return ratio

    def break_seconds(self, trip: int) -> float:
        """The break duration of the ``trip``-th trip in a row."""
        seconds = self.config.open_seconds
        if isinstance(seconds, tuple):
            initial, maximum = seconds
            return min(initial * 2.0 ** (trip - 1), maximum)
        return seconds

    @property
    def half_open_max_seconds(self) -> float:
        return self.break_seconds(1)

    def window(self) -> list[Outcome]:
        """The outcomes still in the window at ``now``."""
        config = self.config
        if config.window_seconds is None:
            assert config.window_calls is not None
            return self.outcomes[-config.window_calls :]
        width = config.window_seconds / config.window_buckets
        current = self.now // width  # bucket n holds the times [n * width, (n + 1) * width)
        return [
            outcome
            for outcome in self.outcomes
            if current - outcome.ended // width < config.window_buckets
        ]

    def classify(self, error: BaseException | None, value: object) -> bool | None:
        """True for a failure, False for a success, None for a call that does not count."""
        if error is None:
            return self.config.failure_result and value == "bad"
        if not isinstance(error, Exception) or isinstance(error, Ignored):
            return None
        return isinstance(error, Boom) or self.config.failure_on == "default"

    def is_slow(self, duration: float) -> bool:
        limit = self.config.slow_call_seconds
        return limit is not None and duration > limit

    # -- transitions

    def enter(self, state: CircuitState) -> None:
        self.state = state
        self.since = self.now
        self.epoch += 1

    def trip(self, streak: int) -> None:
        self.streak = streak
        self.trips += 1
        self.open_until = self.now + self.break_seconds(streak)
        self.enter(OPEN)

    def close(self) -> None:
        self.streak = 0
        self.consecutive = 0
        self.outcomes = []
        self.enter(CLOSED)

    def control(self, action: Action) -> None:
        if action == "reset":
            self.close()
        else:
            self.enter(ISOLATED if action == "isolate" else DISABLED)

    def should_trip(self) -> bool:
        limit = self.config.consecutive_failures
        if limit is not None and self.consecutive >= limit:
            return True
        window = self.window()
        if len(window) < self.config.minimum_calls:
            return False
        return self.ratios_trip(window)

    def ratios_trip(self, window: list[Outcome]) -> bool:
        calls = len(window)
        failures = sum(outcome.failed for outcome in window)
        slow = sum(outcome.slow for outcome in window)
        return self.counts_trip(calls, failures, slow)

    def counts_trip(self, calls: int, failures: int, slow: int) -> bool:
        ratio = self.failure_ratio
        if ratio is not None and failures / calls >= ratio:
            return True
        return (
            self.config.slow_call_seconds is not None
            and slow / calls >= self.config.slow_call_ratio
        )

    # -- a call's life: admission, then either an outcome or a hand-back

    def admit(self) -> tuple[bool, bool, float | None]:
        """``(admitted, trial, retry_after of the rejection)`` for a call starting now."""
        if self.state in (CLOSED, DISABLED):
            return True, False, None
        if self.state is OPEN and self.now >= self.open_until:
            self.enter(HALF_OPEN)
            self.in_flight = 0
            self.trials = []
        if self.state is HALF_OPEN:
            if self.in_flight + len(self.trials) < self.config.half_open_calls:
                self.in_flight += 1
                return True, True, None
            if self.in_flight and self.now - self.since >= self.half_open_max_seconds:
                self.trip(self.streak + 1)
        self.rejected += 1
        return False, False, self.retry_after()

    def settle(self, epoch: int, failed: bool, slow: bool) -> None:
        """A call admitted in ``epoch`` ended now."""
        if epoch != self.epoch:
            return
        self.consecutive = self.consecutive + 1 if failed else 0
        if self.state is HALF_OPEN:
            self.in_flight -= 1
            self.trials.append(Outcome(self.now, failed, slow))
            done = len(self.trials) >= self.config.half_open_calls
            if self.config.half_open_rule == "first_failure":
                if failed or slow:
                    self.trip(self.streak + 1)
                elif done:
                    self.close()
            else:  # the ratio rule, decided once the trials left cannot change it
                calls = self.config.half_open_calls
                failed_ = sum(t.failed for t in self.trials)
                slow_ = sum(t.slow for t in self.trials)
                left = calls - len(self.trials)
                if self.counts_trip(calls, failed_, slow_):
                    self.trip(self.streak + 1)
                elif done or not self.counts_trip(calls, failed_ + left, slow_ + left):
                    self.close()
            return
        self.outcomes.append(Outcome(self.now, failed, slow))
        if self.state is CLOSED and self.should_trip():
            self.trip(1)

    def hand_back(self, epoch: int, trial: bool) -> None:
        """A call admitted in ``epoch`` ended in a way that does not count."""
        if trial and epoch == self.epoch and self.state is HALF_OPEN:
            self.in_flight -= 1

    # -- what the breaker must report

    def retry_after(self) -> float | None:
        return max(0.0, self.open_until - self.now) if self.state is OPEN else None

    def metrics(self) -> CircuitMetrics:
        window = self.trials if self.state is HALF_OPEN else self.window()
        return CircuitMetrics(
            state=self.state,
            calls=len(window),
            failures=sum(outcome.failed for outcome in window),
            slow_calls=sum(outcome.slow for outcome in window),
            consecutive_failures=self.consecutive,
            seconds_in_state=self.now - self.since,
            retry_after=self.retry_after(),
            trips=self.trips,
            rejected=self.rejected,
        )


# -- the state machine ---------------------------------------------------------------


class BreakerMachine(RuleBasedStateMachine):
    """Sequential calls, clock moves and manual controls on a breaker and on the model."""

    window: Literal["calls", "seconds"] = "calls"

    clock: FakeClock
    breaker: CircuitBreaker
    model: Model

    @initialize(data=st.data())
    def build(self, data: st.DataObject) -> None:
        config = data.draw(configs(self.window), label="config")
        start = data.draw(starts, label="start")
        self.clock = FakeClock(start)
        self.breaker = self.make(config)
        self.model = Model(config, start)

    def make(self, config: Config) -> CircuitBreaker:
        """The breaker under test (tests/test_redis_models.py gives it a Redis store)."""
        return config.breaker(self.clock)

    def same_wait(self, got: float | None, expected: float | None) -> bool:
        """Whether a rejection's ``retry_after`` is the model's: exactly, in process."""
        return got == expected

    def control(self, action: Action) -> None:
        getattr(self.breaker, action)()

    def invoke(self, mode: Mode, body: Callable[[], object]) -> object:
        if mode == "sync":
            return self.breaker.call(body)

        async def async_body() -> object:
            return body()

        return finish(self.breaker.acall(async_body))

    def attempt(
        self,
        mode: Mode,
        *,
        error: BaseException | None = None,
        value: object = "ok",
        duration: float = 0.0,
        during: Action | None = None,
    ) -> None:
        """One call through both; the body takes ``duration`` and may run ``during``."""
        model = self.model
        admitted, trial, retry_after = model.admit()
        epoch = model.epoch
        ran = False

        def body() -> object:
            nonlocal ran
            ran = True
            self.clock.advance(duration)
            if during is not None:
                self.control(during)
            if error is not None:
                raise error
            return value

        result: object = None
        raised: BaseException | None = None
        try:
            result = self.invoke(mode, body)
        except BaseException as caught:  # KeyboardInterrupt and friends included
            raised = caught
        if isinstance(raised, CircuitOpenError):
            assert not admitted, "the breaker rejected a call the model admits"
            assert not ran
            assert self.same_wait(raised.retry_after, retry_after), (raised, retry_after)
            return
        assert raised is error, f"the breaker raised {raised!r}, not the call's {error!r}"
        if error is None:
            assert result == value
        assert admitted, "the breaker admitted a call the model rejects"
        assert ran
        began = model.now
        model.now += duration
        if during is not None:
            model.control(during)
        failed = model.classify(error, value)
        if failed is None:
            model.hand_back(epoch, trial)
        else:
            model.settle(epoch, failed, model.is_slow(model.now - began))

    @rule(mode=modes)
    def succeeding_call(self, mode: Mode) -> None:
        self.attempt(mode)

    @rule(mode=modes)
    def failing_call(self, mode: Mode) -> None:
        self.attempt(mode, error=Boom("down"))

    @rule(mode=modes, duration=durations, fails=st.booleans())
    def slow_call(self, mode: Mode, duration: float, fails: bool) -> None:
        self.attempt(mode, error=Boom("slow") if fails else None, duration=duration)

    @rule(mode=modes, bad_result=st.booleans())
    def call_the_config_decides_on(self, mode: Mode, bad_result: bool) -> None:
        """A "bad" result (failure_result) or an error outside ``failure_on``."""
        if bad_result:
            self.attempt(mode, value="bad")
        else:
            self.attempt(mode, error=OtherError("other"))

    @rule(mode=modes, duration=durations)
    def ignored_call(self, mode: Mode, duration: float) -> None:
        self.attempt(mode, error=Ignored("ignored"), duration=duration)

    @rule(mode=modes, kind=control_flow)
    def interrupted_call(self, mode: Mode, kind: type[BaseException]) -> None:
        self.attempt(mode, error=kind())

    @rule(mode=modes, action=actions, fails=st.booleans())
    def call_during_which_the_state_is_forced(
        self, mode: Mode, action: Action, fails: bool
    ) -> None:
        self.attempt(mode, error=Boom("late") if fails else None, during=action)

    @rule(seconds=advances)
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.model.now += seconds

    # Time and a call in one rule: hypothesis switches whole rules off in some runs
    # (swarm testing), and a run without `advance` would never leave OPEN.
    @precondition(lambda self: self.model.state is OPEN)
    @rule(
        mode=modes,
        offset=st.sampled_from([0.0, -0.125, 0.125]) | st.floats(-0.5, 0.5),
        fails=st.booleans(),
        duration=durations,
    )
    def call_at_the_end_of_the_break(
        self, mode: Mode, offset: float, fails: bool, duration: float
    ) -> None:
        self.advance(max(0.0, self.model.open_until - self.model.now + offset))
        self.attempt(mode, error=Boom("trial") if fails else None, duration=duration)

    def manual(self, action: Action) -> None:
        self.control(action)
        self.model.control(action)

    # Each rule that forces a state can also leave it: hypothesis may switch rules
    # off for a whole run, and an isolation that only `reset` ends would then last.
    @rule()
    def toggle_isolation(self) -> None:
        self.manual("reset" if self.model.state is ISOLATED else "isolate")

    @rule()
    def toggle_disabled(self) -> None:
        self.manual("reset" if self.model.state is DISABLED else "disable")

    @rule()
    def reset(self) -> None:
        self.manual("reset")

    @invariant()
    def agrees_with_the_model(self) -> None:
        assert self.clock.monotonic() == self.model.now
        assert self.breaker.state is self.model.state
        assert self.breaker.metrics() == self.model.metrics()


class TimeWindowMachine(BreakerMachine):
    """The same machine with a time-based window."""

    window = "seconds"


def test_count_window_breaker_follows_the_model() -> None:
    """With a count window, every sequence of steps leaves state and metrics as the model says."""
    run_state_machine_as_test(BreakerMachine, settings=MODEL_SETTINGS)


def test_time_window_breaker_follows_the_model() -> None:
    """With a time window, every sequence of steps leaves state and metrics as the model says."""
    run_state_machine_as_test(TimeWindowMachine, settings=MODEL_SETTINGS)


# -- the trip ratios, compared as written ---------------------------------------------


def succeed() -> str:
    return "ok"


def fail() -> str:
    raise Boom("down")


def trip(breaker: CircuitBreaker) -> None:
    """Open a breaker built with ``consecutive_failures=1``."""
    with pytest.raises(Boom):
        breaker.call(fail)
    assert breaker.state is OPEN


@pytest.mark.parametrize("window", [{"window_calls": 3}, {"window_seconds": 60.0}])
def test_a_success_that_brings_in_minimum_calls_trips_at_the_ratio(
    window: dict[str, Any],
) -> None:
    """A success that fills minimum_calls at 2/3 failures trips, as in resilience4j (it used
    to be judged only on failures, so F F S stayed closed)."""
    breaker = CircuitBreaker(failure_ratio=0.5, minimum_calls=3, clock=FakeClock(), **window)
    for call in (fail, fail):
        with contextlib.suppress(Boom):
            breaker.call(call)
    assert breaker.state is CLOSED
    breaker.call(succeed)
    assert (breaker.state, breaker.metrics().failure_ratio) == (OPEN, 2 / 3)


@pytest.mark.parametrize(("ratio", "calls", "failures"), [(0.28, 25, 7), (0.55, 100, 55)])
def test_failure_ratio_trips_when_the_ratio_reaches_it_exactly(
    ratio: float, calls: int, failures: int
) -> None:
    """failures/calls == failure_ratio trips, even where ratio * calls rounds above failures."""
    breaker = CircuitBreaker(
        failure_ratio=ratio, window_calls=calls, minimum_calls=calls, clock=FakeClock()
    )
    for _ in range(calls - failures):
        breaker.call(succeed)
    for _ in range(failures):
        with pytest.raises(Boom):
            breaker.call(fail)
    assert breaker.metrics().failure_ratio == ratio
    assert breaker.state is OPEN


def test_slow_call_ratio_trips_when_the_ratio_reaches_it_exactly() -> None:
    """slow/calls == slow_call_ratio trips, even where ratio * calls rounds above slow."""
    clock = FakeClock()
    breaker = CircuitBreaker(
        failure_ratio=None,
        slow_call_seconds=1.0,
        slow_call_ratio=0.28,
        window_calls=25,
        minimum_calls=25,
        clock=clock,
    )

    def slow() -> str:
        clock.advance(2.0)
        return "ok"

    for _ in range(18):
        breaker.call(succeed)
    for _ in range(7):
        breaker.call(slow)
    assert breaker.metrics().slow_call_ratio == 0.28
    assert breaker.state is OPEN


# -- concurrency: exact counts ---------------------------------------------------------

WINDOWS: dict[str, dict[str, Any]] = {
    "count window": {"window_calls": 10_000},
    "count window, failure_result": {
        "window_calls": 10_000,
        "failure_result": lambda value: value == "bad",
    },
    "time window": {"window_seconds": 60.0},
}
"""Windows far larger than the calls the tests make; each takes a different path in the breaker."""


def never_tripping(window: str) -> CircuitBreaker:
    """A breaker that trips only after a billion failures in a row, with the given window."""
    return CircuitBreaker(
        failure_ratio=None,
        consecutive_failures=10**9,
        minimum_calls=1,
        clock=FakeClock(),
        **WINDOWS[window],
    )


@pytest.mark.parametrize("window", list(WINDOWS))
def test_threads_calling_at_once_are_all_counted(window: str) -> None:
    """8 threads x 1,000 calls: the window holds every call and every failure, exactly."""
    breaker = never_tripping(window)
    threads, per_thread = 8, 1_000
    start = threading.Barrier(threads)

    def worker(index: int) -> int:
        start.wait(HANG)
        failures = 0
        for i in range(per_thread):
            if (i + index) % 3 == 0:
                failures += 1
                with pytest.raises(Boom):
                    breaker.call(fail)
            else:
                assert breaker.call(succeed) == "ok"
        return failures

    with ThreadPoolExecutor(threads) as pool:
        failures = sum(pool.map(worker, range(threads)))
    metrics = breaker.metrics()
    assert (metrics.state, metrics.calls, metrics.failures) == (
        CLOSED,
        threads * per_thread,
        failures,
    )


@pytest.mark.parametrize("window", list(WINDOWS))
async def test_tasks_calling_at_once_are_all_counted(window: str) -> None:
    """1,000 tasks x 5 calls that yield mid-call: every call and failure is counted, exactly."""
    breaker = never_tripping(window)
    tasks, per_task = 1_000, 5

    async def call(fails: bool) -> str:
        await asyncio.sleep(0)
        if fails:
            raise Boom("down")
        return "ok"

    async def worker(index: int) -> int:
        failures = 0
        for i in range(per_task):
            if (i + index) % 3 == 0:
                failures += 1
                with pytest.raises(Boom):
                    await breaker.acall(call, True)
            else:
                assert await breaker.acall(call, False) == "ok"
        return failures

    failures = sum(await asyncio.gather(*(worker(index) for index in range(tasks))))
    metrics = breaker.metrics()
    assert (metrics.state, metrics.calls, metrics.failures) == (CLOSED, tasks * per_task, failures)


# -- concurrency: half-open admission ---------------------------------------------------


def open_past_its_break(clock: FakeClock, **kwargs: Any) -> CircuitBreaker:
    """A breaker tripped by one failure, with its 10-second break just over."""
    breaker = CircuitBreaker(consecutive_failures=1, open_seconds=10.0, clock=clock, **kwargs)
    trip(breaker)
    clock.advance(10.0)
    return breaker


async def test_half_open_admits_exactly_its_trials_among_threads_and_tasks() -> None:
    """50 threads and 200 tasks reach a half-open breaker at once: exactly 3 get in and close it."""
    breaker = open_past_its_break(FakeClock(), half_open_calls=3)
    threads, tasks = 50, 200
    lock = threading.Condition()
    counts = {"entered": 0, "rejected": 0}
    thread_gate = threading.Event()
    task_gate = asyncio.Event()

    def count(key: str) -> None:
        with lock:
            counts[key] += 1
            lock.notify_all()

    def held_in_thread() -> str:
        count("entered")
        assert thread_gate.wait(HANG)
        return "ok"

    async def held_in_task() -> str:
        count("entered")
        await task_gate.wait()
        return "ok"

    start = threading.Barrier(threads + 1)

    def thread_contender() -> str | None:
        start.wait(HANG)
        try:
            return breaker.call(held_in_thread)
        except CircuitOpenError:
            count("rejected")
            return None

    async def task_contender() -> str | None:
        try:
            return await breaker.acall(held_in_task)
        except CircuitOpenError:
            count("rejected")
            return None

    def all_arrived() -> None:
        with lock:
            assert lock.wait_for(lambda: sum(counts.values()) == threads + tasks, HANG)

    with ThreadPoolExecutor(threads) as pool:
        thread_results = [pool.submit(thread_contender) for _ in range(threads)]
        task_results = [asyncio.create_task(task_contender()) for _ in range(tasks)]
        try:
            start.wait(HANG)  # the threads are released; the tasks run at our next await
            await asyncio.to_thread(all_arrived)
            assert counts == {"entered": 3, "rejected": threads + tasks - 3}
            assert breaker.state is HALF_OPEN
        finally:  # also when failing, so that held trials do not wait for HANG
            thread_gate.set()
            task_gate.set()
        results = [future.result() for future in thread_results]
        results += await asyncio.gather(*task_results)
    assert results.count("ok") == 3
    metrics = breaker.metrics()
    assert (metrics.state, metrics.trips, metrics.rejected) == (CLOSED, 1, threads + tasks - 3)


@pytest.mark.parametrize("late", ["success", "failure"])
def test_a_stuck_trial_does_not_wedge_the_breaker(late: str) -> None:
    """A trial that never reports back: after half_open_max_seconds the next call reopens it."""
    clock = FakeClock()
    breaker = open_past_its_break(clock)  # half_open_max_seconds defaults to the 10 s break
    entered = threading.Event()
    gate = threading.Event()

    def stuck() -> str:
        entered.set()
        assert gate.wait(HANG)
        if late == "failure":
            raise Boom("late")
        return "late"

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(breaker.call, stuck)
        try:
            assert entered.wait(HANG)
            clock.advance(9.875)
            with pytest.raises(CircuitOpenError) as early:
                breaker.call(succeed)
            assert early.value.retry_after is None
            assert breaker.state is HALF_OPEN
            clock.advance(0.125)
            with pytest.raises(CircuitOpenError) as reopening:
                breaker.call(succeed)
            assert reopening.value.retry_after == 10.0
            assert breaker.state is OPEN
            assert breaker.metrics().trips == 2
            clock.advance(10.0)
            assert breaker.call(succeed) == "ok"
            assert breaker.state is CLOSED
            before = breaker.metrics()
        finally:  # also when failing, so that the stuck trial does not wait for HANG
            gate.set()
        if late == "failure":
            with pytest.raises(Boom):
                future.result()
        else:
            assert future.result() == "late"
    assert breaker.metrics() == before


# -- cancellation and interrupts hand the trial slot back ---------------------------------


async def test_a_cancelled_trial_hands_its_slot_back_and_counts_nothing() -> None:
    """An async trial cancelled mid-call frees its slot and counts neither way."""
    breaker = open_past_its_break(FakeClock(), half_open_calls=2)
    entered = asyncio.Event()

    async def held() -> str:
        entered.set()
        await asyncio.Event().wait()
        return "never"

    async def succeed_async() -> str:
        return "ok"

    task = asyncio.create_task(breaker.acall(held))
    await entered.wait()
    before = breaker.metrics()
    assert before.state is HALF_OPEN
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.metrics() == before
    assert await breaker.acall(succeed_async) == "ok"
    assert breaker.state is HALF_OPEN  # the cancelled trial was not a success
    assert await breaker.acall(succeed_async) == "ok"  # its slot came back
    assert breaker.state is CLOSED


def test_a_keyboard_interrupt_in_a_trial_hands_its_slot_back_and_counts_nothing() -> None:
    """A KeyboardInterrupt in a sync trial propagates, frees its slot and counts nothing."""
    breaker = open_past_its_break(FakeClock(), half_open_calls=2)

    def interrupted() -> str:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        breaker.call(interrupted)
    metrics = breaker.metrics()  # half-open counts its trials only: none counted
    assert (metrics.state, metrics.calls, metrics.failures, metrics.trips) == (HALF_OPEN, 0, 0, 1)
    assert breaker.call(succeed) == "ok"
    assert breaker.state is HALF_OPEN  # the interrupted trial was not a success
    assert breaker.call(succeed) == "ok"  # its slot came back
    assert breaker.state is CLOSED
