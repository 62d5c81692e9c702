"""The README demo: a flaky, sometimes slow service behind Retry > Timeout.

Run it: python examples/quickstart.py
"""

from __future__ import annotations

import asyncio
import random
import time

import resilience as rs
from resilience import backoff

rng = random.Random(7)  # seeded: the demo tells the same story every run


def log_retry(event: rs.events.RetryEvent) -> None:
    print(
        f"    attempt {event.attempt} failed ({event.error!r}); "
        f"retrying in {event.delay * 1000:.0f} ms"
    )


users_get = (
    rs.Pipeline.builder("users.get")
    .add(
        rs.Retry(
            attempts=4,
            on=(ConnectionError, TimeoutError),
            backoff=backoff.exponential(initial=0.01, maximum=0.1, jitter="full", seed=7),
            on_retry=log_retry,
        )
    )
    .add(rs.Timeout(0.05))  # per attempt: inside the Retry
    .build()
)


def fetch_user(user_id: int) -> dict[str, object]:
    """A pretend remote call: fails, stalls or answers."""
    ctx = rs.current()
    print(f"  -> fetch_user({user_id}) attempt {ctx.attempt}, {ctx.remaining() or 0:.3f}s left")
    roll = rng.random()
    if roll < 0.4:
        raise ConnectionError("connection reset by peer")
    if roll < 0.6:
        time.sleep(0.06)  # too slow for the 50 ms timeout
    return {"id": user_id, "name": f"user-{user_id}"}


@users_get
async def fetch_user_async(user_id: int) -> dict[str, object]:
    """The same service, async: a slow attempt is really cancelled at the deadline."""
    ctx = rs.current()
    print(f"  -> fetch_user_async({user_id}) attempt {ctx.attempt}")
    roll = rng.random()
    if roll < 0.4:
        raise ConnectionError("connection refused")
    if roll < 0.6:
        await asyncio.sleep(10)  # cancelled after 50 ms
    return {"id": user_id, "name": f"user-{user_id}"}


def main() -> None:
    print("pipeline:", users_get)
    print("\nsync calls")
    for user_id in range(1, 4):
        try:
            print("  <-", users_get.call(fetch_user, user_id))
        except (ConnectionError, TimeoutError) as exc:
            print(f"  <- gave up: {exc!r} {getattr(exc, '__notes__', [])}")
    print("\nasync calls")
    for user_id in range(4, 7):
        try:
            print("  <-", asyncio.run(fetch_user_async(user_id)))
        except (ConnectionError, TimeoutError) as exc:
            print(f"  <- gave up: {exc!r} {getattr(exc, '__notes__', [])}")


if __name__ == "__main__":
    main()
