"""The cache service's client, protected as in the article: Retry > Timeout > CircuitBreaker.

The order is the article's (first added is outermost): the retry wraps
everything; the timeout bounds each attempt (the article chose a timeout per
attempt, not over all of them); the breaker is innermost, so it sees every
attempt, retries included, and trips on a failure ratio of 60 % over at
least 20 calls. (The article's gobreaker trips at 2 calls: with the 30 %
failures of the chaos run, that breaker would flap open and shut all the
time.) Only transient codes
(UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED) are retried or counted.
"""

from __future__ import annotations

from typing import Any

import grpc
from generate import load

import resilience as rs
from resilience.integrations.grpc import ClientInterceptor, is_transient

cache_pb2, cache_pb2_grpc = load()


def protection(
    *, attempts: int = 3, timeout: float = 0.2, open_seconds: float = 1.0
) -> rs.Pipeline:
    """The client's pipeline, in the article's order."""
    return (
        rs.Pipeline.builder("cache-client")
        .add(rs.Retry(attempts, on=is_transient, backoff=rs.backoff.exponential(0.01, maximum=0.1)))
        .add(rs.Timeout(timeout))
        .add(
            rs.CircuitBreaker(
                failure_ratio=0.6,
                minimum_calls=20,
                open_seconds=open_seconds,
                failure_on=is_transient,
            )
        )
        .build()
    )


class CacheClient:
    """Get, Store and Dump through a channel with ``pipeline`` on it (or none)."""

    def __init__(self, target: str, pipeline: rs.Middleware | None = None) -> None:
        self._channel = grpc.insecure_channel(target)
        channel = self._channel
        if pipeline is not None:
            channel = grpc.intercept_channel(channel, ClientInterceptor(pipeline))
        self.stub = cache_pb2_grpc.CacheServiceStub(channel)

    def get(self, key: str, timeout: float | None = None) -> bytes | None:
        response = self.stub.Get(cache_pb2.GetReq(key=key), timeout=timeout)
        return bytes(response.value) if response.found else None

    def store(self, key: str, value: bytes, timeout: float | None = None) -> None:
        self.stub.Store(cache_pb2.StoreReq(key=key, value=value), timeout=timeout)

    def dump(self) -> dict[str, bytes]:
        return {item.key: bytes(item.value) for item in self.stub.Dump(cache_pb2.DumpReq())}

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CacheClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
