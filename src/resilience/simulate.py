"""Simulate pipelines against a model of a service, in virtual time.

A run sends an open-loop stream of requests (Poisson arrivals at ``rate``
per second) through a pipeline to a modelled service, on an asyncio event
loop whose clock jumps to its next timer instead of waiting: a million
requests over hours of service time take seconds, and every figure comes
out the same for the same seed. The pipeline's policies read that virtual
clock, so breakers open, budgets refill and timeouts fire as they would.

The service (`Service`) has

* a latency distribution, tail included (`exponential`, `lognormal`,
  `constant`, `mixture`, or any function of a `random.Random`);
* an error rate;
* a capacity: that many requests served at once, the rest wait in its
  queue, so an overloaded service slows down and a retry storm shows in
  the latencies; requests whose caller gave up are still served unless
  ``cancels=True`` (deadline propagation), as a real server would;
* outages: windows in which calls hang (``"hang"``) or fail at once
  (``"error"``).

`run` gives a `Report` (goodput; fresh, fallback and error shares; p50,
p99 and p99.9; the load multiplier overall and during outages; breaker
trips; fallbacks by reason), `compare` runs several pipelines on the same
requests and `sweep` runs one over a grid of parameters. A pipeline is a
function ``make(clock) -> Middleware`` that builds it on the simulation's
clock, or `from_config` for a pipeline of a configuration file. ``python -m
resilience simulate --help`` is the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import heapq
import itertools
import json
import math
import os
import random
import sys
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ._circuit_breaker import CircuitStateChange
from ._clock import Clock, SystemClock
from ._fallback import FallbackEvent
from ._middleware import Middleware
from ._validate import DEFAULT_SEEDS

__all__ = [
    "FRESH",
    "Latency",
    "Outage",
    "OutageError",
    "OverloadError",
    "Recorder",
    "Report",
    "Service",
    "ServiceError",
    "SweepPoint",
    "VirtualClock",
    "Window",
    "compare",
    "constant",
    "exponential",
    "format_reports",
    "format_sweep",
    "from_config",
    "lognormal",
    "main",
    "mixture",
    "plot_reports",
    "plot_sweep",
    "run",
    "sweep",
]

Latency = Callable[[random.Random], float]
"""A latency distribution: seconds drawn from the given random source."""

MakePipeline = Callable[[Clock], Middleware]


class _Fresh:
    __slots__ = ()

    def __repr__(self) -> str:
        return "FRESH"


FRESH: Any = _Fresh()
"""What the modelled service answers: any other result reaching the caller is a fallback's."""


class ServiceError(ConnectionError):
    """The modelled service failed the call (its ``error_rate``)."""


class OutageError(ConnectionError):
    """The modelled service is down (an `Outage`)."""


class OverloadError(ConnectionError):
    """The modelled service's queue was full (``max_queue``): it refused the call at once."""

    retryable = True


# -- latency distributions -------------------------------------------------------------------


