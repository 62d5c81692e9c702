"""resilience.integrations.asgi: against a real uvicorn on 127.0.0.1, and by direct ASGI calls."""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any

import pytest

from http_support import Message, Receive, Scope, Send, UvicornServer, require

httpx = require("httpx")

import resilience as rs  # noqa: E402
from resilience.integrations.asgi import HttpFault, ResilienceMiddleware  # noqa: E402
from resilience.testing import FakeClock  # noqa: E402


class App:
    """The app behind the middleware: each path one behaviour."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.holding = threading.Event()
        self.finished = threading.Event()
        self.lifespan: list[str] = []
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].rsplit(".", 1)[-1]
                self.lifespan.append(kind)
                await send({"type": f"{message['type']}.complete"})
                if kind == "shutdown":
                    return
        self.calls += 1
        path = scope["path"]
        try:
            if path == "/hold":
                self.holding.set()
                await asyncio.to_thread(self.release.wait, 10.0)
                await _plain(send, 200, b"held")
            elif path == "/stream":
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": b"first,", "more_body": True})
                self.holding.set()
                await asyncio.to_thread(self.release.wait, 10.0)
                await send({"type": "http.response.body", "body": b"second"})
            elif path == "/stream-until-gone":
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": b"first", "more_body": True})
                self.holding.set()
                while (await receive())["type"] != "http.disconnect":
                    pass
            elif path == "/boom":
                raise RuntimeError("the app failed")
            else:
                await _plain(send, 200, b"ok")
        finally:
            self.finished.set()


async def _plain(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def app() -> App:
    return App()


def serve(middleware: Any, *, lifespan: str = "off") -> UvicornServer:
    return UvicornServer(middleware, lifespan=lifespan)


# -- through a real server ---------------------------------------------------------------------


def test_a_throttled_request_is_429_with_retry_after(app: App) -> None:
    throttle = rs.Throttle(rate=1, per=30.0, burst=1, max_wait=0, clock=FakeClock())
    with serve(ResilienceMiddleware(app, throttle)) as server, httpx.Client() as client:
        assert client.get(f"{server.url}/ok").status_code == 200
        refused = client.get(f"{server.url}/ok")
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "30"
    assert "ThrottledError" in refused.text
    assert app.calls == 1


def test_a_full_bulkhead_is_503_and_the_slot_comes_back(app: App) -> None:
    bulkhead = rs.Bulkhead(max_concurrent=1, max_queue=0)
    middleware = ResilienceMiddleware(app, bulkhead, retry_after=2)
    with serve(middleware) as server, httpx.Client(timeout=10.0) as client:
        with concurrent_get(client, f"{server.url}/hold") as held:
            assert app.holding.wait(10.0)
            refused = client.get(f"{server.url}/ok")
            app.release.set()
        assert held.result(10.0).text == "held"
        assert client.get(f"{server.url}/ok").status_code == 200
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "2"
    assert bulkhead.metrics().in_flight == 0


def test_a_streamed_body_passes_unchanged_and_holds_its_slot(app: App) -> None:
    bulkhead = rs.Bulkhead(max_concurrent=1, max_queue=0)
    with serve(ResilienceMiddleware(app, bulkhead)) as server, httpx.Client(timeout=10.0) as client:
        with concurrent_get(client, f"{server.url}/stream") as streamed:
            assert app.holding.wait(10.0)
            in_flight = bulkhead.metrics().in_flight
            app.release.set()
        assert streamed.result(10.0).content == b"first,second"
    assert in_flight == 1
    assert bulkhead.metrics().in_flight == 0


def test_a_client_that_leaves_mid_stream_gives_the_slot_back(app: App) -> None:
    bulkhead = rs.Bulkhead(max_concurrent=1, max_queue=0)
    with serve(ResilienceMiddleware(app, bulkhead)) as server:
        with (
            httpx.Client(timeout=10.0) as client,
            client.stream("GET", f"{server.url}/stream-until-gone") as response,
        ):
            assert next(response.iter_raw()) == b"first"
            assert app.holding.wait(10.0)
        assert app.finished.wait(10.0)
        with httpx.Client(timeout=10.0) as client:
            assert client.get(f"{server.url}/ok").status_code == 200
    assert bulkhead.metrics().in_flight == 0


def test_the_apps_own_errors_are_not_turned_into_refusals(app: App) -> None:
    with serve(ResilienceMiddleware(app, rs.Bulkhead(2))) as server, httpx.Client() as client:
        assert client.get(f"{server.url}/boom").status_code == 500


def test_lifespan_passes_through(app: App) -> None:
    with serve(ResilienceMiddleware(app, rs.Bulkhead(1)), lifespan="on"):
        assert app.lifespan == ["startup"]
    assert app.lifespan == ["startup", "shutdown"]


def test_faults_abort_by_route_and_header(app: App) -> None:
    faults = [
        HttpFault(abort=503, route="/chaos"),
        HttpFault(abort=418, header=("x-chaos", "teapot"), route=re.compile(r"^/ok$")),
        HttpFault(abort=500, percentage=0),
    ]
    middleware = ResilienceMiddleware(app, faults=faults, seed=1)
    with serve(middleware) as server, httpx.Client() as client:
        assert client.get(f"{server.url}/chaos/a").status_code == 503
        assert client.get(f"{server.url}/ok", headers={"X-Chaos": "teapot"}).status_code == 418
        assert client.get(f"{server.url}/ok").status_code == 200
    assert app.calls == 1


# -- direct ASGI calls --------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])


def http_scope(path: str = "/", headers: list[tuple[bytes, bytes]] | None = None) -> Scope:
    return {"type": "http", "method": "GET", "path": path, "headers": headers or []}


async def nothing() -> Message:
    return {"type": "http.request", "body": b""}


async def test_exactly_as_many_requests_as_slots_are_admitted() -> None:
    gate = asyncio.Event()
    admitted = 0

    async def held(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal admitted
        admitted += 1
        await gate.wait()
        await _plain(send, 200, b"ok")

    bulkhead = rs.Bulkhead(max_concurrent=3, max_queue=0)
    middleware = ResilienceMiddleware(held, bulkhead)
    recorders = [Recorder() for _ in range(10)]
    tasks = [asyncio.create_task(middleware(http_scope(), nothing, r)) for r in recorders]
    for _ in range(10):
        await asyncio.sleep(0)
    refused = sum(1 for r in recorders if r.messages and r.status == 503)
    gate.set()
    await asyncio.gather(*tasks)
    assert (admitted, refused) == (3, 7)
    assert sorted(r.status for r in recorders) == [200] * 3 + [503] * 7
    assert bulkhead.metrics().in_flight == 0


async def test_a_cancelled_request_gives_its_slot_back() -> None:
    async def hang(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.Event().wait()

    bulkhead = rs.Bulkhead(max_concurrent=1, max_queue=0)
    task = asyncio.create_task(
        ResilienceMiddleware(hang, bulkhead)(http_scope(), nothing, Recorder())
    )
    await asyncio.sleep(0)
    assert bulkhead.metrics().in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert bulkhead.metrics().in_flight == 0


async def test_websockets_pass_through_untouched() -> None:
    seen: list[str] = []

    async def ws(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    bulkhead = rs.Bulkhead(max_concurrent=1, max_queue=0)
    await ResilienceMiddleware(ws, bulkhead)(
        {"type": "websocket", "path": "/ws"}, nothing, Recorder()
    )
    assert seen == ["websocket"]


async def test_a_key_per_client_gives_each_its_own_rate() -> None:
    async def ok(scope: Scope, receive: Receive, send: Send) -> None:
        await _plain(send, 200, b"ok")

    clock = FakeClock()
    per_tenant = rs.Keyed(
        lambda tenant: rs.Throttle(rate=1, per=60.0, burst=1, max_wait=0, clock=clock), key="key"
    )

    def tenant(scope: Scope) -> str:
        return dict(scope["headers"]).get(b"x-tenant", b"anonymous").decode()

    middleware = ResilienceMiddleware(ok, per_tenant, key=tenant)
    statuses = []
    for name in (b"acme", b"acme", b"globex"):
        recorder = Recorder()
        await middleware(http_scope(headers=[(b"x-tenant", name)]), nothing, recorder)
        statuses.append(recorder.status)
    assert statuses == [200, 429, 200]
    assert sorted(per_tenant.keys()) == ["acme", "globex"]


async def test_a_delay_fault_waits_then_calls_the_app(async_mode: str) -> None:
    calls: list[str] = []

    async def ok(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append(scope["path"])
        await _plain(send, 200, b"ok")

    middleware = ResilienceMiddleware(ok, faults=[HttpFault(delay=0.001, route="/slow")])
    recorder = Recorder()
    await middleware(http_scope("/slow"), nothing, recorder)
    assert recorder.status == 200
    assert calls == ["/slow"]


@pytest.mark.parametrize(
    ("make", "error", "words"),
    [
        (lambda: ResilienceMiddleware(None), TypeError, "app must be"),  # type: ignore[arg-type]
        (lambda: ResilienceMiddleware(_noop, object()), TypeError, "policy must be"),  # type: ignore[arg-type]
        (lambda: ResilienceMiddleware(_noop, key="ip"), TypeError, "key must be"),  # type: ignore[arg-type]
        (lambda: ResilienceMiddleware(_noop, faults=[1]), TypeError, "HttpFault"),  # type: ignore[list-item]
        (lambda: ResilienceMiddleware(_noop, retry_after=-1), ValueError, "retry_after"),
        (lambda: HttpFault(), ValueError, "abort= .* or delay="),
        (lambda: HttpFault(abort=99), ValueError, "abort must be"),
        (lambda: HttpFault(delay=-1.0), ValueError, "delay must be"),
        (lambda: HttpFault(abort=503, percentage=101), ValueError, "percentage"),
        (lambda: HttpFault(abort=503, header=("x",)), TypeError, "header must be"),  # type: ignore[arg-type]
        (lambda: HttpFault(abort=503, route=3), TypeError, "route must be"),  # type: ignore[arg-type]
    ],
)
def test_bad_arguments_are_refused(make: Any, error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        make()


async def _noop(scope: Scope, receive: Receive, send: Send) -> None:
    return None


class concurrent_get:  # noqa: N801 - used as a context manager, named as one
    """A GET on another thread, started on entry; the caller ends it before leaving."""

    def __init__(self, client: Any, url: str) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(1)
        self.future = self.pool.submit(client.get, url)

    def __enter__(self) -> Any:
        return self.future

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True)
