"""The async shells of the policies: the code that runs around each call.

A policy's module holds what the policy *is* (its settings, its state and
the decisions on it, its events); its shell is the few lines every call
runs through, and a policy has a sync and an async one. They are the same
but for ``await``: this module holds the async shells, written by hand, and
``_shells_sync.py`` is generated from it by ``tools/unasync.py`` (as
httpcore generates its sync code), which a test keeps current. The shells
that truly differ (a Timeout's, a Throttle's fixed-cost fast path, thread
isolation) stay hand-written in their modules.

A shell factory takes the next endpoint and the parts of its policy it
needs (bound methods, the state object of its fast path) and returns the
endpoint. A shell reads nothing private of another module: what it gets is
what the policy hands it. ``direct`` is True when the shell is innermost:
it then calls the function itself, without the extra hop of the terminal
endpoint.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._circuit_store import SUCCESS, CircuitStore
from ._context import ATTEMPT, CLOCK, DEADLINE, EMPTY, NO_TAGS, TAGS, VAR, own_context
from ._misuse import Misuse

if TYPE_CHECKING:
    from ._middleware import AsyncEndpoint
    from ._slots import Slots

__all__ = [
    "adaptive_throttler",
    "admitted",
    "bulkhead",
    "circuit_breaker",
    "entry",
    "fallback",
    "fault_injection",
    "measured_circuit_breaker",
    "retry",
    "retry_again",
    "timed",
    "weighted_throttle",
]

Call = Callable[..., Any]
Args = tuple[Any, ...]
Kwargs = dict[str, Any]
Admit = Callable[..., Any]  # the slow way in: a wait in the queue, or a refusal
Check = Callable[[Any], bool] | None  # a result that counts as a failure, if any
Handles = Callable[[Exception], bool]
Now = Callable[[], float] | None  # the clock, when calls are timed
Reject = Callable[[], BaseException]
Settle = Callable[[int, BaseException | None, Any, float | None], None]


# -- the entry: a decorated function -----------------------------------------------------------


def entry(name: str | None, cell: list[Any], fn: Call) -> Call:
    """The decorated function: a call record of its own, then the chain in ``cell``.

    ``cell`` holds the sync and the async chain (``[sync, async]``), read at
    each call (one list index), so that a chain swapped later reaches
    functions decorated before.
    """
    get, set_, reset = VAR.get, VAR.set, VAR.reset
    empty, no_tags = EMPTY, NO_TAGS  # (every variable a closure reads costs each call)

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        parent = get()  # _context.entered, inlined (at the top: no tuple to index)
        token = set_(
            [name, 1, None, None, no_tags]
            if parent is empty
            else [name, 1, parent[DEADLINE], parent[CLOCK], parent[TAGS]]
        )
        try:
            return await cell[1](fn, args, kwargs)
        except Misuse as misuse:
            raise misuse.error from misuse.__context__
        finally:
            reset(token)

    functools.update_wrapper(wrapper, fn)
    return wrapper


# -- CircuitBreaker ----------------------------------------------------------------------------


def circuit_breaker(
    next: AsyncEndpoint, direct: bool, store: CircuitStore, settle: Settle, reject: Reject
) -> AsyncEndpoint:
    """A breaker whose successes need no measuring: the store's lane inline."""
    lane, acquire, record, release = store.lane, store.acquire, store.record, store.release

    async def circuit_breaker(fn: Call, args: Args, kwargs: Kwargs) -> Any:
        permit = lane.permit
        if permit < 0:
            permit = acquire()
            if permit < 0:
                raise reject()
        try:
            result = await (fn(*args, **kwargs) if direct else next(fn, args, kwargs))
        except Exception as exc:
            settle(permit, exc, None, None)
            raise
        except BaseException:
            release(permit)  # control flow: hand the permit back, count nothing
            raise
        successes = lane.successes  # read before the check: a reset swaps in new ones
        if permit == lane.success_permit:
            successes.append(SUCCESS)
            if lane.consecutive:
                lane.consecutive = 0
        else:
            record(permit, SUCCESS, 0.0)
        return result

    return circuit_breaker


def measured_circuit_breaker(
    next: AsyncEndpoint, direct: bool, store: CircuitStore, settle: Settle, admit: Admit, now: Now
) -> AsyncEndpoint:
    """A breaker that judges every outcome: timed calls, results that may fail, listeners.

    ``admit`` takes a permit from the store or raises the refusal (awaited:
    a store shared by processes asks its server); ``now``
    reads the clock before each call, when calls are timed (else None).
    ``settle`` also takes control flow, and only gives its permit back.
    """
    lane, monotonic = store.lane, now

    async def circuit_breaker(fn: Call, args: Args, kwargs: Kwargs) -> Any:
        permit = lane.permit
        if permit < 0:
            permit = await admit()
        started = monotonic() if monotonic is not None else None
        try:
            result = await (fn(*args, **kwargs) if direct else next(fn, args, kwargs))
        except BaseException as exc:
            settle(permit, exc, None, started)
            raise
        settle(permit, None, result, started)
        return result

    return circuit_breaker


