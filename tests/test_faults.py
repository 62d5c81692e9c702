"""Tests of `resilience.FaultInjector`: each kind of fault, sync and async alike."""

from __future__ import annotations

import asyncio
import gc
import math
import random
import threading
import time
import warnings
from collections.abc import Callable, Generator, Iterator
from datetime import timedelta
from typing import Any

import pytest

import resilience as rs
from modes import create_task, run_yielding, settle
from resilience.testing import FakeClock, FaultScope, set_testing


@pytest.fixture(autouse=True)
def _faults_on() -> Iterator[None]:
    """Every test starts with injection switched on, and leaves the switch as it found it."""
    with set_testing(inject_faults=True):
        yield


class Real:
    """The function under test: counts the calls that reached it."""

    def __init__(self, value: Any = "real") -> None:
        self.value = value
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        return self.value


async def outcome(mode: str, policy: rs.Middleware, fn: Callable[..., Any]) -> str:
    """What happened to one call: its result, or the error's type name."""
    try:
        return str(await run_yielding(mode, policy, fn))
    except Exception as exc:
        return type(exc).__name__


class LoggingClock(FakeClock):
    """A fake clock that also writes "latency" into a shared log when slept on."""

    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    def sleep(self, seconds_: float) -> None:
        self.log.append("latency")
        super().sleep(seconds_)

    async def asleep(self, seconds_: float) -> None:
        self.log.append("latency")
        await super().asleep(seconds_)


class NeedsArguments(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class TwoArguments(Exception):
    def __init__(self, service: str, status: int) -> None:
        super().__init__(f"{service} answered {status}")
        self.service = service
        self.status = status


# -- construction -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"error": 42}, TypeError, r"^error must be an exception, an exception type, or a fac"),
        ({"error": "boom"}, TypeError, r"^error must be"),
        ({"error": int}, TypeError, r"^error must be an exception or exception type, got int"),
        ({"error": NeedsArguments}, TypeError, r"^error: NeedsArguments\(\) cannot be made"),
        ({"error_rate": 1.5}, ValueError, r"^error_rate must be in \[0, 1\]"),
        ({"error_rate": -0.1}, ValueError, r"^error_rate must be >= 0"),
        ({"error_rate": math.nan}, ValueError, r"^error_rate must be a finite number"),
        ({"error_rate": math.inf}, ValueError, r"^error_rate must be a finite number"),
        ({"error_rate": "0.5"}, TypeError, r"^error_rate must be a number"),
        ({"error_rate": True}, TypeError, r"^error_rate must be a number"),
        ({"latency": -1}, ValueError, r"^latency must be >= 0 seconds"),
        ({"latency": math.inf}, ValueError, r"^latency must be finite"),
        ({"latency": math.nan}, ValueError, r"^latency must be a number of seconds, got NaN"),
        ({"latency": "1s"}, TypeError, r"^latency must be seconds, a timedelta, or a factory"),
        ({"latency": True}, TypeError, r"^latency must be seconds"),
        ({"latency": 1, "latency_rate": 2}, ValueError, r"^latency_rate must be in \[0, 1\]"),
        ({"latency_rate": 0.5}, ValueError, r"^latency_rate needs latency="),
        ({"result": [], "result_rate": -1}, ValueError, r"^result_rate must be >= 0"),
        ({"result_rate": 0.5}, ValueError, r"^result_rate needs result="),
        ({"behaviour": 1}, TypeError, r"^behaviour must be callable or None, got int"),
        ({"behaviour": print, "behaviour_rate": 1.1}, ValueError, r"^behaviour_rate must be in"),
        ({"behaviour_rate": 0.5}, ValueError, r"^behaviour_rate needs behaviour="),
        ({"enabled": "yes"}, TypeError, r"^enabled must be a bool or a predicate"),
        ({"enabled": 1}, TypeError, r"^enabled must be a bool or a predicate"),
        ({"seed": "abc"}, TypeError, r"^seed must be an int or a random.Random, got str"),
        ({"seed": 1.5}, TypeError, r"^seed must be an int or a random.Random, got float"),
        ({"seed": True}, TypeError, r"^seed must be an int or a random.Random, got bool"),
        ({"clock": object()}, TypeError, r"^clock must provide"),
        ({"clock": FakeClock}, TypeError, r"^clock must provide .* got the class FakeClock"),
        ({"name": 1}, TypeError, r"^name must be a str or None"),
    ],
)
def test_bad_arguments_fail_at_construction(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    """Every bad argument is refused by the constructor, naming the parameter."""
    with pytest.raises(error, match=message):
        rs.FaultInjector(**kwargs)


def test_a_rate_with_its_fault_removed_is_refused() -> None:
    """Passing a fault as None and a positive rate for it is refused like an omitted fault."""
    with pytest.raises(ValueError, match=r"^latency_rate needs latency="):
        rs.FaultInjector(latency=None, latency_rate=0.5)
    with pytest.raises(ValueError, match=r"^result_rate needs result="):
        rs.FaultInjector(result_rate=1.0)
    with pytest.raises(ValueError, match=r"^behaviour_rate needs behaviour="):
        rs.FaultInjector(behaviour=None, behaviour_rate=1.0)


def test_boundaries_and_zero_rates_are_accepted() -> None:
    """Rates 0 and 1, zero latency, a timedelta and rates given as None are all valid."""
    rs.FaultInjector(error=ValueError, error_rate=0)
    rs.FaultInjector(error=ValueError, error_rate=1)
    rs.FaultInjector(latency=0, latency_rate=1.0)
    rs.FaultInjector(latency=timedelta(milliseconds=250), latency_rate=0.0)
    rs.FaultInjector(latency_rate=None, result_rate=None, behaviour_rate=None, error_rate=None)
    rs.FaultInjector(latency_rate=0, result_rate=0, behaviour_rate=0)


async def test_a_rate_of_none_turns_its_fault_off_in_the_constructor(mode: str) -> None:
    """error_rate=None (a missing setting, say) is off, as in update(), not "always"."""
    injector = rs.FaultInjector(
        error=ConnectionError("down"),
        error_rate=None,
        result="canned",
        result_rate=None,
        latency=5.0,
        latency_rate=None,
        behaviour=lambda context: None,
        behaviour_rate=None,
    )
    assert await run_yielding(mode, injector, Real()) == "real"
    assert injector.settings() == {"enabled": True}
    injector.update(error_rate=1.0)  # the fault was kept for later
    with pytest.raises(ConnectionError, match="down"):
        await run_yielding(mode, injector, Real())


def test_an_empty_injector_does_nothing() -> None:
    """With no fault configured every call goes through and the plan is empty."""
    injector = rs.FaultInjector()
    assert injector.settings() == {"enabled": True}
    assert repr(injector) == "FaultInjector()"
    assert injector.call(lambda: 5) == 5
    assert injector.draw() == rs.events.FaultPlan()


# -- errors ---------------------------------------------------------------------------


async def test_an_exception_instance_is_copied_for_each_call(mode: str) -> None:
    """Each call raises its own copy of the instance, with a fresh traceback; fn never runs."""
    template = ConnectionError("connection reset")
    injector = rs.FaultInjector(error=template)
    real = Real()
    raised: list[BaseException] = []
    for _ in range(3):
        with pytest.raises(ConnectionError, match=r"^connection reset$") as caught:
            await run_yielding(mode, injector, real)
        raised.append(caught.value)
    assert real.calls == 0
    assert len({id(error) for error in raised}) == 3
    assert all(error is not template for error in raised)
    assert template.__traceback__ is None  # the template itself is never raised
    for error in raised:
        frames = []
        tb = error.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame.f_code.co_name)
            tb = tb.tb_next
        # one raise each: no frames piled up from the other calls
        assert frames.count("fault_injection") == 1


