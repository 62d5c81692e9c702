"""Policies shared through Redis: per-call cost and round trips, beside the memory policy
and beside the peers that keep their state in Redis.

    python bench/redis_bench.py            # the full run (one to two minutes)
    python bench/redis_bench.py --quick    # a smoke run (a few seconds): figures are noise

Starts its own ``redis-server`` (persistence off) on a free port of 127.0.0.1
and stops it at the end. One process, sync calls of a trivial function:

* **Timing.** Every row is timed once per round, in turn (interleaved
  rounds, as in bench/suite.py), and keeps its median round, so a burst of
  noise on a shared machine hits one round of every row. Overheads subtract
  the bare call; "x memory" is the overhead over that of the same policy
  without a backend, in the same run.
* **Counting.** Then each Redis row runs again alone, on a fresh backend,
  with the server's statistics reset: *round trips* are the requests this
  process wrote to a socket (a command, a script, a pipeline: one each; the
  background sync included, the last flush of ``close`` not), cross-checked
  against ``backend.round_trips`` and the server's ``EVALSHA`` count
  (``INFO commandstats``). *Server commands* count every command Redis ran,
  those inside Lua scripts too; *server µs* is the server's own time per
  call. The keys each policy left are weighed with ``MEMORY USAGE``.
* **The server.** With ``redis-benchmark`` on PATH, how many of our scripts
  (and plain ``GET``) this Redis runs per second, 50 clients, each waiting
  for its answer, then 16 pipelined: a figure of this machine, for sizing
  a fleet.

The targets, judged on a full run (missed ones are listed; the exit status
is 0 either way, as in bench/suite.py): strict at most 1 round trip per
call and cheaper than both peers; local-first at most 0.05 round trips per
call and within 2x the memory policy's overhead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.connection

import resilience as rs
from resilience import _redis_lua as lua
from resilience.redis import RedisBackend

MODES = ("strict", "local-first")
HUGE_RATE = 1e9  # a Throttle that never refuses


def work(x: int = 1) -> int:
    return x + 1


# -- the server ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def redis_server() -> Iterator[tuple[str, int]]:
    """A throwaway redis-server on 127.0.0.1 (no persistence): yields its url and port."""
    executable = shutil.which("redis-server")
    if executable is None:
        sys.exit("redis-server not found on PATH (Debian/Ubuntu: apt-get install redis-server)")
    folder = tempfile.mkdtemp(prefix="resilience-bench-")
    port = free_port()
    options = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"]
    process = subprocess.Popen(
        [executable, "--port", str(port), "--dir", folder, *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        probe = redis.Redis.from_url(url, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 5.0
        while True:
            try:
                probe.ping()
                break
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"redis-server did not start on port {port}")
                time.sleep(0.02)
        probe.close()
        yield url, port
    finally:
        process.terminate()
        try:
            process.wait(5.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(folder, ignore_errors=True)


# -- counting what the process sends --------------------------------------------------------


class Sends:
    """Requests written to a Redis socket by this process (a pipeline is one)."""

    count = 0
    _lock = threading.Lock()

    @classmethod
    def install(cls) -> None:
        original: Callable[..., None] = redis.connection.AbstractConnection.send_packed_command

        def counted(self: Any, command: Any, check_health: bool = True) -> None:
            with cls._lock:
                cls.count += 1
            original(self, command, check_health)

        redis.connection.AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]


def command_stats(admin: redis.Redis) -> dict[str, tuple[int, int]]:
    """(calls, µs) per command since the last CONFIG RESETSTAT (the admin's own left out)."""
    info: dict[str, Any] = admin.info("commandstats")
    stats = {
        name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for name, v in info.items()
    }
    for own in ("info", "config|resetstat", "config", "scan", "type", "memory|usage"):
        stats.pop(own, None)
    return stats


# -- the rows ---------------------------------------------------------------------------------


@dataclass
class Row:
    policy: str  # CircuitBreaker, Throttle, ...
    setup: str  # "memory", "strict", "local-first", or a peer's name
    make: Callable[[], tuple[Callable[[], Any], RedisBackend | None, Callable[[], None]]]
    remote: bool  # talks to Redis on (most) calls: fewer calls per round
    peer: bool = False
    rounds: list[float] = field(default_factory=list)
    overhead: float = float("nan")  # µs per call
    trips: float = float("nan")  # client round trips per call
    backend_trips: float = float("nan")
    evalsha: float = float("nan")
    server_commands: float = float("nan")
    server_us: float = float("nan")  # the server's CPU per call (top-level commands)
    keys: list[tuple[str, str, int]] = field(default_factory=list)  # (key, type, bytes)


class Bench:
    def __init__(self, url: str, quick: bool) -> None:
        self.url = url
        self.quick = quick
        self.admin = redis.Redis.from_url(url)
        self.serial = 0
        self.rows: list[Row] = []

    def backend(self, mode: str) -> RedisBackend:
        self.serial += 1
        return RedisBackend.from_url(self.url, prefix=f"bench{self.serial}", mode=mode)

    def ours(self, policy: str, build: Callable[[RedisBackend | None], Callable[[], Any]]) -> None:
        def memory() -> tuple[Callable[[], Any], None, Callable[[], None]]:
            return build(None), None, lambda: None

        self.rows.append(Row(policy, "memory", memory, remote=False))
        for mode in MODES:

            def shared(
                mode: str = mode,
            ) -> tuple[Callable[[], Any], RedisBackend, Callable[[], None]]:
                backend = self.backend(mode)
                return build(backend), backend, backend.close

            remote = mode == "strict" or policy == "Bulkhead"  # a Bulkhead is always strict
            self.rows.append(Row(policy, mode, shared, remote=remote))

    def peers(self) -> None:
        import pybreaker
        from limits import RateLimitItemPerSecond
        from limits.storage import storage_from_string
        from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

        item = RateLimitItemPerSecond(10**9)

        def limiter(
            strategy: type[Any], key: str
        ) -> Callable[[], tuple[Callable[[], Any], None, Callable[[], None]]]:
            def make() -> tuple[Callable[[], Any], None, Callable[[], None]]:
                storage = storage_from_string(self.url)
                hit = strategy(storage).hit

                def call() -> int:
                    if not hit(item, key):
                        raise RuntimeError("refused")
                    return work()

                return call, None, lambda: None

            return make

        self.rows.append(
            Row(
                "Throttle",
                "limits, moving window",
                limiter(MovingWindowRateLimiter, "mw"),
                remote=True,
                peer=True,
            )
        )
        self.rows.append(
            Row(
                "Throttle",
                "limits, fixed window",
                limiter(FixedWindowRateLimiter, "fw"),
                remote=True,
                peer=True,
            )
        )

        def breaker(storage: bool) -> Callable[[], Any]:
            def make() -> tuple[Callable[[], Any], None, Callable[[], None]]:
                self.serial += 1
                options: dict[str, Any] = {}
                if storage:
                    client = redis.Redis.from_url(self.url)
                    options["state_storage"] = pybreaker.CircuitRedisStorage(
                        pybreaker.STATE_CLOSED, client, namespace=f"peer{self.serial}"
                    )
                cb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30, **options)
                return (lambda: cb.call(work)), None, lambda: None

            return make

        self.rows.append(
            Row("CircuitBreaker", "pybreaker, memory", breaker(False), remote=False, peer=True)
        )
        self.rows.append(
            Row(
                "CircuitBreaker",
                "pybreaker, CircuitRedisStorage",
                breaker(True),
                remote=True,
                peer=True,
            )
        )

    # -- timing (interleaved rounds) --

    def calls(self, row: Row) -> int:
        if row.remote:
            return 300 if self.quick else 3_000
        return 3_000 if self.quick else 30_000

    def time_all(self, rounds: int) -> float:
        bare_rounds: list[float] = []
        built = [(row, *row.make()) for row in self.rows]
        for _, call, _, _ in built:  # warm up: scripts loaded, connections open
            for _ in range(200):
                call()
        for _ in range(rounds):
            bare_rounds.append(per_call(work, 30_000))
            for row, call, _, _ in built:
                row.rounds.append(per_call(call, self.calls(row)))
        for _, _, _, close in built:
            close()
        bare = statistics.median(bare_rounds)
        for row in self.rows:
            row.overhead = max(0.0, statistics.median(row.rounds) - bare) * 1e6
        return bare

    # -- counting (one row at a time) --

    def count_all(self) -> None:
        for row in self.rows:
            if row.setup == "memory" or row.setup == "pybreaker, memory":
                continue
            self.admin.flushall()
            call, backend, close = row.make()
            for _ in range(50):
                call()
            if backend is not None:
                backend.flush()
            self.admin.config_resetstat()
            calls = self.calls(row)
            sends = Sends.count
            trips = backend.round_trips if backend is not None else 0
            for _ in range(calls):
                call()
            # Counted before `close`, whose last flush sends the last call's outcome (one
            # round trip once, not per call); the background sync's trips until then count.
            row.trips = (Sends.count - sends) / calls
            if backend is not None:
                row.backend_trips = (backend.round_trips - trips) / calls
            stats = command_stats(self.admin)
            close()
            scripts = {k: v for k, v in stats.items() if k.startswith(("evalsha", "eval"))}
            row.evalsha = sum(n for n, _ in scripts.values()) / calls
            row.server_commands = sum(n for n, _ in stats.values()) / calls
            # A script's time includes the commands it runs: count it, not them.
            top = scripts or stats
            row.server_us = sum(us for _, us in top.values()) / calls
            for key in sorted(self.admin.scan_iter(count=1000)):
                kind = text(self.admin.type(key))
                size = self.admin.memory_usage(key, samples=0) or 0
                row.keys.append((text(key), kind, int(size)))

    def weigh_bulkhead(self) -> list[tuple[str, str, int]]:
        """A Bulkhead's key holds its holders only: weigh it with 1 and 100 slots held
        (calls nested in one another, each holding one slot while the next runs)."""
        backend = self.backend("strict")
        bulkhead = rs.Bulkhead(1000, name="legacy-db", backend=backend)
        key = backend.key("bulkhead", "legacy-db", "holders")
        weights: dict[int, int] = {}

        def hold(depth: int, held: int = 1) -> None:
            if held in (1, 100):
                weights[held] = int(self.admin.memory_usage(key, samples=0) or 0)
            if depth > 1:
                bulkhead.call(hold, depth - 1, held + 1)

        bulkhead.call(hold, 100)
        backend.close()
        return [(f"`{key}`, {n} held", "zset", size) for n, size in sorted(weights.items())]


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def per_call(call: Callable[[], Any], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - started) / calls


