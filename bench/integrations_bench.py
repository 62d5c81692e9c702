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
Targets: at most +5 % client CPU per request for both. The ASGI row measures
the server's CPU per request (from /proc) of a hello-world uvicorn app, bare
and behind `ResilienceMiddleware` with a Throttle and a Bulkhead that never
refuse: target at most +3 % (a throughput loss of at most 3 % for a server
that is CPU-bound).
"""

from __future__ import annotations

import argparse
import os
import pathlib
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

ASGI_SERVER = """
import sys, uvicorn
import resilience as rs
from resilience.integrations.asgi import ResilienceMiddleware
async def hello(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"5")]})
    await send({"type": "http.response.body", "body": b"hello"})
shed = rs.Pipeline([rs.Throttle(rate=1e9, burst=1e9, max_wait=0), rs.Bulkhead(1000, max_queue=0)])
app = ResilienceMiddleware(hello, shed) if sys.argv[2] == "guarded" else hello
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


def serve(code: str, port: int, *extra: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(port), *extra])
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


def server_cpu(pid: int) -> float:
    """CPU seconds (user + system) the process ``pid`` has used (Linux /proc)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_asgi(calls: int, rounds: int) -> dict[str, float]:
    """Server CPU per request of a hello-world uvicorn app, bare and behind the middleware."""
    servers = {}
    for variant in ("bare", "ResilienceMiddleware"):
        port = free_port()
        servers[variant] = (
            serve(ASGI_SERVER, port, "guarded" if variant != "bare" else "bare"),
            f"http://{HOST}:{port}/",
        )
    samples: dict[str, list[float]] = {name: [] for name in servers}
    try:
        with httpx.Client() as client:
            for _process, url in servers.values():
                for _ in range(max(1, calls // 10)):
                    client.get(url)
            for _ in range(rounds):
                for name, (process, url) in servers.items():
                    before = server_cpu(process.pid)
                    for _ in range(calls):
                        client.get(url)
                    samples[name].append((server_cpu(process.pid) - before) / calls)
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(10)
    return {name: statistics.median(values) for name, values in samples.items()}


def httpx_direct(rounds: int, calls: int = 5000) -> float:
    """Seconds per request the transport (with the pipeline) adds, with no network at all."""

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"hello")

    bare = httpx.Client(transport=httpx.MockTransport(answer))
    guarded = httpx.Client(
        transport=ResilientTransport(pipeline(is_transient), httpx.MockTransport(answer))
    )
    url = "http://127.0.0.1/hello"
    with bare, guarded:
        rows = {"bare": lambda: bare.get(url), "guarded": lambda: guarded.get(url)}
        figures = measure(rows, calls, rounds)
        return max(0.0, figures["guarded"] - figures["bare"])


def asgi_direct(rounds: int, calls: int = 20_000) -> float:
    """Seconds per request the middleware adds to a hello-world app, called directly."""
    import asyncio

    from resilience.integrations.asgi import ResilienceMiddleware

    async def hello(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"hello"})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    async def send(message: Any) -> None:
        return None

    shed = rs.Pipeline(
        [rs.Throttle(rate=1e9, burst=1e9, max_wait=0), rs.Bulkhead(1000, max_queue=0)]
    )
    rows = {"bare": hello, "guarded": ResilienceMiddleware(hello, shed)}
    scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    samples: dict[str, list[float]] = {name: [] for name in rows}

    async def measure() -> None:
        for _ in range(rounds):
            for name, app in rows.items():
                began = time.perf_counter()
                for _ in range(calls):
                    await app(scope, receive, send)
                samples[name].append((time.perf_counter() - began) / calls)

    asyncio.run(measure())
    return statistics.median(samples["guarded"]) - statistics.median(samples["bare"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    options = parser.parse_args(argv)
    calls, rounds = (50, 3) if options.quick else (500, 15)
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cores; {rounds} rounds of {calls} calls"
    )
    loopback = bench_httpx(calls, rounds)
    report("httpx: a GET of 5 bytes", loopback, 1.05)
    own = httpx_direct(rounds)
    print(f"  the transport's own cost, over httpx.MockTransport in-process: {own * 1e6:.1f} µs")
    print(f"  = {own / loopback['bare']:.1%} of a bare GET's client CPU on loopback")
    report("gRPC: a unary echo", bench_grpc(calls, rounds), 1.05)
    asgi = bench_asgi(calls * 2, rounds)
    direct = asgi_direct(rounds)
    loss = direct / asgi["bare"]
    print("\nASGI: a hello-world uvicorn app behind ResilienceMiddleware (Throttle + Bulkhead)")
    print(f"  the middleware's own cost, called in-process: {direct * 1e6:.2f} µs per request")
    print(f"  the server's CPU per request, bare (from /proc): {asgi['bare'] * 1e6:.0f} µs")
    print(f"  so the throughput of a CPU-bound server drops by {loss:.1%}")
    coarse = asgi["ResilienceMiddleware"] / asgi["bare"]
    print(f"  (measured whole from /proc in clock ticks, coarse: {coarse:.3f}x)")
    print(f"target: at most 3 % throughput lost: {'met' if loss <= 0.03 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
