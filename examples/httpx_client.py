"""An httpx client with a resilient transport, against a real flaky server on 127.0.0.1.

    python examples/httpx_client.py

The server (uvicorn, in a thread) answers 503 with Retry-After to one request
in three, and drips the body of /slow a byte every 50 ms. The client retries
what may be retried, honours Retry-After, leaves a POST alone, and stops the
dripping body at its deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
from typing import Any

import httpx
import uvicorn

import resilience as rs
from resilience.integrations.httpx import (
    AsyncResilientTransport,
    BodyDeadlineExceeded,
    ResilientTransport,
    is_transient,
)

turns = itertools.count(1)
hits: dict[str, int] = {}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Every third request gets 503 with Retry-After: 0.05; /slow drips its body."""
    if scope["type"] != "http":
        return
    path = scope["path"]
    hits[path] = hits.get(path, 0) + 1
    if path == "/slow":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(20):
            await asyncio.sleep(0.05)
            await send({"type": "http.response.body", "body": b".", "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    failing = next(turns) % 3 == 1
    status, headers = (503, [(b"retry-after", b"0.05")]) if failing else (200, [])
    body = b"busy" if failing else b"hello"
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Server:
    """uvicorn on a free 127.0.0.1 port, in a thread, until the block ends."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        ready = self.ready = threading.Event()

        class Ready(uvicorn.Server):
            async def startup(self, sockets: Any = None) -> None:
                await super().startup(sockets=sockets)
                ready.set()

        self.server = Ready(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, args=([self.socket],))

    def __enter__(self) -> Server:
        self.thread.start()
        if not self.ready.wait(10):
            raise RuntimeError("the server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.socket.close()


def pipeline() -> rs.Pipeline:
    return (
        rs.Pipeline.builder("example-api")
        .add(rs.Timeout(0.5))
        .add(rs.Retry(3, on=is_transient, backoff=rs.backoff.exponential(0.01, maximum=0.1)))
        .add(rs.CircuitBreaker(minimum_calls=20))
        .build()
    )


def main() -> None:
    with Server() as server, httpx.Client(transport=ResilientTransport(pipeline())) as client:
        answers = [client.get(f"{server.url}/users/{n}").status_code for n in range(6)]
        print(f"6 GETs, every third answer a 503: the client saw {answers}")
        print(f"requests the server got: {sum(v for k, v in hits.items() if k != '/slow')}")
        posts = [client.post(f"{server.url}/orders", json={"item": 1}) for _ in range(2)]
        print(f"two POSTs without an Idempotency-Key: {[r.status_code for r in posts]}")
        print(f"the server got {hits['/orders']} POSTs: a POST is not sent twice")
        try:
            client.get(f"{server.url}/slow")
        except BodyDeadlineExceeded as error:
            print(f"a body dripping past the 0.5 s deadline: {type(error).__name__}")

        async def async_get() -> int:
            async with httpx.AsyncClient(transport=AsyncResilientTransport(pipeline())) as aclient:
                return (await aclient.get(f"{server.url}/users/7")).status_code

        print(f"the async transport: {asyncio.run(async_get())}")


if __name__ == "__main__":
    main()
