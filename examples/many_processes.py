"""Four worker processes share one circuit breaker and one rate through Redis.

    python examples/many_processes.py

Uses the Redis at $REDIS_URL, or starts a throwaway redis-server on a free
port of 127.0.0.1 (persistence off) when one is on PATH, and stops it after.
With neither, it says so and exits 0 (1 when CI=true, where redis-server
is installed).

1. Worker 0 calls a dependency that has gone down; its failures open the
   breaker "payments", and the three other workers, which never saw a
   failure, refuse their calls too.
2. The four workers call a partner through one `Throttle(50)` for two
   seconds, as fast as they can: together they get about 50 calls a second,
   not four times that.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import resilience as rs
from resilience.redis import RedisBackend

WORKERS = 4
RATE = 50
BURST = 5
SECONDS = 2.0


def worker(
    number: int, url: str, prefix: str, tripped: object, together: object, out: object
) -> None:
    backend = RedisBackend.from_url(url, prefix=prefix)  # local-first: the default mode
    payments = rs.CircuitBreaker(
        name="payments", consecutive_failures=5, open_seconds=30, backend=backend
    )
    partner = rs.Throttle(RATE, name="partner-api", burst=BURST, max_wait=1.0, backend=backend)

    # 1. One worker's failures open the breaker of every worker.
    if number == 0:
        for _ in range(5):
            with suppress(ConnectionError):
                payments.call(dependency_down)
        backend.flush()  # send them now rather than at the next sync (50 ms)
        tripped.set()  # type: ignore[attr-defined]
    else:
        tripped.wait(10)  # type: ignore[attr-defined]
        time.sleep(0.2)  # a few sync intervals: the fleet's state reaches this worker
    try:
        payments.call(lambda: "paid")
        refused = False
    except rs.CircuitOpenError:
        refused = True

    # 2. One rate for the four of them, from the same moment.
    together.wait(30)  # type: ignore[attr-defined]
    admitted = 0
    deadline = time.monotonic() + SECONDS
    while time.monotonic() < deadline:
        try:
            partner.call(lambda: None)
        except rs.ThrottledError:
            continue
        if time.monotonic() < deadline:
            admitted += 1
    out.put((number, refused, admitted))  # type: ignore[attr-defined]
    backend.close()


def dependency_down() -> None:
    raise ConnectionError("payments service unreachable")


@contextmanager
def redis_url() -> Iterator[str]:
    """$REDIS_URL, or a redis-server of our own for the run."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    binary = shutil.which("redis-server")
    if binary is None:
        message = "set REDIS_URL, or install redis-server (apt-get install -y redis-server)"
        if os.environ.get("CI", "").strip().lower() == "true":
            sys.exit(message)  # CI installs redis-server: its absence is a failure there
        print(f"skipped: {message}")
        sys.exit(0)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as directory:
        server = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                directory,
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_for(port)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            server.terminate()
            server.wait(10)


def wait_for(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"redis-server did not start on port {port}")


def main() -> None:
    spawn = multiprocessing.get_context("spawn")
    with redis_url() as url:
        prefix = f"example-{os.getpid()}"
        tripped, together, out = spawn.Event(), spawn.Barrier(WORKERS), spawn.Queue()
        workers = [
            spawn.Process(target=worker, args=(n, url, prefix, tripped, together, out))
            for n in range(WORKERS)
        ]
        for process in workers:
            process.start()
        results = sorted(out.get(timeout=60) for _ in workers)
        for process in workers:
            process.join(10)
    print("worker  breaker refused a call  partner calls admitted")
    for number, refused, admitted in results:
        print(f"{number:>6}  {'yes' if refused else 'no':>22}  {admitted:>22}")
    total = sum(admitted for _, _, admitted in results)
    print(
        f"the fleet made {total} partner calls in {SECONDS:g} s: {total / SECONDS:.0f}/s "
        f"against one shared rate of {RATE}/s (and its burst of {BURST})"
    )
    assert all(refused for _, refused, _ in results), "every worker sees the open breaker"
    # The bound of a local-first Throttle: burst + rate * (t + lease), the lease 0.1 s.
    assert total <= BURST + RATE * (SECONDS + 0.1), "the fleet stays within its rate"


if __name__ == "__main__":
    main()