# -- what a Redis server runs per second -------------------------------------------------------


def server_throughput(port: int, admin: redis.Redis, quick: bool) -> list[tuple[str, float, float]]:
    """Requests per second this server runs: GET, and each of our scripts' common operation
    (redis-benchmark, 50 clients; each waiting for every answer, then 16 pipelined)."""
    tool = shutil.which("redis-benchmark")
    if tool is None:
        return []
    throttle = admin.script_load(lua.THROTTLE)
    circuit = admin.script_load(lua.CIRCUIT)
    bulkhead = admin.script_load(lua.BULKHEAD)
    # The arguments our policies send (see _redis_throttle, _redis_circuit, _redis_bulkhead):
    # a call admitted (the circuit's carrying the previous call's success), a slot taken and
    # given back.
    gcra = ["r", "1e-09", "1000000000.0", "1.0", "0.0", "1000000000.0", "3600", "0"]
    breaker = ["a", "0.5", "", "", "20", "100", "", "10", "1", "inf", "f", "30.0", "0:1:1"]
    jobs: list[tuple[str, list[str]]] = [
        ("GET (a plain command)", ["GET", "k"]),
        ("Throttle, strict (GCRA script)", ["EVALSHA", throttle, "1", "s:{t}:b", *gcra]),
        (
            "CircuitBreaker, strict (state machine script)",
            ["EVALSHA", circuit, "2", "s:{c}:s", "s:{c}:w", *breaker, "", "", "3600"],
        ),
        (
            "Bulkhead (lease script: take and give back)",
            ["EVALSHA", bulkhead, "1", "s:{b}:h", "1000000", "10.0", "3600", "m", "m", ""],
        ),
    ]
    requests = 20_000 if quick else 200_000
    out: list[tuple[str, float, float]] = []
    for name, command in jobs:
        rates = []
        for pipelined in (1, 16):  # one request per round trip, as a fleet sends; or 16
            count = requests // 4 if pipelined == 1 else requests
            options = ["-c", "50", "-P", str(pipelined), "-n", str(count), "-q"]
            result = subprocess.run(
                [tool, "-p", str(port), *options, *command],
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            )
            found = re.findall(r"([\d.]+) requests per second", result.stdout)
            rates.append(float(found[-1]) if found else float("nan"))
        out.append((name, rates[0], rates[1]))
    return out


