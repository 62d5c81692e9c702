"""The article's cache service under chaos, on a real gRPC server on 127.0.0.1.

    python examples/grpc_cache/main.py [--calls 200] [--seed 7]

The server injects faults into its handlers (20 % UNAVAILABLE, 5 % slower
than the client's timeout) and sheds load past 10 calls in flight. The same
Gets arrive at 200 per second, twice: once through a bare stub, once through
the article's client pipeline (Retry > Timeout > CircuitBreaker, by the gRPC
interceptor). The table shows what each client got, and how many times the
cache's Get handler ran for it (the load the retries add).
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import grpc
from client import CacheClient
from client import protection as client_protection
from server import CacheServer
from server import protection as server_protection

WORKERS = 32


def run(target: str, calls: int, rate: float, protected: bool) -> collections.Counter[str]:
    """``calls`` Gets arriving at ``rate`` per second (open loop); the outcome of each, by code."""
    outcomes: collections.Counter[str] = collections.Counter()
    pipeline = client_protection() if protected else None
    with CacheClient(target, pipeline) as client:

        def one(index: int) -> str:
            try:
                # The bare stub's call gets what each of the protected client's attempts gets.
                value = client.get(f"key-{index % 10}", timeout=1.0 if protected else 0.2)
            except grpc.RpcError as error:
                return str(error.code().name)
            return "OK" if value is not None else "MISSING"

        with ThreadPoolExecutor(WORKERS) as pool:
            futures = []
            for index in range(calls):
                futures.append(pool.submit(one, index))
                time.sleep(1.0 / rate)  # the arrivals do not wait for the answers
            outcomes.update(future.result() for future in futures)
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rate", type=float, default=200.0, help="calls per second")
    parser.add_argument("--seed", type=int, default=7)
    options = parser.parse_args(argv)
    chaos = server_protection(error_rate=0.2, latency=0.3, latency_rate=0.05, seed=options.seed)
    rows = []
    with CacheServer(chaos) as server:
        for index in range(10):
            server.service.storage[f"key-{index}"] = f"value {index}".encode()
        for protected in (False, True):
            before = server.service.calls
            outcomes = run(server.target, options.calls, options.rate, protected)
            rows.append((protected, outcomes, server.service.calls - before))
    print(
        f"{options.calls} Gets at {options.rate:g}/s; the server: 20 % UNAVAILABLE, "
        "5 % slower than the client's 0.2 s, at most 10 in flight\n"
    )
    print(f"{'client':<12}{'answered':>10}  {'errors by code':<48}{'Get runs':>10}")
    for protected, outcomes, served in rows:
        answered = outcomes["OK"] / options.calls
        errors = ", ".join(
            f"{code} {count}" for code, count in sorted(outcomes.items()) if code != "OK"
        )
        name = "protected" if protected else "bare stub"
        print(f"{name:<12}{answered:>10.1%}  {errors or '-':<48}{served:>10}")
    bare, guarded = rows[0][1]["OK"], rows[1][1]["OK"]
    return 0 if guarded > bare else 1


if __name__ == "__main__":
    raise SystemExit(main())