async def test_a_copied_instance_keeps_its_message_and_attributes(mode: str) -> None:
    """An exception whose __init__ formats its argument is copied as it was, not re-formatted."""
    injector = rs.FaultInjector(error=NeedsArguments(503))
    for _ in range(2):
        with pytest.raises(NeedsArguments) as caught:
            await run_yielding(mode, injector, Real())
        assert str(caught.value) == "HTTP 503"
        assert caught.value.status == 503


class Slotted(Exception):
    """An exception keeping an attribute in __slots__, with a default in __init__."""

    __slots__ = ("__secret", "status")

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status
        self.__secret = "default"

    @property
    def secret(self) -> str:
        return self.__secret


async def test_a_copied_instance_keeps_its_slots_and_cause(mode: str) -> None:
    """Slot attributes (mangled ones too) and the cause of the given instance are kept."""
    try:
        raise Slotted("service unavailable", status=503) from ConnectionResetError("reset")
    except Slotted as exc:
        template = exc
    template._Slotted__secret = "set later"  # type: ignore[attr-defined]
    injector = rs.FaultInjector(error=template)
    with pytest.raises(Slotted) as caught:
        await run_yielding(mode, injector, Real())
    assert caught.value is not template
    assert (caught.value.args, caught.value.status) == (("service unavailable",), 503)
    assert caught.value.secret == "set later"
    assert isinstance(caught.value.__cause__, ConnectionResetError)
    assert caught.value.__suppress_context__


async def test_an_instance_whose_init_takes_other_arguments_is_still_copied(mode: str) -> None:
    """An exception that cannot be rebuilt from its args is copied too, never reused."""
    template = TwoArguments("users", 503)
    injector = rs.FaultInjector(error=template)
    raised = []
    for _ in range(2):
        with pytest.raises(TwoArguments, match=r"^users answered 503$") as caught:
            await run_yielding(mode, injector, Real())
        assert (caught.value.service, caught.value.status) == ("users", 503)
        raised.append(caught.value)
    assert raised[0] is not raised[1]
    assert template not in raised


class OddNew(Exception):
    """Neither copy.copy nor __new__ can rebuild it from its args."""

    def __new__(cls, service: str, status: int) -> OddNew:
        return super().__new__(cls, f"{service}/{status}")

    def __init__(self, service: str, status: int) -> None:
        super().__init__(f"{service}/{status}")


async def test_an_instance_that_cannot_be_rebuilt_is_raised_as_it_is(mode: str) -> None:
    """The last resort for an exception that cannot be rebuilt: the instance itself."""
    template = OddNew("users", 503)
    injector = rs.FaultInjector(error=template)
    for _ in range(2):
        with pytest.raises(OddNew, match=r"^users/503$") as caught:
            await run_yielding(mode, injector, Real())
        assert caught.value is template


async def test_notes_added_to_an_injected_copy_stay_on_that_copy(mode: str) -> None:
    """Notes a Retry adds to one injected error never leak into the template or later copies."""
    template = ConnectionError("down")
    template.add_note("from the template")
    clock = FakeClock()
    pipeline = (
        rs.Pipeline.builder()
        .add(rs.Retry(attempts=2, on=ConnectionError, backoff=0, clock=clock))
        .add(rs.FaultInjector(error=template))
        .build()
    )
    for _ in range(3):
        with pytest.raises(ConnectionError) as caught:
            await run_yielding(mode, pipeline, Real())
        assert caught.value.__notes__[0] == "from the template"
        assert len(caught.value.__notes__) == 2  # the template's note and the Retry's one
    assert template.__notes__ == ["from the template"]


