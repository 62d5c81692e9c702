"""The per-call context: current(), tags, and how it flows into tasks and threads."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

import resilience as rs
from modes import Event, checkpoint, gather, on_asyncio
from resilience.testing import FakeClock


def test_outside_any_call_the_context_is_empty() -> None:
    """current() works anywhere; outside a call it has attempt 0 and nothing else."""
    ctx = rs.current()
    assert (ctx.pipeline, ctx.attempt, ctx.deadline, dict(ctx.tags)) == (None, 0, None, {})
    assert ctx.remaining() is None
    assert ctx.expired is False


def test_inside_a_call_the_context_names_the_pipeline_and_attempt() -> None:
    """A pipeline call sees its own name and attempt 1."""
    pipeline = rs.Pipeline.builder("users.get").build()
    ctx = pipeline.call(rs.current)
    assert (ctx.pipeline, ctx.attempt) == ("users.get", 1)
    assert rs.current().attempt == 0  # restored afterwards


def test_standalone_middleware_uses_its_name() -> None:
    """A policy used alone runs the call in a context named after the policy."""
    retry = rs.Retry(name="standalone")
    assert retry.call(rs.current).pipeline == "standalone"
    assert retry(rs.current)().pipeline == "standalone"


def test_remaining_and_expired_follow_the_clock() -> None:
    """remaining() counts down on the deadline's clock and never goes negative."""
    clock = FakeClock()
    seen: list[object] = []

    def check() -> None:
        seen.append(rs.current().remaining())
        clock.advance(0.75)
        seen.append(rs.current().remaining())
        clock.advance(1)
        seen.append((rs.current().remaining(), rs.current().expired))

    with pytest.raises(rs.TimeoutExceeded):
        rs.Timeout(1, clock=clock).call(check)
    assert seen == [1.0, 0.25, (0.0, True)]


def test_tags_are_visible_inside_calls_and_merge() -> None:
    """tags() attaches tags to calls made inside the block; nested blocks merge."""
    pipeline = rs.Pipeline.builder("p").build()
    with rs.tags(tenant="acme", chaos=True):
        with rs.tags(chaos=False, region="eu"):
            seen = dict(pipeline.call(lambda: rs.current().tags))
        outer = dict(pipeline.call(lambda: rs.current().tags))
    assert seen == {"tenant": "acme", "chaos": False, "region": "eu"}
    assert outer == {"tenant": "acme", "chaos": True}
    assert dict(rs.current().tags) == {}


def test_tags_are_read_only() -> None:
    """The tags mapping cannot be changed from inside a call."""
    with rs.tags(a=1):
        tags = rs.current().tags
    with pytest.raises(TypeError):
        tags["a"] = 2  # type: ignore[index]


def test_nested_pipeline_call_gets_its_own_name_and_attempt_but_inherits() -> None:
    """A call inside another call has its own name and attempt, and the outer deadline and tags."""
    clock = FakeClock()
    inner = rs.Pipeline.builder("inner").build()
    outer = rs.Pipeline.builder("outer").add(rs.Timeout(3, clock=clock)).build()
    with rs.tags(user="u1"):
        ctx = outer.call(inner.call, rs.current)
    assert (ctx.pipeline, ctx.attempt, ctx.deadline, dict(ctx.tags)) == (
        "inner",
        1,
        3.0,
        {"user": "u1"},
    )


async def test_context_flows_into_tasks_started_in_the_call(async_mode: str) -> None:
    """Tasks created inside a call copy its context, deadline included."""
    clock = FakeClock()

    async def spawn() -> rs.CallContext:
        if on_asyncio():
            return await asyncio.create_task(_read_context())
        import trio

        seen: list[rs.CallContext] = []

        async def child() -> None:
            seen.append(await _read_context())

        async with trio.open_nursery() as nursery:  # a trio task copies its spawner's context
            nursery.start_soon(child)
        return seen[0]

    ctx = await rs.Timeout(2, clock=clock, name="t").acall(spawn)
    assert (ctx.pipeline, ctx.deadline) == ("t", 2.0)


