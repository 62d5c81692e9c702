"""Helpers for tests that run synchronously, under asyncio and under trio.

The ``mode`` fixture (in ``conftest.py``) is ``"sync"``, ``"async"`` (asyncio)
or ``"trio"``; these helpers turn one test body into all three: a sync
``call()`` with a plain function, or an ``acall()`` with an async function
doing the same thing. Both async modes run the same async body: write it with
the helpers below (`checkpoint`, `settle`, `Event`, `create_task`, `gather`...) where it needs the
event loop, not with asyncio's own functions.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine, Generator
from typing import Any

import resilience as rs


def on_asyncio() -> bool:
    """Whether an asyncio loop runs this task (else it is trio's)."""
    return asyncio._get_running_loop() is not None


async def checkpoint() -> None:
    """Yield to the other tasks once: ``asyncio.sleep(0)`` or trio's checkpoint."""
    if on_asyncio():
        await asyncio.sleep(0)
    else:
        import trio

        await trio.lowlevel.checkpoint()


async def settle(rounds: int = 1) -> None:
    """Let the tasks that are ready run until they block.

    asyncio runs ready tasks in order, so ``rounds`` yields are enough; trio
    runs them in any order, so this waits until every other task is blocked.
    """
    if on_asyncio():
        for _ in range(rounds):
            await asyncio.sleep(0)
    else:
        import trio.testing

        await trio.testing.wait_all_tasks_blocked()


async def sleep(seconds: float) -> None:
    """Sleep with the running library (for a task that must stay in flight)."""
    if on_asyncio():
        await asyncio.sleep(seconds)
    else:
        import trio

        await trio.sleep(seconds)


def Event() -> Any:  # noqa: N802 - a class to its callers
    """An event of the running library: ``set()``, ``is_set()`` and ``await wait()``."""
    if on_asyncio():
        return asyncio.Event()
    import trio

    return trio.Event()


class TrioTask:
    """What `asyncio.create_task` gives, for a trio task: awaited for its outcome,
    ``done()``, ``cancel()``.

    The task is a trio system task (it needs no nursery, as an asyncio task needs
    none), run in a copy of the caller's context as asyncio's would be. Its outcome
    is kept, exceptions and its cancellation included, and raised to whoever awaits it.
    """

    def __init__(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        import trio

        self._finished = trio.Event()
        self._scope = trio.CancelScope()
        self._outcome: tuple[bool, Any] = (False, None)
        trio.lowlevel.spawn_system_task(self._run, coroutine, context=contextvars.copy_context())

    async def _run(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        try:
            with self._scope:
                self._outcome = (True, await coroutine)
                return
            coroutine.close()  # the task was cancelled (its scope caught trio.Cancelled)
            self._outcome = (False, TaskCancelled())
        except BaseException as exc:  # kept for whoever awaits the task
            self._outcome = (False, exc)
        finally:
            self._finished.set()

    def cancel(self) -> None:
        self._scope.cancel()

    def done(self) -> bool:
        return bool(self._finished.is_set())

    def result(self) -> Any:
        """The task's result (it must be done), or its exception raised."""
        assert self.done()
        ok, value = self._outcome
        if ok:
            return value
        raise value

    def cancelled(self) -> bool:
        return self.done() and isinstance(self._outcome[1], TaskCancelled)

    def __await__(self) -> Generator[Any, None, Any]:
        return self._wait().__await__()

    async def _wait(self) -> Any:
        await self._finished.wait()
        ok, value = self._outcome
        if ok:
            return value
        raise value


class TaskCancelled(Exception):
    """What awaiting a cancelled `TrioTask` raises (its own `trio.Cancelled` stayed in it)."""


def create_task(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """``asyncio.create_task`` under asyncio, a `TrioTask` under trio."""
    if on_asyncio():
        return asyncio.create_task(coroutine)
    return TrioTask(coroutine)


async def gather(
    *coroutines: Coroutine[Any, Any, Any], return_exceptions: bool = False
) -> list[Any]:
    """Run the coroutines concurrently; their results in order (``asyncio.gather``)."""
    if on_asyncio():
        return list(await asyncio.gather(*coroutines, return_exceptions=return_exceptions))
    tasks = [TrioTask(coroutine) for coroutine in coroutines]
    results = []
    for task in tasks:
        try:
            results.append(await task)
        except Exception as exc:
            if not return_exceptions:
                raise
            results.append(exc)
    return results


async def pending_cancellations() -> int:
    """The cancellations pending for this task.

    asyncio: its count (`asyncio.Task.cancelling`). trio keeps no count: 1 when
    the task is in a cancelled scope (a checkpoint raises `trio.Cancelled`, which
    is swallowed here), else 0.
    """
    if on_asyncio():
        task = asyncio.current_task()
        assert task is not None
        return task.cancelling()
    import trio

    try:
        await trio.lowlevel.checkpoint()
    except trio.Cancelled:
        return 1
    return 0


async def to_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` in a worker thread: ``asyncio.to_thread`` or trio's."""
    if on_asyncio():
        return await asyncio.to_thread(fn, *args)
    import trio

    return await trio.to_thread.run_sync(fn, *args)


async def forever() -> None:
    """Wait until cancelled."""
    await Event().wait()


def cancellation(mode: str) -> type[BaseException]:
    """The exception a cancelled task sees inside in ``mode``: asyncio's or trio's."""
    if mode == "trio":
        import trio

        return trio.Cancelled
    return asyncio.CancelledError


def task_cancelled(mode: str) -> type[BaseException]:
    """What awaiting a cancelled task (of `create_task`) raises in ``mode``."""
    return TaskCancelled if mode == "trio" else asyncio.CancelledError


def flavour(mode: str, body: Callable[..., Any], *, pause: bool = True) -> Callable[..., Any]:
    """``body`` itself in sync mode; in async mode an async def that runs it.

    With ``pause`` the async def first yields to the event loop once, so
    other tasks can interleave with it.
    """
    if mode == "sync":
        return body

    async def async_body(*args: Any, **kwargs: Any) -> Any:
        if pause:
            await checkpoint()
        return body(*args, **kwargs)

    return async_body


async def run(
    mode: str, policy: rs.Middleware, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
) -> Any:
    """Call ``fn`` through ``policy`` with call() or acall() according to ``mode``.

    ``fn`` must already suit the mode (see `flavour`).
    """
    if mode == "sync":
        return policy.call(fn, *args, **kwargs)
    return await policy.acall(fn, *args, **kwargs)


async def run_plain(mode: str, policy: rs.Middleware, fn: Callable[..., Any], /, *args: Any) -> Any:
    """Call the plain function ``fn`` through ``policy``, as an async def in async mode."""
    return await run(mode, policy, flavour(mode, fn, pause=False), *args)


async def run_yielding(
    mode: str, policy: rs.Middleware, fn: Callable[..., Any], /, *args: Any
) -> Any:
    """As `run_plain`, but in async mode the function first yields to the event loop once."""
    return await run(mode, policy, flavour(mode, fn), *args)
