"""The circuit breaker's state machine, behind a small storage interface.

The `CircuitBreaker` policy only measures calls and classifies their
outcomes; every decision (admit or reject, trip, close) is taken by its
store, atomically, in four operations:

* ``acquire()`` asks for a permit to run one call;
* ``record(permit, outcome)`` reports how a permitted call ended;
* ``release(permit)`` hands back a permit whose outcome does not count
  (an ignored error, a cancellation);
* ``transition(state)`` forces a state (the manual controls).

A permit is an int: ``epoch << 1 | trial``. The epoch grows at every change
of state, so a call admitted before a transition can never move the new
state; ``trial`` marks a half-open trial call, whose slot must come back.
A negative permit is a rejection.

Besides these, a store may open a *lane* to its breaker (`CircuitLane`):
fields the breaker reads and writes without a call or a lock, so the common
case costs next to nothing. While ``lane.permit`` is >= 0 a call is
admitted with it without asking; a success whose permit is
``lane.success_permit`` is recorded by appending to ``lane.successes``
(and zeroing ``lane.consecutive``). The store changes the lane's fields,
under its own lock, whenever its state changes. A store that opens no lane
keeps the default, `NO_LANE`, whose permit is -1: every call then goes
through ``acquire`` and ``record``. The breaker uses the same shell for
every store.

`MemoryCircuitStore` is the default. It holds its lock only around a few
integer updates, never around the protected call, and never blocks for
long, so the async path can use it from the event loop. A store shared
between processes (`resilience.redis`) implements the same operations
with server-side scripts; everything it needs is in `CircuitRules`.
"""

from __future__ import annotations

import enum
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ._clock import Clock

__all__ = [
    "NO_LANE",
    "CircuitLane",
    "CircuitMetrics",
    "CircuitRules",
    "CircuitState",
    "CircuitStore",
    "MemoryCircuitStore",
]

# Outcome codes, as bits: every recorded call sets PRESENT.
PRESENT = 1
FAILED = 2
SLOW = 4
SUCCESS = PRESENT
FAILURE = PRESENT | FAILED

REJECTED = -1
#: A ``success_permit`` no permit ever equals: successes go through ``record``.
NOT_LANED = -2


class CircuitState(enum.Enum):
    """The states of a `CircuitBreaker`."""

    CLOSED = "closed"
    """Calls flow; outcomes are measured and may trip the breaker."""
    OPEN = "open"
    """Calls are rejected until the break duration has passed."""
    HALF_OPEN = "half_open"
    """A few trial calls test the dependency; the rest are rejected."""
    ISOLATED = "isolated"
    """Forced open by `CircuitBreaker.isolate`, until `CircuitBreaker.reset`."""
    DISABLED = "disabled"
    """Every call flows and is measured, but the breaker never trips."""


CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN
ISOLATED = CircuitState.ISOLATED
DISABLED = CircuitState.DISABLED


@dataclass(frozen=True, slots=True)
class CircuitRules:
    """Everything a store needs to run the state machine (built by `CircuitBreaker`)."""

    failure_ratio: float | None
    consecutive_failures: int | None
    slow_call_ratio: float | None
    minimum_calls: int
    window_calls: int | None
    window_seconds: float | None
    window_buckets: int
    half_open_calls: int
    half_open_max_seconds: float
    break_seconds: Callable[[int], float]
    """The break duration for the n-th trip in a row (n = 1, 2, ...)."""
    half_open_rule: str = "first_failure"
    """``"first_failure"``: the first failed or slow trial reopens; ``"ratio"``: judge the
    ``half_open_calls`` trials by the failure and slow-call ratios (resilience4j), as soon
    as the trials still out cannot change the verdict."""


