"""resilience.integrations.httpx against a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import email.utils
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from http_support import TestApp, UvicornServer, open_fds, require

httpx = require("httpx")

import resilience as rs  # noqa: E402
from modes import to_thread  # noqa: E402
from resilience.integrations.httpx import (  # noqa: E402
    AsyncResilientTransport,
    BodyDeadlineExceeded,
    ResilientTransport,
    ResponseFailure,
    is_transient,
    parse_retry_after,
)
from resilience.testing import FakeClock  # noqa: E402


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[UvicornServer, TestApp]]:
    app = TestApp()
    with UvicornServer(app) as running:
        yield running, app


@pytest.fixture
def app(server: tuple[UvicornServer, TestApp]) -> TestApp:
    app = server[1]
    app.hits.clear()
    app.bodies.clear()
    app.left.clear()
    app.hanging.clear()
    return app


@pytest.fixture
def url(server: tuple[UvicornServer, TestApp], app: TestApp) -> str:
    return server[0].url


class Waits:
    """Records each retry's wait."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, event: rs.events.RetryEvent) -> None:
        self.delays.append(event.delay)


def retry(attempts: int = 3, **options: Any) -> rs.Retry:
    options.setdefault("backoff", 0.0)
    options.setdefault("clock", FakeClock())
    return rs.Retry(attempts, on=is_transient, **options)


def sync_client(pipeline: rs.Middleware, **options: Any) -> Any:
    return httpx.Client(transport=ResilientTransport(pipeline, **options))


# -- statuses ---------------------------------------------------------------------------


def test_a_status_to_retry_is_retried_until_an_answer(url: str, app: TestApp) -> None:
    with sync_client(retry(3)) as client:
        response = client.get(f"{url}/flaky/2/503")
    assert response.status_code == 200
    assert response.text == "flaky"
    assert app.hits["/flaky/2/503"] == 3


def test_when_retries_run_out_the_client_gets_the_last_response(url: str, app: TestApp) -> None:
    with sync_client(retry(3)) as client:
        response = client.get(f"{url}/status/503")
    assert response.status_code == 503
    assert response.text == "status body"  # read before the connection went back
    assert app.hits["/status/503"] == 3
    with pytest.raises(httpx.HTTPStatusError):
        response.raise_for_status()


def test_a_server_error_counts_for_the_breaker_but_is_not_retried(url: str, app: TestApp) -> None:
    breaker = rs.CircuitBreaker(minimum_calls=2, failure_ratio=0.6)
    pipeline = rs.Pipeline.builder().add(retry(3)).add(breaker).build()
    with sync_client(pipeline) as client:
        assert client.get(f"{url}/status/500").status_code == 500
        assert client.get(f"{url}/status/404").status_code == 404
        assert app.hits["/status/500"] == 1
        metrics = breaker.metrics()
        assert (metrics.calls, metrics.failures) == (2, 1)
        assert breaker.state is rs.CircuitState.CLOSED
        assert client.get(f"{url}/status/500").status_code == 500
        assert breaker.state is rs.CircuitState.OPEN
        with pytest.raises(rs.CircuitOpenError):
            client.get(f"{url}/ok")
    assert app.hits["/ok"] == 0


def test_statuses_are_configurable(url: str, app: TestApp) -> None:
    transport_options = {"retry_statuses": {500}, "failure_statuses": lambda code: False}
    with sync_client(retry(2), **transport_options) as client:
        assert client.get(f"{url}/flaky/1/500").status_code == 200
        assert client.get(f"{url}/status/503").status_code == 503
    assert app.hits["/flaky/1/500"] == 2
    assert app.hits["/status/503"] == 1


# -- what may be sent again ---------------------------------------------------------------


def test_post_is_not_retried_by_default(url: str, app: TestApp) -> None:
    with sync_client(rs.Retry(3, backoff=0.0, clock=FakeClock())) as client:  # on=Exception
        assert client.post(f"{url}/flaky/1/503", content=b"x").status_code == 503
    assert app.hits["/flaky/1/503"] == 1


