"""The worker processes of test_redis_fleet.py (spawned: they import this module by name).

Each worker makes its own `RedisBackend` (its own connections, its own background sync) and
runs its calls from THREADS threads and TASKS asyncio tasks at once, as a gunicorn or uvicorn
worker would. Workers report through a `multiprocessing` queue as tuples; every blocking wait
here is bounded (a worker that hangs is killed by the test after its own bound).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import resilience as rs
from resilience.redis import RedisBackend

#: Threads and asyncio tasks per worker.
THREADS = 2
TASKS = 2
UNITS = THREADS + TASKS
#: The longest any single wait in a worker may take.
BOUND = 30.0


class Boom(Exception):
    pass


def _backend(settings: dict[str, Any]) -> RedisBackend:
    return RedisBackend.from_url(settings["url"], **settings["backend"])


def _close(backend: RedisBackend) -> None:
    backend.close()
    backend.client.close()


def _each(sync_work: Callable[[int], None], async_work: Callable[[int], Awaitable[None]]) -> None:
    """Run ``sync_work(i)`` on THREADS threads and ``async_work(i)`` on TASKS tasks, together."""
    threads = [threading.Thread(target=sync_work, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    try:

        async def tasks() -> None:
            await asyncio.gather(*(async_work(THREADS + i) for i in range(TASKS)))

        asyncio.run(tasks())
    finally:
        for thread in threads:
            thread.join(BOUND)


async def _in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """A blocking multiprocessing wait, off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def _guard(worker: int, out: Any, body: Callable[[], None]) -> None:
    try:
        body()
    except BaseException:
        out.put((worker, "crash", traceback.format_exc()))
        raise


# -- 1a: one process trips the breaker for the fleet ------------------------------------------


def trip_worker(worker: int, settings: dict[str, Any], ready: Any, tripped: Any, out: Any) -> None:
    """Worker 0 fails calls until its breaker opens, then sets ``tripped``; the others, once
    it is set, call from every thread and task until they are refused, and report how long
    after ``tripped`` that took (``(worker, "open_after", seconds)``)."""

    def body() -> None:
        backend = _backend(settings)
        breaker = rs.CircuitBreaker(backend=backend, **settings["breaker"])
        try:
            assert breaker.call(lambda: 1) == 1  # connected, closed, the sync running
            backend.flush()  # that success is in the fleet's window now
            ready.wait(BOUND)  # a Barrier: every worker is up before anything fails
            if worker == 0:
                failures = 0
                give_up = time.monotonic() + 10
                for _ in range(1_000_000):
                    try:
                        breaker.call(_fail)
                    except Boom:
                        failures += 1
                    except rs.CircuitOpenError:
                        break
                    if time.monotonic() > give_up:
                        raise AssertionError(f"not open after {failures} failures in 10 s")
                out.put((worker, "failures", failures))
                tripped.set()
                return
            if not tripped.wait(BOUND):
                raise AssertionError("tripped was never set")
            seen = time.monotonic()
            limit = settings["poll_for"]

            def sync(unit: int) -> None:
                for calls in range(1, 1_000_000):
                    try:
                        breaker.call(lambda: 1)
                    except rs.CircuitOpenError:
                        out.put((worker, "open_after", time.monotonic() - seen, calls))
                        return
                    if time.monotonic() - seen > limit:
                        out.put((worker, "still_closed", time.monotonic() - seen, calls))
                        return

            async def asynchronous(unit: int) -> None:
                async def ok() -> int:
                    return 1

                for calls in range(1, 1_000_000):
                    try:
                        await breaker.acall(ok)
                    except rs.CircuitOpenError:
                        out.put((worker, "open_after", time.monotonic() - seen, calls))
                        return
                    if time.monotonic() - seen > limit:
                        out.put((worker, "still_closed", time.monotonic() - seen, calls))
                        return
                    await asyncio.sleep(0)

            _each(sync, asynchronous)
        finally:
            _close(backend)

    _guard(worker, out, body)


def _fail() -> None:
    raise Boom


# -- 1b: half-open lets exactly half_open_calls trials through the fleet ------------------------


def half_open_worker(
    worker: int,
    settings: dict[str, Any],
    ready: Any,
    go: Any,
    release: Any,
    admitted: Any,
    out: Any,
) -> None:
    """Every thread and task makes one call once ``go`` passes; an admitted call (a trial)
    counts itself in ``admitted``, reports ``"trial"`` and hangs until ``release``; a refused
    one reports ``"refused"``."""

    def body() -> None:
        backend = _backend(settings)
        breaker = rs.CircuitBreaker(backend=backend, **settings["breaker"])
        try:
            assert breaker.call(lambda: 1) == 1  # warm: connected, the sync running
            ready.wait(BOUND)
            go.wait(BOUND)

            def trial() -> str:
                with admitted.get_lock():
                    admitted.value += 1
                out.put((worker, "trial"))
                if not release.wait(BOUND):
                    raise AssertionError("never released")
                return "ok"

            async def atrial() -> str:
                with admitted.get_lock():
                    admitted.value += 1
                out.put((worker, "trial"))
                if not await _in_thread(release.wait, BOUND):
                    raise AssertionError("never released")
                return "ok"

            def sync(unit: int) -> None:
                try:
                    result = breaker.call(trial)
                except rs.CircuitOpenError:
                    out.put((worker, "refused"))
                else:
                    out.put((worker, "done", result))

            async def asynchronous(unit: int) -> None:
                try:
                    result = await breaker.acall(atrial)
                except rs.CircuitOpenError:
                    out.put((worker, "refused"))
                else:
                    out.put((worker, "done", result))

            _each(sync, asynchronous)
        finally:
            _close(backend)

    _guard(worker, out, body)