@dataclass(frozen=True, slots=True)
class CircuitMetrics:
    """A snapshot of a breaker: its state and the calls in its window."""

    state: CircuitState
    calls: int
    """Calls recorded in the window."""
    failures: int
    """Failed calls in the window."""
    slow_calls: int
    """Calls in the window slower than ``slow_call_seconds`` (failed or not)."""
    consecutive_failures: int
    """Failures since the last success."""
    seconds_in_state: float
    retry_after: float | None
    """While open: seconds until a trial call is allowed."""
    trips: int
    """Times the breaker opened, since it was made."""
    rejected: int
    """Calls it rejected, since it was made."""
    shared: bool = field(default=False, repr=False)
    """True when read from a backend shared by processes: the fleet's figures."""

    @property
    def failure_ratio(self) -> float | None:
        """Failures over calls in the window, or None before any call."""
        return self.failures / self.calls if self.calls else None

    @property
    def slow_call_ratio(self) -> float | None:
        """Slow calls over calls in the window, or None before any call."""
        return self.slow_calls / self.calls if self.calls else None


#: ``(old, new, now)``: what a store reports to its breaker after a change of state.
Notify = Callable[[CircuitState, CircuitState, float], None]


class CircuitLane:
    """The fast path a store opens to its breaker (see the module docs)."""

    __slots__ = ("consecutive", "permit", "success_permit", "successes")

    def __init__(self) -> None:
        self.permit = REJECTED
        """>= 0: admit a call with this permit, without calling ``acquire``."""
        self.success_permit = NOT_LANED
        """A success with this permit is appended to `successes`, not passed to ``record``."""
        self.successes: deque[int] = deque()
        """Where lane successes go (the store reads them)."""
        self.consecutive = 0
        """Failures since the last success; a lane success zeroes it."""

    def __repr__(self) -> str:
        return f"CircuitLane(permit={self.permit}, success_permit={self.success_permit})"


NO_LANE = CircuitLane()
"""The lane of a store that opens none: never admits, never takes a success."""


