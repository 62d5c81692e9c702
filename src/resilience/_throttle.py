"""`Throttle`: a token bucket that admits calls at a steady rate, first come, first served."""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from . import _shells, _shells_sync
from ._aio import Loop, running_loop
from ._backend import Backend, Unavailable, check_backend
from ._clock import Clock, validate_clock
from ._context import VAR, remaining
from ._errors import ThrottledError
from ._events import AdmissionEvent
from ._middleware import AsyncEndpoint, Endpoint, Middleware, terminal
from ._misuse import refuse_async
from ._validate import number, optional_name
from ._validate import seconds as _seconds
from ._waiters import Waiter, WaiterQueue, await_turn, wait_turn

__all__ = ["Throttle", "ThrottleEvent", "ThrottleMetrics"]

logger = logging.getLogger("resilience")

_UNSET: Any = object()

# A grant due within this many seconds counts as due: a sleeper woken at the
# computed instant must not miss it by a rounding error and sleep again. The
# rounding grows with the clock reading, hence the few ulps on top (see `due`).
SLACK = 1e-9


def due(wait: float, now: float) -> bool:
    """True when a wait of ``wait`` seconds, computed at clock time ``now``, is no wait."""
    return wait <= SLACK + 4 * math.ulp(now)


@dataclass(frozen=True, slots=True)
class ThrottleMetrics:
    """A snapshot of a `Throttle`."""

    available: float
    """Tokens in the bucket now."""
    queued: int
    """Callers waiting for tokens."""
    rejected: int
    """Calls and acquisitions refused since the throttle was made."""
    shared: bool = field(default=False, repr=False)
    """True when ``available`` was read from a backend shared by processes (the fleet's bucket)."""


@dataclass(frozen=True, slots=True)
class ThrottleEvent(AdmissionEvent):
    """Sent to the throttle's listeners when a call waited for its tokens or was refused."""

    name: str | None
    """The throttle's name."""
    outcome: Literal["waited", "rejected"]
    cost: float
    """The tokens the call asked for."""
    seconds: float
    """Seconds the call waited ("waited"), or the ``retry_after`` of the refusal ("rejected")."""
    error: ThrottledError | None = None
    """The refusal, for "rejected"."""


def _rates(rate: object, per: object, burst: object) -> tuple[float, float, float]:
    """Checked ``rate``, ``per`` and ``burst`` (None: the rate, at least 1)."""
    rate_ = number(rate, "rate", minimum=0.0, inclusive=False)
    per_ = _seconds(per, "per")
    burst_ = (
        max(rate_, 1.0) if burst is None else number(burst, "burst", minimum=0.0, inclusive=False)
    )
    interval = per_ / rate_
    if not 0.0 < interval < math.inf or not 0.0 < burst_ * interval < math.inf:
        raise ValueError(
            f"rate must give a token at least every {sys.float_info.max:.3g}s and a full "
            f"bucket a finite time: rate={rate!r} per {per_:g}s with burst={burst_:g} does not"
        )
    return rate_, per_, burst_


def _cost(value: object, burst: float, name: str = "cost") -> float:
    """A cost that the bucket can ever grant: a number in [0, burst]."""
    result = number(value, name, minimum=0.0)
    if result > burst:
        raise ValueError(
            f"{name} must be <= burst ({burst:g}), got {value!r}: it could never be granted"
        )
    return result


