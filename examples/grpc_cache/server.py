"""The cache service's server: Get, Store and Dump, protected on the server side.

As in the article, the server guards its handlers against overload: a
Bulkhead caps the calls in flight (the article's ``service_throttle``; 10 here) and
a Throttle caps their rate; both answer a refused call at once with
RESOURCE_EXHAUSTED and ``grpc-retry-pushback-ms``. For chaos runs a
FaultInjector makes a share of the calls fail (UNAVAILABLE) or slow.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from generate import load

import resilience as rs
from resilience.integrations.grpc import ServerInterceptor

cache_pb2, cache_pb2_grpc = load()


class CacheService(cache_pb2_grpc.CacheServiceServicer):  # type: ignore[misc,name-defined]
    """The business logic, and nothing else: a dict behind a lock."""

    def __init__(self) -> None:
        self.storage: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.calls = 0

    def Get(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802 - gRPC's name
        with self.lock:
            self.calls += 1
            value = self.storage.get(request.key)
        return cache_pb2.GetResp(value=value or b"", found=value is not None)

    def Store(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        with self.lock:
            self.calls += 1
            self.storage[request.key] = request.value
        return cache_pb2.StoreResp()

    def Dump(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:  # noqa: N802
        with self.lock:
            items = sorted(self.storage.items())
        for key, value in items:
            yield cache_pb2.DumpItem(key=key, value=value)


def protection(
    *,
    max_concurrent: int = 10,
    rate: float = 2000.0,
    error_rate: float = 0.0,
    latency: float = 0.0,
    latency_rate: float = 0.0,
    seed: int | None = None,
) -> rs.Pipeline:
    """The server's pipeline: shed load first, then (for chaos runs) inject faults."""
    faults = rs.FaultInjector(
        error=rs.InjectedFault("injected: the cache is unavailable"),
        error_rate=error_rate,
        latency=latency,
        latency_rate=latency_rate,
        seed=seed,
    )
    return (
        rs.Pipeline.builder("cache-server")
        .add(rs.Throttle(rate=rate, burst=rate / 10, max_wait=0))
        .add(rs.Bulkhead(max_concurrent=max_concurrent, max_queue=0))
        .add(faults)
        .build()
    )


class CacheServer:
    """The service on a free port of 127.0.0.1, with ``pipeline`` on its unary handlers."""

    def __init__(self, pipeline: rs.Middleware | None = None, workers: int = 16) -> None:
        self.service = CacheService()
        self.pipeline = pipeline or protection()
        self._executor = ThreadPoolExecutor(max_workers=workers)
        self.server = grpc.server(self._executor, interceptors=[ServerInterceptor(self.pipeline)])
        cache_pb2_grpc.add_CacheServiceServicer_to_server(self.service, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.target = f"127.0.0.1:{self.port}"

    def __enter__(self) -> CacheServer:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(grace=None).wait(10.0)
        self._executor.shutdown(wait=True)


if __name__ == "__main__":
    with CacheServer() as running:
        print(f"cache service on {running.target}; Ctrl-C stops it")
        with contextlib.suppress(KeyboardInterrupt):
            running.server.wait_for_termination()