def _positive(value: object, name: str, *, zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    number = float(value)
    if math.isnan(number) or math.isinf(number) or number < 0 or (number == 0 and not zero):
        allowed = "at least 0" if zero else "greater than 0"
        raise ValueError(f"{name} must be finite and {allowed}, got {value!r}")
    return number


def constant(seconds: float) -> Latency:
    """Every call takes ``seconds``."""
    value = _positive(seconds, "seconds", zero=True)

    def draw(_: random.Random) -> float:
        return value

    draw.__qualname__ = f"constant({value:g})"
    return draw


def exponential(mean: float) -> Latency:
    """Exponentially distributed with ``mean`` seconds (the M in M/M/1)."""
    rate = 1.0 / _positive(mean, "mean")

    def draw(rng: random.Random) -> float:
        return rng.expovariate(rate)

    draw.__qualname__ = f"exponential({mean:g})"
    return draw


def lognormal(median: float, p99: float) -> Latency:
    """Log-normal with the given median and 99th percentile (seconds): a long right tail."""
    middle = _positive(median, "median")
    tail = _positive(p99, "p99")
    if tail <= middle:
        raise ValueError(f"p99 must be greater than median ({median!r}), got {p99!r}")
    mu = math.log(middle)
    sigma = math.log(tail / middle) / 2.3263478740408408  # the standard normal's 0.99 quantile

    def draw(rng: random.Random) -> float:
        return rng.lognormvariate(mu, sigma)

    draw.__qualname__ = f"lognormal({median:g}, {p99:g})"
    return draw


def mixture(*parts: tuple[float, Latency]) -> Latency:
    """One of several distributions, by weight: ``mixture((0.95, fast), (0.05, slow))``."""
    if not parts:
        raise ValueError("mixture needs at least one (weight, latency) pair")
    weights: list[float] = []
    draws: list[Latency] = []
    for part in parts:
        if not (isinstance(part, tuple) and len(part) == 2 and callable(part[1])):
            raise TypeError(f"each part must be a (weight, latency) pair, got {part!r}")
        weights.append(_positive(part[0], "weight"))
        draws.append(part[1])
    total = sum(weights)
    bounds = list(itertools.accumulate(w / total for w in weights))
    bounds[-1] = 1.0

    def draw(rng: random.Random) -> float:
        pick = rng.random()
        for bound, chosen in zip(bounds, draws, strict=True):
            if pick < bound:
                return chosen(rng)
        return draws[-1](rng)  # pragma: no cover - pick < 1.0 == bounds[-1]

    draw.__qualname__ = (
        "mixture("
        + ", ".join(
            f"({w:g}, {getattr(d, '__qualname__', repr(d))})"
            for w, d in zip(weights, draws, strict=True)
        )
        + ")"
    )
    return draw


# -- the service model ------------------------------------------------------------------------


@dataclass(frozen=True)
class Outage:
    """The service is down from ``start`` for ``length`` seconds (virtual, from the run's start).

    ``mode="hang"``: calls get no answer for ``hang`` seconds, then fail (a
    dead peer whose connection finally drops); ``"error"``: they fail at
    once (connection refused).
    """

    start: float
    length: float
    mode: Literal["hang", "error"] = "hang"
    hang: float = 30.0

    def __post_init__(self) -> None:
        _positive(self.start, "start", zero=True)
        _positive(self.length, "length")
        if self.mode not in ("hang", "error"):
            raise ValueError(f"mode must be 'hang' or 'error', got {self.mode!r}")
        _positive(self.hang, "hang")

    @property
    def end(self) -> float:
        return self.start + self.length


@dataclass(frozen=True)
class Service:
    """A modelled service: latency, errors, capacity and outages."""

    latency: Latency | float = 0.01
    """A distribution (`exponential` ...) or a constant number of seconds."""
    error_rate: float = 0.0
    """The share of calls it serves that fail with `ServiceError` (after their latency)."""
    capacity: int | None = None
    """Requests it serves at once; the rest queue (FIFO). None: unlimited (no queueing)."""
    max_queue: int | None = None
    """Requests that may wait; one more is refused with `OverloadError`. None: unbounded."""
    outages: Sequence[Outage] = ()
    cancels: bool = False
    """Whether a queued request whose caller gave up is dropped instead of served."""

    def __post_init__(self) -> None:
        if isinstance(self.latency, int | float) and not isinstance(self.latency, bool):
            object.__setattr__(self, "latency", constant(self.latency))
        elif not callable(self.latency):
            raise TypeError(
                "latency must be a number of seconds or a function of a random.Random "
                f"(exponential(...), lognormal(...)), got {type(self.latency).__name__}"
            )
        if isinstance(self.error_rate, bool) or not isinstance(self.error_rate, int | float):
            raise TypeError(f"error_rate must be a number, got {type(self.error_rate).__name__}")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"error_rate must be between 0 and 1, got {self.error_rate!r}")
        for name in ("capacity", "max_queue"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int or None, got {type(value).__name__}")
            if value < (1 if name == "capacity" else 0):
                raise ValueError(
                    f"{name} must be at least {1 if name == 'capacity' else 0}, got {value}"
                )
        if self.max_queue is not None and self.capacity is None:
            raise ValueError("max_queue needs a capacity: without one, nothing ever queues")
        outages = tuple(self.outages)
        for outage in outages:
            if not isinstance(outage, Outage):
                raise TypeError(f"outages must hold Outage objects, got {type(outage).__name__}")
        object.__setattr__(self, "outages", tuple(sorted(outages, key=lambda o: o.start)))
        if not isinstance(self.cancels, bool):
            raise TypeError(f"cancels must be a bool, got {type(self.cancels).__name__}")
        probe = self.latency(random.Random(0))  # type: ignore[operator]
        if isinstance(probe, bool) or not isinstance(probe, int | float) or not probe >= 0:
            raise ValueError(f"latency must draw a number of seconds >= 0, drew {probe!r}")

    def outage_at(self, when: float) -> Outage | None:
        for outage in self.outages:
            if outage.start <= when < outage.end:
                return outage
        return None


# -- virtual time ---------------------------------------------------------------------------


class _VirtualLoop(asyncio.SelectorEventLoop):
    """An asyncio event loop in virtual time: with nothing ready, it jumps to its next timer.

    It keeps its own timer heap of ``(when, order, function, argument)``
    tuples (compared in C, where asyncio's heap compares handles in Python).
    asyncio's own timers (``call_at``: sleeps, timeouts) are entries with no
    function and the `asyncio.TimerHandle` as argument; the model's events
    (`at`) are called directly, with no handle. It never polls for I/O: a
    simulation has none, and no thread hands it work.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Any, Any]] = []
        self._order = itertools.count()
        super().__init__()

    def time(self) -> float:
        return self.now

    def call_at(  # type: ignore[override]
        self, when: float, callback: Callable[..., object], *args: Any, context: Any = None
    ) -> asyncio.TimerHandle:
        timer = asyncio.TimerHandle(when, callback, args, self, context)
        heapq.heappush(self._heap, (when, next(self._order), None, timer))
        timer._scheduled = True  # type: ignore[attr-defined]
        return timer

    def at(self, when: float, function: Callable[[Any], object], argument: Any) -> None:
        """Call ``function(argument)`` when virtual time reaches ``when`` (not cancellable)."""
        heapq.heappush(self._heap, (when, next(self._order), function, argument))

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        pass  # a cancelled timer stays in the heap and is skipped when it comes up

    def _run_once(self) -> None:
        # One call runs until the loop is told to stop (run_forever would call it again).
        ready: Any = self._ready  # type: ignore[attr-defined]
        heap = self._heap
        pop = heapq.heappop
        next_ready = ready.popleft
        while not self._stopping:  # type: ignore[attr-defined]
            if not ready:  # nothing to do now: jump to the next timer
                if not heap:
                    raise RuntimeError(
                        "the simulation is stuck: calls wait for something no timer will "
                        "bring (a policy that waits without a deadline?)"
                    )
                if heap[0][0] > self.now:
                    self.now = heap[0][0]
            now = self.now
            while heap and heap[0][0] <= now:
                _, _, function, argument = pop(heap)
                if function is not None:
                    function(argument)
                elif not argument._cancelled:
                    argument._scheduled = False
                    ready.append(argument)
            for _ in range(len(ready)):
                handle = next_ready()
                if not handle._cancelled:
                    handle._run()


class VirtualClock:
    """The `resilience.Clock` of one simulated run: its event loop's virtual time."""

    def __init__(self, loop: _VirtualLoop) -> None:
        self._loop = loop

    def monotonic(self) -> float:
        return self._loop.now

    def sleep(self, seconds: float) -> None:
        raise RuntimeError("a simulation runs async calls only; a policy tried to block")

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def call_at(
        self, when: float, callback: Callable[[], object], loop: asyncio.AbstractEventLoop
    ) -> asyncio.TimerHandle:
        return loop.call_at(when, callback)

    def wait_future(self, future: concurrent.futures.Future[Any], deadline: float) -> None:
        raise RuntimeError("a simulation runs async calls only; a policy tried to block")

    def __repr__(self) -> str:
        return f"VirtualClock(now={self._loop.now:g})"


def _layers(policy: object) -> Iterable[object]:
    yield policy
    for layer in getattr(policy, "layers", ()) or ():
        yield from _layers(layer)


def _check_clock(pipeline: object) -> None:
    """Refuse a pipeline with a layer on the system clock: its time would not be the run's."""
    for layer in _layers(pipeline):
        for owner in (layer, getattr(layer, "budget", None)):
            if isinstance(getattr(owner, "clock", None), SystemClock):
                raise ValueError(
                    f"{owner!r} reads the system clock: build every policy with the clock "
                    "the simulator passes (make(clock) -> ...(..., clock=clock))"
                )


# -- what a run records ----------------------------------------------------------------------

_FRESH, _FALLBACK, _ERROR = 0, 1, 2


class Recorder:
    """The raw record of one run: each request's start, latency and outcome; each service call.

    The demo fills one in real time, the simulator in virtual time; `report`
    turns it into a `Report`.
    """

    def __init__(self) -> None:
        self.starts = array("d")
        self.latencies = array("d")
        self.outcomes = array("b")
        self.calls = array("d")
        """When each call reached the service."""
        self.breaker: list[tuple[float, str]] = []
        """(time, new state) of every breaker state change."""
        self.fallback_reasons: Counter[str] = Counter()
        self.error_types: Counter[str] = Counter()
        self.trips = 0

    def request(self, start: float, latency: float, fresh: bool) -> None:
        """One request answered, by the service itself (``fresh``) or by a fallback."""
        self.starts.append(start)
        self.latencies.append(latency)
        self.outcomes.append(_FRESH if fresh else _FALLBACK)

    def failed(self, start: float, latency: float, error: BaseException) -> None:
        self.starts.append(start)
        self.latencies.append(latency)
        self.outcomes.append(_ERROR)
        self.error_types[type(error).__name__] += 1

    def listener(self, now: Callable[[], float]) -> Callable[[object], None]:
        """A pipeline listener noting breaker changes and fallback reasons (time from ``now``)."""

        def listen(event: object) -> None:
            if isinstance(event, CircuitStateChange):
                state = event.new.value
                self.breaker.append((now(), state))
                if state == "open":
                    self.trips += 1
            elif isinstance(event, FallbackEvent):
                reason = "rejected result" if event.error is None else type(event.error).__name__
                self.fallback_reasons[reason] += 1

        return listen

    def report(
        self, name: str, duration: float, outages: Sequence[tuple[float, float]] = ()
    ) -> Report:
        """The figures; ``outages`` are (start, end) windows for the load during outages."""
        outcomes = self.outcomes
        fresh = outcomes.count(_FRESH)
        fallbacks = outcomes.count(_FALLBACK)
        outage_load = None
        if outages:
            inside = sum(1 for t in self.starts if any(a <= t < b for a, b in outages))
            reached = sum(1 for t in self.calls if any(a <= t < b for a, b in outages))
            outage_load = reached / inside if inside else None
        return Report(
            name=name,
            requests=len(outcomes),
            fresh=fresh,
            fallbacks=fallbacks,
            errors=len(outcomes) - fresh - fallbacks,
            service_calls=len(self.calls),
            duration=duration,
            trips=self.trips,
            fallbacks_by_reason=dict(self.fallback_reasons.most_common()),
            errors_by_type=dict(self.error_types.most_common()),
            outage_load=outage_load,
            outages=tuple(outages),
            recorder=self,
        )


def _dominant_states(
    changes: Sequence[tuple[float, str]], count: int, resolution: float
) -> list[str | None]:
    """For each slice, the breaker state that held longest in it (None: no breaker seen)."""
    if not changes:
        return [None] * count
    out: list[str | None] = []
    state, index = "closed", 0
    for slot in range(count):
        start, end = slot * resolution, (slot + 1) * resolution
        held: dict[str, float] = {}
        at = start
        while index < len(changes) and changes[index][0] < end:
            when, new = changes[index]
            if when > at:
                held[state] = held.get(state, 0.0) + when - at
                at = when
            state = new
            index += 1
        held[state] = held.get(state, 0.0) + end - at
        out.append(max(held, key=lambda name: held[name]))
    return out


def _percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest rank: the smallest value with at least ``q`` of the values at or below it."""
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass(frozen=True)
class Window:
    """The figures of one slice of a run's timeline (requests by their start)."""

    start: float
    requests: int
    fresh: int
    fallbacks: int
    errors: int
    service_calls: int
    p99: float
    breaker: str | None
    """The breaker's state for most of the slice (None: no breaker seen)."""


@dataclass(frozen=True)
class Report:
    """What one run measured. Shares are of requests; latencies are the callers', in seconds."""

    name: str
    requests: int
    fresh: int
    """Answered by the service itself."""
    fallbacks: int
    """Answered by a fallback (a stale or default answer)."""
    errors: int
    """Failed: the caller saw an exception."""
    service_calls: int
    """Calls that reached the service, retries and hedges included."""
    duration: float
    """Seconds over which requests arrived."""
    trips: int
    """Times a breaker opened."""
    fallbacks_by_reason: dict[str, int]
    errors_by_type: dict[str, int]
    outage_load: float | None
    """Calls reaching the service per request made during outages (None: no outage)."""
    outages: tuple[tuple[float, float], ...] = ()
    recorder: Recorder = field(default_factory=Recorder, repr=False, compare=False)

    def share(self, part: int) -> float:
        return part / self.requests if self.requests else math.nan

    @property
    def fresh_share(self) -> float:
        return self.share(self.fresh)

    @property
    def fallback_share(self) -> float:
        return self.share(self.fallbacks)

    @property
    def error_share(self) -> float:
        return self.share(self.errors)

    @property
    def goodput(self) -> float:
        """Fresh answers per second."""
        return self.fresh / self.duration if self.duration > 0 else math.nan

    @property
    def load(self) -> float:
        """The load multiplier: calls reaching the service per request."""
        return self.service_calls / self.requests if self.requests else math.nan

    def percentile(self, q: float) -> float:
        """The ``q`` quantile (0 < q <= 1) of the callers' latencies, in seconds."""
        ordered = self.__dict__.get("_ordered")
        if ordered is None:
            ordered = sorted(self.recorder.latencies)
            object.__setattr__(self, "_ordered", ordered)
        return _percentile(ordered, q)

    @property
    def p50(self) -> float:
        return self.percentile(0.5)

    @property
    def p99(self) -> float:
        return self.percentile(0.99)

    @property
    def p999(self) -> float:
        return self.percentile(0.999)

    def mean_latency(self) -> float:
        latencies = self.recorder.latencies
        return math.fsum(latencies) / len(latencies) if latencies else math.nan

    def timeline(self, resolution: float = 0.2) -> list[Window]:
        """The run in slices of ``resolution`` seconds."""
        _positive(resolution, "resolution")
        record = self.recorder
        end = max(self.duration, max(record.starts, default=0.0))
        count = max(1, math.ceil(end / resolution))
        requests = [[0, 0, 0] for _ in range(count)]
        latencies: list[list[float]] = [[] for _ in range(count)]
        for start, took, outcome in zip(
            record.starts, record.latencies, record.outcomes, strict=True
        ):
            index = min(count - 1, int(start / resolution))
            requests[index][outcome] += 1
            latencies[index].append(took)
        calls = [0] * count
        for when in record.calls:
            calls[min(count - 1, int(when / resolution))] += 1
        states = _dominant_states(record.breaker, count, resolution)
        return [
            Window(
                start=index * resolution,
                requests=sum(requests[index]),
                fresh=requests[index][_FRESH],
                fallbacks=requests[index][_FALLBACK],
                errors=requests[index][_ERROR],
                service_calls=calls[index],
                p99=_percentile(sorted(latencies[index]), 0.99),
                breaker=states[index],
            )
            for index in range(count)
        ]

    def summary(self) -> dict[str, Any]:
        """The figures as plain data (what ``--json`` prints)."""
        return {
            "name": self.name,
            "requests": self.requests,
            "fresh": self.fresh_share,
            "fallback": self.fallback_share,
            "error": self.error_share,
            "goodput": self.goodput,
            "p50": self.p50,
            "p99": self.p99,
            "p99.9": self.p999,
            "load": self.load,
            "outage_load": self.outage_load,
            "trips": self.trips,
            "fallbacks_by_reason": self.fallbacks_by_reason,
            "errors_by_type": self.errors_by_type,
        }


# -- running ----------------------------------------------------------------------------------


class _Run:
    def __init__(
        self,
        make: MakePipeline | None,
        service: Service,
        rate: float,
        requests: int | None,
        duration: float | None,
        seed: int,
    ) -> None:
        self.loop = _VirtualLoop()
        self.clock = VirtualClock(self.loop)
        self.service = service
        self.rate = rate
        self.limit = requests
        self.until = duration
        self.record = Recorder()
        self.arrivals = random.Random(f"{seed}:arrivals")
        self.draws = random.Random(f"{seed}:service")
        self.latency: Latency = service.latency  # type: ignore[assignment]
        self.error_rate = service.error_rate
        self.capacity = math.inf if service.capacity is None else service.capacity
        self.max_queue = math.inf if service.max_queue is None else service.max_queue
        self.outages = service.outages
        self.busy = 0
        self.queue: list[tuple[asyncio.Future[Any], float, bool]] = []
        self.queue_head = 0
        self.made = 0
        self.pending = 0
        self.arrivals_over = False
        self.last_arrival = 0.0
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.pipeline: Middleware | None = None
        try:
            self._build(make)
        except BaseException:
            self.loop.close()
            raise
        pipeline = self.pipeline
        self.acall: Callable[..., Awaitable[Any]] | None = (
            None if pipeline is None else pipeline.acall
        )
        self.endpoint = self._attempt  # one bound method: acall checks only a new function

    def _build(self, make: MakePipeline | None) -> None:
        if make is not None:
            pipeline = make(self.clock)
            if not isinstance(pipeline, Middleware):
                raise TypeError(
                    f"make(clock) must return a pipeline or policy, got {type(pipeline).__name__}"
                )
            _check_clock(pipeline)
            pipeline.subscribe(self.record.listener(self.clock.monotonic))
            self.pipeline = pipeline

    # the service

    def _start(self, future: asyncio.Future[Any], took: float, fails: bool) -> None:
        self.busy += 1
        self.loop.at(self.loop.now + took, self._finish_failed if fails else self._finish, future)

    def _finish_failed(self, future: asyncio.Future[Any]) -> None:
        self._finish(future, True)

    def _finish(self, future: asyncio.Future[Any], fails: bool = False) -> None:
        self.busy -= 1
        if not future.done():
            if fails:
                future.set_exception(ServiceError("the service failed the call"))
            else:
                future.set_result(FRESH)
        queue = self.queue
        while self.queue_head < len(queue):
            waiting = queue[self.queue_head]
            queue[self.queue_head] = None  # type: ignore[call-overload]
            self.queue_head += 1
            if self.queue_head > 1024 and self.queue_head * 2 > len(queue):
                del queue[: self.queue_head]
                self.queue_head = 0
            if self.service.cancels and waiting[0].done():
                continue
            self._start(*waiting)
            break

    def _hang_up(self, future: asyncio.Future[Any]) -> None:
        if not future.done():
            future.set_exception(OutageError("the service is down: the connection dropped"))

    def call(self) -> asyncio.Future[Any]:
        loop = self.loop
        now = loop.now
        self.record.calls.append(now)
        future = loop.create_future()
        if self.outages:
            outage = self.service.outage_at(now)
            if outage is not None:
                if outage.mode == "error":
                    future.set_exception(OutageError("the service is down: connection refused"))
                else:
                    loop.at(now + outage.hang, self._hang_up, future)
                return future
        draws = self.draws
        took = self.latency(draws)
        fails = self.error_rate > 0 and draws.random() < self.error_rate
        if self.busy < self.capacity:
            self._start(future, took, fails)
        elif len(self.queue) - self.queue_head >= self.max_queue:
            future.set_exception(OverloadError("the service's queue is full"))
        else:
            self.queue.append((future, took, fails))
        return future

    async def _attempt(self) -> Any:
        return await self.call()

    # the callers

    async def _request(self) -> None:
        loop = self.loop
        began = loop.now
        acall = self.acall
        try:
            if acall is None:
                result = await self.call()
            else:
                result = await acall(self.endpoint)
        except Exception as error:
            self.record.failed(began, loop.now - began, error)
        else:
            self.record.request(began, loop.now - began, result is FRESH)
        self.pending -= 1
        if not self.pending and self.arrivals_over:
            self.done.set_result(None)

    def _arrive(self, _: object = None) -> None:
        loop = self.loop
        self.made += 1
        self.pending += 1
        self.last_arrival = loop.now
        loop.create_task(self._request())
        gap = self.arrivals.expovariate(self.rate)
        if (self.limit is not None and self.made >= self.limit) or (
            self.until is not None and loop.now + gap >= self.until
        ):
            self.arrivals_over = True
            return
        loop.at(loop.now + gap, self._arrive, None)

    async def _main(self) -> None:
        self.loop.at(self.arrivals.expovariate(self.rate), self._arrive, None)
        await self.done

    def __call__(self, name: str) -> Report:
        loop = self.loop
        try:
            loop.run_until_complete(self._main())
        except BaseException:
            left = asyncio.all_tasks(loop)  # a failed run: end its calls before the loop
            for task in left:
                task.cancel()
            with contextlib.suppress(BaseException):
                loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            raise
        finally:
            loop.close()
        duration = self.until if self.until is not None else self.last_arrival
        windows = [(o.start, o.end) for o in self.outages if o.start < duration]
        return self.record.report(name, duration, windows)


def _count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return value


def run(
    pipeline: MakePipeline | None,
    service: Service,
    *,
    rate: float,
    requests: int | None = None,
    duration: float | None = None,
    seed: int = 0,
    name: str | None = None,
) -> Report:
    """Send requests through ``pipeline(clock)`` (None: straight to the service) and report.

    Requests arrive at ``rate`` per second (Poisson) until ``requests`` have
    been made or ``duration`` virtual seconds have passed (give one or
    both); the run ends when the last one is answered. Policies built
    without a seed draw theirs from ``seed``, so the run is reproducible.
    """
    rate = _positive(rate, "rate")
    if requests is None and duration is None:
        raise ValueError("give requests=, duration= or both: the run must end")
    if requests is not None:
        _count(requests, "requests")
    if duration is not None:
        _positive(duration, "duration")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not isinstance(service, Service):
        raise TypeError(f"service must be a Service, got {type(service).__name__}")
    if isinstance(pipeline, Middleware):
        raise TypeError(
            "pipeline must be a function make(clock) -> pipeline, not a pipeline: each run "
            "builds its own, fresh and on the run's virtual clock"
        )
    if pipeline is not None and not callable(pipeline):
        raise TypeError(
            "pipeline must be a function make(clock) -> pipeline (or None for no pipeline), "
            f"got {type(pipeline).__name__}"
        )
    label = name or ("unprotected" if pipeline is None else _name_of(pipeline))

    def go() -> Report:
        token = DEFAULT_SEEDS.set(random.Random(f"{seed}:policies"))
        try:
            return _Run(pipeline, service, rate, requests, duration, seed)(label)
        finally:
            DEFAULT_SEEDS.reset(token)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return go()
    # Called from async code (a notebook, a test): the run needs its own loop, so its own thread.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="simulate") as pool:
        return pool.submit(go).result()


def _name_of(make: object) -> str:
    name = getattr(make, "__name__", None) or getattr(make, "name", None)
    return "pipeline" if not name or name == "<lambda>" else str(name)


def compare(
    pipelines: Mapping[str, MakePipeline | None],
    service: Service,
    *,
    rate: float,
    requests: int | None = None,
    duration: float | None = None,
    seed: int = 0,
) -> dict[str, Report]:
    """Run each pipeline on the same arrivals and service draws (the same ``seed``)."""
    if not pipelines:
        raise ValueError("pipelines must name at least one pipeline")
    return {
        name: run(
            make, service, rate=rate, requests=requests, duration=duration, seed=seed, name=name
        )
        for name, make in pipelines.items()
    }


@dataclass(frozen=True)
class SweepPoint:
    """One point of a sweep: its parameters and what the run measured."""

    params: dict[str, Any]
    report: Report


def sweep(
    make: Callable[..., Middleware],
    service: Service,
    grid: Mapping[str, Sequence[Any]],
    *,
    rate: float,
    requests: int | None = None,
    duration: float | None = None,
    seed: int = 0,
) -> list[SweepPoint]:
    """Run ``make(clock, **params)`` for every combination of ``grid``'s values, same seed."""
    if not grid or any(len(values) == 0 for values in grid.values()):
        raise ValueError("grid must map each parameter name to at least one value")
    names = list(grid)
    points = []
    for values in itertools.product(*(grid[name] for name in names)):
        params = dict(zip(names, values, strict=True))

        def bound(clock: Clock, params: dict[str, Any] = params) -> Middleware:
            return make(clock, **params)

        label = ", ".join(f"{key}={value}" for key, value in params.items())
        report = run(
            bound, service, rate=rate, requests=requests, duration=duration, seed=seed, name=label
        )
        points.append(SweepPoint(params, report))
    return points


# -- pipelines from configuration -------------------------------------------------------------


def _set_param(config: dict[str, Any], pipeline: str, key: str, value: Any) -> None:
    """Set ``key`` in ``config``: ``policies.NAME.PARAM`` or ``KIND[.PARAM]`` of the pipeline."""
    from .config import KINDS, ConfigError

    parts = key.split(".")
    if parts[0] == "policies":
        if len(parts) < 3:
            raise ConfigError([f"{key}: say policies.NAME.PARAM"])
        table = config.get("policies", {}).get(parts[1])
        if not isinstance(table, dict) or len(table) != 1:
            raise ConfigError([f"{key}: no policy {parts[1]!r}"])
        kind = next(iter(table))
        holder, where = table, kind
        rest = parts[2:]
    else:
        kind, rest = parts[0], parts[1:]
        body = config.get("pipelines", {}).get(pipeline)
        if not isinstance(body, dict):
            raise ConfigError([f"{key}: no pipeline {pipeline!r}"])
        layers = body.get("layers", [])
        found = [
            layer for layer in layers if isinstance(layer, dict) and next(iter(layer), None) == kind
        ]
        if len(found) != 1:
            kinds = [next(iter(layer), "?") for layer in layers if isinstance(layer, dict)]
            raise ConfigError(
                [
                    f"{key}: pipeline {pipeline!r} has {len(found)} {kind} layers "
                    f"(its layers: {', '.join(kinds) or 'none'})"
                ]
            )
        holder, where = found[0], kind
        inner = holder[where]
        if isinstance(inner, dict) and "ref" in inner:
            named = config.get("policies", {}).get(inner["ref"], {})
            holder, where = named, next(iter(named))
    if kind not in KINDS:
        raise ConfigError([f"{key}: no policy kind {kind!r}"])
    if not rest:
        holder[where] = value
        return
    inner = holder[where]
    if not isinstance(inner, dict):  # a short form such as { timeout = 0.2 }: its first parameter
        import inspect

        first = next(p for p in inspect.signature(KINDS[kind].__init__).parameters if p != "self")
        inner = holder[where] = {first: inner}
    for part in rest[:-1]:
        inner = inner.setdefault(part, {})
        if not isinstance(inner, dict):
            raise ConfigError([f"{key}: {part} is not a table"])
    inner[rest[-1]] = value


def from_config(
    source: str | os.PathLike[str] | Mapping[str, Any],
    pipeline: str,
    *,
    overrides: Mapping[str, Any] | None = None,
) -> MakePipeline:
    """A ``make(clock)`` that builds the pipeline ``pipeline`` of a configuration file or dict.

    ``overrides`` set parameters first: ``{"retry.attempts": 5}`` sets the
    pipeline's retry layer (or the named policy it refers to),
    ``{"policies.api-breaker.failure_ratio": 0.3}`` a named policy.
    """
    import copy

    from .config import Registry, read_file

    config = (
        read_file(source) if isinstance(source, str | os.PathLike) else copy.deepcopy(dict(source))
    )
    for key, value in (overrides or {}).items():
        _set_param(config, pipeline, key, value)
    Registry(config, environ={}).get(pipeline)  # fail now, with every error, not in the run

    def make(clock: Clock) -> Middleware:
        return Registry(config, environ={}, clock=clock).get(pipeline)

    make.__name__ = pipeline
    return make


# -- text and plots ----------------------------------------------------------------------------


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}%"