# -- Bulkhead and AdaptiveLimiter: one slot shell -----------------------------------------------


def bulkhead(
    next: AsyncEndpoint,
    direct: bool,
    slots: Slots,
    admit: Admit,
    sampling: tuple[Any, ...] | None = None,
) -> AsyncEndpoint:
    """A slot for the call: a free one without a lock, else the queue (`admit`).

    An `AdaptiveLimiter` passes ``sampling``: its ``failed(error, held)``
    for a call that raised, ``close(now)`` for a window that may be due, its
    clock, and its slots again (with their ``samples`` and ``window_end``).
    Each call's time is then a sample of its window. The slot is given back
    here either way.
    """
    queue, take, give = slots.queue, slots.free.pop, slots.free.append
    if sampling is not None:  # one cell: every variable a closure reads costs each call
        failed, close, monotonic, window = sampling
        sampling = (failed, close, monotonic, window, window.samples.append, slots.free)

    async def bulkhead(fn: Call, args: Args, kwargs: Kwargs) -> Any:
        if queue.count:
            await admit()
        else:
            try:
                take()
            except IndexError:
                await admit()
        try:
            if sampling is None:
                return await (fn(*args, **kwargs) if direct else next(fn, args, kwargs))
            failed, close, monotonic, window, sample, free = sampling
            held = window.top - len(free)
            started = monotonic()
            try:
                result = await (fn(*args, **kwargs) if direct else next(fn, args, kwargs))
            except BaseException as exc:
                failed(exc, held)
                raise
        finally:  # Slots.release, inlined
            if queue.count:
                slots.hand_over()
            else:
                give(None)
                if queue.count:  # somebody joined in between (mypy narrows it to 0)
                    slots.serve()  # type: ignore[unreachable]
        end = monotonic()
        sample((end - started, held))
        if end >= window.window_end:
            close(end)
        return result

    return bulkhead


# -- AdaptiveThrottler -------------------------------------------------------------------------


def adaptive_throttler(
    next: AsyncEndpoint, direct: bool, window: Any, parts: tuple[Any, ...]
) -> AsyncEndpoint:
    """Reject locally with the SRE book's probability; count requests and accepts lock-free.

    ``parts``: the clock, the draw of a random number, the rejection, what
    counts as refused (an error, a result); ``k`` is the window's (``update`` changes it).
    """
    monotonic, draw, reject, refused, check = parts
    requests, accepts, rotate = window.requests.counter, window.accepts.counter, window.rotate
    step = requests.__next__
    accept = accepts.__next__

    async def adaptive_throttler(fn: Call, args: Args, kwargs: Kwargs) -> Any:
        if monotonic() >= window.edge:
            rotate()
        seen = window.requested - window.base_requests
        accepted = window.accepted - window.base_accepts
        excess = seen - window.k * accepted
        if excess > 0 and draw() < excess / (seen + 1):
            raise reject(seen, accepted)
        try:
            result = await (fn(*args, **kwargs) if direct else next(fn, args, kwargs))
        except Exception as exc:
            if not refused(exc):
                window.accepted = accept() + 1
            window.requested = step() + 1
            raise
        if check is None or not check(result):
            window.accepted = accept() + 1
        window.requested = step() + 1
        return result

    return adaptive_throttler


# -- Fallback and FaultInjector ----------------------------------------------------------------


def fallback(
    next: AsyncEndpoint, direct: bool, handles: Handles, check: Check, substitute: Call
) -> AsyncEndpoint:
    """A plain try/except around the call; the substitute comes from the policy."""

    async def fallback(fn: Call, args: Args, kwargs: Kwargs) -> Any:
        try:
            result = await (fn(*args, **kwargs) if direct else next(fn, args, kwargs))
        except Exception as exc:
            if not handles(exc):
                raise
            # Still inside `except`: an error from the handler chains to `exc`.
            return await substitute(exc, None, args, kwargs)
        if check is None or not check(result):
            return result
        return await substitute(None, result, args, kwargs)

    return fallback


