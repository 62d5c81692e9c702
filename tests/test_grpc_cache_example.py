"""examples/grpc_cache: the article's cache service, end to end on a real gRPC server."""

from __future__ import annotations

import pathlib
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from http_support import require

require("grpc")
require("grpc_tools")

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "grpc_cache"
sys.path.insert(0, str(EXAMPLE))

import client as cache_client  # noqa: E402
import generate  # noqa: E402
import grpc  # noqa: E402
import server as cache_server  # noqa: E402

import resilience as rs  # noqa: E402


@pytest.fixture
def running() -> Iterator[Any]:
    with cache_server.CacheServer() as server:
        yield server


def test_the_generated_code_is_made_from_the_proto() -> None:
    generate.load()
    assert generate.current()
    stamp = generate.STAMP.read_text()
    generate.PROTO.touch()  # a touch changes no byte: still current
    assert generate.current()
    assert stamp.startswith(generate.hashlib.sha256(generate.PROTO.read_bytes()).hexdigest())


def test_store_get_and_dump_through_the_protected_client(running: Any) -> None:
    with cache_client.CacheClient(running.target, cache_client.protection()) as client:
        client.store("b", b"2")
        client.store("a", b"1")
        assert client.get("a") == b"1"
        assert client.get("missing") is None
        assert client.dump() == {"a": b"1", "b": b"2"}
    assert running.service.storage == {"a": b"1", "b": b"2"}


def test_retries_answer_through_injected_faults() -> None:
    chaos = cache_server.protection(error_rate=0.5, seed=3)
    with cache_server.CacheServer(chaos) as server:
        server.service.storage["k"] = b"v"
        with cache_client.CacheClient(server.target) as bare:
            bare_answers, codes = 0, set()
            for _ in range(20):
                try:
                    bare_answers += bare.get("k") == b"v"
                except grpc.RpcError as error:
                    codes.add((error.code(), "injected" in error.details()))
        pipeline = cache_client.protection(attempts=8)
        with cache_client.CacheClient(server.target, pipeline) as client:
            answers = [client.get("k") for _ in range(20)]
    assert answers == [b"v"] * 20
    assert bare_answers < 20
    assert codes == {(grpc.StatusCode.UNAVAILABLE, True)}
    assert server.service.calls == bare_answers + 20


def test_the_server_sheds_load_past_its_bulkhead() -> None:
    entered, release = threading.Event(), threading.Event()

    def hold(context: rs.CallContext) -> None:
        entered.set()
        release.wait(10.0)

    bulkhead = rs.Bulkhead(max_concurrent=1, max_queue=0)
    holding = rs.FaultInjector(behaviour=hold, behaviour_rate=1.0)
    pipeline = rs.Pipeline.builder().add(bulkhead).add(holding).build()
    with cache_server.CacheServer(pipeline) as server, cache_client.CacheClient(server.target) as c:
        first = c.stub.Get.future(cache_client.cache_pb2.GetReq(key="x"), timeout=10.0)
        assert entered.wait(10.0)
        with pytest.raises(grpc.RpcError) as caught:
            c.get("y")
        release.set()
        first.result()
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert bulkhead.metrics().in_flight == 0


def test_the_demo_runs(capsys: pytest.CaptureFixture[str]) -> None:
    import main

    main.main(["--calls", "40", "--rate", "400"])
    out = capsys.readouterr().out
    assert "bare stub" in out
    assert "protected" in out