def test_post_with_an_idempotency_key_or_opted_in_is_retried(url: str, app: TestApp) -> None:
    with sync_client(retry(3)) as client:
        keyed = client.post(f"{url}/flaky/1/503", content=b"x", headers={"Idempotency-Key": "k1"})
    assert keyed.status_code == 200
    with sync_client(retry(3), retry_methods={"GET", "post"}) as client:
        assert client.post(f"{url}/flaky/1/502", json={"a": 1}).status_code == 200
    assert app.hits["/flaky/1/503"] == 2
    assert app.hits["/flaky/1/502"] == 2
    assert app.bodies == []  # /flaky never reads bodies: the echo route proves replay below


def test_a_replayed_body_is_sent_whole_each_time(url: str, app: TestApp) -> None:
    seen: list[bytes] = []

    class Failing(httpx.BaseTransport):
        """Fails the first attempt after the real one sent the body."""

        def __init__(self) -> None:
            self.inner = httpx.HTTPTransport()

        def handle_request(self, request: Any) -> Any:
            response = self.inner.handle_request(request)
            response.read()
            seen.append(response.content)
            if len(seen) == 1:
                return httpx.Response(503, content=b"again")
            return response

        def close(self) -> None:
            self.inner.close()

    transport = ResilientTransport(retry(3), Failing())
    with httpx.Client(transport=transport) as client:
        response = client.put(f"{url}/echo", content=b"payload")
    assert response.text == "payload"
    assert seen == [b"payload", b"payload"]
    assert app.bodies == [b"payload", b"payload"]


def test_a_streamed_body_is_never_retried(url: str, app: TestApp) -> None:
    def body() -> Iterator[bytes]:
        yield b"one"
        yield b"two"

    with sync_client(retry(3)) as client:
        headers = {"Idempotency-Key": "k2"}
        response = client.put(f"{url}/flaky/1/503", content=body(), headers=headers)
    assert response.status_code == 503
    assert app.hits["/flaky/1/503"] == 1


def test_a_connection_refused_is_retried_even_for_post() -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on: bound, never listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        waits = Waits()
        with (
            sync_client(retry(3, on_retry=waits)) as client,
            pytest.raises(httpx.ConnectError) as caught,
        ):
            client.post(f"http://127.0.0.1:{port}/x", content=b"x")
    assert len(waits.delays) == 2
    assert caught.value.request.method == "POST"


def test_a_read_error_of_a_post_is_marked_not_retryable(url: str, app: TestApp) -> None:
    waits = Waits()
    timeouts = httpx.Timeout(5.0, read=0.05)
    with (
        sync_client(retry(3, on_retry=waits)) as client,
        pytest.raises(httpx.ReadTimeout) as caught,
    ):
        client.post(f"{url}/hang", content=b"x", timeout=timeouts)
    assert waits.delays == []
    assert caught.value.retryable is False
    assert not is_transient(caught.value)


# -- Retry-After ----------------------------------------------------------------------------


def test_retry_after_in_seconds_sets_the_wait(url: str, app: TestApp) -> None:
    waits = Waits()
    with sync_client(retry(2, on_retry=waits)) as client:
        client.get(f"{url}/status/503?retry_after=7")
    assert waits.delays == [7.0]


def test_retry_after_is_capped_by_the_retry_maximum(url: str, app: TestApp) -> None:
    waits = Waits()
    with sync_client(retry(2, on_retry=waits, max_delay=1.5)) as client:
        client.get(f"{url}/status/429?retry_after=30")
    assert waits.delays == [1.5]


def test_retry_after_past_the_deadline_ends_the_call_at_once(url: str, app: TestApp) -> None:
    waits = Waits()
    pipeline = rs.Pipeline.builder().add(rs.Timeout(5.0)).add(retry(3, on_retry=waits)).build()
    with sync_client(pipeline) as client:
        response = client.get(f"{url}/status/503?retry_after=60")
    assert response.status_code == 503
    assert waits.delays == []
    assert app.hits["/status/503"] == 1


