"""Proof of order: the first layer added is the outermost.

Run it: python examples/ordering.py
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import resilience as rs


class Trace(rs.Middleware):
    """A custom middleware that records when a call passes in and out."""

    def __init__(self, label: str, log: list[str]) -> None:
        self.label = label
        self.log = log

    def wrap(self, next: rs.Endpoint) -> rs.Endpoint:
        def traced(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            self.log.append(f"{self.label} pre")
            try:
                return next(fn, args, kwargs)
            finally:
                self.log.append(f"{self.label} post")

        return traced

    def awrap(self, next: rs.AsyncEndpoint) -> rs.AsyncEndpoint:
        async def traced(
            fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            self.log.append(f"{self.label} pre")
            try:
                return await next(fn, args, kwargs)
            finally:
                self.log.append(f"{self.label} post")

        return traced


log: list[str] = []
pipeline = (
    rs.Pipeline.builder("ordered")
    .add(Trace("retry", log))
    .add(rs.Retry(attempts=2))
    .add(Trace("timeout", log))
    .add(rs.Timeout(1.0))
    .build()
)


def call() -> str:
    log.append("call")
    return "ok"


async def acall() -> str:
    log.append("call")
    return "ok"


pipeline.call(call)
print(" > ".join(log))
assert log == ["retry pre", "timeout pre", "call", "timeout post", "retry post"], log

log.clear()
asyncio.run(pipeline.acall(acall))
assert log == ["retry pre", "timeout pre", "call", "timeout post", "retry post"], log
print("async order is the same")
print([layer["type"] for layer in pipeline.describe()["layers"]])
