"""Type-checked by mypy --strict, never run: the public API keeps signatures.

If a change loses a ParamSpec or a return type, mypy fails here.
"""

from __future__ import annotations

from datetime import timedelta
from typing import assert_type

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


def on_retry(event: rs.RetryEvent) -> None:
    assert_type(event.attempt, int)
    assert_type(event.delay, float)


rs.Retry(on=lambda exc: isinstance(exc, OSError), on_retry=on_retry, on_result=lambda r: r is None)
rs.Retry(backoff=0.5)
