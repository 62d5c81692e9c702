"""A real HTTP server for the integration tests: uvicorn on 127.0.0.1, in a thread.

`UvicornServer` serves any ASGI app on a socket it binds itself (a free port on
127.0.0.1, so no other test can take it between choosing and binding), says when
it is ready through an event, and stops when the ``with`` block ends. `TestApp`
is the app the httpx tests talk to: each route does one thing a real service
does (fail, shed load with Retry-After, drip a body, hang until the client
leaves), counts its hits and records what the server saw.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from types import TracebackType
from typing import Any, Self

import pytest

HOST = "127.0.0.1"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def require(module: str) -> Any:
    """Import ``module``; without it skip the test, or fail it when CI=true."""
    try:
        return __import__(module)
    except ImportError:
        message = f"{module} is not installed: pip install -e '.[tests]'"
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(f"{message}. CI=true: a missing test dependency is a failure", False)
        pytest.skip(message)


class UvicornServer:
    """Serve ``app`` with uvicorn on a free 127.0.0.1 port until the block ends."""

    def __init__(self, app: Callable[..., Awaitable[None]], *, lifespan: str = "off") -> None:
        uvicorn = require("uvicorn")
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((HOST, 0))
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn.Config(app, lifespan=lifespan, log_level="warning", access_log=False)
        ready = self._ready = threading.Event()

        class Server(uvicorn.Server):  # type: ignore[misc,name-defined]
            async def startup(self, sockets: Any = None) -> None:
                await super().startup(sockets=sockets)
                ready.set()

        self._server = Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def __enter__(self) -> Self:
        self._thread.start()
        if not self._ready.wait(10.0):
            self._server.should_exit = True
            raise RuntimeError("uvicorn did not start within 10 s")
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._server.should_exit = True
        self._thread.join(10.0)
        self._socket.close()
        assert not self._thread.is_alive(), "uvicorn did not stop within 10 s"


class TestApp:
    """An ASGI app with a route per behaviour the transport must handle.

    - ``/ok``: 200 ``ok``.
    - ``/status/{code}``: that status; ``?retry_after=`` adds the header.
    - ``/flaky/{n}/{code}``: ``code`` for the first ``n`` hits of that path, then 200.
    - ``/drip/{chunks}/{every}``: a body of ``chunks`` bytes, one every ``every`` seconds.
    - ``/hang``: never answers; records when the server sees the client leave.
    - ``/echo``: the request body back.
    """

    __test__ = False  # not a test class, whatever pytest thinks of its name

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.bodies: list[bytes] = []
        self.left = threading.Event()
        """Set when a ``/hang`` request's client went away."""
        self.hanging = threading.Event()
        """Set when a ``/hang`` request arrived."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        self.hits[path] += 1
        parts = path.strip("/").split("/")
        query = dict(
            item.split("=", 1) for item in scope["query_string"].decode().split("&") if "=" in item
        )
        if parts[0] == "status":
            headers = []
            if "retry_after" in query:
                headers.append((b"retry-after", query["retry_after"].encode()))
            await _answer(send, int(parts[1]), b"status body", headers)
        elif parts[0] == "flaky":
            failing = self.hits[path] <= int(parts[1])
            await _answer(send, int(parts[2]) if failing else 200, b"flaky")
        elif parts[0] == "drip":
            await self._drip(send, int(parts[1]), float(parts[2]))
        elif parts[0] == "hang":
            await self._hang(receive)
        elif parts[0] == "echo":
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            self.bodies.append(body)
            await _answer(send, 200, body)
        else:
            await _answer(send, 200, b"ok")

    async def _drip(self, send: Send, chunks: int, every: float) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(chunks):
            await asyncio.sleep(every)
            await send({"type": "http.response.body", "body": b".", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def _hang(self, receive: Receive) -> None:
        self.hanging.set()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.left.set()
                return


async def _answer(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    head = [(b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


def open_fds() -> int:
    """How many file descriptors this process has open (Linux)."""
    return len(os.listdir("/proc/self/fd"))