# -- 1c: one rate for the fleet ----------------------------------------------------------------


def throttle_worker(worker: int, settings: dict[str, Any], ready: Any, out: Any) -> None:
    """Every thread and task acquires one token at a time for ``run`` seconds after the
    ``ready`` barrier and reports the instants its acquisitions returned (CLOCK_MONOTONIC,
    which every process on the host shares), ``(worker, "times", [...], refused)``."""

    def body() -> None:
        backend = _backend(settings)
        throttle = rs.Throttle(backend=backend, **settings["throttle"])
        max_wait = settings["max_wait"]
        try:
            ready.wait(BOUND)  # a Barrier with the parent: the run starts now
            end = time.monotonic() + settings["run"]
            lock = threading.Lock()
            times: list[float] = []
            refused = [0]

            def sync(unit: int) -> None:
                mine: list[float] = []
                nope = 0
                while time.monotonic() < end:
                    try:
                        throttle.acquire(max_wait=max_wait)
                    except rs.ThrottledError:
                        nope += 1
                        continue
                    mine.append(time.monotonic())
                with lock:
                    times.extend(mine)
                    refused[0] += nope

            async def asynchronous(unit: int) -> None:
                mine: list[float] = []
                nope = 0
                while time.monotonic() < end:
                    try:
                        await throttle.aacquire(max_wait=max_wait)
                    except rs.ThrottledError:
                        nope += 1
                        continue
                    mine.append(time.monotonic())
                with lock:
                    times.extend(mine)
                    refused[0] += nope

            _each(sync, asynchronous)
            out.put((worker, "times", times, refused[0]))
        finally:
            _close(backend)

    _guard(worker, out, body)


# -- 1d: one cap for the fleet -----------------------------------------------------------------


def bulkhead_worker(
    worker: int, settings: dict[str, Any], ready: Any, current: Any, highest: Any, out: Any
) -> None:
    """Every thread and task makes ``calls`` calls through the bulkhead; each call counts
    itself in ``current`` (shared by the fleet), keeps the highest count seen in ``highest``,
    holds a little, and counts itself out. Reports ``(worker, "done", admitted, refused)``."""

    def body() -> None:
        backend = _backend(settings)
        bulkhead = rs.Bulkhead(backend=backend, **settings["bulkhead"])
        hold = settings["hold"]
        calls = settings["calls"]
        try:
            ready.wait(BOUND)
            lock = threading.Lock()
            tally = [0, 0]

            def enter() -> None:
                with current.get_lock():
                    current.value += 1
                    with highest.get_lock():
                        highest.value = max(highest.value, current.value)

            def leave() -> None:
                with current.get_lock():
                    current.value -= 1

            def held() -> None:
                enter()
                try:
                    time.sleep(hold)  # the work itself
                finally:
                    leave()

            async def aheld() -> None:
                enter()
                try:
                    await asyncio.sleep(hold)
                finally:
                    leave()

            def sync(unit: int) -> None:
                ok = nope = 0
                for _ in range(calls):
                    try:
                        bulkhead.call(held)
                        ok += 1
                    except rs.BulkheadFullError:
                        nope += 1
                with lock:
                    tally[0] += ok
                    tally[1] += nope

            async def asynchronous(unit: int) -> None:
                ok = nope = 0
                for _ in range(calls):
                    try:
                        await bulkhead.acall(aheld)
                        ok += 1
                    except rs.BulkheadFullError:
                        nope += 1
                with lock:
                    tally[0] += ok
                    tally[1] += nope

            _each(sync, asynchronous)
            out.put((worker, "done", tally[0], tally[1]))
        finally:
            _close(backend)

    _guard(worker, out, body)


# -- 1e: a process killed while it holds slots ----------------------------------------------


def holder_worker(settings: dict[str, Any], slots: int, holding: Any, out: Any) -> None:
    """Take ``slots`` slots of the fleet's bulkhead, set ``holding``, and hold them until
    killed (the background sync renews their leases meanwhile)."""

    def body() -> None:
        backend = _backend(settings)
        bulkhead = rs.Bulkhead(backend=backend, **settings["bulkhead"])
        with contextlib.ExitStack() as stack:
            for _ in range(slots):
                stack.enter_context(bulkhead)
            holding.set()
            time.sleep(BOUND)  # until SIGKILL; never reached in a passing test
        out.put((0, "not_killed"))

    _guard(0, out, body)