async def test_an_exception_class_is_instantiated_for_each_call(mode: str) -> None:
    """A class is instantiated without arguments on every call."""
    injector = rs.FaultInjector(error=TimeoutError)
    raised = []
    for _ in range(2):
        with pytest.raises(TimeoutError) as caught:
            await run_yielding(mode, injector, Real())
        raised.append(caught.value)
    assert raised[0] is not raised[1]


async def test_an_error_factory_receives_the_call_context(mode: str) -> None:
    """A factory is called with the `CallContext` of the call it fails."""
    seen: list[rs.CallContext] = []

    def factory(context: rs.CallContext) -> Exception:
        seen.append(context)
        return ConnectionError(f"{context.pipeline} for {context.tags['tenant']}")

    pipeline = rs.Pipeline.builder("users.get").add(rs.FaultInjector(error=factory)).build()
    real = Real()
    with rs.tags(tenant="acme"), pytest.raises(ConnectionError, match=r"^users.get for acme$"):
        await run_yielding(mode, pipeline, real)
    assert real.calls == 0
    assert [(c.pipeline, c.attempt) for c in seen] == [("users.get", 1)]


async def test_an_error_factory_must_return_an_exception(mode: str) -> None:
    """A factory that returns something else fails the call with a TypeError saying so."""
    injector = rs.FaultInjector(error=lambda context: "not an exception")  # type: ignore[arg-type]
    real = Real()
    with pytest.raises(TypeError, match=r"error factory of a FaultInjector must return an exc"):
        await run_yielding(mode, injector, real)
    assert real.calls == 0


async def test_error_rate_alone_injects_injected_fault(mode: str) -> None:
    """With only error_rate the error is an `InjectedFault`, a `ResilienceError`, named."""
    injector = rs.FaultInjector(error_rate=1.0, name="chaos")
    real = Real()
    with pytest.raises(rs.InjectedFault, match=r"^error injected by FaultInjector 'chaos'$") as c:
        await run_yielding(mode, injector, real)
    assert isinstance(c.value, rs.ResilienceError)
    assert real.calls == 0
    unnamed = rs.FaultInjector(error_rate=1.0)
    with pytest.raises(rs.InjectedFault, match=r"^error injected by FaultInjector$"):
        await run_yielding(mode, unnamed, real)


async def test_injecting_keyboard_interrupt_is_allowed_and_propagates(mode: str) -> None:
    """Control flow can be injected on purpose; Retry and the breaker let it through untouched."""
    clock = FakeClock()
    breaker = rs.CircuitBreaker(consecutive_failures=1, clock=clock)
    pipeline = (
        rs.Pipeline.builder()
        .add(rs.Retry(attempts=3, on=BaseException, backoff=0, clock=clock))
        .add(breaker)
        .add(rs.FaultInjector(error=KeyboardInterrupt))
        .build()
    )
    real = Real()
    with pytest.raises(KeyboardInterrupt):
        await run_yielding(mode, pipeline, real)
    assert real.calls == 0
    assert breaker.state is rs.CircuitState.CLOSED  # control flow is no failure
    assert clock.sleeps == []  # and is never retried


# -- latency ----------------------------------------------------------------------------