def _ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value * 1000:.0f} ms"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row))
        for row in [head, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_reports(reports: Iterable[Report]) -> str:
    """Reports side by side, one column each."""
    reports = list(reports)

    def reasons(report: Report) -> str:
        return ", ".join(f"{k} {v}" for k, v in report.fallbacks_by_reason.items()) or "-"

    rows = [
        ("requests", *(str(r.requests) for r in reports)),
        ("fresh", *(_pct(r.fresh_share) for r in reports)),
        ("fallback", *(_pct(r.fallback_share) for r in reports)),
        ("error", *(_pct(r.error_share) for r in reports)),
        ("goodput (fresh/s)", *(f"{r.goodput:.1f}" for r in reports)),
        ("p50", *(_ms(r.p50) for r in reports)),
        ("p99", *(_ms(r.p99) for r in reports)),
        ("p99.9", *(_ms(r.p999) for r in reports)),
        ("load (service calls/request)", *(f"{r.load:.2f}x" for r in reports)),
        (
            "load during outages",
            *("-" if r.outage_load is None else f"{r.outage_load:.2f}x" for r in reports),
        ),
        ("breaker trips", *(str(r.trips) for r in reports)),
        ("fallbacks by reason", *(reasons(r) for r in reports)),
    ]
    return _table(("", *(r.name for r in reports)), rows)


def format_sweep(points: Sequence[SweepPoint]) -> str:
    """One row per point of a sweep."""
    names = list(points[0].params) if points else []
    rows = [
        (
            ", ".join(f"{k}={v}" for k, v in p.params.items()),
            _pct(p.report.fresh_share),
            _pct(p.report.fallback_share),
            _pct(p.report.error_share),
            _ms(p.report.p99),
            f"{p.report.load:.2f}x",
            str(p.report.trips),
        )
        for p in points
    ]
    return _table((", ".join(names), "fresh", "fallback", "error", "p99", "load", "trips"), rows)


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit(
            "plots need matplotlib: "
            "pip install 'resilience-layers[plot]' (or pip install matplotlib)"
        ) from None
    return plt


_BREAKER_COLOURS = {"closed": "#2e7d32", "open": "#c62828", "half_open": "#f9a825"}


def plot_reports(reports: Sequence[Report], path: str, *, resolution: float = 0.2) -> None:
    """Each report as a column: stacked fresh/fallback/error shares with the breaker's state as
    a band above, calls per second reaching the service, and p99; outages shaded (matplotlib)."""
    plt = _pyplot()
    columns = len(reports)
    figure, axes = plt.subplots(
        3, columns, figsize=(4.2 * columns, 7.5), sharex=True, squeeze=False
    )
    top_calls = 1.0
    top_p99 = 1.0
    for column, report in enumerate(reports):
        windows = report.timeline(resolution)
        x = [w.start for w in windows]
        total = [max(1, w.requests) for w in windows]
        shares = [
            [100 * w.fresh / t for w, t in zip(windows, total, strict=True)],
            [100 * w.fallbacks / t for w, t in zip(windows, total, strict=True)],
            [100 * w.errors / t for w, t in zip(windows, total, strict=True)],
        ]
        share_axis, calls_axis, p99_axis = axes[0][column], axes[1][column], axes[2][column]
        share_axis.stackplot(
            x,
            *shares,
            labels=("fresh", "fallback", "error"),
            colors=("#43a047", "#90caf9", "#e53935"),
            step="post",
        )
        share_axis.set_ylim(0, 112)
        share_axis.set_title(report.name)
        for _index, window in enumerate(windows):
            if window.breaker is not None:
                share_axis.axvspan(
                    window.start,
                    window.start + resolution,
                    ymin=100 / 112,
                    ymax=1.0,
                    color=_BREAKER_COLOURS.get(window.breaker, "grey"),
                    linewidth=0,
                )
        calls = [w.service_calls / resolution for w in windows]
        calls_axis.step(x, calls, where="post", color="#5e35b1")
        p99s = [0.0 if math.isnan(w.p99) else w.p99 * 1000 for w in windows]
        p99_axis.step(x, p99s, where="post", color="#ef6c00")
        top_calls = max(top_calls, *calls)
        top_p99 = max(top_p99, *p99s)
        for axis in (share_axis, calls_axis, p99_axis):
            for start, end in report.outages:
                axis.axvspan(start, end, color="grey", alpha=0.2, linewidth=0)
        p99_axis.set_xlabel("seconds")
    for column in range(columns):
        axes[1][column].set_ylim(0, top_calls * 1.1)
        axes[2][column].set_ylim(0, top_p99 * 1.1)
    axes[0][0].set_ylabel("share of requests (%)\nband: breaker state")
    axes[1][0].set_ylabel("calls/s reaching the service")
    axes[2][0].set_ylabel("p99 latency (ms)")
    axes[0][0].legend(loc="lower left", fontsize="small")
    if any(r.recorder.breaker for r in reports):
        from matplotlib.patches import Patch

        column = next(i for i, r in enumerate(reports) if r.recorder.breaker)
        handles = [
            Patch(color=colour, label=f"breaker {state.replace('_', '-')}")
            for state, colour in _BREAKER_COLOURS.items()
        ]
        axes[0][column].legend(handles=handles, loc="lower left", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def plot_sweep(points: Sequence[SweepPoint], path: str) -> None:
    """Fresh share, p99 and load against the first parameter, one line per value of the rest."""
    plt = _pyplot()
    if not points:
        raise ValueError("points is empty: nothing to plot")
    names = list(points[0].params)
    first = names[0]
    lines: dict[str, list[SweepPoint]] = {}
    for point in points:
        label = ", ".join(f"{k}={point.params[k]}" for k in names[1:]) or "all"
        lines.setdefault(label, []).append(point)
    figure, axes = plt.subplots(1, 3, figsize=(13, 4))
    for label, group in lines.items():
        x = [p.params[first] for p in group]
        axes[0].plot(x, [100 * p.report.fresh_share for p in group], marker="o", label=label)
        axes[1].plot(x, [p.report.p99 * 1000 for p in group], marker="o", label=label)
        axes[2].plot(x, [p.report.load for p in group], marker="o", label=label)
    for axis, title in zip(axes, ("fresh (%)", "p99 (ms)", "load (x)"), strict=True):
        axis.set_xlabel(first)
        axis.set_title(title)
    axes[0].legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


# -- the command line -------------------------------------------------------------------------


def _latency(text: str) -> Latency:
    kind, _, args = text.partition(":")
    try:
        numbers = [float(v) for v in args.split(",")] if args else []
        if kind in ("exp", "exponential") and len(numbers) == 1:
            return exponential(numbers[0])
        if kind == "lognormal" and len(numbers) == 2:
            return lognormal(numbers[0], numbers[1])
        if kind == "constant" and len(numbers) == 1:
            return constant(numbers[0])
        if not args:
            return constant(float(kind))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    raise argparse.ArgumentTypeError(
        f"{text!r}: say SECONDS, exponential:MEAN, lognormal:MEDIAN,P99 or constant:SECONDS"
    )


def _outage(text: str) -> Outage:
    parts = text.split(":")
    try:
        if len(parts) in (2, 3):
            mode = parts[2] if len(parts) == 3 else "hang"
            return Outage(float(parts[0]), float(parts[1]), mode)  # type: ignore[arg-type]
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    raise argparse.ArgumentTypeError(f"{text!r}: say START:LENGTH or START:LENGTH:hang|error")


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _sweep(text: str) -> tuple[str, list[Any]]:
    key, sep, values = text.partition("=")
    if not sep or not key or not values:
        raise argparse.ArgumentTypeError(f"{text!r}: say KEY=V1,V2,... or KEY=FIRST..LAST")
    if ".." in values and "," not in values:
        low, _, high = values.partition("..")
        try:
            return key, list(range(int(low), int(high) + 1))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r}: a range is two ints, FIRST..LAST"
            ) from None
    return key, [_value(v) for v in values.split(",")]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m resilience simulate",
        description="Run pipelines of a configuration file against a modelled service in "
        "virtual time, side by side, or sweep their parameters.",
    )
    parser.add_argument("config", nargs="?", help="a TOML, JSON or YAML configuration file")
    parser.add_argument(
        "--pipeline",
        action="append",
        default=[],
        help="a pipeline of the file (repeat to compare; default: all of them)",
    )
    parser.add_argument(
        "--rate", type=float, default=100.0, help="requests per second (%(default)s)"
    )
    parser.add_argument("--requests", type=int, help="requests to send (default 10000)")
    parser.add_argument("--duration", type=float, help="or: seconds of arrivals")
    parser.add_argument(
        "--latency",
        type=_latency,
        default="exponential:0.01",
        help="SECONDS, exponential:MEAN, lognormal:MEDIAN,P99 or constant:SECONDS (%(default)s)",
    )
    parser.add_argument("--slow-rate", type=float, default=0.0, help="share of slow calls")
    parser.add_argument("--slow-latency", type=_latency, default="1.0", help="their latency")
    parser.add_argument("--error-rate", type=float, default=0.0, help="share of calls that fail")
    parser.add_argument("--capacity", type=int, help="calls served at once (default unlimited)")
    parser.add_argument("--max-queue", type=int, help="calls that may wait (default unbounded)")
    parser.add_argument(
        "--outage", type=_outage, action="append", default=[], help="START:LENGTH[:hang|error]"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sweep",
        type=_sweep,
        action="append",
        default=[],
        help="KEY=V1,V2 or KEY=1..5: a parameter of the (single) pipeline to vary, such as "
        "retry.attempts or timeout (repeat for a grid)",
    )
    parser.add_argument("--no-baseline", action="store_true", help="leave out the unprotected run")
    parser.add_argument("--plot", metavar="FILE.png", help="draw the runs or the sweep")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m resilience simulate``."""
    from .config import ConfigError, read_file

    parser = _parser()
    args = parser.parse_args(list(sys.argv[2:] if argv is None else argv))
    requests = args.requests if args.requests is not None or args.duration else 10_000
    latency = args.latency
    if args.slow_rate:
        latency = mixture((1 - args.slow_rate, latency), (args.slow_rate, args.slow_latency))
    try:
        service = Service(
            latency=latency,
            error_rate=args.error_rate,
            capacity=args.capacity,
            max_queue=args.max_queue,
            outages=args.outage,
        )
        common: dict[str, Any] = {
            "rate": args.rate,
            "requests": requests,
            "duration": args.duration,
            "seed": args.seed,
        }
        config = read_file(args.config) if args.config else None
        names = list(args.pipeline) or (sorted(config.get("pipelines", {})) if config else [])
        if args.sweep:
            if config is None or len(names) != 1:
                parser.error("--sweep needs a configuration file and exactly one --pipeline")
            grid = dict(args.sweep)

            def make(clock: Clock, **params: Any) -> Middleware:
                return from_config(config, names[0], overrides=params)(clock)

            for values in itertools.product(*grid.values()):  # every point valid before any run
                from_config(config, names[0], overrides=dict(zip(grid, values, strict=True)))
            points = sweep(make, service, grid, **common)
            if args.json:
                print(json.dumps([{"params": p.params, **p.report.summary()} for p in points]))
            else:
                print(format_sweep(points))
            if args.plot:
                plot_sweep(points, args.plot)
                print(f"plot written to {args.plot}", file=sys.stderr)
            return 0
        pipelines: dict[str, MakePipeline | None] = {}
        if not args.no_baseline or not names:
            pipelines["unprotected"] = None
        for name in names:
            pipelines[name] = from_config(config or {}, name)
        reports = compare(pipelines, service, **common)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 1
    except (OSError, ValueError, TypeError) as error:
        print(f"simulate: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([r.summary() for r in reports.values()]))
    else:
        print(format_reports(reports.values()))
    if args.plot:
        plot_reports(list(reports.values()), args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0