async def _read_context() -> rs.CallContext:
    await checkpoint()
    return rs.current()


def test_context_flows_into_threads_started_with_a_copied_context() -> None:
    """A thread started with contextvars.copy_context() sees the call's context."""
    seen: list[rs.CallContext] = []

    def spawn() -> None:
        context = contextvars.copy_context()
        thread = threading.Thread(target=context.run, args=(lambda: seen.append(rs.current()),))
        thread.start()
        thread.join()

    with rs.tags(job="nightly"):
        rs.Pipeline.builder("threads").build().call(spawn)
    assert seen[0].pipeline == "threads"
    assert dict(seen[0].tags) == {"job": "nightly"}


async def test_concurrent_tasks_do_not_see_each_others_context(async_mode: str) -> None:
    """Each task keeps its own context even when calls interleave."""
    started = Event()
    a = rs.Pipeline.builder("a").build()
    b = rs.Pipeline.builder("b").build()

    async def first() -> str | None:
        started.set()
        await checkpoint()
        await checkpoint()
        return rs.current().pipeline

    async def second() -> str | None:
        await started.wait()
        return rs.current().pipeline

    assert await gather(a.acall(first), b.acall(second)) == ["a", "b"]


def test_deadline_from_another_clock_is_converted() -> None:
    """An inner Timeout on another clock compares deadlines by time left, not raw values."""
    outer_clock = FakeClock(start=1000.0)
    inner_clock = FakeClock(start=0.0)
    inner = rs.Timeout(5, clock=inner_clock)
    outer = rs.Timeout(2, clock=outer_clock)
    ctx = outer.call(inner.call, rs.current)
    # The outer 2 s are earlier than the inner 5 s, so the outer deadline stays in force.
    assert ctx.deadline == 1002.0
    assert ctx.remaining() == 2.0
    ctx = rs.Timeout(10, clock=outer_clock).call(inner.call, rs.current)
    assert (ctx.deadline, ctx.clock) == (5.0, inner_clock)


def test_remaining_takes_a_default_for_calls_without_a_deadline() -> None:
    """remaining(default=...) outside a deadline; an expired deadline still gives 0.0."""
    clock = FakeClock()
    assert rs.current().remaining() is None
    assert rs.current().remaining(5.0) == 5.0
    seen: list[float] = []

    def body() -> None:
        seen.append(rs.current().remaining(5.0))
        clock.advance(2)
        seen.append(rs.current().remaining(5.0))

    with pytest.raises(rs.TimeoutExceeded):
        rs.Timeout(2, clock=clock).call(body)
    assert seen == [2.0, 0.0]  # not 5.0, as `remaining() or 5.0` would give
    rs.Retry().call(lambda: seen.append(rs.current().remaining(default=7.0)))
    assert seen[-1] == 7.0


def test_every_way_into_a_call_makes_the_same_record() -> None:
    """The entry points inline `_context.entered`: decorated, call() and acall() records are
    the one `entered` makes, field for field, at the top level and nested."""
    from resilience import _context

    seen: list[list[object]] = []
    layer = rs.Pipeline([], name="outer")

    def note() -> None:
        seen.append(list(_context.VAR.get()))

    async def anote() -> None:
        note()

    layer(note)()
    layer.call(note)
    asyncio.run(layer.acall(anote))
    asyncio.run(layer(anote)())
    expected = _context.entered(_context.EMPTY, "outer")
    assert seen == [expected] * 4
    with rs.tags(team="x"):
        seen.clear()
        layer.call(note)
        inner = list(_context.VAR.get())
    assert seen == [_context.entered(inner, "outer")]
    assert len(_context.EMPTY) == len(expected)  # a new field is added everywhere or nowhere
