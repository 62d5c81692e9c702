"""A real gRPC server for the integration tests, on a free 127.0.0.1 port.

The service speaks raw bytes (no generated code): each method is one
behaviour a real service has. A request ``key:n:rest`` fails its first ``n``
hits with the code ``rest`` names (per key), so every test has its own
count. `TestService` counts hits and records what the server saw.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from http_support import require

grpc = require("grpc")

HOST = "127.0.0.1"
SERVICE = "test.Service"


def method(name: str) -> str:
    return f"/{SERVICE}/{name}"


class TestService:
    """The handlers; each failure is decided by the request, each hit counted by key."""

    __test__ = False

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.cancelled = threading.Event()
        self.hanging = threading.Event()
        self.time_remaining: list[float] = []

    def _hit(self, request: bytes) -> tuple[str, int, str]:
        key, failures, rest = request.decode().split(":", 2)
        with self.lock:
            self.hits[key] += 1
            hit = self.hits[key]
        return rest, hit, int(failures)

    def echo(self, request: bytes, context: Any) -> bytes:
        self.time_remaining.append(context.time_remaining())
        return request

    def flaky(self, request: bytes, context: Any) -> bytes:
        rest, hit, failures = self._hit(request)
        if hit <= failures:
            context.abort(getattr(grpc.StatusCode, rest), f"failure {hit}")
        return b"ok"

    def pushback(self, request: bytes, context: Any) -> bytes:
        rest, hit, failures = self._hit(request)
        if hit <= failures:
            context.set_trailing_metadata((("grpc-retry-pushback-ms", rest),))
            context.abort(grpc.StatusCode.UNAVAILABLE, "come back later")
        return b"ok"

    def hang(self, request: bytes, context: Any) -> bytes:
        context.add_callback(self.cancelled.set)
        self.hanging.set()
        self.cancelled.wait(10.0)
        context.abort(grpc.StatusCode.ABORTED, "the client left")
        return b""  # not reached

    def stream(self, request: bytes, context: Any) -> Iterator[bytes]:
        rest, hit, failures = self._hit(request)
        if hit <= failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"failure {hit}")
        for index in range(int(rest)):
            yield str(index).encode()

    def handler(self) -> Any:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Echo": grpc.unary_unary_rpc_method_handler(self.echo),
                "Flaky": grpc.unary_unary_rpc_method_handler(self.flaky),
                "Pushback": grpc.unary_unary_rpc_method_handler(self.pushback),
                "Hang": grpc.unary_unary_rpc_method_handler(self.hang),
                "Stream": grpc.unary_stream_rpc_method_handler(self.stream),
            },
        )


class GrpcServer:
    """A sync grpc server with ``service`` on a free 127.0.0.1 port, until the block ends."""

    def __init__(self, service: TestService, interceptors: tuple[Any, ...] = ()) -> None:
        self.executor = ThreadPoolExecutor(max_workers=8)
        self.server = grpc.server(self.executor, interceptors=interceptors)
        self.server.add_generic_rpc_handlers((service.handler(),))
        self.port = self.server.add_insecure_port(f"{HOST}:0")
        self.target = f"{HOST}:{self.port}"

    def __enter__(self) -> GrpcServer:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(grace=None).wait(10.0)
        self.executor.shutdown(wait=True)
