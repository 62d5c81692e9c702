"""Graceful degradation: serve the last known answer when the service cannot.

The pipeline is Fallback > Retry > an isolation switch: retries first, and only
when they are spent (or the dependency is cut off) does the Fallback serve a
cached answer. The switch is a tiny custom layer that rejects calls with
`CircuitOpenError`, as an open circuit breaker does.

Run it: python examples/fallback.py
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import resilience as rs
from resilience import backoff

last_known: dict[int, dict[str, Any]] = {}  # user id -> last good answer


class Isolate(rs.Middleware):
    """Cuts the dependency off while ``isolated`` is set, raising CircuitOpenError."""

    kind = "circuit_breaker"

    def __init__(self) -> None:
        self.isolated = False

    def __repr__(self) -> str:
        return f"Isolate(isolated={self.isolated})"

    def _reject(self) -> None:
        if self.isolated:
            raise rs.CircuitOpenError("recommendations are isolated", retry_after=30.0)

    def wrap(self, next: rs.Endpoint, /) -> rs.Endpoint:
        def run(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            self._reject()
            return next(fn, args, kwargs)

        return run

    def awrap(self, next: rs.AsyncEndpoint, /) -> rs.AsyncEndpoint:
        async def run(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            self._reject()
            return await next(fn, args, kwargs)

        return run


def from_cache(ctx: rs.FallbackContext) -> dict[str, Any]:
    """The substitute: this user's last good answer, or a generic one."""
    user_id = ctx.args[0]
    cached = last_known.get(user_id)
    if cached is not None:
        return {**cached, "stale": True}
    return {"user": user_id, "items": ["bestsellers"], "stale": True}


def log_fallback(event: rs.events.FallbackEvent) -> None:
    why = repr(event.error) if event.error is not None else f"rejected result {event.result!r}"
    print(f"    fallback: {why}")


switch = Isolate()
recommendations = (
    rs.Pipeline.builder("recommendations")
    .add(
        rs.Fallback(
            handler=from_cache,
            on_result=lambda r: not r["items"],  # an empty answer is no answer
            on_fallback=log_fallback,
        )
    )
    .add(rs.Retry(3, on=ConnectionError, backoff=backoff.constant(0.01)))
    .add(switch)
    .build()
)


class Service:
    """A pretend remote service whose health we control."""

    def __init__(self) -> None:
        self.failures_left = 0
        self.calls = 0

    def __call__(self, user_id: int) -> dict[str, Any]:
        self.calls += 1
        if self.failures_left:
            self.failures_left -= 1
            raise ConnectionError("connection reset by peer")
        items = [] if user_id == 99 else [f"book-{user_id}", f"film-{user_id}"]
        answer = {"user": user_id, "items": items, "stale": False}
        if items:
            last_known[user_id] = answer
        return answer


def main() -> None:
    service = Service()
    print("pipeline:", recommendations)

    def ask(user_id: int, label: str) -> None:
        before = service.calls
        answer = recommendations.call(service, user_id)
        print(f"  {label}: {answer} ({service.calls - before} call(s) to the service)")

    print("\nhealthy")
    ask(1, "user 1")
    print("\ntwo connection errors: the Retry recovers, no fallback")
    service.failures_left = 2
    ask(1, "user 1")
    print("\nservice down: the retries are spent, the last known answer is served")
    service.failures_left = 100
    ask(1, "user 1")
    ask(2, "user 2 (never seen)")
    service.failures_left = 0
    print("\ndependency isolated: CircuitOpenError, no call, no retry")
    switch.isolated = True
    ask(1, "user 1")
    switch.isolated = False
    print("\nan empty answer is replaced (on_result)")
    ask(99, "user 99")

    async def cached_async(ctx: rs.FallbackContext) -> dict[str, Any]:
        await asyncio.sleep(0)  # e.g. a read from a local cache server
        return from_cache(ctx)

    @rs.Fallback(handler=cached_async, on=ConnectionError)
    async def fetch(user_id: int) -> dict[str, Any]:
        raise ConnectionError("down")

    print("\nasync, with an async handler")
    print(f"  user 1: {asyncio.run(fetch(1))}")

    print("\nthe last good answer for the same user, marked stale (last_good=True)")
    feed = {7: {"id": 7, "name": "Grace"}}
    last_good = rs.Fallback(
        last_good=True,
        value={"id": None, "name": "unknown"},
        on_fallback=lambda event: print(f"  (stale={event.stale})"),
    )

    def profile(user_id: int) -> dict[str, Any]:
        return feed[user_id]  # a KeyError stands for the service being down

    print(f"  user 7, fresh: {last_good.call(profile, 7)}")
    feed.clear()
    print(f"  user 7, service down: {last_good.call(profile, 7)}")
    print(f"  user 8, never seen: {last_good.call(profile, 8)}")


if __name__ == "__main__":
    main()
