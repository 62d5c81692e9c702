"""Type-checked by mypy --strict, never run: the public API keeps signatures.

If a change loses a ParamSpec or a return type, mypy fails here.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any, assert_type

import resilience as rs
from resilience import backoff
from resilience.testing import FakeClock

users_get = (
    rs.Pipeline.builder("users.get")
    .add(
        rs.Retry(
            attempts=3,
            on=ConnectionError,
            backoff=backoff.exponential(initial=0.1, maximum=2.0, jitter="full"),
        )
    )
    .add(rs.Timeout(0.5))
    .build()
)
assert_type(users_get, rs.Pipeline)


@users_get
def fetch(user_id: int, *, verbose: bool = False) -> dict[str, int]:
    return {"id": user_id}


@users_get
async def afetch(user_id: int) -> str:
    return str(user_id)


@rs.Retry(attempts=5, on=(ConnectionError, TimeoutError), clock=FakeClock())
def read(path: str) -> bytes:
    return path.encode()


@rs.Timeout(timedelta(seconds=1), sync_mode="walk_away")
def slow() -> None:
    return None


async def main() -> None:
    assert_type(fetch(1, verbose=True), dict[str, int])
    assert_type(await afetch(2), str)
    assert_type(read("x"), bytes)
    assert_type(users_get.call(fetch, 1), dict[str, int])
    assert_type(users_get.call(read, "p"), bytes)
    assert_type(await users_get.acall(afetch, 3), str)
    assert_type(rs.current().remaining(), float | None)
    assert_type(rs.current().attempt, int)
    assert_type(slow(), None)
    with rs.tags(tenant="a"):
        pass


def on_retry(event: rs.events.RetryEvent) -> None:
    assert_type(event.attempt, int)
    assert_type(event.delay, float)


rs.Retry(on=lambda exc: isinstance(exc, OSError), on_retry=on_retry, on_result=lambda r: r is None)
rs.Retry(backoff=0.5)


def cached_user(ctx: rs.FallbackContext) -> dict[str, int]:
    assert_type(ctx.error, Exception | None)
    assert_type(ctx.args, tuple[Any, ...])
    assert_type(ctx.kwargs, Mapping[str, Any])
    return {"id": ctx.args[0]}


async def acached_user(ctx: rs.FallbackContext) -> str:
    return str(ctx.args[0])


def on_fallback(event: rs.events.FallbackEvent) -> None:
    assert_type(event.name, str | None)
    assert_type(event.error, Exception | None)


@rs.Fallback(
    handler=cached_user, on=(ConnectionError, rs.CircuitOpenError), on_fallback=on_fallback
)
def get_user(user_id: int) -> dict[str, int]:
    return {"id": user_id}


@rs.Fallback(handler=acached_user, on_result=lambda r: r == "")
async def aget_user(user_id: int) -> str:
    return str(user_id)


degraded = rs.Pipeline.builder().add(rs.Fallback(value=None, name="d")).add(rs.Retry()).build()


async def use_fallbacks() -> None:
    assert_type(get_user(1), dict[str, int])
    assert_type(await aget_user(1), str)
    assert_type(rs.Fallback(value=[]).call(get_user, 2), dict[str, int])
    rs.Fallback(value=0, on=lambda exc: isinstance(exc, OSError))


# -- Throttle and Bulkhead ------------------------------------------------------------------

api_limit = rs.Throttle(100, per=timedelta(seconds=1), burst=20, max_wait=0.5, name="api")
upload_limit = rs.Throttle(1_000_000, cost=len, max_wait=None)
db_slots = rs.Bulkhead(8, max_queue=16, max_wait=timedelta(seconds=2), retry_after=1.0)
legacy_slots = rs.Bulkhead(4, isolation="thread", clock=FakeClock())


@api_limit
def list_users(page: int, *, size: int = 50) -> list[str]:
    return [str(page)] * size


@db_slots
async def query(sql: str) -> int:
    return len(sql)


@legacy_slots
def legacy_call() -> bytes:
    return b""


def on_throttle(event: rs.events.ThrottleEvent) -> None:
    assert_type(event.seconds, float)
    assert_type(event.error, rs.ThrottledError | None)


def on_bulkhead(event: rs.events.BulkheadEvent) -> None:
    assert_type(event.error, rs.BulkheadFullError | None)


async def use_limits() -> None:
    assert_type(list_users(1, size=2), list[str])
    assert_type(await query("select 1"), int)
    assert_type(legacy_call(), bytes)
    assert_type(db_slots.call(list_users, 3), list[str])
    assert_type(await api_limit.acall(query, "x"), int)
    assert_type(api_limit.try_acquire(), bool)
    assert_type(api_limit.try_acquire(2.5), bool)
    upload_limit.acquire(4096, max_wait=1.0)
    await upload_limit.aacquire(512, max_wait=None)
    assert_type(api_limit.metrics(), rs.metrics.ThrottleMetrics)
    assert_type(api_limit.available, float)
    assert_type(db_slots.metrics(), rs.metrics.BulkheadMetrics)
    assert_type(db_slots.in_flight, int)
    assert_type(db_slots.drain(1.0), bool)
    with api_limit, db_slots:
        pass
    async with api_limit, db_slots:
        pass
    api_limit.subscribe(on_throttle)
    db_slots.subscribe(on_bulkhead)
    rs.Pipeline([db_slots, rs.Retry(on=rs.ThrottledError), api_limit])


# -- telemetry ---------------------------------------------------------------------------

from resilience import telemetry  # noqa: E402

instrumented = telemetry.instrument(users_get, attempt_spans=True, clock=FakeClock())
assert_type(instrumented, telemetry.Instrumentation)
assert_type(instrumented.target, rs.Middleware)
assert_type(
    telemetry.event_name(rs.events.TimeoutEvent(None, 1.0, rs.TimeoutExceeded(1.0))), str | None
)
with instrumented:
    pass
instrumented.uninstrument()