async def test_latency_is_slept_on_the_clock_before_the_call(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Latency goes through the injector's clock: a FakeClock records it and no time passes."""
    real_async_sleep = asyncio.sleep

    def no_real_sleep(seconds: float) -> None:
        raise AssertionError(f"slept {seconds}s for real")

    async def no_real_async_sleep(seconds: float, result: Any = None) -> Any:
        if seconds > 0:
            raise AssertionError(f"slept {seconds}s for real")
        return await real_async_sleep(0, result)  # a plain yield to the loop is fine

    monkeypatch.setattr(time, "sleep", no_real_sleep)
    monkeypatch.setattr(asyncio, "sleep", no_real_async_sleep)
    clock = FakeClock()
    injector = rs.FaultInjector(latency=3600, clock=clock)
    real = Real()
    assert await run_yielding(mode, injector, real) == "real"  # an hour of fake time
    assert real.calls == 1
    assert clock.sleeps == [3600.0]
    assert clock.monotonic() == 3600.0


async def test_latency_as_a_timedelta_or_a_factory(mode: str) -> None:
    """A timedelta is seconds; a factory is called with the call context for each call."""
    clock = FakeClock()
    await run_yielding(
        mode, rs.FaultInjector(latency=timedelta(milliseconds=1500), clock=clock), Real()
    )
    assert clock.sleeps == [1.5]

    seen: list[str | None] = []

    def slow_for_reports(context: rs.CallContext) -> float:
        seen.append(context.pipeline)
        return 5.0 if context.pipeline == "reports" else 0.0

    injector = rs.FaultInjector(latency=slow_for_reports, clock=clock)
    reports = rs.Pipeline.builder("reports").add(injector).build()
    users = rs.Pipeline.builder("users").add(injector).build()
    await run_yielding(mode, reports, Real())
    await run_yielding(mode, users, Real())  # a factory returning 0 adds nothing
    assert clock.sleeps == [1.5, 5.0]
    assert seen == ["reports", "users"]


async def test_a_latency_factory_returning_a_bad_value_fails_the_call(mode: str) -> None:
    """The factory's result is checked like a duration argument, naming the factory."""
    injector = rs.FaultInjector(latency=lambda context: -1.0, clock=FakeClock())
    with pytest.raises(ValueError, match=r"^the latency factory's result must be >= 0"):
        await run_yielding(mode, injector, Real())


async def test_injected_latency_trips_an_async_timeout_outside(async_mode: str) -> None:
    """An async Timeout outside cancels the injected sleep at its deadline; fn never runs."""
    clock = FakeClock(auto_advance=False)
    pipeline = (
        rs.Pipeline.builder()
        .add(rs.Timeout(1, clock=clock))
        .add(rs.FaultInjector(latency=5, clock=clock))
        .build()
    )
    reached = False

    async def fetch() -> str:
        nonlocal reached
        reached = True
        return "late"

    task = create_task(pipeline.acall(fetch))
    for _ in range(3):
        await settle()
    assert clock.sleeps == [5.0]  # the injector is sleeping on the fake clock
    clock.advance(1)
    with pytest.raises(rs.TimeoutExceeded):
        await task
    assert not reached
    assert clock.monotonic() == 1.0


def test_injected_latency_makes_a_cooperative_sync_timeout_raise_after_the_return() -> None:
    """A sync call cannot be interrupted: the late return is turned into TimeoutExceeded."""
    clock = FakeClock()
    pipeline = (
        rs.Pipeline.builder()
        .add(rs.Timeout(1, clock=clock))
        .add(rs.FaultInjector(latency=5, clock=clock))
        .build()
    )
    real = Real()
    with pytest.raises(rs.TimeoutExceeded):
        pipeline.call(real)
    assert real.calls == 1  # the sleep runs in full, then the function; its result is dropped
    assert clock.sleeps == [5.0]


# -- results ------------------------------------------------------------------------------


async def test_a_result_replaces_the_call(mode: str) -> None:
    """The configured result is returned instead of calling the function, even None."""
    real = Real()
    assert await run_yielding(mode, rs.FaultInjector(result=[]), real) == []
    assert await run_yielding(mode, rs.FaultInjector(result=None), real) is None
    assert real.calls == 0
    assert await run_yielding(mode, rs.FaultInjector(result="x", result_rate=0.0), real) == "real"
    assert real.calls == 1


async def test_an_error_wins_over_a_result(mode: str) -> None:
    """With both drawn for one call, the error is raised and the result is not used."""
    injector = rs.FaultInjector(error=ValueError("e"), result="r")
    with pytest.raises(ValueError, match=r"^e$"):
        await run_yielding(mode, injector, Real())
    plan = injector.draw()
    assert plan.error is not None
    assert not plan.replace_result


# -- behaviours -------------------------------------------------------------------------


async def test_a_behaviour_runs_before_the_call_with_the_context(mode: str) -> None:
    """A sync behaviour runs before the function, with the call context; the call goes on."""
    log: list[str] = []

    def behaviour(context: rs.CallContext) -> None:
        log.append(f"behaviour {context.pipeline} {context.attempt}")

    def fetch() -> str:
        log.append("call")
        return "ok"

    pipeline = rs.Pipeline.builder("users").add(rs.FaultInjector(behaviour=behaviour)).build()
    assert await run_yielding(mode, pipeline, fetch) == "ok"
    assert log == ["behaviour users 1", "call"]


async def test_an_async_behaviour_is_awaited_in_async_calls() -> None:
    """In an async call an async behaviour is awaited to its end before the function runs."""
    log: list[str] = []

    async def behaviour(context: rs.CallContext) -> None:
        await asyncio.sleep(0)
        log.append("behaviour done")

    async def fetch() -> str:
        log.append("call")
        return "ok"

    assert await rs.FaultInjector(behaviour=behaviour).acall(fetch) == "ok"
    assert log == ["behaviour done", "call"]


def test_an_async_behaviour_in_a_sync_call_is_a_type_error_without_a_warning() -> None:
    """A sync call cannot await: TypeError, the coroutine is closed, nothing warns later."""

    async def behaviour(context: rs.CallContext) -> None:
        raise AssertionError("never runs")

    real = Real()
    injector = rs.FaultInjector(behaviour=behaviour)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(
            TypeError, match=r"has an async behaviour, which cannot run in a sync call"
        ):
            injector.call(real)
        gc.collect()
    assert [str(w.message) for w in caught] == []
    assert real.calls == 0


def test_an_awaitable_that_is_not_a_coroutine_is_refused_in_a_sync_call() -> None:
    """Any awaitable from a behaviour is refused in a sync call, not only coroutines."""

    class Later:
        def __await__(self) -> Generator[None, None, None]:
            yield None

    injector = rs.FaultInjector(behaviour=lambda context: Later())
    with pytest.raises(TypeError, match=r"async behaviour, which cannot run in a sync call"):
        injector.call(Real())


async def test_a_behaviour_that_raises_fails_the_call(mode: str) -> None:
    """An exception from the behaviour propagates and the function is not called."""

    def behaviour(context: rs.CallContext) -> None:
        raise BrokenPipeError("connection killed")

    real = Real()
    with pytest.raises(BrokenPipeError):
        await run_yielding(mode, rs.FaultInjector(behaviour=behaviour), real)
    assert real.calls == 0


# -- order --------------------------------------------------------------------------------


@pytest.mark.parametrize("last", ["error", "result", "call"])
async def test_order_is_behaviour_then_latency_then_error_or_result(mode: str, last: str) -> None:
    """Per call: behaviour, then latency, then the error, the result or the real call."""
    log: list[str] = []
    clock = LoggingClock(log)
    faults: dict[str, Any] = {"error": ValueError("e"), "result": "r", "call": None}
    injector = rs.FaultInjector(
        behaviour=lambda context: log.append("behaviour"),
        latency=1.0,
        error=faults["error"] if last == "error" else None,
        result=faults["result"] if last == "result" else None,
        result_rate=1.0 if last == "result" else 0.0,
        clock=clock,
    )

    def fetch() -> str:
        log.append("call")
        return "real"

    try:
        value = await run_yielding(mode, injector, fetch)
    except ValueError:
        log.append("error")
    else:
        if value == "r":
            log.append("result")
    assert log == ["behaviour", "latency", last]


# -- enabled ------------------------------------------------------------------------------


async def test_enabled_false_lets_every_call_through(mode: str) -> None:
    """A disabled injector calls the function and draws nothing."""
    injector = rs.FaultInjector(error_rate=1.0, enabled=False, seed=1)
    real = Real()
    assert await run_yielding(mode, injector, real) == "real"
    assert real.calls == 1
    assert injector.draw() == rs.events.FaultPlan()
    assert not injector.enabled


async def test_a_predicate_sees_the_calls_tags(mode: str) -> None:
    """``enabled`` as a predicate injects only into calls tagged ``chaos=True``."""
    seen: list[dict[str, Any]] = []

    def chaos_tagged(context: rs.CallContext) -> bool:
        seen.append(dict(context.tags))
        return bool(context.tags.get("chaos"))

    injector = rs.FaultInjector(error_rate=1.0, enabled=chaos_tagged)
    real = Real()
    assert await outcome(mode, injector, real) == "real"
    with rs.tags(chaos=True, tenant="acme"):
        assert await outcome(mode, injector, real) == "InjectedFault"
    with rs.tags(chaos=False):
        assert await outcome(mode, injector, real) == "real"
    assert seen == [{}, {"chaos": True, "tenant": "acme"}, {"chaos": False}]
    assert injector.enabled  # a predicate is "enabled"; it decides call by call


async def test_a_predicate_sees_the_pipeline_name(mode: str) -> None:
    """One injector shared by two pipelines injects only where the predicate says."""
    injector = rs.FaultInjector(
        result="injected", enabled=lambda context: context.pipeline == "users.get"
    )
    users = rs.Pipeline.builder("users.get").add(injector).build()
    orders = rs.Pipeline.builder("orders.get").add(injector).build()
    assert await run_yielding(mode, users, Real()) == "injected"
    assert await run_yielding(mode, orders, Real()) == "real"


async def test_a_predicate_on_one_tenant_with_a_decorated_function(mode: str) -> None:
    """The decorator form carries the tags too: only tenant "acme" gets faults."""
    injector = rs.FaultInjector(
        result="empty", enabled=lambda context: context.tags.get("tenant") == "acme"
    )

    if mode == "sync":

        @injector
        def fetch() -> str:
            return "real"

        def call() -> Any:
            return fetch()

    else:

        @injector
        async def afetch() -> str:
            return "real"

        call = afetch

    async def one(tenant: str) -> Any:
        with rs.tags(tenant=tenant):
            value = call()
            return await value if mode != "sync" else value

    assert await one("acme") == "empty"
    assert await one("globex") == "real"


# -- seeds and rates ------------------------------------------------------------------------


async def outcomes(mode: str, seed: int | random.Random, count: int = 200) -> list[tuple[Any, ...]]:
    """What ``count`` calls through a mixed injector did: (behaviour, latency, outcome)."""
    clock = FakeClock()
    behaviours: list[int] = []
    injector = rs.FaultInjector(
        error=ConnectionError,
        error_rate=0.3,
        latency=lambda context: 2.0,
        latency_rate=0.2,
        result="cached",
        result_rate=0.1,
        behaviour=lambda context: behaviours.append(1),
        behaviour_rate=0.1,
        seed=seed,
        clock=clock,
    )
    seen = []
    for _ in range(count):
        before, slept = len(behaviours), len(clock.sleeps)
        result = await outcome(mode, injector, Real())
        seen.append((len(behaviours) > before, len(clock.sleeps) > slept, result))
    return seen


async def test_the_same_seed_gives_the_same_sequence(mode: str) -> None:
    """Two injectors seeded alike make the same injections over 200 calls; another seed differs."""
    first = await outcomes(mode, 1234)
    assert first == await outcomes(mode, 1234)
    assert first == await outcomes(mode, random.Random(1234))  # a Random seeded alike
    assert first != await outcomes(mode, 4321)
    kinds = {result for _, _, result in first}
    assert kinds == {"ConnectionError", "cached", "real"}  # every kind happened
    assert any(b for b, _, _ in first)
    assert any(latency for _, latency, _ in first)


def test_a_random_source_is_used_as_given() -> None:
    """``seed`` may be a `random.Random`: the injector draws from that very object."""
    source = random.Random(3)
    injector = rs.FaultInjector(error_rate=0.5, seed=source)
    assert injector.random is source
    unseeded = rs.FaultInjector(error_rate=0.5)
    assert isinstance(unseeded.random, random.Random)


def test_rates_are_statistically_plausible() -> None:
    """Over 10,000 seeded draws each fault happens at close to its rate (deterministic)."""
    injector = rs.FaultInjector(
        error_rate=0.3,
        latency=1.0,
        latency_rate=0.5,
        result="r",
        result_rate=0.2,
        behaviour=lambda context: None,
        behaviour_rate=0.1,
        seed=2024,
    )
    plans = [injector.draw() for _ in range(10_000)]
    errors = sum(plan.error is not None for plan in plans) / len(plans)
    latencies = sum(plan.latency > 0 for plan in plans) / len(plans)
    results = sum(plan.replace_result for plan in plans) / len(plans)
    behaviours = sum(plan.behaviour for plan in plans) / len(plans)
    # four standard deviations of a binomial proportion over 10,000 draws are under 0.02
    assert errors == pytest.approx(0.3, abs=0.02)
    assert latencies == pytest.approx(0.5, abs=0.02)
    assert results == pytest.approx(0.7 * 0.2, abs=0.02)  # only calls not failed by an error
    assert behaviours == pytest.approx(0.1, abs=0.02)
    assert all(isinstance(plan.error, rs.InjectedFault) for plan in plans if plan.error)


# -- rates computed per call ------------------------------------------------------------------


async def test_a_rate_function_sets_the_chance_per_call(mode: str) -> None:
    """error_rate=fn(context): one tenant always fails, another never, in one injector."""
    seen: list[rs.CallContext] = []

    def by_tenant(context: rs.CallContext) -> float:
        seen.append(context)
        return {"acme": 1.0, "globex": 0.0}.get(context.tags.get("tenant"), 0.5)

    injector = rs.FaultInjector(error_rate=by_tenant, seed=5)
    real = Real()
    with rs.tags(tenant="acme"):
        for _ in range(20):
            with pytest.raises(rs.InjectedFault):
                await run_yielding(mode, injector, real)
    with rs.tags(tenant="globex"):
        for _ in range(20):
            assert await run_yielding(mode, injector, real) == "real"
    assert real.calls == 20
    assert len(seen) == 40
    assert {c.tags["tenant"] for c in seen[:20]} == {"acme"}


async def test_every_kind_takes_a_rate_function(mode: str) -> None:
    """latency, result and behaviour rates may be functions too; 0 and 1 turn them off and on."""
    clock = FakeClock()
    ran: list[str] = []
    on = {"behaviour": 1.0, "latency": 1.0, "result": 1.0}

    def rate(kind: str) -> Callable[[rs.CallContext], float]:
        return lambda context: on[kind]

    injector = rs.FaultInjector(
        behaviour=lambda context: ran.append("behaviour"),
        behaviour_rate=rate("behaviour"),
        latency=2.0,
        latency_rate=rate("latency"),
        result="stub",
        result_rate=rate("result"),
        clock=clock,
    )
    assert await run_yielding(mode, injector, Real()) == "stub"
    assert (ran, clock.sleeps) == (["behaviour"], [2.0])
    on.update(behaviour=0.0, latency=0.0, result=0.0)
    assert await run_yielding(mode, injector, Real()) == "real"
    assert (ran, clock.sleeps) == (["behaviour"], [2.0])


def test_a_rate_function_draws_like_the_same_fixed_rate() -> None:
    """A function always returning 0.3 makes exactly the draws of error_rate=0.3, same seed."""
    fixed = rs.FaultInjector(error_rate=0.3, result="r", result_rate=0.5, seed=11)
    computed = rs.FaultInjector(
        error_rate=lambda context: 0.3, result="r", result_rate=lambda context: 0.5, seed=11
    )

    def letters(injector: rs.FaultInjector) -> str:
        plans = [injector.draw() for _ in range(500)]
        return "".join("X" if p.error else "R" if p.replace_result else "." for p in plans)

    drawn = letters(fixed)
    assert drawn == letters(computed)
    assert {"X", "R", "."} <= set(drawn)


@pytest.mark.parametrize("value", [1.5, -0.1, math.nan, "0.5", None])
def test_a_rate_function_returning_a_bad_rate_fails_the_call(value: object) -> None:
    """The result must be a number in [0, 1]; the error names the rate."""
    injector = rs.FaultInjector(error_rate=lambda context: value)
    with pytest.raises((ValueError, TypeError), match="error_rate"):
        injector.call(Real())


def test_a_rate_function_in_settings_update_and_repr() -> None:
    """settings() gives the function back; repr shows it; update() can set and clear one."""

    def half(context: rs.CallContext) -> float:
        return 0.5

    injector = rs.FaultInjector(error_rate=half, name="chaos")
    assert injector.settings()["error_rate"] is half
    assert repr(injector) == f"FaultInjector('chaos', error_rate={half!r})"
    injector.update(error_rate=0.25)
    assert injector.settings()["error_rate"] == 0.25
    injector.update(latency=1.0, latency_rate=half)
    assert injector.settings()["latency_rate"] is half
    injector.update(latency_rate=None)
    assert "latency_rate" not in injector.settings()


# -- draw() -----------------------------------------------------------------------------------


def test_draw_can_be_called_directly() -> None:
    """``draw()`` returns the plan for one call without running anything."""
    behaviour_calls: list[rs.CallContext] = []
    injector = rs.FaultInjector(
        error=ValueError("boom"),
        latency=2.0,
        behaviour=behaviour_calls.append,
        seed=1,
    )
    plan = injector.draw()
    assert plan.behaviour
    assert plan.latency == 2.0
    assert isinstance(plan.error, ValueError)
    assert not plan.calls_through
    assert behaviour_calls == []  # the plan says so; draw() does not run it

    assert rs.FaultInjector(latency=1.0).draw() == rs.events.FaultPlan(latency=1.0)
    assert rs.FaultInjector(latency=1.0).draw().calls_through
    assert rs.FaultInjector(result=0).draw() == rs.events.FaultPlan(replace_result=True)
    assert not rs.events.FaultPlan(replace_result=True).calls_through
    with pytest.raises(AttributeError):
        plan.latency = 0.0  # type: ignore[misc]


def test_draw_passes_the_given_context_to_the_predicate_and_factories() -> None:
    """A context given to draw() is the one the predicate and the factories see."""
    seen: list[rs.CallContext] = []

    def predicate(context: rs.CallContext) -> bool:
        seen.append(context)
        return context.tags.get("chaos") is True

    def factory(context: rs.CallContext) -> Exception:
        seen.append(context)
        return ValueError(context.pipeline)

    injector = rs.FaultInjector(error=factory, enabled=predicate)
    context = rs.CallContext("checkout", 2, None, {"chaos": True})
    plan = injector.draw(context)
    assert str(plan.error) == "checkout"
    assert seen == [context, context]
    assert (
        injector.draw() == rs.events.FaultPlan()
    )  # outside a call: no tags, the predicate says no
    assert seen[-1].attempt == 0


# -- runtime control --------------------------------------------------------------------------


async def test_disable_and_enable_at_run_time(mode: str) -> None:
    """disable() lets calls through from the next call; enable() brings the faults back."""
    injector = rs.FaultInjector(error_rate=1.0)
    assert await outcome(mode, injector, Real()) == "InjectedFault"
    injector.disable()
    assert not injector.enabled
    assert repr(injector) == "FaultInjector(error_rate=1, disabled)"
    assert await outcome(mode, injector, Real()) == "real"
    injector.enable()
    assert repr(injector) == "FaultInjector(error_rate=1)"
    assert await outcome(mode, injector, Real()) == "InjectedFault"


async def test_enable_keeps_a_predicate(mode: str) -> None:
    """After disable() and enable(), the predicate given as ``enabled`` still decides."""
    injector = rs.FaultInjector(result="x", enabled=lambda context: "chaos" in context.tags)
    injector.disable()
    with rs.tags(chaos=True):
        assert await run_yielding(mode, injector, Real()) == "real"
    injector.enable()
    with rs.tags(chaos=True):
        assert await run_yielding(mode, injector, Real()) == "x"
    assert await run_yielding(mode, injector, Real()) == "real"
    injector.update(enabled=True)  # a bool replaces the predicate
    assert await run_yielding(mode, injector, Real()) == "x"


async def test_update_changes_only_what_it_names(mode: str) -> None:
    """update() changes the named settings, keeps the others, and None removes a fault."""
    clock = FakeClock()
    injector = rs.FaultInjector(latency=1.0, clock=clock)
    injector.update(result="cached")
    assert await run_yielding(mode, injector, Real()) == "cached"
    assert clock.sleeps == [1.0]
    injector.update(result_rate=0.0)
    assert await run_yielding(mode, injector, Real()) == "real"
    injector.update(latency=None)
    assert await run_yielding(mode, injector, Real()) == "real"
    assert clock.sleeps == [1.0, 1.0]
    injector.update(error=KeyError("k"))
    assert await outcome(mode, injector, Real()) == "KeyError"
    injector.update(error=None)
    assert await run_yielding(mode, injector, Real()) == "real"
    injector.update(error_rate=1.0)  # the fault was removed: the default error comes back
    assert await outcome(mode, injector, Real()) == "InjectedFault"
    injector.update(error_rate=None)
    injector.update(behaviour=lambda context: None)
    assert injector.settings()["behaviour_rate"] == 1.0
    injector.update(behaviour=None)
    assert "behaviour" not in injector.settings()
    injector.update(error=ValueError, error_rate=0.0)
    assert injector.settings() == {"enabled": True}


def test_a_refused_update_changes_nothing() -> None:
    """An update() that raises leaves every setting as it was, the reported ones included."""
    injector = rs.FaultInjector(error=ValueError("v"), name="x")
    before = injector.settings()
    with pytest.raises(ValueError, match=r"^latency_rate needs latency="):
        injector.update(error=KeyError("k"), enabled=lambda context: False, latency_rate=0.5)
    with pytest.raises(TypeError, match=r"^enabled must be"):
        injector.update(error=KeyError("k"), enabled="no")  # type: ignore[arg-type]
    assert injector.settings() == before
    with pytest.raises(ValueError, match=r"^v$"):
        injector.call(Real())


async def test_a_call_uses_the_configuration_it_drew_from(mode: str) -> None:
    """A change made while a call is being drawn does not mix into that call."""
    clock = FakeClock()
    injector = rs.FaultInjector(result="A", clock=clock)

    def switch_to_b(context: rs.CallContext) -> bool:
        injector.update(result="B", latency=1.0)  # as if another thread did it just now
        return True

    injector.update(enabled=switch_to_b)
    assert await run_yielding(mode, injector, Real()) == "A"
    assert clock.sleeps == []  # configuration A had no latency
    assert await run_yielding(mode, injector, Real()) == "B"
    assert clock.sleeps == [1.0]


async def test_updates_from_another_thread_never_tear_a_call(mode: str) -> None:
    """While a thread flips between two configurations, each call sees one or the other."""
    clock = FakeClock()
    injector = rs.FaultInjector(result="A", clock=clock)
    stop = threading.Event()
    flips = 0

    def flipper() -> None:
        nonlocal flips
        while not stop.is_set():
            injector.update(result="B", latency=1.0, behaviour=None)
            injector.update(result="A", latency=None, behaviour=lambda context: None)
            flips += 1

    seen: set[tuple[Any, bool]] = set()
    thread = threading.Thread(target=flipper)
    thread.start()
    try:
        for _ in range(2000):
            slept = len(clock.sleeps)
            result = await run_yielding(mode, injector, Real())
            seen.add((result, len(clock.sleeps) > slept))
    finally:
        stop.set()
        thread.join()
    assert flips > 0
    assert seen <= {("A", False), ("B", True)}


async def test_set_testing_turns_every_injector_off(mode: str) -> None:
    """``set_testing(inject_faults=False)`` lets calls through; leaving it turns them back on."""
    injector = rs.FaultInjector(error_rate=1.0)
    with set_testing(inject_faults=False):
        assert await outcome(mode, injector, Real()) == "real"
        assert injector.draw() == rs.events.FaultPlan()
        assert injector.enabled  # the injector's own switch is untouched
    assert await outcome(mode, injector, Real()) == "InjectedFault"


def test_a_fault_scope_puts_the_settings_back() -> None:
    """`FaultScope.update` changes an injector for a while; restore() brings back all of it."""
    injector = rs.FaultInjector(result="cached", enabled=lambda context: True, name="x")
    before = injector.settings()
    scope = FaultScope()
    scope.update(injector, error=KeyError("k"), enabled=False, latency=3.0)
    assert injector.settings() != before
    scope.restore()
    assert injector.settings() == before
    assert injector.call(Real()) == "cached"


async def test_each_injection_is_sent_to_the_listeners(mode: str) -> None:
    """A `FaultEvent` with the plan goes to the listeners for each call that got a fault."""
    events: list[rs.events.FaultEvent] = []
    injector = rs.FaultInjector(result="r", result_rate=0.5, seed=5, name="chaos")
    stop = injector.subscribe(events.append)
    results = [await run_yielding(mode, injector, Real()) for _ in range(20)]
    stop()
    assert len(events) == results.count("r") > 0
    assert all(
        e.name == "chaos" and e.plan == rs.events.FaultPlan(replace_result=True) for e in events
    )


# -- description ------------------------------------------------------------------------------


def test_settings_repr_and_describe() -> None:
    """settings(), repr() and describe() show what the injector does."""
    error = ConnectionError("down")
    behaviour = print
    injector = rs.FaultInjector(
        error=error,
        error_rate=0.25,
        latency=2.0,
        latency_rate=0.5,
        result=[],
        result_rate=0.1,
        behaviour=behaviour,
        behaviour_rate=0.05,
        name="users",
    )
    assert injector.settings() == {
        "enabled": True,
        "error": error,
        "error_rate": 0.25,
        "latency": 2.0,
        "latency_rate": 0.5,
        "result": [],
        "result_rate": 0.1,
        "behaviour": behaviour,
        "behaviour_rate": 0.05,
    }
    assert repr(injector) == (
        "FaultInjector('users', error_rate=0.25, latency_rate=0.5, result_rate=0.1, "
        "behaviour_rate=0.05)"
    )
    described = injector.describe()
    assert described["type"] == "FaultInjector"
    assert described["kind"] == "fault_injection"
    assert described["name"] == "users"
    assert described["error_rate"] == 0.25


def test_settings_show_the_default_error_and_a_predicate() -> None:
    """The default error shows as InjectedFault; ``enabled`` shows the predicate, or False."""

    def only_chaos(context: rs.CallContext) -> bool:
        return "chaos" in context.tags

    injector = rs.FaultInjector(error_rate=0.5, enabled=only_chaos)
    assert injector.settings() == {
        "enabled": only_chaos,
        "error": rs.InjectedFault,
        "error_rate": 0.5,
    }
    injector.disable()
    assert injector.settings()["enabled"] is False
    timed = rs.FaultInjector(latency=timedelta(seconds=3))
    assert timed.settings()["latency"] == timedelta(seconds=3)


# -- in a pipeline ------------------------------------------------------------------------------


async def test_innermost_in_a_pipeline_with_retry_and_breaker(mode: str) -> None:
    """Injected errors are retried attempt by attempt and open the breaker, which then rejects."""
    clock = FakeClock()
    attempts: list[int] = []

    def fault(context: rs.CallContext) -> Exception:
        attempts.append(context.attempt)
        return rs.InjectedFault("injected")

    breaker = rs.CircuitBreaker(consecutive_failures=3, open_seconds=30, clock=clock)
    pipeline = (
        rs.Pipeline.builder("users.get")
        .add(rs.Retry(attempts=3, on=rs.InjectedFault, backoff=0.5, clock=clock))
        .add(breaker)
        .add(rs.FaultInjector(error=fault, clock=clock))
        .build()
    )
    real = Real()
    with pytest.raises(rs.InjectedFault):
        await run_yielding(mode, pipeline, real)
    assert attempts == [1, 2, 3]
    assert clock.sleeps == [0.5, 0.5]
    assert breaker.state is rs.CircuitState.OPEN
    with pytest.raises(rs.CircuitOpenError):
        await run_yielding(mode, pipeline, real)
    assert attempts == [1, 2, 3]  # rejected by the breaker: the injector never saw the call
    assert real.calls == 0


def test_the_builder_warns_when_the_injector_is_not_innermost() -> None:
    """A FaultInjector with layers inside it gets a PipelineOrderWarning."""
    with pytest.warns(rs.PipelineOrderWarning, match=r"FaultInjector is not innermost"):
        rs.Pipeline.builder().add(rs.FaultInjector(error_rate=0.1)).add(rs.Retry()).build()
