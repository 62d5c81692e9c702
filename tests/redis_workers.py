"""The worker processes of test_redis_processes.py (spawned: they import this module by name).

Each worker makes its own `RedisBackend` (its own connections, its own
background sync) and runs its calls from threads and asyncio tasks at once,
as a gunicorn or uvicorn worker would. It reports through a
`multiprocessing` queue as ``(worker, what, value)``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import resilience as rs
from resilience.redis import RedisBackend

#: Threads and asyncio tasks per worker.
THREADS = 2
TASKS = 2


def _backend(settings: dict[str, Any]) -> RedisBackend:
    return RedisBackend.from_url(settings["url"], **settings["backend"])


def _each(sync_work: Any, async_work: Any) -> None:
    """Run ``sync_work(i)`` on THREADS threads and ``async_work(i)`` on TASKS tasks, together."""
    threads = [threading.Thread(target=sync_work, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()

    async def tasks() -> None:
        await asyncio.gather(*(async_work(THREADS + i) for i in range(TASKS)))

    asyncio.run(tasks())
    for thread in threads:
        thread.join(30)


class Boom(Exception):
    pass


# -- a breaker tripped by one worker ------------------------------------------------------------


def breaker_worker(worker: int, settings: dict[str, Any], tripped: Any, out: Any) -> None:
    """Worker 0 fails calls until its breaker opens; the others call until they see it open."""
    backend = _backend(settings)
    breaker = rs.CircuitBreaker(name="shared", backend=backend, **settings["rules"])
    out.put((worker, "ready", None))
    if worker == 0:
        for _ in range(100):
            try:
                breaker.call(_fail)
            except Boom:
                continue
            except rs.CircuitOpenError:
                break
        backend.flush()
        tripped.set()
        out.put((worker, "tripped", None))
        backend.close()
        return
    assert tripped.wait(30)
    seen_at = time.monotonic()

    def sync_work(i: int) -> None:
        out.put((worker, "open_after", _until_open(breaker, seen_at)))

    async def async_work(i: int) -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                await breaker.acall(_async_ok)
            except rs.CircuitOpenError:
                out.put((worker, "open_after", time.monotonic() - seen_at))
                return
            await asyncio.sleep(0.002)
        out.put((worker, "open_after", None))

    _each(sync_work, async_work)
    backend.close()


def _fail() -> None:
    raise Boom


async def _async_ok() -> None:
    return None


def _until_open(breaker: rs.CircuitBreaker, since: float) -> float | None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            breaker.call(lambda: None)
        except rs.CircuitOpenError:
            return time.monotonic() - since
        time.sleep(0.002)
    return None


# -- half-open trials ---------------------------------------------------------------------------


def trial_worker(
    worker: int, settings: dict[str, Any], go: Any, release: Any, running: Any, out: Any
) -> None:
    """Every thread and task tries one call at ``go``; admitted calls hold until ``release``."""
    backend = _backend(settings)
    breaker = rs.CircuitBreaker(name="shared", backend=backend, **settings["rules"])
    out.put((worker, "ready", None))
    assert go.wait(30)

    def held() -> None:
        with running.get_lock():
            running.value += 1
        release.wait(30)

    async def aheld() -> None:
        with running.get_lock():
            running.value += 1
        await asyncio.to_thread(release.wait, 30)

    def sync_work(i: int) -> None:
        try:
            breaker.call(held)
            out.put((worker, "ran", i))
        except rs.CircuitOpenError:
            out.put((worker, "refused", i))

    async def async_work(i: int) -> None:
        try:
            await breaker.acall(aheld)
            out.put((worker, "ran", i))
        except rs.CircuitOpenError:
            out.put((worker, "refused", i))

    _each(sync_work, async_work)
    backend.flush()
    backend.close()


# -- one rate for the fleet -------------------------------------------------------------------


def rate_worker(worker: int, settings: dict[str, Any], start_at: float, out: Any) -> None:
    """Take tokens as fast as they come from ``start_at`` for ``seconds``; report the count."""
    backend = _backend(settings)
    throttle = rs.Throttle(name="shared", backend=backend, **settings["throttle"])
    seconds = settings["seconds"]
    end = start_at + seconds
    counts = [0] * (THREADS + TASKS)
    out.put((worker, "ready", None))
    time.sleep(max(0.0, start_at - time.time()))
    end_mono = time.monotonic() + (end - time.time())

    def sync_work(i: int) -> None:
        while True:
            try:
                throttle.acquire()
            except rs.ThrottledError:
                granted = False
            else:
                granted = True
            if time.monotonic() >= end_mono:
                return
            counts[i] += granted

    async def async_work(i: int) -> None:
        while True:
            try:
                await throttle.aacquire()
            except rs.ThrottledError:
                await asyncio.sleep(0.001)
            else:
                if time.monotonic() < end_mono:
                    counts[i] += 1
            if time.monotonic() >= end_mono:
                return

    _each(sync_work, async_work)
    out.put((worker, "admitted", sum(counts)))
    backend.close()


# -- one cap for the fleet -------------------------------------------------------------------------


def cap_worker(
    worker: int, settings: dict[str, Any], holders: Any, most: Any, go: Any, out: Any
) -> None:
    """Call through the shared bulkhead; each call counts itself among the fleet's holders."""
    backend = _backend(settings)
    bulkhead = rs.Bulkhead(name="shared", backend=backend, **settings["bulkhead"])
    calls = settings["calls"]
    out.put((worker, "ready", None))
    assert go.wait(30)
    done = [0, 0]  # admitted, refused

    def enter() -> None:
        with holders.get_lock():
            holders.value += 1
            if holders.value > most.value:
                most.value = holders.value

    def leave() -> None:
        with holders.get_lock():
            holders.value -= 1

    def held() -> None:
        enter()
        try:
            time.sleep(0.003)
        finally:
            leave()

    async def aheld() -> None:
        enter()
        try:
            await asyncio.sleep(0.003)
        finally:
            leave()

    def sync_work(i: int) -> None:
        for _ in range(calls):
            try:
                bulkhead.call(held)
                done[0] += 1
            except rs.BulkheadFullError:
                done[1] += 1

    async def async_work(i: int) -> None:
        for _ in range(calls):
            try:
                await bulkhead.acall(aheld)
                done[0] += 1
            except rs.BulkheadFullError:
                done[1] += 1
                await asyncio.sleep(0)

    _each(sync_work, async_work)
    out.put((worker, "done", tuple(done)))
    backend.close()


# -- a holder that dies ---------------------------------------------------------------------------


def holding_worker(settings: dict[str, Any], slots: int, holding: Any) -> None:
    """Take ``slots`` slots of the shared bulkhead and hold them until killed."""
    backend = _backend(settings)
    bulkhead = rs.Bulkhead(name="shared", backend=backend, **settings["bulkhead"])
    taken = threading.Semaphore(0)

    def hold() -> None:
        with bulkhead:
            taken.release()
            threading.Event().wait(600)

    for _ in range(slots):
        threading.Thread(target=hold, daemon=True).start()
    for _ in range(slots):
        assert taken.acquire(timeout=30)
    backend.flush()
    holding.set()
    threading.Event().wait(600)