def test_parse_retry_after() -> None:
    now = 1_000_000_000.0
    date = email.utils.formatdate(now + 12, usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(12.0)
    assert parse_retry_after(email.utils.formatdate(now - 5, usegmt=True), now=now) == 0.0
    assert parse_retry_after(" 3 ") == 3.0
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("inf") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00") is None  # no zone: not an HTTP date


# -- deadlines ------------------------------------------------------------------------------


class Recording(httpx.BaseTransport):
    """The real transport, remembering each attempt's timeouts and the call's tags."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.timeouts: list[dict[str, float]] = []
        self.tags: list[dict[str, Any]] = []

    def handle_request(self, request: Any) -> Any:
        self.timeouts.append(dict(request.extensions["timeout"]))
        self.tags.append(dict(rs.current().tags))
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def test_each_attempt_gets_timeouts_cut_to_what_is_left(url: str, app: TestApp) -> None:
    recording = Recording()
    pipeline = rs.Pipeline.builder().add(rs.Timeout(0.75)).add(retry(2)).build()
    with httpx.Client(transport=ResilientTransport(pipeline, recording), timeout=30.0) as client:
        client.get(f"{url}/flaky/1/503")
    assert len(recording.timeouts) == 2
    for timeouts in recording.timeouts:
        assert set(timeouts) == {"connect", "read", "write", "pool"}
        assert all(0 < value <= 0.75 for value in timeouts.values())
    with httpx.Client(transport=ResilientTransport(retry(2), Recording()), timeout=3.0) as client:
        client.get(f"{url}/ok")
        inner = client._transport.transport
    assert inner.timeouts == [{"connect": 3.0, "read": 3.0, "write": 3.0, "pool": 3.0}]


def test_a_dripping_body_stops_at_the_deadline_sync(url: str, app: TestApp) -> None:
    with (
        sync_client(rs.Timeout(1.0)) as client,
        client.stream("GET", f"{url}/drip/250/0.02") as response,
    ):
        chunks = response.iter_raw()
        with pytest.raises(BodyDeadlineExceeded) as caught:
            b"".join(chunks)
    assert isinstance(caught.value, httpx.ReadTimeout)
    assert isinstance(caught.value, rs.TimeoutExceeded)
    assert not response.is_stream_consumed or response.num_bytes_downloaded < 250


# httpcore reads a body through nested async generators. The deadline abandons them mid-body,
# and trio, unlike asyncio, warns when it has to finalize such a generator itself (seen on
# Python 3.13). The response and its connection are closed either way.
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <async_generator object "
    "(PoolByteStream|HTTP11ConnectionByteStream|AsyncHTTP11Connection|AsyncResponseStream)"
    ":pytest.PytestUnraisableExceptionWarning"
)
async def test_a_dripping_body_is_cancelled_at_the_deadline_async(
    url: str, app: TestApp, async_mode: str
) -> None:
    # The headers come at once and the body takes 5 s: the deadline (1 s, room for the headers on
    # a loaded machine) falls in the body.
    transport = AsyncResilientTransport(rs.Timeout(1.0))
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(BodyDeadlineExceeded):
            await client.get(f"{url}/drip/250/0.02")


async def test_an_async_timeout_cancels_the_request_and_the_server_sees_it(
    url: str, app: TestApp, async_mode: str
) -> None:
    transport = AsyncResilientTransport(rs.Timeout(0.2))
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(rs.TimeoutExceeded):
            await client.get(f"{url}/hang")
    assert await to_thread(app.left.wait, 10.0)


def test_a_sync_deadline_ends_the_request_and_the_server_sees_it(url: str, app: TestApp) -> None:
    with sync_client(rs.Timeout(0.2)) as client, pytest.raises(httpx.ReadTimeout):
        client.get(f"{url}/hang")
    assert app.left.wait(10.0)


# -- tags, the async client, leaks, construction ---------------------------------------------


def test_calls_carry_method_host_and_route_tags(url: str, app: TestApp) -> None:
    recording = Recording()
    transport = ResilientTransport(
        retry(1), recording, route=lambda request: request.url.path.rsplit("/", 1)[0] + "/{n}"
    )
    with httpx.Client(transport=transport) as client:
        client.get(f"{url}/status/202")
        client.delete(f"{url}/ok")
    assert recording.tags == [
        {"method": "GET", "host": "127.0.0.1", "route": "/status/{n}"},
        {"method": "DELETE", "host": "127.0.0.1", "route": "/{n}"},
    ]


def test_a_breaker_per_route_through_keyed(url: str, app: TestApp) -> None:
    # Per host works the same way (key="host"); the tests reach only 127.0.0.1.
    per_route = rs.Keyed(lambda route: rs.CircuitBreaker(minimum_calls=1), key="route")
    with sync_client(per_route) as client:
        assert client.get(f"{url}/status/500").status_code == 500
        with pytest.raises(rs.CircuitOpenError):
            client.get(f"{url}/status/500")
        assert client.get(f"{url}/ok").status_code == 200
    assert per_route.keys() == ["/status/500", "/ok"]
    assert app.hits == {"/status/500": 1, "/ok": 1}


def test_fault_injection_targets_a_route_through_the_tags(url: str, app: TestApp) -> None:
    faults = rs.FaultInjector(error_rate=1.0, enabled=lambda ctx: ctx.tags["route"] == "/ok")
    with sync_client(faults) as client:
        with pytest.raises(rs.InjectedFault):
            client.get(f"{url}/ok")
        assert client.get(f"{url}/status/202").status_code == 202
    assert app.hits["/ok"] == 0


async def test_the_async_transport_retries_and_returns_the_last_response(
    url: str, app: TestApp, async_mode: str
) -> None:
    transport = AsyncResilientTransport(retry(3))
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.get(f"{url}/flaky/1/502")).status_code == 200
        last = await client.get(f"{url}/status/504")
        posted = await client.post(f"{url}/status/503", content=b"x")
    assert last.status_code == 504
    assert last.text == "status body"
    assert posted.status_code == 503
    assert app.hits["/flaky/1/502"] == 2
    assert app.hits["/status/504"] == 3
    assert app.hits["/status/503"] == 1


def test_nothing_leaks_sync(url: str, app: TestApp) -> None:
    pipeline = rs.Pipeline.builder().add(rs.Timeout(2.0)).add(retry(2)).build()
    with sync_client(pipeline) as client:
        client.get(f"{url}/ok")  # the pool's first connection
        fds, threads = open_fds(), threading.active_count()
        for index in range(30):
            client.get(f"{url}/status/503" if index % 2 else f"{url}/ok")
        assert open_fds() <= fds + 1
        assert threading.active_count() == threads


async def test_nothing_leaks_async(url: str, app: TestApp) -> None:
    pipeline = rs.Pipeline.builder().add(rs.Timeout(2.0)).add(retry(2)).build()
    async with httpx.AsyncClient(transport=AsyncResilientTransport(pipeline)) as client:
        await client.get(f"{url}/ok")
        fds, tasks = open_fds(), len(asyncio.all_tasks())
        for index in range(30):
            await client.get(f"{url}/status/503" if index % 2 else f"{url}/ok")
        assert open_fds() <= fds + 1
        assert len(asyncio.all_tasks()) == tasks


def test_is_transient() -> None:
    request = httpx.Request("GET", "http://127.0.0.1/")
    response = httpx.Response(503, request=request)
    failure = ResponseFailure(
        "503", request=request, response=response, retry_after=None, retryable=True
    )
    assert is_transient(failure)
    failure.retryable = False
    assert not is_transient(failure)
    assert is_transient(httpx.ConnectError("refused"))
    assert is_transient(httpx.ReadTimeout("slow"))
    assert is_transient(httpx.RemoteProtocolError("bad"))
    assert is_transient(rs.TimeoutExceeded(1.0))
    assert not is_transient(httpx.InvalidURL("x"))
    assert not is_transient(httpx.TooManyRedirects("loop"))
    assert not is_transient(ValueError())


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({"pipeline": object()}, TypeError, "pipeline must be"),
        ({"retry_statuses": "503"}, TypeError, "retry_statuses must be"),
        ({"retry_statuses": {99}}, ValueError, "from 100 to 599"),
        ({"failure_statuses": {True}}, ValueError, "failure_statuses"),
        ({"retry_methods": "GET"}, TypeError, "retry_methods must be"),
        ({"retry_methods": {"GET PUT"}}, ValueError, "HTTP method names"),
        ({"idempotency_header": ""}, TypeError, "idempotency_header"),
        ({"route": "/x"}, TypeError, "route must be"),
        ({"transport": object()}, TypeError, "transport must be"),
    ],
)
@pytest.mark.parametrize("kind", [ResilientTransport, AsyncResilientTransport])
def test_bad_arguments_are_refused(
    kind: type, options: dict[str, Any], error: type[Exception], words: str
) -> None:
    options = {"pipeline": rs.Retry(2), **options}
    with pytest.raises(error, match=words):
        kind(**options)
