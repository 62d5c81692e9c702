"""Which async library runs the calling task, and its primitives: asyncio or trio.

The policies are written against asyncio; under trio (or anyio's trio
backend) the few places that wait or cancel use trio's own primitives
instead. Telling them apart costs one C call, ``asyncio._get_running_loop()``:
a task of an asyncio loop (anyio's asyncio backend included) takes the
asyncio path as before, and only when there is no asyncio loop does this
module look for trio, and only if trio is imported at all. trio is never
imported here unless the program already has: the library works without it.

Under trio, a `TrioLoop` stands where the asyncio path has the running
loop: it is what a `Waiter` and a `FakeClock` timer keep, and it offers the
three loop methods they use (``call_soon_threadsafe``, ``is_closed`` and
``create_future``), so `resilience._waiters` and the fake clock serve
threads, asyncio tasks and trio tasks in one queue.
"""

from __future__ import annotations

import asyncio
import math
import sys
from asyncio import _get_running_loop
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

if TYPE_CHECKING:
    import trio

    from ._clock import Clock

__all__ = [
    "Loop",
    "TrioFuture",
    "TrioLoop",
    "after_callbacks",
    "in_event_loop",
    "is_cancellation",
    "running_loop",
    "sleep",
    "trio_loop",
    "wait_signal",
    "within",
]

T = TypeVar("T")

NO_LOOP = (
    "resilience: no running event loop: async calls run in a task of asyncio or trio "
    "(anyio runs on either)"
)


class TrioFuture:
    """The one-shot signal of a trio task: what an `asyncio.Future` is to an asyncio task.

    ``set_result`` runs in the trio thread (through `TrioLoop.call_soon_threadsafe`).
    """

    __slots__ = ("_event",)

    def __init__(self) -> None:
        import trio

        self._event = trio.Event()

    def done(self) -> bool:
        return self._event.is_set()

    def set_result(self, _: object) -> None:
        self._event.set()

    def __await__(self) -> Generator[Any, None, None]:
        return self._event.wait().__await__()


class TrioLoop:
    """One trio run, seen through the few event-loop methods the waiting code uses."""

    __slots__ = ("closed", "token")

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self.token = token
        self.closed = False

    def call_soon_threadsafe(self, callback: Callable[..., object], *args: Any) -> None:
        """Run ``callback(*args)`` in the trio thread soon; from any thread.

        Raises `RuntimeError` (trio's ``RunFinishedError``) once the run is over.
        """
        try:
            self.token.run_sync_soon(callback, *args)
        except RuntimeError:
            self.closed = True
            raise

    def is_closed(self) -> bool:
        return self.closed

    def create_future(self) -> TrioFuture:
        return TrioFuture()

    def __repr__(self) -> str:
        return f"TrioLoop({self.token!r})"


Loop: TypeAlias = "asyncio.AbstractEventLoop | TrioLoop"

# The `TrioLoop` of the current trio run, in a trio.lowlevel.RunVar (made on first use).
_RUN_LOOP: Any = None


def trio_loop() -> TrioLoop | None:
    """The `TrioLoop` of the trio run of the calling task, or None outside trio."""
    global _RUN_LOOP
    trio_module = sys.modules.get("trio")
    if trio_module is None:
        return None  # trio never imported: it cannot be running
    lowlevel = trio_module.lowlevel
    try:
        token = lowlevel.current_trio_token()
    except RuntimeError:
        return None
    run_loop = _RUN_LOOP
    if run_loop is None:
        run_loop = _RUN_LOOP = lowlevel.RunVar("resilience.loop")
    loop: TrioLoop | None = run_loop.get(None)
    if loop is None:
        loop = TrioLoop(token)
        run_loop.set(loop)
    return loop


def running_loop() -> Loop:
    """The running asyncio loop, else the current trio run; `RuntimeError` in neither."""
    loop = _get_running_loop()
    if loop is not None:
        return loop
    trio_run = trio_loop()
    if trio_run is None:
        raise RuntimeError(NO_LOOP)
    return trio_run


def in_event_loop() -> bool:
    """Whether the calling thread runs an asyncio loop or a trio run."""
    return _get_running_loop() is not None or trio_loop() is not None


def _trio() -> Any:
    """The trio module, for a task that is not on an asyncio loop.

    Raises `RuntimeError` when trio is not even imported; trio raises its own
    outside a trio run.
    """
    trio_module = sys.modules.get("trio")
    if trio_module is None:
        raise RuntimeError(NO_LOOP)
    return trio_module


async def sleep(seconds: float) -> None:
    """Sleep with the running library: `asyncio.sleep` or `trio.sleep`."""
    if _get_running_loop() is not None:
        await asyncio.sleep(seconds)
    else:
        await _trio().sleep(max(0.0, seconds))


async def after_callbacks() -> None:
    """Yield until the callbacks already handed to this loop (``call_soon_threadsafe``) ran.

    asyncio runs them before a task that yields after they were handed over;
    trio runs them in a task of its own, in any order with the others: here the
    task waits for a callback of its own, queued behind them.
    """
    if _get_running_loop() is not None:
        await asyncio.sleep(0)
        return
    loop = trio_loop()
    if loop is None:
        raise RuntimeError(NO_LOOP)
    woken = TrioFuture()
    loop.call_soon_threadsafe(woken.set_result, None)
    await woken


async def within(seconds: float, awaitable: Awaitable[T]) -> T:
    """``await awaitable``, cancelled after ``seconds`` with `TimeoutError` (asyncio's or
    trio's clock, as runs the task)."""
    if _get_running_loop() is not None:
        async with asyncio.timeout(seconds):
            return await awaitable
    trio_module = _trio()
    try:
        with trio_module.fail_after(max(0.0, seconds)):
            return await awaitable
    except trio_module.TooSlowError as error:
        raise TimeoutError(f"not done within {seconds:g}s") from error


def is_cancellation(error: BaseException) -> bool:
    """Whether ``error`` is a task's cancellation: `asyncio.CancelledError` or `trio.Cancelled`."""
    if isinstance(error, asyncio.CancelledError):
        return True
    trio_module = sys.modules.get("trio")
    return trio_module is not None and isinstance(error, trio_module.Cancelled)


async def wait_signal(clock: Clock, signal: TrioFuture, seconds: float) -> None:
    """Under trio: wait until ``signal`` is set or ``clock`` has slept ``seconds``.

    The system clock is waited on with a cancel scope of trio's; any other
    clock (a `FakeClock`) with its own ``asleep``, raced against the signal.
    """
    import trio

    from ._clock import SYSTEM_CLOCK

    if math.isinf(seconds):
        await signal
        return
    if clock is SYSTEM_CLOCK:
        with trio.move_on_after(max(0.0, seconds)):
            await signal
        return

    async def timer(scope: trio.CancelScope) -> None:
        await clock.asleep(max(0.0, seconds))
        scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(timer, nursery.cancel_scope)
        await signal
        nursery.cancel_scope.cancel()
