"""One pipeline under trio, and under anyio on both of its backends.

    python examples/trio_anyio.py        # needs trio and anyio (pip install trio anyio)

A flaky, sometimes slow "service" (no network: it sleeps and fails on cue) is
called through Retry > Timeout > Throttle > Bulkhead. Under trio the Timeout is
a cancel scope and every wait is trio's own; under anyio the pipeline takes the
path of whichever backend runs it. A cancellation from outside (a
``move_on_after`` around the call) stays the library's own cancellation: not
a timeout, not retried. trio's part runs on a MockClock, so nothing waits for
real; anyio's waits a few milliseconds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import trio
import trio.testing

import resilience as rs

SCRIPT = ["slow", "fails", "ok"]  # what the service does on each attempt, in turn


def make_pipeline(timeout: float, burst: int) -> tuple[rs.Pipeline, list[str]]:
    """Retry > Timeout > Throttle > Bulkhead; the list collects what each retry was for."""
    seen: list[str] = []

    def record(event: rs.events.RetryEvent) -> None:
        seen.append(type(event.error).__name__)

    pipeline = (
        rs.Pipeline.builder("service")
        .add(rs.Retry(attempts=3, backoff=rs.backoff.constant(timeout), on_retry=record))
        .add(rs.Timeout(timeout))
        # 100 calls a second: with burst=1 an attempt right after another waits ~10 ms
        .add(rs.Throttle(100, burst=burst, max_wait=1.0))
        .add(rs.Bulkhead(4))
        .build()
    )
    return pipeline, seen


async def service(sleep: Callable[[float], Awaitable[object]], slow_for: float) -> str:
    step = SCRIPT[rs.current().attempt - 1]
    if step == "slow":
        await sleep(slow_for)
    if step == "fails":
        raise ConnectionError("reset by peer")
    return "answer"


async def with_trio() -> None:
    # The throttle reads real time, which a MockClock does not move: give it tokens to spare.
    pipeline, seen = make_pipeline(timeout=2.0, burst=10)
    answer = await pipeline.acall(service, trio.sleep, 60)
    print(f"trio:  {answer!r} after retrying {seen}; trio time {trio.current_time():.1f} s")
    with trio.move_on_after(1) as scope:  # cancelled from outside, before the Timeout's 2 s
        await pipeline.acall(service, trio.sleep, 60)
    print(f"trio:  cancelled from outside: {scope.cancelled_caught}; not retried: {seen[2:]}")


async def with_anyio() -> str:
    pipeline, seen = make_pipeline(timeout=0.02, burst=1)
    answer = await pipeline.acall(service, anyio.sleep, 60)
    with anyio.move_on_after(0.01) as scope:
        await pipeline.acall(service, anyio.sleep, 60)
    return f"{answer!r} after retrying {seen}; cancelled from outside: {scope.cancelled_caught}"


async def hedged() -> None:
    """A Hedge under trio: its attempts are tasks of a nursery; the losers are cancelled."""

    async def lookup() -> str:
        attempt = rs.current().attempt
        await trio.sleep(5.0 if attempt == 1 else 0.1)  # the first copy is stuck
        return f"attempt {attempt}"

    answer = await rs.Hedge(delay=0.3).acall(lookup)
    print(f"trio:  hedged: {answer!r} at trio time {trio.current_time():.1f} s")


def main() -> None:
    # A MockClock jumps ahead whenever every task is blocked: 60-second sleeps, no waiting.
    trio.run(with_trio, clock=trio.testing.MockClock(autojump_threshold=0))
    for backend in ("asyncio", "trio"):
        print(f"anyio ({backend}): {anyio.run(with_anyio, backend=backend)}")
    trio.run(hedged, clock=trio.testing.MockClock(autojump_threshold=0))


if __name__ == "__main__":
    main()