class CircuitStore(ABC):
    """Where a breaker's state lives; see the module docs for the protocol."""

    lane: CircuitLane = NO_LANE
    """The fast path this store opens to its breaker; none by default."""

    @abstractmethod
    def configure(self, rules: CircuitRules, clock: Clock, notify: Notify) -> None:
        """Bind the store to one breaker; called once, by the breaker."""

    @abstractmethod
    def acquire(self) -> int:
        """A permit (>= 0) to run one call, or `REJECTED` (< 0)."""

    async def aacquire(self) -> int:
        """`acquire` for async calls; a store that does I/O answers without blocking the loop."""
        return self.acquire()

    @abstractmethod
    def record(self, permit: int, outcome: int, now: float) -> None:
        """Record the outcome code of a permitted call that ended at ``now``."""

    @abstractmethod
    def release(self, permit: int) -> None:
        """Give back a permit whose call does not count."""

    @abstractmethod
    def state(self) -> CircuitState:
        """The state now (an open breaker turns half-open only at its next call)."""

    @abstractmethod
    def retry_after(self) -> float | None:
        """Seconds until a rejected call could be admitted, if known."""

    @abstractmethod
    def transition(self, state: CircuitState) -> None:
        """Force ``state``; CLOSED also clears the counters."""

    @abstractmethod
    def metrics(self) -> CircuitMetrics:
        """A consistent snapshot of the state and the window."""

    def reconfigure(self, rules: CircuitRules) -> None:
        """Take new rules at run time (`CircuitBreaker.update`); the state is kept.

        A store that cannot change its rules refuses; the memory store can.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot change its rules at run time")


class _CountWindow:
    """The outcome codes of the last ``size`` calls.

    A bounded deque: ``append`` is atomic in CPython, so the success path
    adds to it without the store's lock. The counts are taken from a copy
    when a decision or a snapshot needs them (failures and reads only).
    """

    __slots__ = ("ring", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.ring: deque[int] = deque(maxlen=size)

    def add(self, code: int, now: float) -> None:
        self.ring.append(code)

    def refresh(self, now: float) -> None:
        """Nothing expires by time in a count-based window."""

    def counts(self) -> tuple[int, int, int]:
        """Calls, failures and slow calls in the window."""
        codes = list(self.ring)
        ok_slow = codes.count(SUCCESS | SLOW)
        failed_slow = codes.count(FAILURE | SLOW)
        return (
            len(codes),
            codes.count(FAILURE) + failed_slow,
            ok_slow + failed_slow,
        )

    def clear(self) -> None:
        self.ring = deque(maxlen=self.size)  # a new one: a late append goes to the old


class _TimeWindow:
    """The calls of the last ``seconds``, in ``buckets`` slices of equal width.

    A bucket is identified by its absolute number, ``int(now // width)``;
    moving time forward empties the buckets that fell out of the window, so
    the totals stay exact and each call costs O(1) amortised.
    """

    __slots__ = (
        "bucket_calls",
        "bucket_failures",
        "bucket_slow",
        "buckets",
        "calls",
        "failures",
        "latest",
        "slow",
        "width",
    )

    def __init__(self, seconds: float, buckets: int) -> None:
        self.buckets = buckets
        self.width = seconds / buckets
        self.clear()

    def clear(self) -> None:
        n = self.buckets
        self.bucket_calls = [0] * n
        self.bucket_failures = [0] * n
        self.bucket_slow = [0] * n
        self.latest: int | None = None
        self.calls = self.failures = self.slow = 0

    def refresh(self, now: float) -> None:
        """Drop the buckets older than the window ending at ``now``."""
        bucket = int(now // self.width)
        latest = self.latest
        if latest is None:
            self.latest = bucket
            return
        if bucket <= latest:
            return
        n = self.buckets
        if bucket - latest >= n:
            self.clear()
            self.latest = bucket
            return
        for number in range(latest + 1, bucket + 1):
            slot = number % n
            self.calls -= self.bucket_calls[slot]
            self.failures -= self.bucket_failures[slot]
            self.slow -= self.bucket_slow[slot]
            self.bucket_calls[slot] = self.bucket_failures[slot] = self.bucket_slow[slot] = 0
        self.latest = bucket

    def counts(self) -> tuple[int, int, int]:
        """Calls, failures and slow calls in the window."""
        return self.calls, self.failures, self.slow

    def add(self, code: int, now: float) -> None:
        self.refresh(now)
        latest = self.latest
        # A call that ended in a bucket already out of the window (a clock
        # read before a concurrent refresh) counts in the newest bucket.
        slot = (latest if latest is not None else 0) % self.buckets
        failed = (code & FAILED) >> 1
        slow = (code & SLOW) >> 2
        self.bucket_calls[slot] += 1
        self.bucket_failures[slot] += failed
        self.bucket_slow[slot] += slow
        self.calls += 1
        self.failures += failed
        self.slow += slow


class MemoryCircuitStore(CircuitStore):
    """The state of one breaker in this process (the default store)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._configured = False

    def configure(self, rules: CircuitRules, clock: Clock, notify: Notify) -> None:
        if self._configured:
            raise ValueError("store is already used by another CircuitBreaker")
        self._configured = True
        self._clock = clock
        self._notify = notify
        self._state = CLOSED
        self._epoch = 0
        self.lane = CircuitLane()
        self.lane.permit = 0  # the permit of a CLOSED or DISABLED state, else REJECTED
        self._since = clock.monotonic()
        self._open_until = 0.0
        self._streak = 0  # trips in a row without closing in between
        self._in_flight = 0  # half-open trials running
        self._trials = [0, 0, 0]  # half-open trials ended: calls, failures, slow calls
        self._trips = 0
        self._rejected = 0
        self._pending: list[tuple[CircuitState, CircuitState, float]] = []
        self._use(rules)

    def _use(self, rules: CircuitRules) -> None:
        """Take ``rules``; a window of another size starts empty."""
        old = getattr(self, "_rules", None)
        self._rules = rules
        if (
            old is None
            or old.window_calls != rules.window_calls
            or old.window_seconds != rules.window_seconds
            or old.window_buckets != rules.window_buckets
        ):
            self._window: _CountWindow | _TimeWindow = (
                _TimeWindow(rules.window_seconds, rules.window_buckets)
                if rules.window_seconds is not None
                else _CountWindow(rules.window_calls or 1)
            )
        # Plain successes in a count window take the lane (a deque append is atomic), once
        # the window holds minimum_calls: before that, a success may complete a window
        # whose ratio trips, and must be judged under the lock.
        window = self._window
        self.lane.successes = window.ring if isinstance(window, _CountWindow) else deque()
        self._arm_success()

    def _arm_success(self) -> None:
        """Open or close the lane to successes (lock held, or while configuring)."""
        lane = self.lane
        ready = isinstance(self._window, _CountWindow) and len(lane.successes) >= (
            self._rules.minimum_calls
        )
        lane.success_permit = lane.permit if ready else NOT_LANED

    # -- the hot path ---------------------------------------------------------

    def acquire(self) -> int:
        permit = self.lane.permit
        if permit >= 0:
            return permit
        return self._acquire_slow()

    def record(self, permit: int, outcome: int, now: float) -> None:
        lane = self.lane
        if outcome == SUCCESS:
            successes = lane.successes  # read before the check: a reset swaps in a new ring
            if permit == lane.success_permit:
                successes.append(SUCCESS)
                lane.consecutive = 0
                return
        self._record(permit, outcome, now)

    def _record(self, permit: int, outcome: int, now: float) -> None:
        with self._lock:
            if permit >> 1 != self._epoch:
                return  # admitted under an earlier state: it cannot move this one
            state = self._state
            if state is HALF_OPEN:
                self._record_trial(outcome)
            else:
                self._window.add(outcome, now)
                lane = self.lane
                lane.consecutive = lane.consecutive + 1 if outcome & FAILED else 0
                if state is CLOSED and self._should_trip():
                    self._open(self._clock.monotonic(), streak=1)
                elif lane.success_permit == NOT_LANED:
                    self._arm_success()
            changes = self._pending
            if not changes:
                return
            self._pending = []
        self._emit(changes)

    def release(self, permit: int) -> None:
        if not permit & 1:
            return
        with self._lock:
            if permit >> 1 == self._epoch and self._state is HALF_OPEN:
                self._in_flight -= 1
                if not self._in_flight:  # rules lowered meanwhile may need no more trials
                    self._judge_trials(self._clock.monotonic())
            changes = self._pending
            self._pending = []
        self._emit(changes)

    # -- decisions ----------------------------------------------------------------

    def _acquire_slow(self) -> int:
        with self._lock:
            state = self._state
            if state is CLOSED or state is DISABLED:  # changed while we came here
                return self._epoch << 1
            permit = REJECTED
            now = self._clock.monotonic()
            if state is OPEN and now >= self._open_until:
                self._enter(HALF_OPEN, now)
                self._in_flight = 0
                self._trials = [0, 0, 0]
                state = HALF_OPEN
            if state is HALF_OPEN:
                rules = self._rules
                if self._in_flight + self._trials[0] < rules.half_open_calls:
                    self._in_flight += 1
                    permit = self._epoch << 1 | 1
                elif self._in_flight and now - self._since >= rules.half_open_max_seconds:
                    # Trials that never reported back must not wedge the breaker.
                    self._open(now, streak=self._streak + 1)
            if permit == REJECTED:
                self._rejected += 1
            changes = self._pending
            if changes:
                self._pending = []
        if changes:
            self._emit(changes)
        return permit

    def _record_trial(self, outcome: int) -> None:
        self._in_flight -= 1
        trials = self._trials
        trials[0] += 1
        trials[1] += (outcome & FAILED) >> 1
        trials[2] += (outcome & SLOW) >> 2
        lane = self.lane
        lane.consecutive = lane.consecutive + 1 if outcome & FAILED else 0
        self._judge_trials(self._clock.monotonic())

    def _judge_trials(self, now: float) -> None:
        """Close or reopen a half-open breaker if the trials done decide it (lock held).

        Run when a trial ends, and when no trial is out after the rules changed or a trial
        was given back: a lower ``half_open_calls`` may leave no trial to wait for.
        """
        rules = self._rules
        done, failures, slow = self._trials
        if rules.half_open_rule == "first_failure":
            if failures or slow:  # a failed or slow trial reopens at once
                self._open(now, streak=self._streak + 1)
            elif done >= rules.half_open_calls:
                self._close(now)
            return
        # The ratio rule judges all half_open_calls trials together (all those done, if
        # half_open_calls was lowered under them), but decides as soon as the trials still
        # to end cannot change the verdict either way.
        calls = max(rules.half_open_calls, done)
        if self._trips_on(calls, failures, slow):  # even if every other one succeeds
            self._open(now, streak=self._streak + 1)
            return
        left = calls - done
        if not left or not self._trips_on(calls, failures + left, slow + left):
            self._close(now)  # even if every other one fails and is slow

    def _should_trip(self) -> bool:
        rules = self._rules
        if rules.consecutive_failures is not None and (
            self.lane.consecutive >= rules.consecutive_failures
        ):
            return True
        calls, failures, slow = self._window.counts()
        if calls < rules.minimum_calls:
            return False
        return self._trips_on(calls, failures, slow)

    def _trips_on(self, calls: int, failures: int, slow: int) -> bool:
        """Whether ``failures`` or ``slow`` of ``calls`` reach a ratio of the rules."""
        rules = self._rules
        if rules.failure_ratio is not None and failures / calls >= rules.failure_ratio:
            return True
        return rules.slow_call_ratio is not None and slow / calls >= rules.slow_call_ratio

    def _open(self, now: float, streak: int) -> None:
        self._streak = streak
        self._trips += 1
        self._open_until = now + self._rules.break_seconds(streak)
        self._enter(OPEN, now)

    def _close(self, now: float) -> None:
        # The streak needs no reset here: every trip from CLOSED starts it again at 1.
        self.lane.consecutive = 0
        window = self._window
        window.clear()
        self.lane.successes = window.ring if isinstance(window, _CountWindow) else deque()
        self._enter(CLOSED, now)

    def _enter(self, state: CircuitState, now: float) -> None:
        old = self._state
        self._state = state
        self._epoch += 1
        self._since = now
        self.lane.permit = self._epoch << 1 if state is CLOSED or state is DISABLED else REJECTED
        self._arm_success()
        self._pending.append((old, state, now))

    def _emit(self, changes: list[tuple[CircuitState, CircuitState, float]]) -> None:
        """Report changes of state taken under the lock, after releasing it."""
        for old, new, now in changes:
            self._notify(old, new, now)

    # -- the rest --------------------------------------------------------------------

    def state(self) -> CircuitState:
        return self._state

    def retry_after(self) -> float | None:
        with self._lock:
            if self._state is not OPEN:
                return None
            return max(0.0, self._open_until - self._clock.monotonic())

    def transition(self, state: CircuitState) -> None:
        with self._lock:
            now = self._clock.monotonic()
            if state is CLOSED:
                self._close(now)
            elif state is HALF_OPEN or state is OPEN:
                raise ValueError(f"state must be CLOSED, ISOLATED or DISABLED, got {state}")
            else:
                self._enter(state, now)
            changes = self._pending
            self._pending = []
        self._emit(changes)

    def reconfigure(self, rules: CircuitRules) -> None:
        with self._lock:
            self._use(rules)
            if self._state is CLOSED and self._should_trip():
                self._open(self._clock.monotonic(), streak=1)
            elif self._state is HALF_OPEN and not self._in_flight:
                # The trials done are judged under the new rules at once (a lower
                # half_open_calls may leave none to wait for); trials out decide as they end.
                self._judge_trials(self._clock.monotonic())
            changes = self._pending
            self._pending = []
        self._emit(changes)

    def metrics(self) -> CircuitMetrics:
        with self._lock:
            now = self._clock.monotonic()
            if self._state is HALF_OPEN:  # a fresh count: the trials (as resilience4j)
                calls, failures, slow = self._trials
            else:
                window = self._window
                window.refresh(now)
                calls, failures, slow = window.counts()
            retry_after = max(0.0, self._open_until - now) if self._state is OPEN else None
            return CircuitMetrics(
                state=self._state,
                calls=calls,
                failures=failures,
                slow_calls=slow,
                consecutive_failures=self.lane.consecutive,
                seconds_in_state=max(0.0, now - self._since),
                retry_after=retry_after,
                trips=self._trips,
                rejected=self._rejected,
            )