# -- the report ---------------------------------------------------------------------------------


def fmt(value: float, digits: int = 3) -> str:
    return "-" if value != value else f"{value:.{digits}f}"  # NaN: not measured


def report(
    bench: Bench,
    bare: float,
    bulkhead: list[tuple[str, str, int]],
    throughput: list[tuple[str, float, float]],
    quick: bool,
) -> None:
    memory = {row.policy: row.overhead for row in bench.rows if row.setup == "memory"}
    print(
        f"\nbare call: {bare * 1e9:.0f} ns; Python {platform.python_version()}, "
        f"redis-py {redis.__version__}, {os.cpu_count()} cores"
        + (" -- QUICK RUN: the figures are noise" if quick else "")
    )
    print(
        "\n| policy | setup | µs/call | x memory | round trips/call "
        "| backend.round_trips/call | EVALSHA/call | server commands/call | server µs/call |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in bench.rows:
        base = memory.get(row.policy)
        ratio = row.overhead / base if base and not row.peer else float("nan")
        setup = f"peer: {row.setup}" if row.peer else row.setup
        print(
            f"| {row.policy} | {setup} | {row.overhead:.2f} | {fmt(ratio, 1)} "
            f"| {fmt(row.trips)} | {fmt(row.backend_trips)} | {fmt(row.evalsha)} "
            f"| {fmt(row.server_commands, 2)} | {fmt(row.server_us, 1)} |"
        )

    print("\n## Targets\n")
    missed: list[str] = []

    def judge(ok: bool, text: str) -> None:
        print(f"- [{'x' if ok else ' '}] {text}")
        if not ok:
            missed.append(text)

    by = {(row.policy, row.setup): row for row in bench.rows}
    for row in bench.rows:
        if row.setup == "strict":
            judge(row.trips <= 1.0, f"{row.policy} strict: {row.trips:.4f} round trips/call <= 1")
        if row.setup == "local-first" and row.policy != "Bulkhead":
            judge(
                row.trips <= 0.05,
                f"{row.policy} local-first: {row.trips:.4f} round trips/call <= 0.05",
            )
            base = memory[row.policy]
            judge(
                row.overhead <= 2 * base,
                f"{row.policy} local-first: {row.overhead:.2f} µs/call <= 2 x memory "
                f"({2 * base:.2f} µs)",
            )
    for policy, peers in (
        ("Throttle", ("limits, moving window", "limits, fixed window")),
        ("CircuitBreaker", ("pybreaker, CircuitRedisStorage",)),
    ):
        ours = by[(policy, "strict")]
        for peer in peers:
            theirs = by[(policy, peer)]
            judge(
                ours.overhead < theirs.overhead,
                f"{policy} strict ({ours.overhead:.1f} µs) cheaper than {peer} "
                f"({theirs.overhead:.1f} µs): {ours.overhead / theirs.overhead:.2f}x",
            )

    print("\n## Keys each policy leaves in Redis (after the counting run)\n")
    print("| policy | setup | key | type | bytes (MEMORY USAGE) |")
    print("|---|---|---|---|---:|")
    for row in bench.rows:
        if row.peer or row.setup == "memory":
            continue
        for key, kind, size in row.keys:
            print(f"| {row.policy} | {row.setup} | `{key}` | {kind} | {size} |")
    for key, kind, size in bulkhead:  # no holders, no key: weighed while calls hold slots
        print(f"| Bulkhead | strict | {key} | {kind} | {size} |")

    if throughput:
        print(
            "\n## What this Redis runs per second (redis-benchmark, 50 clients; "
            "this machine, the benchmark client and the server sharing its cores)\n"
        )
        print("| request | per second, 1 at a time | per second, 16 pipelined |")
        print("|---|---:|---:|")
        for name, single, pipelined in throughput:
            print(f"| {name} | {single:,.0f} | {pipelined:,.0f} |")
    if quick:
        print("\n(quick run: the figures are indicative only; targets are judged by a full run)")
    elif missed:
        print("\ntargets missed:", *missed, sep="\n  ")
    else:
        print("\nevery target met")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default 9)")
    options = parser.parse_args()
    rounds = options.rounds or (3 if options.quick else 9)
    Sends.install()
    started = time.monotonic()
    with redis_server() as (url, port):
        bench = Bench(url, options.quick)
        bench.ours(
            "CircuitBreaker",
            lambda b: rs.CircuitBreaker(name="payments", backend=b)(work),
        )
        bench.ours(
            "Throttle",
            lambda b: rs.Throttle(HUGE_RATE, name="partner-api", backend=b)(work),
        )
        bench.ours("Bulkhead", lambda b: rs.Bulkhead(1000, name="legacy-db", backend=b)(work))
        bench.ours(
            "Retry + RetryBudget",
            lambda b: rs.Retry(attempts=3, budget=rs.RetryBudget(name="payments", backend=b))(work),
        )
        bench.peers()
        bare = bench.time_all(rounds)
        bench.count_all()
        bulkhead = bench.weigh_bulkhead()
        throughput = server_throughput(port, bench.admin, options.quick)
        report(bench, bare, bulkhead, throughput, options.quick)
    print(f"\n({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