class TokenBucket:
    """The throttle's core: bucket arithmetic and its FIFO queue, no I/O.

    The whole state is one number (GCRA's "theoretical arrival time"): the
    time ``full_at`` at which the bucket will be full again. The tokens in
    it at time ``now`` are ``burst - max(0, full_at - now) / interval``.
    Taking ``cost`` tokens moves ``full_at`` on by ``cost * interval``.
    Times are relative to the bucket's birth (``epoch``): small floats keep
    the sums of many small steps exact after months of uptime.

    A waiter of the queue that wakes up late is charged as if it had been
    served when its tokens came due (from ``full_at``, or when it joined),
    by up to its own cost: over time a late wake-up costs the throttle
    nothing, where charging from the wake-up lost about 10 % of the rate
    with ``burst=1`` (Go's ``rate.Limiter`` reserves ahead for the same
    reason). The price is that the call of a late waiter may run right
    before the next one: over any ``t`` seconds the bucket admits at most
    ``burst + rate * t / per`` tokens plus the cost of one late waiter.

    Whoever holds the *baton* owns the state. Taking it is one atomic
    `deque` pop, measured at a third of the cost of a `threading.Lock`
    acquire and release here (docs/design.md), and the throttle's fast path
    holds it for a few bytecodes. Everything else goes through the mutex
    first (`lock`), so at most one thread ever spins for the baton. It is
    the `Gate` of its `WaiterQueue`.
    """

    __slots__ = (
        "baton",
        "burst",
        "capacity",
        "clock",
        "cost",
        "epoch",
        "full_at",
        "interval",
        "mutex",
        "queue",
        "rejected",
        "room",
        "step",
    )

    def __init__(
        self, rate: float, per: float, burst: float, cost: float, initial: float, clock: Clock
    ) -> None:
        self.clock = clock
        self.epoch = clock.monotonic()
        self.baton: deque[None] = deque([None])
        self.mutex = threading.Lock()
        self.queue = WaiterQueue(self)
        self.rejected = 0
        self.full_at = 0.0
        self.configure(rate, per, burst, cost)
        self.full_at = (burst - initial) * self.interval  # full from the start, by default

    def configure(self, rate: float, per: float, burst: float, cost: float) -> None:
        """Set the rate, the burst and the fixed cost of a call (the state held, or new)."""
        self.burst = burst
        self.interval = per / rate  # seconds per token
        self.capacity = burst * self.interval  # seconds of credit in a full bucket
        self.cost = cost
        self.step = cost * self.interval  # what a call of the fixed cost moves full_at by
        self.room = self.capacity - self.step  # how far ahead full_at may be for one

    def lock(self) -> None:
        """Own the state: the mutex, then the baton."""
        self.mutex.acquire()
        try:
            while True:
                try:
                    self.baton.pop()
                except IndexError:  # a fast path holds it for a few bytecodes
                    time.sleep(0)
                else:
                    return
        except BaseException:
            self.mutex.release()
            raise

    def unlock(self) -> None:
        self.baton.append(None)
        self.mutex.release()

    def wait_for(self, cost: float, now: float) -> float:
        """Seconds from ``now`` (relative) until the bucket holds ``cost`` tokens."""
        full_at = self.full_at
        return (full_at if full_at > now else now) + cost * self.interval - self.capacity - now

    def take(self, cost: float, now: float, since: float | None = None) -> bool:
        """Take ``cost`` tokens at clock time ``now`` if they are there.

        ``since`` is when a waiter joined the queue (clock time): it is charged
        from then at the earliest, not from ``now`` (see the class docs).
        """
        relative = now - self.epoch
        if not due(self.wait_for(cost, relative), now):
            return False
        step = cost * self.interval
        start = relative
        if since is not None:  # a waiter: credit for its late wake-up, one grant's worth at most
            start = max(since - self.epoch, relative - step)
        full_at = self.full_at
        self.full_at = (full_at if full_at > start else start) + step
        return True

    def take_now(self, cost: float) -> bool:
        """Take ``cost`` tokens now if nobody waits and they are there; never blocks.

        The fast path of a call, through the baton only: False means "see the
        slow path" (which also covers another thread holding the baton).
        """
        try:
            self.baton.pop()
        except IndexError:
            return False
        try:
            return not self.queue.count and self.take(cost, self.clock.monotonic())
        finally:
            self.baton.append(None)

    def ready_at(self, cost: float, now: float) -> float:
        """Clock time at which the bucket will hold ``cost`` tokens."""
        return now + self.wait_for(cost, now - self.epoch)

    def give_back(self, cost: float, now: float) -> None:
        """Return tokens granted to a waiter that left without using them."""
        self.full_at -= cost * self.interval

    def available(self, now: float) -> float:
        """Tokens in the bucket at clock time ``now``."""
        debt = max(0.0, self.full_at - (now - self.epoch)) / self.interval
        return max(0.0, self.burst - debt)

    def shell(
        self,
        next: Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], Any],
        direct: bool,
        slow: Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], Any],
    ) -> Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], Any]:
        """The throttle's endpoint for calls of the fixed cost, sync and async alike.

        It takes the tokens in place (`take` for one fixed cost, inlined:
        the hot path of every call) and goes on with ``next``; when it cannot
        tell at once, it hands the call to ``slow``, which admits it (queue,
        wait or refuse) and then goes on. For an async chain ``next`` and
        ``slow`` return awaitables, and so does this endpoint: it is a plain
        function that returns the next layer's awaitable, with no coroutine
        of its own.
        """
        monotonic = self.clock.monotonic
        epoch = self.epoch
        queue = self.queue
        take_baton = self.baton.pop
        give_baton = self.baton.append
        bucket = self

        def throttle(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            try:
                take_baton()
            except IndexError:  # another thread is in the bucket this instant
                return slow(fn, args, kwargs)
            try:
                now = monotonic() - epoch
                full_at = bucket.full_at
                granted = not queue.count
                if full_at <= now:  # a full bucket
                    if granted:
                        bucket.full_at = now + bucket.step
                elif full_at - bucket.room <= now and granted:
                    bucket.full_at = full_at + bucket.step
                else:
                    granted = False
            finally:
                give_baton(None)
            if not granted:
                return slow(fn, args, kwargs)
            return fn(*args, **kwargs) if direct else next(fn, args, kwargs)

        return throttle


class Throttle(Middleware):
    """Admit at most ``rate`` calls per ``per`` seconds: a token bucket.

    The bucket holds at most ``burst`` tokens (default: ``rate``, the quota
    of one period, and at least 1) and starts full; it refills continuously
    at ``rate / per`` tokens a second. Each call takes ``cost`` tokens: a
    number, or a function of the call's arguments (``cost=len`` for bytes).
    Over any ``t`` seconds it admits at most ``burst + rate * t / per`` tokens'
    worth of calls.

    A call that finds too few tokens waits for them, first come first
    served, if it can have them within ``max_wait`` seconds and before the
    call's deadline; otherwise it is rejected at once with `ThrottledError`,
    whose ``retry_after`` says when the tokens will be there. The FIFO queue
    knows that time in advance, so no call waits in vain.

    * ``max_wait=0`` (default): never wait, reject at once.
    * ``max_wait=s``: wait up to ``s`` seconds (a sync call blocks its
      thread, an async call awaits).
    * ``max_wait=None``: wait as long as needed, but never past the call's
      deadline.

    Tokens are taken only when granted: a waiter that is cancelled or
    interrupted takes none. One instance keeps one account for every thread,
    task and event loop that uses it. `try_acquire`, `acquire` and `aacquire`
    (and ``with`` / ``async with`` for one token) take tokens for work that
    is not a call, such as bytes sent.
    """

    kind = "throttle"
    _read_only = frozenset(
        {"rate", "per", "burst", "max_wait", "cost", "initial_tokens", "backend", "clock", "name"}
    )

    def __init__(
        self,
        rate: float,
        per: float | timedelta = 1.0,
        *,
        burst: float | None = None,
        max_wait: float | timedelta | None = 0.0,
        cost: float | Callable[..., float] = 1,
        initial_tokens: float | None = None,
        backend: Backend | None = None,
        clock: Clock | None = None,
        name: str | None = None,
    ) -> None:
        self._burst_follows_rate = burst is None  # the default burst is the rate
        self.rate, self.per, self.burst = _rates(rate, per, burst)
        self.max_wait = (
            None if max_wait is None else _seconds(max_wait, "max_wait", allow_zero=True)
        )
        if callable(cost):
            refuse_async(cost, "cost")
            self.cost: float | Callable[..., float] = cost
            self._cost_of: Callable[..., float] | None = cost
            fixed = 1.0
        else:
            self.cost = fixed = _cost(cost, self.burst)
            self._cost_of = None
        self._initial_given = initial_tokens is not None
        self.initial_tokens = (
            self.burst
            if initial_tokens is None
            else _cost(initial_tokens, self.burst, "initial_tokens")
        )
        self.clock = validate_clock(clock)
        self.name = optional_name(name)
        self._bucket = TokenBucket(
            self.rate, self.per, self.burst, fixed, self.initial_tokens, self.clock
        )
        self.backend = check_backend(backend, self.name, "Throttle")
        self._shared: Any = None
        if self.backend is not None:
            self._shared = self.backend.attach(self.kind, self.name or "", self)

    def update(
        self,
        *,
        rate: float = _UNSET,
        per: float | timedelta = _UNSET,
        burst: float | None = _UNSET,
        max_wait: float | timedelta | None = _UNSET,
    ) -> None:
        """Change the rate, the period, the burst or ``max_wait``, atomically, from any thread.

        The bucket keeps the tokens it holds (no more than the new burst), and
        the waiters keep their places and are served by the new rate from
        now on (the first in line, already asleep until the time the old rate
        gave it, looks again then). A burst left to its default (the rate)
        follows a new rate. Calls already admitted are not affected.
        """
        new_rate = self.rate if rate is _UNSET else rate
        new_per = self.per if per is _UNSET else per
        if burst is _UNSET:
            burst = None if self._burst_follows_rate else self.burst
        new_rate, new_per, new_burst = _rates(new_rate, new_per, burst)
        wait = self.max_wait if max_wait is _UNSET else max_wait
        new_wait = None if wait is None else _seconds(wait, "max_wait", allow_zero=True)
        fixed = self._bucket.cost
        if self._cost_of is None:
            _cost(fixed, new_burst)  # a fixed cost must still fit in the bucket
        bucket = self._bucket
        bucket.lock()
        try:
            now = self.clock.monotonic()
            tokens = bucket.available(now)
            bucket.configure(new_rate, new_per, new_burst, fixed)
            bucket.full_at = (now - bucket.epoch) + (new_burst - min(tokens, new_burst)) * (
                bucket.interval
            )
            self._set(rate=new_rate, per=new_per, burst=new_burst, max_wait=new_wait)
            if burst is not None:
                self._burst_follows_rate = False
            # A waiter for more than the new burst could never be served: it is refused.
            bucket.queue.refuse_over(new_burst)
            bucket.queue.serve(now)
        finally:
            bucket.unlock()

    # -- description and observation ---------------------------------------------------

    def settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rate": self.rate,
            "per": self.per,
            "burst": self.burst,
            "max_wait": self.max_wait,
            "cost": self.cost,
        }
        if self._initial_given:
            out["initial_tokens"] = self.initial_tokens
        if self.backend is not None:
            out["backend"] = repr(self.backend)
        return out

    def __repr__(self) -> str:
        label = self._repr_name
        wait = "None" if self.max_wait is None else f"{self.max_wait:g}"
        cost = "" if self.cost == 1 else f", cost={getattr(self.cost, '__name__', self.cost)}"
        return (
            f"Throttle({label}rate={self.rate:g}, per={self.per:g}, burst={self.burst:g}, "
            f"max_wait={wait}{cost})"
        )

    @property
    def available(self) -> float:
        """Tokens in the bucket now."""
        return self.metrics().available

    @property
    def queued(self) -> int:
        """Callers waiting for tokens now."""
        return self._bucket.queue.count

    @property
    def rejected(self) -> int:
        """Calls and acquisitions refused since the throttle was made."""
        return self._bucket.rejected

    def metrics(self) -> ThrottleMetrics:
        """A consistent snapshot of the bucket, the queue and the refusals.

        With a backend, ``available`` is the fleet's, read from it (one round
        trip); the queue and the refusals are this process's.
        """
        bucket = self._bucket
        shared = self._shared
        if shared is not None:
            try:
                available = shared.metrics()
            except Unavailable:
                pass
            else:
                return ThrottleMetrics(available, bucket.queue.count, bucket.rejected, True)
        bucket.lock()
        try:
            return ThrottleMetrics(
                available=bucket.available(self.clock.monotonic()),
                queued=bucket.queue.count,
                rejected=bucket.rejected,
            )
        finally:
            bucket.unlock()

    # -- admission out of the fast path: take, queue, or refuse -------------------------

    def _enter(
        self, cost: float, max_wait: float | None, loop: Loop | None
    ) -> tuple[Waiter | None, float, float]:
        """Take ``cost`` now (no waiter), or join the queue: ``(waiter, now, give_up)``.

        Raises `ThrottledError` at once when the tokens would come later than
        ``max_wait`` or the call's deadline allow: the queue says when.
        """
        bucket = self._bucket
        bucket.lock()
        try:
            now = self.clock.monotonic()
            queue = bucket.queue
            if not queue.count and bucket.take(cost, now):
                return None, now, now
            wait = bucket.wait_for(queue.pending + cost, now - bucket.epoch)
            limit = math.inf if max_wait is None else max_wait
            left = remaining(VAR.get())
            deadline_bound = False
            if left is not None and left < limit:
                limit = max(0.0, left)
                deadline_bound = True
            if due(wait - limit, now):
                return queue.join(cost, loop, now), now, now + limit
            bucket.rejected += 1
        finally:
            bucket.unlock()
        raise self._rejection(cost, wait, limit, deadline_bound)

    def _rejection(
        self, cost: float, wait: float, limit: float, deadline_bound: bool
    ) -> ThrottledError:
        label = f"throttle {self.name!r}" if self.name else "throttle"
        tokens = "a token" if cost == 1 else f"{cost:g} tokens"
        if deadline_bound:
            why = f", past the call's deadline ({limit:.3g}s left)"
        elif limit > 0:
            why = f", later than it may wait ({limit:g}s)"
        else:
            why = ""
        error = ThrottledError(
            f"{label} is out of tokens: {tokens} in {wait:.3g}s{why}",
            name=self.name,
            retry_after=wait,
        )
        logger.info("resilience: rejected: %s", error)
        if self._listeners:
            self._emit(ThrottleEvent(self.name, "rejected", cost, wait, error))
        return error

    def _waited(self, cost: float, started: float, granted: bool) -> None:
        """After a wait in the queue: report it, or refuse a waiter whose time ran out."""
        if granted:
            if self._listeners or logger.isEnabledFor(logging.DEBUG):
                seconds = self.clock.monotonic() - started
                label = self._label
                logger.debug("resilience: Throttle%s: a call waited %.3gs", label, seconds)
                self._emit(ThrottleEvent(self.name, "waited", cost, seconds))
            return
        bucket = self._bucket
        bucket.lock()
        try:
            bucket.rejected += 1
            now = self.clock.monotonic() - bucket.epoch
            wait = max(0.0, bucket.wait_for(bucket.queue.pending + cost, now))
        finally:
            bucket.unlock()
        raise self._rejection(cost, wait, 0.0, False)

    def _admit(self, cost: float, max_wait: float | None) -> None:
        """Take ``cost`` tokens for this thread, waiting in the queue if allowed, or raise."""
        shared = self._shared
        if shared is not None:
            limit, bound = self._fleet_limit(max_wait)
            try:
                granted, wait = shared.take(cost, limit, self.clock.monotonic())
            except Unavailable as problem:
                if not self._fleet_failed(problem):
                    return
            else:
                started = self._fleet_granted(granted, wait, cost, limit, bound)
                if wait > 0:
                    try:
                        self.clock.sleep(wait)
                    except BaseException:
                        shared.give_back(cost)
                        raise
                    self._waited(cost, started, True)
                return
        waiter, started, give_up = self._enter(cost, max_wait, None)
        if waiter is not None:
            bucket = self._bucket
            self._waited(cost, started, wait_turn(bucket.queue, bucket, waiter, give_up))

    async def _aadmit(self, cost: float, max_wait: float | None) -> None:
        """`_admit` for this task."""
        shared = self._shared
        if shared is not None:
            limit, bound = self._fleet_limit(max_wait)
            try:
                granted, wait = await shared.atake(cost, limit, self.clock.monotonic())
            except Unavailable as problem:
                if not self._fleet_failed(problem):
                    return
            else:
                started = self._fleet_granted(granted, wait, cost, limit, bound)
                if wait > 0:
                    try:
                        await self.clock.asleep(wait)
                    except BaseException:
                        shared.give_back(cost)
                        raise
                    self._waited(cost, started, True)
                return
        waiter, started, give_up = self._enter(cost, max_wait, running_loop())
        if waiter is not None:
            bucket = self._bucket
            self._waited(cost, started, await await_turn(bucket.queue, bucket, waiter, give_up))

    # -- a bucket shared by processes (``backend=``) --------------------------------------

    def _fleet_limit(self, max_wait: float | None) -> tuple[float | None, bool]:
        """How long a call may wait for the fleet's tokens (None: no limit), and whether its
        deadline is what bounds it."""
        left = remaining(VAR.get())
        if left is not None and (max_wait is None or left < max_wait):
            return max(0.0, left), True
        return max_wait, False

    def _fleet_granted(
        self, granted: bool, wait: float, cost: float, limit: float | None, bound: bool
    ) -> float:
        """The fleet's answer: the clock time the wait starts, or the refusal raised."""
        if granted:
            return self.clock.monotonic()
        bucket = self._bucket
        bucket.lock()
        try:
            bucket.rejected += 1
        finally:
            bucket.unlock()
        raise self._rejection(cost, wait, 0.0 if limit is None else limit, bound)

    def _fleet_failed(self, problem: Unavailable) -> bool:
        """The backend failed: True to decide with this process's bucket (``"local"``),
        False to admit (``"open"``); ``"closed"`` raises `BackendUnavailableError`."""
        shared = self._shared
        action = shared.on_backend_error
        shared.failed("acquire", problem, action)
        if action == "closed":
            raise shared.refusal(problem) from problem.error
        return bool(action == "local")

    # -- direct use: tokens for work that is not a call ---------------------------------

    def try_acquire(self, cost: float = 1) -> bool:
        """Take ``cost`` tokens if they are there now and nobody waits; never blocks."""
        cost = _cost(cost, self.burst)
        bucket = self._bucket
        shared = self._shared
        if shared is not None:
            try:
                granted, _ = shared.take(cost, 0.0, self.clock.monotonic())
            except Unavailable as problem:
                if not self._fleet_failed(problem):
                    return True
            else:
                if not granted:
                    bucket.lock()
                    bucket.rejected += 1
                    bucket.unlock()
                return bool(granted)
        bucket.lock()
        try:
            if not bucket.queue.count and bucket.take(cost, self.clock.monotonic()):
                return True
            bucket.rejected += 1
            return False
        finally:
            bucket.unlock()

    def acquire(self, cost: float = 1, *, max_wait: float | timedelta | None = _UNSET) -> None:
        """Take ``cost`` tokens, blocking this thread for them as a call would.

        ``max_wait`` overrides the throttle's own for this acquisition. Raises
        `ThrottledError` when the tokens cannot be had in time.
        """
        self._admit(_cost(cost, self.burst), self._max_wait(max_wait))

    async def aacquire(
        self, cost: float = 1, *, max_wait: float | timedelta | None = _UNSET
    ) -> None:
        """Take ``cost`` tokens, awaiting them as an async call would (see `acquire`)."""
        await self._aadmit(_cost(cost, self.burst), self._max_wait(max_wait))

    def _max_wait(self, value: object) -> float | None:
        if value is _UNSET:
            return self.max_wait
        return None if value is None else _seconds(value, "max_wait", allow_zero=True)

    def __enter__(self) -> None:
        """``with throttle:`` takes one token (or raises `ThrottledError`)."""
        self._admit(1.0, self.max_wait)

    def __exit__(self, *exc_info: object) -> None:
        return None

    async def __aenter__(self) -> None:
        """``async with throttle:`` takes one token, as ``async with AsyncLimiter()`` does."""
        await self._aadmit(1.0, self.max_wait)

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    # -- the shells: the bucket's fast path inline, the queue out of line -----------------

    def _cost_for(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> float:
        assert self._cost_of is not None
        return _cost(self._cost_of(*args, **kwargs), self.burst, "the cost function's result")

    def wrap(self, next: Endpoint, /) -> Endpoint:
        return self._shell(_shells_sync, next, self._admit)  # type: ignore[no-any-return]

    def awrap(self, next: AsyncEndpoint, /) -> AsyncEndpoint:
        return self._shell(_shells, next, self._aadmit)  # type: ignore[no-any-return]

    def _shell(self, shells: Any, next: Any, admit: Any) -> Any:
        """Calls of one cost: the bucket's fast path, the queue (``admit``) when it says so;
        calls of their own cost (``cost=`` a function): `_shells.weighted_throttle`."""
        direct = next is terminal  # innermost: call the function without the extra hop
        bucket = self._bucket
        shared = self._shared
        if shared is not None:  # every call asks the fleet's bucket (or this process's lease)
            fixed = bucket.cost
            if shared.mode == "strict" and self._cost_of is None:
                return shells.admitted(next, direct, lambda: admit(fixed, self.max_wait))
            return shells.weighted_throttle(
                next,
                direct,
                self._cost_for if self._cost_of is not None else lambda args, kwargs: fixed,
                shared.take_now if shared.mode == "local-first" else _never,
                lambda cost: admit(cost, self.max_wait),
            )
        if self._cost_of is not None:
            return shells.weighted_throttle(
                next,
                direct,
                self._cost_for,
                bucket.take_now,
                lambda cost: admit(cost, self.max_wait),
            )
        slow = shells.admitted(next, direct, lambda: admit(bucket.cost, self.max_wait))
        return bucket.shell(next, direct, slow)


def _never(cost: float) -> bool:
    """A throttle shared by processes takes no token from its own bucket on the fast path."""
    return False
