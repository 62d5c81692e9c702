"""The sync shells of the policies, generated from ``_shells.py``: do not edit.

Edit the async shells in ``_shells.py``, then run ``python tools/unasync.py``
(``tests/test_unasync.py`` fails while this file is not what it writes).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._circuit_store import SUCCESS, CircuitLane
from ._context import ATTEMPT, CLOCK, DEADLINE, EMPTY, TAGS, VAR, own_context
from ._misuse import Misuse

if TYPE_CHECKING:
    from ._middleware import Endpoint

__all__ = [
    "adaptive_limiter",
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


# -- the entry: a decorated function -----------------------------------------------------------


def entry(name: str | None, cell: list[Any], index: int, fn: Call) -> Call:
    """The decorated function: a call record of its own, then the chain in ``cell[index]``.

    ``cell`` holds the sync and the async chain, read at each call (one list
    index), so that a chain swapped later reaches functions decorated before.
    """
    get, set_, reset = VAR.get, VAR.set, VAR.reset
    deadline, clock, tags = DEADLINE, CLOCK, TAGS

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        parent = get()  # _context.entered, inlined
        token = set_([name, 1, parent[deadline], parent[clock], parent[tags]])
        try:
            return cell[index](fn, args, kwargs)
        except Misuse as misuse:
            raise misuse.error from misuse.__context__
        finally:
            reset(token)

    functools.update_wrapper(wrapper, fn)
    return wrapper


# -- CircuitBreaker ----------------------------------------------------------------------------


def circuit_breaker(
    next: Endpoint,
    direct: bool,
    lane: CircuitLane,
    acquire: Callable[[], int],
    record: Callable[[int, int, float], None],
    release: Callable[[int], None],
    settle: Callable[[int, BaseException | None, Any, float | None], None],
    reject: Callable[[], BaseException],
) -> Endpoint:
    """A breaker whose successes need no measuring: the store's lane inline."""

    def circuit_breaker(fn: Call, args: Args, kwargs: Kwargs) -> Any:
        permit = lane.permit
        if permit < 0:
            permit = acquire()
            if permit < 0:
                raise reject()
        try:
            result = fn(*args, **kwargs) if direct else next(fn, args, kwargs)
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
    next: Endpoint,
    direct: bool,
    lane: CircuitLane,
    acquire: Callable[[], int],
    release: Callable[[int], None],
    settle: Callable[[int, BaseException | None, Any, float | None], None],
    reject: Callable[[], BaseException],
    monotonic: Callable[[], float] | None,
) -> Endpoint:
    """A breaker that judges every outcome: timed calls, results that may fail, listeners."""

    def circuit_breaker(fn: Call, args: Args, kwargs: Kwargs) -> Any:
        permit = lane.permit
        if permit < 0:
            permit = acquire()
            if permit < 0:
                raise reject()
        started = monotonic() if monotonic is not None else None
        try:
            result = fn(*args, **kwargs) if direct else next(fn, args, kwargs)
        except Exception as exc:
            settle(permit, exc, None, started)
            raise
        except BaseException:
            release(permit)
            raise
        settle(permit, None, result, started)
        return result

    return circuit_breaker


# -- Bulkhead and AdaptiveLimiter --------------------------------------------------------------


def bulkhead(
    next: Endpoint,
    direct: bool,
    queue: Any,
    take: Callable[[], object],
    give: Callable[[None], None],
    hand_over: Callable[[], None],
    serve: Callable[[], None],
    admit: Callable[[], Any],
) -> Endpoint:
    """A slot for the call: a free one without a lock, else the queue (`admit`)."""

    def bulkhead(fn: Call, args: Args, kwargs: Kwargs) -> Any:
        if queue.count:
            admit()
        else:
            try:
                take()
            except IndexError:
                admit()
        try:
            return fn(*args, **kwargs) if direct else next(fn, args, kwargs)
        finally:
            if queue.count:  # Slots.release, inlined
                hand_over()
            else:
                give(None)
                if queue.count:  # a caller joined meanwhile
                    serve()

    return bulkhead


def adaptive_limiter(
    next: Endpoint,
    direct: bool,
    core: Any,
    admit: Callable[[], Any],
    settle: Callable[[BaseException, float, int], None],
    close: Callable[[float], None],
    monotonic: Callable[[], float],
) -> Endpoint:
    """A slot as in `bulkhead`, and a sample of the call's time for the limit's window."""
    queue = core.queue
    free = core.free
    take = free.pop
    give = free.append
    sample = core.samples.append
    hand_over = core.hand_over
    serve = core.serve

    def adaptive_limiter(fn: Call, args: Args, kwargs: Kwargs) -> Any:
        if queue.count:
            admit()
        else:
            try:
                take()
            except IndexError:
                admit()
        held = core.top - len(free)
        started = monotonic()
        try:
            result = fn(*args, **kwargs) if direct else next(fn, args, kwargs)
        except BaseException as exc:
            settle(exc, started, held)
            raise
        end = monotonic()
        sample((end - started, held))
        if queue.count:  # Slots.release, inlined
            hand_over()
        else:
            give(None)
            if queue.count:  # a caller joined meanwhile
                serve()
        if end >= core.window_end:
            close(end)
        return result

    return adaptive_limiter


# -- AdaptiveThrottler -------------------------------------------------------------------------


