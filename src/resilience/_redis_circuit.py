"""A circuit breaker's state in Redis: the `CircuitStore` of a breaker with ``backend=``.

One script (`_redis_lua.CIRCUIT`) runs the whole state machine on the
server: outcomes and trials given back are applied in order, then a permit
is decided. The process keeps what the last answer said (the state, the
epoch, when an open breaker lets a trial through) and uses it:

* *strict*: every call asks the server, once; the outcomes of earlier calls
  ride along with that request, and the background sync sends them when no
  call comes within an interval.
* *local-first*: while the fleet's breaker is closed, calls are admitted
  here through the lane, successes are counted here, and the background
  sync sends them every interval and learns the fleet's state; a failure
  or a slow call is sent at once. While it is open, calls are refused here
  until the break is over; half-open trials are always asked of the server,
  so the fleet runs exactly ``half_open_calls`` of them.

When Redis fails, the store follows ``on_backend_error``: ``"local"``
decides with an in-process `MemoryCircuitStore` of the same rules (its
permits carry `LOCAL`), ``"open"`` admits, ``"closed"`` refuses.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ._backend import Unavailable
from ._circuit_store import (
    CLOSED,
    DISABLED,
    ISOLATED,
    NOT_LANED,
    OPEN,
    REJECTED,
    SUCCESS,
    CircuitLane,
    CircuitMetrics,
    CircuitRules,
    CircuitState,
    CircuitStore,
    MemoryCircuitStore,
    Notify,
)
from ._clock import Clock
from ._redis_backend import RedisBackend, Shared

#: A permit of the in-process store used while Redis is unavailable.
LOCAL = 1 << 60
#: The permit of a call admitted with ``on_backend_error="open"``: its outcome is not counted.
ADMITTED = LOCAL << 1
_STATES = {state.value: state for state in CircuitState}
#: How many break durations travel with each request (the last one repeats).
_BREAKS = 8
#: Outcomes kept while Redis is unavailable, at most (the oldest go first).
_KEEP = 10_000


class RedisCircuitStore(Shared, CircuitStore):
    """The state of one breaker, shared in Redis by every process that uses its name."""

    kind = "circuit_breaker"
    remote = True

    def __init__(self, backend: RedisBackend, name: str, policy: Any) -> None:
        Shared.__init__(self, backend, name, policy)
        self._keys = [self.key("state"), self.key("window")]
        self.lane = CircuitLane()
        self._pending: deque[tuple[int, int, int]] = deque()  # (permit, code, count), in order
        self._releases: deque[int] = deque()
        self._state = CLOSED
        self._epoch = -1  # nothing heard yet
        self._open_until = 0.0  # this process's clock
        self._rejected_here = 0
        self._local: MemoryCircuitStore | None = None

    # -- configuration ---------------------------------------------------------------------

    def configure(self, rules: CircuitRules, clock: Clock, notify: Notify) -> None:
        self._clock = clock
        self._notify = notify
        self._use(rules)
        self.backend.start()

    def reconfigure(self, rules: CircuitRules) -> None:
        self._use(rules)
        local = self._local
        if local is not None:
            local.reconfigure(rules)

    def _use(self, rules: CircuitRules) -> None:
        self._rules = rules
        self._breaks = ",".join(repr(rules.break_seconds(n)) for n in range(1, _BREAKS + 1))
        self._static = [
            _num(rules.failure_ratio),
            _num(rules.consecutive_failures),
            _num(rules.slow_call_ratio),
            rules.minimum_calls,
            _num(None if rules.window_seconds is not None else rules.window_calls or 1),
            _num(rules.window_seconds),
            rules.window_buckets,
            rules.half_open_calls,
            repr(rules.half_open_max_seconds),
            "r" if rules.half_open_rule == "ratio" else "f",
        ]

    def _args(self, op: str, records: str, releases: str, target: str = "") -> list[Any]:
        return [
            op,
            *self._static,
            self._breaks,
            records,
            releases,
            target,
            self.backend.key_ttl,
        ]

    # -- what travels: outcomes in order, trials given back ------------------------------------

    def _take(self) -> tuple[str, str, list[tuple[int, int, int]], list[int]]:
        """Everything waiting to be sent, encoded; the lane's successes first."""
        lane = self.lane
        successes = 0
        popleft = lane.successes.popleft
        while True:
            try:
                popleft()
            except IndexError:
                break
            successes += 1
        with self.lock:
            pending = list(self._pending)
            self._pending.clear()
            releases = list(self._releases)
            self._releases.clear()
        if successes:  # admitted through the lane, under the epoch the process knows
            pending.insert(0, (max(self._epoch, 0) << 1, SUCCESS, successes))
        records = ",".join(f"{permit}:{code}:{count}" for permit, code, count in pending)
        return records, ",".join(map(str, releases)), pending, releases

    def _put_back(
        self, pending: list[tuple[int, int, int]], releases: list[int], problem: Unavailable
    ) -> None:
        """Outcomes that could not be sent wait for the next try (the newest _KEEP of them).

        Outcomes that may have reached the server (the request timed out) are not sent
        again: counted at most once, never twice. Trials given back are idempotent.
        """
        if problem.sent:
            pending = []
        with self.lock:
            self._pending.extendleft(reversed(pending))
            self._releases.extendleft(reversed(releases))
            while len(self._pending) > _KEEP:
                self._pending.popleft()

    # -- the answer ------------------------------------------------------------------------

    def _learn(self, reply: list[Any]) -> int:
        """Take the server's answer as this process's view; returns its permit."""
        permit = int(reply[0])
        state = _STATES[_text(reply[1])]
        epoch = int(reply[2])
        retry_after = float(reply[3])
        now = self._clock.monotonic()
        changed = None
        with self.lock:
            if epoch < self._epoch:
                return permit  # an older answer overtaken by a newer one
            old = self._state
            self._state = state
            self._epoch = epoch
            self._open_until = now + retry_after if state is OPEN else 0.0
            self.lane.consecutive = int(reply[4])
            self._set_lane(state, epoch)
            if old is not state:
                changed = old
        self.answered()
        if self._local is not None:
            self._local = None  # back on the fleet's state
        if changed is not None:
            self._notify(changed, state, now)
        return permit

    def _set_lane(self, state: CircuitState, epoch: int) -> None:
        lane = self.lane
        if self.mode == "local-first" and (state is CLOSED or state is DISABLED):
            lane.permit = lane.success_permit = epoch << 1
        else:
            lane.permit = REJECTED
            lane.success_permit = NOT_LANED

    # -- the operations ---------------------------------------------------------------------

    def acquire(self) -> int:
        refused = self._refused_here()
        if refused is not None:
            return refused
        records, releases, pending, given = self._take()
        try:
            reply = self.backend.run("circuit", self._keys, self._args("a", records, releases))
        except Unavailable as problem:
            self._put_back(pending, given, problem)
            return self._without("acquire", problem)
        return self._learn(reply)

    async def aacquire(self) -> int:
        refused = self._refused_here()
        if refused is not None:
            return refused
        records, releases, pending, given = self._take()
        try:
            reply = await self.backend.arun(
                "circuit", self._keys, self._args("a", records, releases)
            )
        except Unavailable as problem:
            self._put_back(pending, given, problem)
            return self._without("acquire", problem)
        return self._learn(reply)

    def _refused_here(self) -> int | None:
        """Local-first: an open breaker refuses here until its break is over."""
        if (
            self.mode == "local-first"
            and self._state is OPEN
            and self._clock.monotonic() < self._open_until
            and self.backend.available()
        ):
            with self.lock:
                self._rejected_here += 1
            return REJECTED
        return None

    def record(self, permit: int, outcome: int, now: float) -> None:
        if permit >= LOCAL:
            local = self._local
            if permit < ADMITTED and local is not None:
                local.record(permit - LOCAL, outcome, now)
            return
        lane = self.lane
        if outcome == SUCCESS:
            successes = lane.successes
            if permit == lane.success_permit:
                successes.append(SUCCESS)
                lane.consecutive = 0
                return
        with self.lock:
            self._pending.append((permit, outcome, 1))
        if outcome != SUCCESS or permit & 1:
            self.backend.wake()  # a failure, a slow call or a trial: the fleet should know now

    def release(self, permit: int) -> None:
        if permit >= LOCAL:
            local = self._local
            if permit < ADMITTED and local is not None:
                local.release(permit - LOCAL)
            return
        if permit & 1:
            with self.lock:
                self._releases.append(permit)
            self.backend.wake()

    def flush(self) -> None:
        if not self.backend.available() and self._local is None and self._epoch >= 0:
            return
        records, releases, pending, given = self._take()
        if self.mode == "strict" and not records and not releases:
            return  # nothing to send; strict calls ask for themselves
        try:
            reply = self.backend.run("circuit", self._keys, self._args("s", records, releases))
        except Unavailable as problem:
            self._put_back(pending, given, problem)
            if self.on_backend_error == "local":
                self._fallback(problem, "sync")
            else:  # calls stop taking the lane: each asks, and is refused ("closed") or admitted
                self.failed("sync", problem, self.on_backend_error)
                with self.lock:
                    self.lane.permit = REJECTED
                    self.lane.success_permit = NOT_LANED
            return
        self._learn(reply)

    def state(self) -> CircuitState:
        local = self._local
        return local.state() if local is not None else self._state

    def retry_after(self) -> float | None:
        local = self._local
        if local is not None:
            return local.retry_after()
        if self._state is OPEN:
            return max(0.0, self._open_until - self._clock.monotonic())
        return None

    def transition(self, state: CircuitState) -> None:
        records, releases, pending, given = self._take()
        args = self._args("t", records, releases, state.value)
        try:
            reply = self.backend.run("circuit", self._keys, args)
        except Unavailable as problem:
            self._put_back(pending, given, problem)
            raise self.refusal(problem) from problem.error
        self._learn(reply)

    def metrics(self) -> CircuitMetrics:
        """Read from Redis (one round trip): the fleet's state and window."""
        records, releases, pending, given = self._take()
        try:
            reply = self.backend.run("circuit", self._keys, self._args("m", records, releases))
        except Unavailable as problem:
            self._put_back(pending, given, problem)
            local = self._local
            if local is not None:
                return local.metrics()
            # What this process knows: its last view of the fleet.
            return CircuitMetrics(
                state=self._state,
                calls=0,
                failures=0,
                slow_calls=0,
                consecutive_failures=self.lane.consecutive,
                seconds_in_state=0.0,
                retry_after=self.retry_after(),
                trips=0,
                rejected=self._rejected_here,
            )
        self._learn(reply)
        state = _STATES[_text(reply[1])]
        retry_after = float(reply[3])
        return CircuitMetrics(
            state=state,
            calls=int(reply[5]),
            failures=int(reply[6]),
            slow_calls=int(reply[7]),
            consecutive_failures=int(reply[4]),
            seconds_in_state=float(reply[8]),
            retry_after=retry_after if retry_after >= 0 else None,
            trips=int(reply[9]),
            rejected=int(reply[10]) + self._rejected_here,
            shared=True,
        )

    # -- when Redis does not answer ------------------------------------------------------------

    def _without(self, operation: str, problem: Unavailable) -> int:
        action = self.on_backend_error
        self.failed(operation, problem, action)
        if action == "open":
            return ADMITTED
        if action == "closed":
            raise self.refusal(problem) from problem.error
        local = self._fallback(problem, operation)
        permit = local.acquire()
        return permit + LOCAL if permit >= 0 else permit

    def _fallback(self, problem: Unavailable, operation: str) -> MemoryCircuitStore:
        """The in-process store that decides while Redis is unavailable (made once per outage)."""
        with self.lock:
            local = self._local
            if local is None:
                local = MemoryCircuitStore()
                local.configure(self._rules, self._clock, self._notify)
                if self._state is ISOLATED or self._state is DISABLED:
                    local.transition(self._state)
                self._local = local
                self.lane.permit = REJECTED  # every call asks this store, which asks the local one
                self.lane.success_permit = NOT_LANED
        return local


def _num(value: float | None) -> str:
    return "" if value is None else repr(value)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
