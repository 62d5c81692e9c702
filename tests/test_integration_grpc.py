"""resilience.integrations.grpc against real grpc servers (sync and aio) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import resilience as rs
from grpc_support import GrpcServer, TestService, grpc, method
from http_support import open_fds
from resilience.integrations.grpc import (
    PUSHBACK_KEY,
    AsyncClientInterceptor,
    AsyncServerInterceptor,
    AsyncStreamClientInterceptor,
    ClientInterceptor,
    ResilienceRpcError,
    ServerInterceptor,
    async_client_interceptors,
    is_transient,
    status_of,
    to_rpc_error,
)
from resilience.testing import FakeClock

Code = grpc.StatusCode


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[GrpcServer, TestService]]:
    service = TestService()
    with GrpcServer(service) as server:
        yield server, service


@pytest.fixture
def service(served: tuple[GrpcServer, TestService]) -> TestService:
    service = served[1]
    service.hits.clear()
    service.cancelled.clear()
    service.hanging.clear()
    service.time_remaining.clear()
    return service


@pytest.fixture
def target(served: tuple[GrpcServer, TestService], service: TestService) -> str:
    return served[0].target


class Waits:
    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, event: Any) -> None:
        self.delays.append(event.delay)


def retry(attempts: int = 3, **options: Any) -> rs.Retry:
    options.setdefault("backoff", 0.0)
    options.setdefault("clock", FakeClock())
    return rs.Retry(attempts, on=is_transient, **options)


class Sync:
    """A sync channel through the interceptor, with raw-bytes methods."""

    def __init__(self, target: str, pipeline: rs.Middleware) -> None:
        self.raw = grpc.insecure_channel(target)
        self.channel = grpc.intercept_channel(self.raw, ClientInterceptor(pipeline))

    def unary(self, name: str) -> Any:
        return self.channel.unary_unary(method(name))

    def stream(self, name: str) -> Any:
        return self.channel.unary_stream(method(name))

    def __enter__(self) -> Sync:
        return self

    def __exit__(self, *exc: object) -> None:
        self.raw.close()


def aio_channel(target: str, pipeline: rs.Middleware) -> Any:
    return grpc.aio.insecure_channel(target, interceptors=async_client_interceptors(pipeline))


# -- the sync client ----------------------------------------------------------------------------


def test_unavailable_is_retried_until_an_answer(target: str, service: TestService) -> None:
    with Sync(target, retry(3)) as client:
        assert client.unary("Flaky")(b"a:2:UNAVAILABLE") == b"ok"
        response, call = client.unary("Flaky").with_call(b"b:1:RESOURCE_EXHAUSTED")
    assert response == b"ok"
    assert call.code() is Code.OK
    assert service.hits == {"a": 3, "b": 2}


def test_not_found_is_neither_retried_nor_counted(target: str, service: TestService) -> None:
    breaker = rs.CircuitBreaker(minimum_calls=1, failure_on=is_transient)
    pipeline = rs.Pipeline.builder().add(retry(3)).add(breaker).build()
    with Sync(target, pipeline) as client:
        for key in "abc":
            with pytest.raises(grpc.RpcError) as caught:
                client.unary("Flaky")(f"{key}:1:NOT_FOUND".encode())
            assert caught.value.code() is Code.NOT_FOUND
    assert service.hits == {"a": 1, "b": 1, "c": 1}
    assert breaker.metrics().failures == 0
    assert breaker.state is rs.CircuitState.CLOSED


def test_an_open_breaker_is_unavailable_with_its_cause(target: str, service: TestService) -> None:
    breaker = rs.CircuitBreaker(minimum_calls=1, failure_on=is_transient, open_seconds=30)
    with Sync(target, breaker) as client:
        with pytest.raises(grpc.RpcError):
            client.unary("Flaky")(b"a:1:UNAVAILABLE")
        with pytest.raises(grpc.RpcError) as caught:
            client.unary("Flaky")(b"a:1:UNAVAILABLE")
        future = client.unary("Echo").future(b"x")
        with pytest.raises(grpc.RpcError):
            future.result()
    error = caught.value
    assert isinstance(error, ResilienceRpcError)
    assert error.code() is Code.UNAVAILABLE
    assert isinstance(error.__cause__, rs.CircuitOpenError)
    assert dict(error.trailing_metadata())[PUSHBACK_KEY] == "30000"
    assert service.hits == {"a": 1}


def test_a_throttle_is_resource_exhausted_with_pushback(target: str, service: TestService) -> None:
    throttle = rs.Throttle(rate=1, per=10.0, burst=1, max_wait=0, clock=FakeClock())
    with Sync(target, throttle) as client:
        assert client.unary("Echo")(b"x") == b"x"
        with pytest.raises(grpc.RpcError) as caught:
            client.unary("Echo")(b"y")
    assert caught.value.code() is Code.RESOURCE_EXHAUSTED
    assert isinstance(caught.value.__cause__, rs.ThrottledError)
    assert int(dict(caught.value.trailing_metadata())[PUSHBACK_KEY]) == 10000


def test_each_attempt_is_sent_with_the_time_left(target: str, service: TestService) -> None:
    pipeline = rs.Pipeline.builder().add(rs.Timeout(5.0)).add(retry(2)).build()
    with Sync(target, pipeline) as client:
        client.unary("Echo")(b"x", timeout=30.0)
        client.unary("Echo")(b"x", timeout=2.0)
    with Sync(target, retry(2)) as client:
        client.unary("Echo")(b"x")
    first, second, third = service.time_remaining
    assert 0 < first <= 5.1
    assert 0 < second <= 2.1  # the wire rounds a timeout up
    assert third > 1e6  # no deadline was sent


def test_the_callers_timeout_bounds_the_retries(target: str, service: TestService) -> None:
    waits = Waits()
    pipeline = retry(3, backoff=rs.backoff.constant(5.0), on_retry=waits)
    with Sync(target, pipeline) as client, pytest.raises(grpc.RpcError) as caught:
        client.unary("Flaky")(b"a:5:UNAVAILABLE", timeout=1.0)
    assert caught.value.code() is Code.UNAVAILABLE
    assert waits.delays == []  # a 5 s wait would pass the caller's 1 s
    assert service.hits == {"a": 1}


def test_a_sync_timeout_is_deadline_exceeded_and_the_server_sees_it(
    target: str, service: TestService
) -> None:
    with Sync(target, rs.Timeout(0.2)) as client, pytest.raises(grpc.RpcError) as caught:
        client.unary("Hang")(b"x")
    assert caught.value.code() is Code.DEADLINE_EXCEEDED
    assert service.cancelled.wait(10.0)


def test_server_pushback_sets_the_wait_or_forbids_the_retry(
    target: str, service: TestService
) -> None:
    waits = Waits()
    with Sync(target, retry(3, on_retry=waits)) as client:
        assert client.unary("Pushback")(b"a:1:7000") == b"ok"
        with pytest.raises(grpc.RpcError) as caught:
            client.unary("Pushback")(b"b:1:-1")
        with pytest.raises(grpc.RpcError):
            client.unary("Pushback")(b"c:1:soon")
    assert waits.delays == [7.0]
    assert caught.value.retryable is False
    assert service.hits == {"a": 2, "b": 1, "c": 1}


def test_a_stream_is_retried_before_its_first_message(target: str, service: TestService) -> None:
    with Sync(target, retry(3)) as client:
        call = client.stream("Stream")(b"a:2:4")
        assert [int(message) for message in call] == [0, 1, 2, 3]
        assert call.code() is Code.OK
        assert list(client.stream("Stream")(b"b:0:0")) == []
    assert service.hits == {"a": 3, "b": 1}


def test_a_fallback_answers_for_the_server(target: str, service: TestService) -> None:
    pipeline = rs.Fallback(value=b"cached", on=grpc.RpcError)
    with Sync(target, pipeline) as client:
        assert client.unary("Flaky")(b"a:1:UNAVAILABLE") == b"cached"
        response, call = client.unary("Flaky").with_call(b"b:1:UNAVAILABLE")
    assert response == b"cached"
    assert call.code() is Code.OK


# -- the aio client -----------------------------------------------------------------------------


async def test_aio_retries_maps_and_streams(target: str, service: TestService) -> None:
    breaker = rs.CircuitBreaker(minimum_calls=1, failure_on=is_transient, open_seconds=30)
    async with aio_channel(target, retry(3)) as channel:
        assert await channel.unary_unary(method("Flaky"))(b"a:2:UNAVAILABLE") == b"ok"
        call = channel.unary_stream(method("Stream"))(b"s:1:3")
        assert [int(message) async for message in call] == [0, 1, 2]
    async with aio_channel(target, breaker) as channel:
        flaky = channel.unary_unary(method("Flaky"))
        with pytest.raises(grpc.RpcError):
            await flaky(b"b:1:UNAVAILABLE")
        call = flaky(b"b:1:UNAVAILABLE")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert await call.code() is Code.UNAVAILABLE
    assert isinstance(caught.value.__cause__, rs.CircuitOpenError)
    assert service.hits == {"a": 3, "s": 2, "b": 1}


async def test_aio_timeout_is_deadline_exceeded_and_the_rpc_cancelled(
    target: str, service: TestService
) -> None:
    async with aio_channel(target, rs.Timeout(0.2)) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            await channel.unary_unary(method("Hang"))(b"x")
    assert caught.value.code() is Code.DEADLINE_EXCEEDED
    assert isinstance(caught.value.__cause__, rs.TimeoutExceeded)
    assert await asyncio.to_thread(service.cancelled.wait, 10.0)


async def test_aio_pushback_and_callers_timeout(target: str, service: TestService) -> None:
    waits = Waits()
    async with aio_channel(target, retry(3, on_retry=waits)) as channel:
        assert await channel.unary_unary(method("Pushback"))(b"a:1:250") == b"ok"
        with pytest.raises(grpc.RpcError):
            await channel.unary_unary(method("Pushback"))(b"b:1:60000", timeout=1.0)
    assert waits.delays == [0.25]
    assert service.hits == {"a": 2, "b": 1}


# -- servers ------------------------------------------------------------------------------------


def test_a_sync_server_sheds_load_with_pushback() -> None:
    service = TestService()
    bulkhead = rs.Bulkhead(max_concurrent=1, max_queue=0)
    throttle = rs.Throttle(rate=2, per=60.0, burst=2, max_wait=0, clock=FakeClock())
    pipeline = rs.Pipeline.builder().add(throttle).add(bulkhead).build()
    with GrpcServer(service, (ServerInterceptor(pipeline),)) as server:
        channel = grpc.insecure_channel(server.target)
        try:
            hang = channel.unary_unary(method("Hang")).future(b"x", timeout=10.0)
            assert service.hanging.wait(10.0)
            with pytest.raises(grpc.RpcError) as full:
                channel.unary_unary(method("Echo"))(b"y")
            service.cancelled.set()
            with pytest.raises(grpc.RpcError):
                hang.result()
            with pytest.raises(grpc.RpcError) as throttled:
                channel.unary_unary(method("Echo"))(b"z")
            streamed = list(channel.unary_stream(method("Stream"))(b"s:0:2"))
        finally:
            channel.close()
    assert full.value.code() is Code.RESOURCE_EXHAUSTED
    assert "BulkheadFullError" in full.value.details()
    assert throttled.value.code() is Code.RESOURCE_EXHAUSTED
    assert int(dict(throttled.value.trailing_metadata())[PUSHBACK_KEY]) > 0
    assert streamed == [b"0", b"1"]  # streams pass through untouched
    assert bulkhead.metrics().in_flight == 0


async def test_an_aio_server_sheds_load_and_a_client_honours_it() -> None:
    clock = FakeClock()  # the server's throttle and the client's waits share it
    throttle = rs.Throttle(rate=1, per=0.5, burst=1, max_wait=0, clock=clock)
    faults = rs.FaultInjector(error_rate=1.0, enabled=lambda ctx: ctx.tags["method"].endswith("B"))
    pipeline = rs.Pipeline.builder().add(throttle).add(faults).build()

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    server = grpc.aio.server(interceptors=[AsyncServerInterceptor(pipeline)])
    handlers = {"A": grpc.unary_unary_rpc_method_handler(echo)}
    handlers["B"] = handlers["A"]
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.S", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    waits = Waits()
    try:
        client = retry(2, on_retry=waits, clock=clock)
        async with aio_channel(f"127.0.0.1:{port}", client) as channel:
            assert await channel.unary_unary("/t.S/A")(b"1") == b"1"
            assert await channel.unary_unary("/t.S/A")(b"2") == b"2"  # after the pushback
            with pytest.raises(grpc.RpcError) as caught:
                await channel.unary_unary("/t.S/B")(b"3")
    finally:
        await server.stop(None)
    assert waits.delays == [0.5, 0.5]  # the throttle's pushback, twice; then the fault
    assert caught.value.code() is Code.UNAVAILABLE
    assert "InjectedFault" in caught.value.details()


# -- leaks, helpers, construction ---------------------------------------------------------------


def test_nothing_leaks(target: str, service: TestService) -> None:
    pipeline = rs.Pipeline.builder().add(rs.Timeout(2.0)).add(retry(2)).build()
    with Sync(target, pipeline) as client:
        client.unary("Echo")(b"x")
        fds, threads = open_fds(), threading.active_count()
        for index in range(30):
            with contextlib.suppress(grpc.RpcError):
                client.unary("Flaky")(f"k{index}:{index % 3}:UNAVAILABLE".encode())
        assert open_fds() <= fds + 1
        assert threading.active_count() <= threads + 1


def test_is_transient_and_status_of() -> None:
    unavailable = to_rpc_error(rs.CircuitOpenError("open"))
    assert is_transient(unavailable)
    assert is_transient(rs.TimeoutExceeded(1.0))
    assert not is_transient(ValueError())
    assert status_of(rs.TimeoutExceeded(1.0)) is Code.DEADLINE_EXCEEDED
    assert status_of(rs.ThrottledError("t")) is Code.RESOURCE_EXHAUSTED
    assert status_of(rs.BulkheadFullError("b")) is Code.RESOURCE_EXHAUSTED
    assert status_of(rs.LimitExceededError("l")) is Code.RESOURCE_EXHAUSTED
    assert status_of(rs.InjectedFault("f")) is Code.UNAVAILABLE
    assert status_of(rs.BackendUnavailableError("r")) is Code.UNAVAILABLE
    assert status_of(KeyError()) is Code.UNKNOWN
    assert to_rpc_error(unavailable) is unavailable
    unavailable.retryable = False
    assert not is_transient(unavailable)


@pytest.mark.parametrize(
    "kind",
    [
        ClientInterceptor,
        AsyncClientInterceptor,
        AsyncStreamClientInterceptor,
        ServerInterceptor,
        AsyncServerInterceptor,
        async_client_interceptors,
    ],
)
def test_a_non_policy_is_refused(kind: Any) -> None:
    with pytest.raises(TypeError, match="must be a resilience policy or Pipeline"):
        kind(object())