def fault_injection(next: AsyncEndpoint, direct: bool, parts: tuple[Any, ...]) -> AsyncEndpoint:
    """Carry out the plan the injector draws for each call (see `FaultInjector.draw`).

    ``parts``: where the injector keeps its settings (``live.settings``, replaced
    whole by an update), its draw, the empty plan, what reports a plan, what
    runs a behaviour, and the clock's sleep.
    """
    live, draw, nothing, injected, behave, sleep = parts

    async def fault_injection(fn: Call, args: Args, kwargs: Kwargs) -> Any:
        settings = live.settings
        if not settings.enabled:
            return await (fn(*args, **kwargs) if direct else next(fn, args, kwargs))
        plan = draw(settings, None)
        if plan is nothing:
            return await (fn(*args, **kwargs) if direct else next(fn, args, kwargs))
        injected(plan)
        if plan.behaviour and settings.behaviour is not None:
            await behave(settings.behaviour)
        if plan.latency > 0:
            await sleep(plan.latency)
        if plan.error is not None:
            raise plan.error
        if plan.replace_result:
            return settings.result
        return await (fn(*args, **kwargs) if direct else next(fn, args, kwargs))

    return fault_injection


# -- Throttle ----------------------------------------------------------------------------------


def admitted(next: AsyncEndpoint, direct: bool, admit: Admit) -> AsyncEndpoint:
    """The slow path of a call: ``admit()`` (the queue, or a refusal), then the call."""

    async def admitted(fn: Call, args: Args, kwargs: Kwargs) -> Any:
        await admit()
        return await (fn(*args, **kwargs) if direct else next(fn, args, kwargs))

    return admitted


# -- Throttle, calls of their own cost ---------------------------------------------------------


def weighted_throttle(
    next: AsyncEndpoint, direct: bool, cost_for: Call, take_now: Call, admit: Call
) -> AsyncEndpoint:
    """Tokens of each call's own cost: at once if they are there, else the queue (`admit`)."""

    async def throttle(fn: Call, args: Args, kwargs: Kwargs) -> Any:
        cost = cost_for(args, kwargs)
        if not take_now(cost):
            await admit(cost)
        return await (fn(*args, **kwargs) if direct else next(fn, args, kwargs))

    return throttle


# -- Retry -------------------------------------------------------------------------------------


def retry(next: AsyncEndpoint, direct: bool, parts: tuple[Any, ...]) -> AsyncEndpoint:
    """The first attempt inline; a failure goes to ``again`` (`retry_again`, bound).

    ``parts``: what is retried (an error, a result), ``again``, and
    ``before``: what runs before the first attempt (a budget's deposit, a
    clock read of the start), returning the start it read or None; None
    itself when nothing runs (the start is then None too).
    """
    retryable, check, again, before = parts

    async def retry(fn: Call, args: Args, kwargs: Kwargs) -> Any:
        started = None if before is None else before()
        try:
            result = await (fn(*args, **kwargs) if direct else next(fn, args, kwargs))
        except Exception as exc:
            if not retryable(exc):
                raise
            return await again(next, fn, args, kwargs, exc, None, started)
        if check is None or not check(result):
            return result
        return await again(next, fn, args, kwargs, None, result, started)

    return retry


async def retry_again(
    schedule: Any,
    sleep: Callable[[float], Any],
    retryable: Callable[[BaseException], bool],
    check: Callable[[Any], bool] | None,
    next: AsyncEndpoint,
    fn: Call,
    args: Args,
    kwargs: Kwargs,
    error: BaseException | None,
    result: Any,
) -> Any:
    """The driver of a retry schedule: wait, attempt again, tell the schedule how it went."""
    ctx = VAR.get()
    if ctx is EMPTY:  # run outside any call (a custom layer's own thread or task)
        with own_context():
            return await retry_again(
                schedule, sleep, retryable, check, next, fn, args, kwargs, error, result
            )
    first = ctx[ATTEMPT]
    while (delay := schedule.next_delay(error, result)) is not None:
        await sleep(delay)
        ctx[ATTEMPT] = schedule.attempt
        try:
            result = await next(fn, args, kwargs)
        except Exception as exc:
            if not retryable(exc):
                raise
            error, result = exc, None
        else:
            if check is None or not check(result):
                return result
            error = None
        finally:
            ctx[ATTEMPT] = first
    if error is not None:
        raise error
    return result


# -- telemetry: a timed (and traced) call or attempt -------------------------------------------


def timed(
    inner: Callable[..., Any],
    begin: Callable[[], Any],
    end: Callable[[Any, BaseException | None], None],
    direct: bool,
) -> AsyncEndpoint:
    """Time ``inner`` (the instrumented chain; with ``direct``, the function itself).

    ``begin()`` returns what ``end`` needs, or None when there is nothing to
    measure; ``end(begun, error)`` records the outcome.
    """

    async def instrumented(fn: Call, args: Args, kwargs: Kwargs) -> Any:
        begun = begin()
        if begun is None:
            return await (fn(*args, **kwargs) if direct else inner(fn, args, kwargs))
        try:
            result = await (fn(*args, **kwargs) if direct else inner(fn, args, kwargs))
        except BaseException as error:
            end(begun, error)
            raise
        end(begun, None)
        return result

    return instrumented
