"""`FaultInjector`: inject errors, latency, results and behaviours, on purpose.

The decision for each call is taken by a small core with no I/O,
`FaultInjector.draw`, which rolls the dice for each configured fault from one
seeded random source; the sync and async shells only carry out the plan
(sleeping on the clock, raising, or skipping the call).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import random as _random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from . import _shells, _shells_sync
from ._clock import Clock, validate_clock
from ._context import CallContext, current
from ._errors import InjectedFault
from ._events import Described, ResilienceEvent
from ._middleware import AsyncEndpoint, Endpoint, Middleware, terminal
from ._misuse import Misuse, refuse_async
from ._testing_mode import MODE
from ._validate import number, optional_name, random_source
from ._validate import seconds as _seconds

__all__ = ["FaultEvent", "FaultInjector", "FaultPlan"]

logger = logging.getLogger("resilience")


class _NotGiven:
    """The default of the keywords whose absence means something of its own."""

    def __repr__(self) -> str:
        return "<not given>"


_UNSET: Any = _NotGiven()

ErrorSpec = BaseException | type[BaseException] | Callable[[CallContext], BaseException]
LatencySpec = float | timedelta | Callable[[CallContext], float]


RateSpec = float | Callable[[CallContext], float]


def _fixed_rate(value: object, name: str) -> float:
    result = number(value, name, minimum=0.0)
    if result > 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return result


class _RateFunction:
    """A rate computed per call from the call context (Polly's injection-rate generator)."""

    __slots__ = ("fn", "name")

    def __init__(self, fn: Callable[[CallContext], float], name: str) -> None:
        self.fn = fn
        self.name = name

    def __call__(self, context: CallContext) -> float:
        return _fixed_rate(self.fn(context), f"the result of the {self.name} function")

    def __repr__(self) -> str:
        return repr(self.fn)


def _rate(value: object, name: str) -> float | _RateFunction:
    """A fixed rate in [0, 1], or a function of the call context giving one per call."""
    if callable(value):
        refuse_async(value, name)
        return _RateFunction(value, name)
    return _fixed_rate(value, name)


def _slot_names(kind: type) -> tuple[str, ...]:
    """The attribute names behind the ``__slots__`` of ``kind`` and its bases (mangled)."""
    names: list[str] = []
    for klass in kind.__mro__:
        declared = klass.__dict__.get("__slots__", ())
        for slot in (declared,) if isinstance(declared, str) else declared:
            if slot in ("__dict__", "__weakref__"):
                continue
            if slot.startswith("__") and not slot.endswith("__"):
                slot = f"_{klass.__name__.lstrip('_')}{slot}"
            names.append(slot)
    return tuple(names)


def _fresh(template: BaseException, slots: tuple[str, ...]) -> BaseException:
    """A new exception like ``template`` (its args, dict, slots, cause and notes), unraised."""
    try:
        fresh = copy.copy(template)
        fresh.args = template.args  # an __init__ that formats its argument ran again
    except Exception:  # an __init__ that cannot take its own args back: skip it
        try:
            fresh = type(template).__new__(type(template), *template.args)
            fresh.__dict__.update(template.__dict__)
        except Exception:  # a __new__ that cannot either: reuse the template
            fresh = template
    if fresh is not template:
        # copy.copy carries args and __dict__ only: slots and the cause too.
        for slot in slots:
            with contextlib.suppress(AttributeError):  # unset on the template
                setattr(fresh, slot, getattr(template, slot))
        fresh.__cause__ = template.__cause__
        fresh.__suppress_context__ = template.__suppress_context__
        if "__notes__" in template.__dict__:
            fresh.__notes__ = list(template.__notes__)  # a list of its own
    return fresh.with_traceback(None)


def _error_factory(error: object) -> Callable[[CallContext], BaseException]:
    """A function making a fresh exception per injection, from what the user gave."""
    if isinstance(error, BaseException):
        template = error
        slots = _slot_names(type(template))
        return lambda _: _fresh(template, slots)
    if isinstance(error, type):
        if not issubclass(error, BaseException):
            raise TypeError(f"error must be an exception or exception type, got {error.__name__}")
        try:
            error()
        except Exception as exc:
            raise TypeError(
                f"error: {error.__name__}() cannot be made without arguments ({exc}); "
                "pass an instance or a factory"
            ) from None
        kind = error
        return lambda _: kind()
    if callable(error):
        refuse_async(error, "error")
        factory = error

        def from_factory(context: CallContext) -> BaseException:
            made = factory(context)
            if not isinstance(made, BaseException):
                raise TypeError(
                    f"the error factory of a FaultInjector must return an exception, "
                    f"got {type(made).__name__}"
                )
            return made

        return from_factory
    raise TypeError(
        "error must be an exception, an exception type, or a factory taking the call "
        f"context, got {type(error).__name__}"
    )


def _behaviour(value: object) -> Callable[[CallContext], object] | None:
    if value is not None and not callable(value):
        raise TypeError(f"behaviour must be callable or None, got {type(value).__name__}")
    return value


class _Live:
    """The injector's settings now: replaced whole by an update, read once per call."""

    __slots__ = ("settings",)

    def __init__(self, settings: _Settings) -> None:
        self.settings = settings


@dataclass(frozen=True, slots=True)
class _Kind:
    """One kind of fault, as `FaultInjector.update` takes it."""

    name: str
    make: Callable[[Any], Any]
    """What the settings keep of the value given."""
    absent: Any
    """The kept value that means "no such fault"."""
    needs: str
    """The error when a rate comes without the fault (the error kind has a default instead)."""
    keeps_spec: bool = False
    """Whether the settings also keep the value as given (to show it back)."""


_KINDS = (
    _Kind(
        "error",
        lambda value: None if value is None else _error_factory(value),
        None,
        "",
        keeps_spec=True,
    ),
    _Kind(
        "latency",
        lambda value: _latency_factory(value),
        None,
        "latency_rate needs latency= (the seconds to add)",
        keeps_spec=True,
    ),
    _Kind("result", lambda value: value, _UNSET, "result_rate needs result= (the value to return)"),
    _Kind("behaviour", _behaviour, None, "behaviour_rate needs behaviour= (the callable to run)"),
)


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """What a `FaultInjector` does to one call, as drawn by its core."""

    behaviour: bool = False
    latency: float = 0.0
    error: BaseException | None = None
    replace_result: bool = False

    @property
    def calls_through(self) -> bool:
        """True when the real function still runs."""
        return self.error is None and not self.replace_result


_NOTHING = FaultPlan()


@dataclass(frozen=True, slots=True)
class FaultEvent(ResilienceEvent):
    """Sent to the injector's listeners for every call it injected something into."""

    name: str | None
    """The injector's name."""
    plan: FaultPlan
    """What was injected."""

    event = "fault_injected"

    def describe(self) -> Described:
        plan = self.plan
        details = {
            "resilience.fault.latency": plan.latency,
            "resilience.fault.result": plan.replace_result,
            "resilience.fault.behaviour": plan.behaviour,
        }
        return self.event, plan.error, details


@dataclass(frozen=True, slots=True)
class _Settings:
    """One consistent configuration; replaced as a whole, so updates are atomic."""

    enabled: bool
    error: Callable[[CallContext], BaseException] | None
    error_rate: float | _RateFunction
    latency: Callable[[CallContext], float] | None
    latency_rate: float | _RateFunction
    result: Any
    result_rate: float | _RateFunction
    behaviour: Callable[[CallContext], object] | None
    behaviour_rate: float | _RateFunction
    when: Callable[[CallContext], bool] | None = None
    error_spec: object = None
    latency_spec: object = None

    # Derived, kept so that a draw reads them in one step: the four rates in
    # the order they are drawn, and whether any is computed per call.
    rates: tuple[float | _RateFunction, ...] = field(init=False)
    dynamic: bool = field(init=False)

    def __post_init__(self) -> None:
        rates = (self.behaviour_rate, self.latency_rate, self.error_rate, self.result_rate)
        object.__setattr__(self, "rates", rates)
        dynamic = any(isinstance(rate, _RateFunction) for rate in rates)
        object.__setattr__(self, "dynamic", dynamic)


class FaultInjector(Middleware):
    """Inject faults into calls on purpose, to test what the other layers do.

    Each kind of fault has its own rate, the chance in [0, 1] that a call
    gets it, or a function of the `CallContext` returning that chance for
    each call. A fault given without a rate gets 1.0; a rate of 0 or None
    turns its kind off:

    * ``error``: raised *instead of* calling the function. An exception
      instance (copied for each call), a type (instantiated without
      arguments), or a factory taking the `CallContext`. With only
      ``error_rate``, the error is an `InjectedFault`.
    * ``latency``: seconds (or a factory taking the `CallContext`) slept on
      the injector's clock *before* the call, so a `Timeout` outside sees it
      and a `FakeClock` test stays instant.
    * ``result``: returned *instead of* calling the function (an empty
      answer, say).
    * ``behaviour``: a callable taking the `CallContext`, run before the call
      (kill a connection, fill a disk...). In async calls it may be async.

    Per call, in this order: behaviour, latency, then error or result, then
    the real call. ``enabled`` is a bool, or a predicate on the `CallContext`
    checked for every call (only calls tagged ``chaos=True``, one tenant...).
    ``seed`` (an int or a `random.Random`) makes the sequence of injections
    reproducible. `enable`, `disable` and `update` change it at run time,
    safely from any thread, from the next call on.
    """

    kind = "fault_injection"
    _read_only = frozenset({"clock", "random", "name"})

    def __init__(
        self,
        *,
        error: ErrorSpec | None = None,
        error_rate: RateSpec | None = _UNSET,
        latency: LatencySpec | None = None,
        latency_rate: RateSpec | None = _UNSET,
        result: Any = _UNSET,
        result_rate: RateSpec | None = _UNSET,
        behaviour: Callable[[CallContext], object] | None = None,
        behaviour_rate: RateSpec | None = _UNSET,
        enabled: bool | Callable[[CallContext], bool] = True,
        seed: int | _random.Random | None = None,
        clock: Clock | None = None,
        name: str | None = None,
    ) -> None:
        self.name = optional_name(name)
        self.clock = validate_clock(clock)
        self.random = random_source(seed)
        self._lock = threading.Lock()
        self._live = _Live(_Settings(False, None, 0.0, None, 0.0, _UNSET, 0.0, None, 0.0))

        # An omitted rate follows its fault (1.0 with it, else off); None is off.
        self.update(
            error=error,
            error_rate=error_rate,
            latency=latency,
            latency_rate=latency_rate,
            result=result,
            result_rate=result_rate,
            behaviour=behaviour,
            behaviour_rate=behaviour_rate,
            enabled=enabled,
        )

    # -- configuration ---------------------------------------------------------

    def update(
        self,
        *,
        error: ErrorSpec | None = _UNSET,
        error_rate: RateSpec | None = _UNSET,
        latency: LatencySpec | None = _UNSET,
        latency_rate: RateSpec | None = _UNSET,
        result: Any = _UNSET,
        result_rate: RateSpec | None = _UNSET,
        behaviour: Callable[[CallContext], object] | None = _UNSET,
        behaviour_rate: RateSpec | None = _UNSET,
        enabled: bool | Callable[[CallContext], bool] = _UNSET,
    ) -> None:
        """Change some settings; the others stay. Takes effect from the next call.

        Passing a fault without its rate sets the rate to 1.0; passing None
        removes the fault (except ``result``, where None is a value to return:
        remove it with ``result_rate=0``).
        """
        given = {
            "error": (error, error_rate),
            "latency": (latency, latency_rate),
            "result": (result, result_rate),
            "behaviour": (behaviour, behaviour_rate),
        }
        with self._lock:
            old = self._live.settings
            changes: dict[str, Any] = {}
            for kind in _KINDS:
                value, rate = given[kind.name]
                changes.update(self._kind_changes(kind, value, rate, old))
            if enabled is not _UNSET:
                if isinstance(enabled, bool):
                    changes["enabled"] = enabled
                    changes["when"] = None
                elif callable(enabled):
                    refuse_async(enabled, "enabled")
                    changes["enabled"] = True
                    changes["when"] = enabled
                else:
                    raise TypeError(
                        f"enabled must be a bool or a predicate on the call context, "
                        f"got {type(enabled).__name__}"
                    )
            self._live.settings = replace(old, **changes)

    def _kind_changes(self, kind: _Kind, value: Any, rate: Any, old: _Settings) -> dict[str, Any]:
        """What giving one kind of fault, or its rate, changes in the settings."""
        changes: dict[str, Any] = {}
        if value is not _UNSET:
            changes[kind.name] = kind.make(value)
            if kind.keeps_spec:
                changes[f"{kind.name}_spec"] = value
            if rate is _UNSET:  # a fault given alone comes with rate 1; None turns it off
                rate = 1.0 if value is not None or kind.name == "result" else 0.0
        if rate is not _UNSET:
            fixed = 0.0 if rate is None else _rate(rate, f"{kind.name}_rate")
            if fixed and changes.get(kind.name, getattr(old, kind.name)) is kind.absent:
                if kind.name != "error":
                    raise ValueError(kind.needs)
                changes["error"] = lambda _: InjectedFault(self._message("error"))
            changes[f"{kind.name}_rate"] = fixed
        return changes

    def _snapshot(self) -> object:
        """Everything `update` can change, to put back with `_restore`."""
        return self._live.settings

    def _restore(self, snapshot: object) -> None:
        with self._lock:
            self._live.settings = snapshot  # type: ignore[assignment]

    def enable(self) -> None:
        """Inject again (a predicate given as ``enabled`` is kept)."""
        with self._lock:
            self._live.settings = replace(self._live.settings, enabled=True)

    def disable(self) -> None:
        """Stop injecting: calls go straight through, at almost no cost."""
        with self._lock:
            self._live.settings = replace(self._live.settings, enabled=False)

    @property
    def enabled(self) -> bool:
        """False after `disable`; a predicate still decides call by call when True."""
        return self._live.settings.enabled

    def settings(self) -> dict[str, Any]:
        s = self._live.settings
        out: dict[str, Any] = {"enabled": s.enabled if s.when is None else s.enabled and s.when}
        if s.error_rate:
            out["error"] = InjectedFault if s.error_spec is None else s.error_spec
            out["error_rate"] = _rate_spec(s.error_rate)
        if s.latency_rate:
            out["latency"] = s.latency_spec
            out["latency_rate"] = _rate_spec(s.latency_rate)
        if s.result_rate:
            out["result"] = s.result
            out["result_rate"] = _rate_spec(s.result_rate)
        if s.behaviour_rate:
            out["behaviour"] = s.behaviour
            out["behaviour_rate"] = _rate_spec(s.behaviour_rate)
        return out

    def __repr__(self) -> str:
        s = self._live.settings
        parts = [f"{self.name!r}"] if self.name else []
        for label, rate in (
            ("error", s.error_rate),
            ("latency", s.latency_rate),
            ("result", s.result_rate),
            ("behaviour", s.behaviour_rate),
        ):
            if isinstance(rate, _RateFunction):
                parts.append(f"{label}_rate={rate!r}")
            elif rate:
                parts.append(f"{label}_rate={rate:g}")
        if not s.enabled:
            parts.append("disabled")
        return f"FaultInjector({', '.join(parts)})"

    def _message(self, what: str) -> str:
        label = self._label
        return f"{what} injected by FaultInjector{label}"

    # -- the core: decide, with no I/O ---------------------------------------------

    def draw(self, context: CallContext | None = None) -> FaultPlan:
        """Roll the dice for one call: which faults it gets.

        The shells call this for every call; tests may call it to see what an
        injector would do. Nothing is called, slept or run, except an error
        factory (the plan holds the error it made). Returns a plan with
        nothing in it when disabled.
        """
        return self._draw(self._live.settings, context)

    def _draw(self, s: _Settings, context: CallContext | None) -> FaultPlan:
        if not s.enabled or not MODE.inject_faults:
            return _NOTHING
        when = s.when
        if when is not None:
            context = context or current()
            if not when(context):
                return _NOTHING
        rates: tuple[Any, ...] = s.rates
        if s.dynamic:  # rates computed per call (Polly's injection-rate generators)
            context = context or current()
            rates = tuple(r(context) if isinstance(r, _RateFunction) else r for r in rates)
        behaviour_rate, latency_rate, error_rate, result_rate = rates
        roll = self.random.random
        behaviour = bool(behaviour_rate) and roll() < behaviour_rate
        latency = 0.0
        if latency_rate and roll() < latency_rate and s.latency is not None:
            context = context or current()
            latency = s.latency(context)
        error = None
        if error_rate and roll() < error_rate and s.error is not None:
            context = context or current()
            error = s.error(context)
        replace_result = error is None and bool(result_rate) and roll() < result_rate
        if not (behaviour or latency or error is not None or replace_result):
            return _NOTHING
        return FaultPlan(behaviour, latency, error, replace_result)

    def _injected(self, plan: FaultPlan) -> None:
        """Log a drawn plan and tell the listeners (only calls that get a fault come here)."""
        label = self._label
        logger.debug("resilience: FaultInjector%s injects %r", label, plan)
        if self._listeners:
            self._emit(FaultEvent(self.name, plan))

    # -- the shells (resilience._shells) ----------------------------------------------------

    def wrap(self, next: Endpoint, /) -> Endpoint:
        return self._shell(_shells_sync, next, self._behave, self.clock.sleep)  # type: ignore[no-any-return]

    def awrap(self, next: AsyncEndpoint, /) -> AsyncEndpoint:
        return self._shell(_shells, next, self._abehave, self.clock.asleep)  # type: ignore[no-any-return]

    def _shell(self, shells: Any, next: Any, behave: Any, sleep: Any) -> Any:
        parts = (self._live, self._draw, _NOTHING, self._injected, behave, sleep)
        return shells.fault_injection(next, next is terminal, parts)

    def _behave(self, behaviour: Callable[[CallContext], object]) -> None:
        """Run the behaviour in a sync call: an async one is a misuse."""
        outcome = behaviour(current())
        if inspect.isawaitable(outcome):
            if inspect.iscoroutine(outcome):
                outcome.close()
            raise Misuse(
                TypeError(
                    f"{self!r} has an async behaviour, which cannot run in a sync "
                    "call: give it a plain function, or make the call async"
                )
            )

    async def _abehave(self, behaviour: Callable[[CallContext], object]) -> None:
        """Run the behaviour in an async call, awaiting it if it is async."""
        outcome = behaviour(current())
        if inspect.isawaitable(outcome):
            await outcome


def _rate_spec(rate: float | _RateFunction) -> RateSpec:
    """The rate as the user gave it: a number, or their function."""
    return rate.fn if isinstance(rate, _RateFunction) else rate


def _latency_factory(latency: object) -> Callable[[CallContext], float] | None:
    if latency is None:
        return None
    if isinstance(latency, int | float | timedelta) and not isinstance(latency, bool):
        fixed = _seconds(latency, "latency", allow_zero=True)
        return lambda _: fixed
    if callable(latency):
        refuse_async(latency, "latency")
        factory = latency

        def checked(context: CallContext) -> float:
            return _seconds(factory(context), "the latency factory's result", allow_zero=True)

        return checked
    raise TypeError(
        "latency must be seconds, a timedelta, or a factory taking the call context, "
        f"got {type(latency).__name__}"
    )
