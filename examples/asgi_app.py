"""The ASGI middleware on a real uvicorn server on 127.0.0.1.

    python examples/asgi_app.py

A tiny ASGI app behind `ResilienceMiddleware`: a rate of 5 requests a
minute per tenant (a `Keyed` throttle on the ``x-tenant`` header) and a
chaos fault on /checkout. Twelve requests show the 200s, the 429s with
their Retry-After, and the injected 503.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import httpx
import uvicorn

import resilience as rs
from resilience.integrations.asgi import HttpFault, ResilienceMiddleware


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = f"hello from {scope['path']}".encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def tenant(scope: dict[str, Any]) -> str:
    return dict(scope["headers"]).get(b"x-tenant", b"anonymous").decode()


per_tenant = rs.Keyed(
    lambda name: rs.Throttle(rate=5, per=60.0, burst=5, max_wait=0), key="key", max_keys=1000
)
app = ResilienceMiddleware(
    hello, per_tenant, key=tenant, faults=[HttpFault(abort=503, route="/checkout")]
)


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


def main() -> None:
    with Server() as server, httpx.Client(base_url=server.url) as client:
        for index in range(7):
            response = client.get("/items", headers={"x-tenant": "acme"})
            after = response.headers.get("retry-after")
            print(
                f"acme   #{index + 1}: {response.status_code}"
                + (f" retry after {after}s" if after else "")
            )
        for index in range(2):
            response = client.get("/items", headers={"x-tenant": "globex"})
            print(f"globex #{index + 1}: {response.status_code} (its own rate)")
        response = client.get("/checkout", headers={"x-tenant": "globex"})
        print(f"/checkout: {response.status_code} (a fault injected on purpose)")
    print(f"tenants seen: {sorted(per_tenant.keys())}")


if __name__ == "__main__":
    main()
