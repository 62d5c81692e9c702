"""Throttle accuracy on the real clock, under many concurrent callers (about 30 s).

    python bench/throttle_accuracy.py                # 1,000 calls/s for 10 s
    python bench/throttle_accuracy.py --seconds 3    # a shorter run

1. **Rate.** Threads and asyncio tasks call through one
   ``Throttle(rate, burst=B, max_wait=None)`` as fast as they can. Each call
   notes when it was admitted. The achieved rate, ``(admitted - B) / seconds``,
   must be within ±1 % of the configured one (the exit status says so). The
   largest number of calls seen in any window of ``t`` seconds is shown
   beside the bound ``B + rate * t`` (the hypothesis test checks the bound
   exactly, on the fake clock; here the admission times are noted a moment
   after the fact, so a window can only look fuller than it was). The same
   with ``burst=1`` at the default rate, 200/s and 1,000/s: every call then
   waits its turn in the queue, so it shows whether late wake-ups lose
   credit.
2. **aiolimiter**, with the same rate and burst, under the same asyncio load
   (it has no sync path), for comparison.
3. **Fairness.** Callers asking for 1 token and callers asking for 10 share a
   saturated limiter. The throttle serves them first come, first served;
   aiolimiter serves the smallest request first, so the big ones wait.

It runs in the ``bench`` nox session, never in the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import resilience as rs

WINDOWS = (0.001, 0.01, 0.1, 1.0)


def window_peaks(stamps: list[float], windows: tuple[float, ...]) -> dict[float, int]:
    """The most admissions seen in any window of each length."""
    stamps = sorted(stamps)
    peaks = {}
    for width in windows:
        best = start = 0
        for end, stamp in enumerate(stamps):
            while stamp - stamps[start] > width:
                start += 1
            best = max(best, end - start + 1)
        peaks[width] = best
    return peaks


def load(
    seconds: float,
    threads: int,
    tasks: int,
    call: Callable[[], object] | None,
    acall: Callable[[], Awaitable[object]],
) -> float:
    """Run ``threads`` threads on ``call`` and ``tasks`` tasks on ``acall`` for ``seconds``."""
    stop = threading.Event()

    def thread_body() -> None:
        assert call is not None
        while not stop.is_set():
            call()

    async def task_body() -> None:
        while not stop.is_set():
            await acall()

    async def tasks_main() -> None:
        await asyncio.gather(*(task_body() for _ in range(tasks)))

    workers = [threading.Thread(target=thread_body) for _ in range(threads if call else 0)]
    workers.append(threading.Thread(target=asyncio.run, args=(tasks_main(),)))
    start = time.monotonic()
    for worker in workers:
        worker.start()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    return start


def report(label: str, stamps: list[float], start: float, args: Any, burst: float) -> bool:
    inside = [s for s in stamps if s <= start + args.seconds]
    achieved = (len(inside) - burst) / args.seconds
    error = achieved / args.rate - 1
    ok = abs(error) <= 0.01
    print(f"{label}: {len(inside)} calls admitted in {args.seconds:g} s (burst {burst:g})")
    verdict = "ok" if ok else "OFF"
    print(f"  achieved rate {achieved:.1f}/s, {error:+.3%} of {args.rate:g}/s: {verdict}")
    for width, peak in window_peaks(inside, WINDOWS).items():
        bound = burst + args.rate * width
        print(f"  most calls in a {width:g} s window: {peak} (bound {bound:g})")
    return ok


def rate_ours(args: Any) -> bool:
    throttle = rs.Throttle(args.rate, burst=args.burst, max_wait=None)
    stamps: list[float] = []
    note = stamps.append  # list.append is atomic: safe from threads and tasks
    monotonic = time.monotonic

    @throttle
    def call() -> None:
        note(monotonic())

    @throttle
    async def acall() -> None:
        note(monotonic())

    start = load(args.seconds, args.threads, args.tasks, call, acall)
    return report(
        f"resilience.Throttle, {args.threads} threads + {args.tasks} tasks",
        stamps,
        start,
        args,
        args.burst,
    )


def rate_aiolimiter(args: Any) -> None:
    import aiolimiter

    # AsyncLimiter(max_rate, time_period) bursts up to max_rate: the same bucket as ours.
    limiter = aiolimiter.AsyncLimiter(args.burst, args.burst / args.rate)
    stamps: list[float] = []
    monotonic = time.monotonic

    async def acall() -> None:
        async with limiter:
            stamps.append(monotonic())

    start = load(args.seconds, 0, args.tasks, None, acall)
    report(f"aiolimiter.AsyncLimiter, {args.tasks} tasks", stamps, start, args, args.burst)


def fairness(args: Any) -> None:
    """Big (10-token) and small (1-token) requests on a saturated limiter: who waits?"""
    import aiolimiter

    throttle = rs.Throttle(args.rate, burst=10, max_wait=None)
    limiter = aiolimiter.AsyncLimiter(10, 10 / args.rate)

    async def ours(cost: float) -> None:
        await throttle.aacquire(cost)

    async def theirs(cost: float) -> None:
        await limiter.acquire(cost)

    for label, take in (("resilience.Throttle", ours), ("aiolimiter", theirs)):
        small, big = asyncio.run(mixed_load(take, args.fair_seconds))
        big_share = 10 * len(big) / (10 * len(big) + len(small))
        print(f"{label}: {len(small)} small and {len(big)} big requests in {args.fair_seconds:g} s")
        for name, seen in (("small", small), ("big", big)):
            if seen:
                print(
                    f"  {name}: median wait {statistics.median(seen) * 1000:.1f} ms, "
                    f"longest {max(seen) * 1000:.1f} ms"
                )
        print(f"  tokens that went to big requests: {big_share:.1%}")


async def mixed_load(
    take: Callable[[float], Awaitable[None]], seconds: float
) -> tuple[list[float], list[float]]:
    """20 callers asking for 1 token and 5 asking for 10; the waits of each kind."""
    waits: dict[int, list[float]] = {1: [], 10: []}
    stop = time.monotonic() + seconds

    async def caller(cost: int) -> None:
        while time.monotonic() < stop:
            asked = time.monotonic()
            await take(cost)
            waits[cost].append(time.monotonic() - asked)

    await asyncio.gather(*(caller(1) for _ in range(20)), *(caller(10) for _ in range(5)))
    return waits[1], waits[10]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="calls per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each rate run")
    parser.add_argument("--burst", type=float, default=50.0)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--fair-seconds", type=float, default=3.0)
    args = parser.parse_args()
    ok = rate_ours(args)
    # burst=1: every call waits its turn, so a late wake-up that lost its credit
    # showed as a rate about 10 % low (the case: 200/s, 4 threads, 20 tasks).
    strict = argparse.Namespace(**{**vars(args), "burst": 1.0})
    ok = rate_ours(strict) and ok
    for rate, threads, tasks in ((200.0, 4, 20), (1000.0, 4, 20)):
        row = argparse.Namespace(
            **{**vars(args), "rate": rate, "burst": 1.0, "threads": threads, "tasks": tasks}
        )
        ok = rate_ours(row) and ok
    try:
        import aiolimiter  # noqa: F401
    except ImportError:
        print("(aiolimiter not installed: comparisons skipped)")
    else:
        rate_aiolimiter(args)
        fairness(args)
    if not ok:
        sys.exit("the throttle's achieved rate is more than 1 % off")


if __name__ == "__main__":
    main()
