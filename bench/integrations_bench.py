"""The integrations' cost: client CPU per request through the httpx transport and the gRPC
interceptor, beside the bare client, on loopback.

    python bench/integrations_bench.py            # the full run (about a minute)
    python bench/integrations_bench.py --quick    # a smoke run: figures are noise

The servers run in their own processes (uvicorn with a hello-world ASGI app;
a grpc server with an echo method), so this process's CPU time
(``time.process_time``) is the client's alone. Rows are timed in turn, once
per round (interleaved rounds, as in bench/suite.py), and each keeps its
median round; the ratio is against the bare client of the same run.

The pipeline is the one the docs recommend: Timeout > Retry > CircuitBreaker
> Timeout, all on the happy path (every answer is a 200 / OK).
Targets: at most +5 % client CPU per request for both.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

import grpc
import httpx

import resilience as rs
from resilience.integrations.grpc import ClientInterceptor
from resilience.integrations.grpc import is_transient as grpc_transient
from resilience.integrations.httpx import ResilientTransport, is_transient

HOST = "127.0.0.1"

HTTP_SERVER = """
import sys, uvicorn
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"5")]})
    await send({"type": "http.response.body", "body": b"hello"})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="error",
            access_log=False, lifespan="off")
"""

GRPC_SERVER = """
import sys, grpc
from concurrent.futures import ThreadPoolExecutor
server = grpc.server(ThreadPoolExecutor(4))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
    "b.S", {"Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request)}),))
server.add_insecure_port("127.0.0.1:" + sys.argv[1])
server.start()
print("ready", flush=True)
server.wait_for_termination()
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def serve(code: str, port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(port)])
    for _ in range(500):  # bounded: up to 10 s for the server to listen
        try:
            with socket.create_connection((HOST, port), timeout=0.02):
                return process
        except OSError:
            time.sleep(0.02)
    process.kill()
    raise RuntimeError("the server did not start")


def pipeline(transient: Callable[[BaseException], bool]) -> rs.Pipeline:
    return (
        rs.Pipeline.builder("bench")
        .add(rs.Timeout(10.0))
        .add(rs.Retry(3, on=transient))
        .add(rs.CircuitBreaker(minimum_calls=100, failure_on=transient))
        .add(rs.Timeout(5.0))
        .build()
    )


def cpu_per_call(call: Callable[[], Any], calls: int) -> float:
    start = time.process_time()
    for _ in range(calls):
        call()
    return (time.process_time() - start) / calls


def measure(rows: dict[str, Callable[[], Any]], calls: int, rounds: int) -> dict[str, float]:
    for call in rows.values():  # warm up: connections, caches
        cpu_per_call(call, max(1, calls // 10))
    samples: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(rounds):
        for name, call in rows.items():
            samples[name].append(cpu_per_call(call, calls))
    return {name: statistics.median(values) for name, values in samples.items()}


def report(title: str, results: dict[str, float], target: float) -> bool:
    bare = results["bare"]
    print(f"\n{title}")
    print(f"{'row':<28}{'client CPU µs/call':>20}{'x bare':>9}")
    ok = True
    for name, value in results.items():
        ratio = value / bare
        print(f"{name:<28}{value * 1e6:>20.1f}{ratio:>9.3f}")
        if name != "bare" and ratio > target:
            ok = False
    print(f"target: at most {target:.2f}x bare: {'met' if ok else 'MISSED'}")
    return ok


def bench_httpx(calls: int, rounds: int) -> dict[str, float]:
    port = free_port()
    server = serve(HTTP_SERVER, port)
    url = f"http://{HOST}:{port}/hello"
    try:
        with (
            httpx.Client() as bare,
            httpx.Client(transport=ResilientTransport(pipeline(is_transient))) as guarded,
        ):
            return measure(
                {"bare": lambda: bare.get(url), "ResilientTransport": lambda: guarded.get(url)},
                calls,
                rounds,
            )
    finally:
        server.terminate()
        server.wait(10)


def bench_grpc(calls: int, rounds: int) -> dict[str, float]:
    port = free_port()
    server = serve(GRPC_SERVER, port)
    target = f"{HOST}:{port}"
    try:
        bare_channel = grpc.insecure_channel(target)
        raw = grpc.insecure_channel(target)
        guarded_channel = grpc.intercept_channel(raw, ClientInterceptor(pipeline(grpc_transient)))
        bare = bare_channel.unary_unary("/b.S/Echo")
        guarded = guarded_channel.unary_unary("/b.S/Echo")
        try:
            return measure(
                {"bare": lambda: bare(b"x"), "ClientInterceptor": lambda: guarded(b"x")},
                calls,
                rounds,
            )
        finally:
            bare_channel.close()
            raw.close()
    finally:
        server.terminate()
        server.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    options = parser.parse_args(argv)
    calls, rounds = (50, 3) if options.quick else (500, 15)
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cores; {rounds} rounds of {calls} calls"
    )
    report("httpx: a GET of 5 bytes", bench_httpx(calls, rounds), 1.05)
    report("gRPC: a unary echo", bench_grpc(calls, rounds), 1.05)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
