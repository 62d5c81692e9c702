"""The async Timeout's shared deadline queue: one timer per loop, exact expiries."""

from __future__ import annotations

import asyncio

import pytest

import resilience as rs
from resilience.testing import FakeClock


async def test_each_task_times_out_at_its_own_deadline() -> None:
    """Tasks started at different times through one Timeout expire exactly when theirs pass."""
    clock = FakeClock(auto_advance=False)
    timeout = rs.Timeout(10, clock=clock)
    outcomes: dict[int, str] = {}
    release = asyncio.Event()

    async def call(i: int) -> None:
        try:
            await timeout.acall(release.wait)
            outcomes[i] = "done"
        except rs.TimeoutExceeded:
            outcomes[i] = "timeout"

    tasks = []
    for i in range(5):  # started at t = 0, 1, 2, 3, 4: deadlines 10 .. 14
        tasks.append(asyncio.create_task(call(i)))
        await asyncio.sleep(0)
        clock.advance(1)
    clock.advance(7.5)  # now t = 12.5: the deadlines 10, 11 and 12 have passed
    for _ in range(5):
        await asyncio.sleep(0)
    assert outcomes == {0: "timeout", 1: "timeout", 2: "timeout"}
    release.set()
    await asyncio.gather(*tasks)
    assert outcomes == {0: "timeout", 1: "timeout", 2: "timeout", 3: "done", 4: "done"}


async def test_finished_calls_do_not_pile_up() -> None:
    """Thousands of quick calls leave at most one entry behind in the queue."""
    timeout = rs.Timeout(30)

    async def quick() -> int:
        return 1

    for _ in range(5000):
        assert await timeout.acall(quick) == 1
    queue = timeout._deadline_queues.last
    assert queue is not None
    assert len(queue.queue) <= 1


async def test_a_finished_head_does_not_shield_later_deadlines() -> None:
    """When the oldest call finished, the timer still catches the next one's deadline."""
    clock = FakeClock(auto_advance=False)
    timeout = rs.Timeout(5, clock=clock)
    stuck = asyncio.Event()

    async def quick() -> str:
        return "quick"

    assert await timeout.acall(quick) == "quick"  # deadline 5, finished
    clock.advance(2)
    task = asyncio.create_task(timeout.acall(stuck.wait))  # deadline 7
    await asyncio.sleep(0)
    clock.advance(3)  # t = 5: the timer fires for the finished head and re-arms for 7
    await asyncio.sleep(0)
    assert not task.done()
    clock.advance(2)  # t = 7
    results = await asyncio.gather(task, return_exceptions=True)
    assert isinstance(results[0], rs.TimeoutExceeded)


def test_one_timeout_serves_several_event_loops() -> None:
    """The same Timeout used from successive event loops times out calls on each of them."""
    timeout = rs.Timeout(0.01)

    async def hang() -> None:
        await asyncio.Event().wait()

    for _ in range(3):
        with pytest.raises(rs.TimeoutExceeded) as caught:
            asyncio.run(timeout.acall(hang))
        assert caught.value.seconds == 0.01