def adaptive_throttler(
    next: Endpoint,
    direct: bool,
    window: Any,
    monotonic: Callable[[], float],
    requests: Any,
    accepts: Any,
    rotate: Callable[[], None],
    draw: Callable[[], float],
    reject: Callable[[int, int], BaseException],
    refused: Callable[[BaseException], bool],
    check: Callable[[Any], bool] | None,
    k: float,
) -> Endpoint:
    """Reject locally with the SRE book's probability; count requests and accepts lock-free."""
    step = requests.__next__
    accept = accepts.__next__

    def adaptive_throttler(fn: Call, args: Args, kwargs: Kwargs) -> Any:
        if monotonic() >= window.edge:
            rotate()
        seen = window.requested - window.base_requests
        accepted = window.accepted - window.base_accepts
        excess = seen - k * accepted
        if excess > 0 and draw() < excess / (seen + 1):
            raise reject(seen, accepted)
        try:
            result = fn(*args, **kwargs) if direct else next(fn, args, kwargs)
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
    next: Endpoint,
    direct: bool,
    handles: Callable[[Exception], bool],
    check: Callable[[Any], bool] | None,
    substitute: Callable[[Exception | None, Any, Args, Kwargs], Any],
) -> Endpoint:
    """A plain try/except around the call; the substitute comes from the policy."""

    def fallback(fn: Call, args: Args, kwargs: Kwargs) -> Any:
        try:
            result = fn(*args, **kwargs) if direct else next(fn, args, kwargs)
        except Exception as exc:
            if not handles(exc):
                raise
            # Still inside `except`: an error from the handler chains to `exc`.
            return substitute(exc, None, args, kwargs)
        if check is None or not check(result):
            return result
        return substitute(None, result, args, kwargs)

    return fallback


def fault_injection(
    next: Endpoint,
    direct: bool,
    settings_of: Callable[[], Any],
    draw: Callable[[Any, Any], Any],
    nothing: object,
    injected: Callable[[Any], None],
    behave: Callable[[Any], Any],
    sleep: Callable[[float], Any],
) -> Endpoint:
    """Carry out the plan the injector draws for each call (see `FaultInjector.draw`)."""

    def fault_injection(fn: Call, args: Args, kwargs: Kwargs) -> Any:
        settings = settings_of()
        if not settings.enabled:
            return fn(*args, **kwargs) if direct else next(fn, args, kwargs)
        plan = draw(settings, None)
        if plan is nothing:
            return fn(*args, **kwargs) if direct else next(fn, args, kwargs)
        injected(plan)
        if plan.behaviour and settings.behaviour is not None:
            behave(settings.behaviour)
        if plan.latency > 0:
            sleep(plan.latency)
        if plan.error is not None:
            raise plan.error
        if plan.replace_result:
            return settings.result
        return fn(*args, **kwargs) if direct else next(fn, args, kwargs)

    return fault_injection


# -- Throttle -----------------------------------------------------------------------------------


def admitted(next: Endpoint, direct: bool, admit: Callable[[], Any]) -> Endpoint:
    """The slow path of a call: ``admit()`` (the queue, or a refusal), then the call."""

    def admitted(fn: Call, args: Args, kwargs: Kwargs) -> Any:
        admit()
        return fn(*args, **kwargs) if direct else next(fn, args, kwargs)

    return admitted


# -- Throttle, calls of their own cost ---------------------------------------------------------


def weighted_throttle(
    next: Endpoint,
    direct: bool,
    cost_for: Callable[[Args, Kwargs], float],
    take_now: Callable[[float], bool],
    admit: Callable[[float], Any],
) -> Endpoint:
    """Tokens of each call's own cost: at once if they are there, else the queue (`admit`)."""

    def throttle(fn: Call, args: Args, kwargs: Kwargs) -> Any:
        cost = cost_for(args, kwargs)
        if not take_now(cost):
            admit(cost)
        return fn(*args, **kwargs) if direct else next(fn, args, kwargs)

    return throttle


# -- Retry -------------------------------------------------------------------------------------


def retry(
    next: Endpoint,
    direct: bool,
    retryable: Callable[[BaseException], bool],
    check: Callable[[Any], bool] | None,
    again: Callable[..., Any],
    deposit: Callable[[], None] | None,
    monotonic: Callable[[], float] | None,
    unmeasured: float,
) -> Endpoint:
    """The first attempt inline; a failure goes to ``again`` (`retry_again`, bound).

    Before the attempt, a budget's ``deposit`` and the start time, when each is given.
    """

    def retry(fn: Call, args: Args, kwargs: Kwargs) -> Any:
        if deposit is not None:
            deposit()
        started = monotonic() if monotonic is not None else unmeasured
        try:
            result = fn(*args, **kwargs) if direct else next(fn, args, kwargs)
        except Exception as exc:
            if not retryable(exc):
                raise
            return again(next, fn, args, kwargs, exc, None, started)
        if check is None or not check(result):
            return result
        return again(next, fn, args, kwargs, None, result, started)

    return retry


def retry_again(
    schedule: Any,
    sleep: Callable[[float], Any],
    retryable: Callable[[BaseException], bool],
    check: Callable[[Any], bool] | None,
    next: Endpoint,
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
            return retry_again(
                schedule, sleep, retryable, check, next, fn, args, kwargs, error, result
            )
    first = ctx[ATTEMPT]
    while (delay := schedule.next_delay(error, result)) is not None:
        sleep(delay)
        ctx[ATTEMPT] = schedule.attempt
        try:
            result = next(fn, args, kwargs)
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
) -> Endpoint:
    """Time ``inner`` (the instrumented chain; with ``direct``, the function itself).

    ``begin()`` returns what ``end`` needs, or None when there is nothing to
    measure; ``end(begun, error)`` records the outcome.
    """

    def instrumented(fn: Call, args: Args, kwargs: Kwargs) -> Any:
        begun = begin()
        if begun is None:
            return fn(*args, **kwargs) if direct else inner(fn, args, kwargs)
        try:
            result = fn(*args, **kwargs) if direct else inner(fn, args, kwargs)
        except BaseException as error:
            end(begun, error)
            raise
        end(begun, None)
        return result

    return instrumented
