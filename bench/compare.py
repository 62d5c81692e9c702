"""This tree against an earlier revision, in one interleaved run.

    python bench/compare.py                    # against the last commit (HEAD)
    python bench/compare.py --against v0.1.0   # against any git revision
    python bench/compare.py --quick            # fewer rounds

The earlier revision's ``src/resilience`` is extracted with ``git archive``
into a temporary folder and imported under another name
(``resilience_before``); its modules import each other relatively, so both
versions live in one process. Every row is timed once per round for both
versions, in turn, and keeps its best round, so noise on a shared machine
hits both sides alike. The figure that matters is the ratio after / before
of the overheads (the bare call subtracted).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import pathlib
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Any

import resilience as after

ROOT = pathlib.Path(__file__).resolve().parent.parent


def load_revision(revision: str, folder: pathlib.Path) -> ModuleType:
    """Import ``src/resilience`` of ``revision`` as the package ``resilience_before``."""
    archive = folder / "before.tar"
    with archive.open("wb") as out:
        subprocess.run(
            ["git", "archive", revision, "src/resilience"], cwd=ROOT, stdout=out, check=True
        )
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    package = folder / "src" / "resilience"
    spec = importlib.util.spec_from_file_location(
        "resilience_before", package / "__init__.py", submodule_search_locations=[str(package)]
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["resilience_before"] = module
    spec.loader.exec_module(module)
    return module


def work(x: int = 1) -> int:
    return x + 1


async def awork(x: int = 1) -> int:
    return x + 1


def policies(rs: Any) -> dict[str, Callable[[], Any]]:
    """A fresh policy (or pipeline) per row, built with the given version of the package."""
    return {
        "Retry": lambda: rs.Retry(attempts=3),
        "Timeout": lambda: rs.Timeout(10),
        "CircuitBreaker": lambda: rs.CircuitBreaker(),
        "Throttle": lambda: rs.Throttle(1e9),
        "Bulkhead": lambda: rs.Bulkhead(1000),
        "FaultInjector (disabled)": lambda: rs.FaultInjector(enabled=False),
        "Fallback": lambda: rs.Fallback(value=0),
        "AdaptiveLimiter": lambda: rs.AdaptiveLimiter(),
        "AdaptiveThrottler": lambda: rs.AdaptiveThrottler(),
        "Retry with budget": lambda: rs.Retry(attempts=3, budget=rs.RetryBudget()),
        "full pipeline (6 layers)": lambda: (
            rs.Pipeline.builder("full")
            .add(rs.Retry(attempts=3))
            .add(rs.Timeout(10))
            .add(rs.CircuitBreaker())
            .add(rs.Throttle(1e9))
            .add(rs.Bulkhead(1000))
            .add(rs.FaultInjector(enabled=False))
            .build()
        ),
    }


def rows(rs: Any) -> tuple[dict[str, Callable[[], Any]], dict[str, Callable[[], Awaitable[Any]]]]:
    sync: dict[str, Callable[[], Any]] = {"bare": work}
    asynchronous: dict[str, Callable[[], Awaitable[Any]]] = {"bare": awork}
    for name, make in policies(rs).items():
        sync[name] = make()(work)
        asynchronous[name] = make()(awork)
        call_policy = make()
        sync[f"{name} via call()"] = lambda p=call_policy: p.call(work)
        acall_policy = make()
        asynchronous[f"{name} via acall()"] = lambda p=acall_policy: p.acall(awork)
    return sync, asynchronous


def best_sync(fn: Callable[[], Any], n: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(n):
        fn()
    return (time.perf_counter_ns() - start) / n


async def best_async(fn: Callable[[], Awaitable[Any]], n: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(n):
        await fn()
    return (time.perf_counter_ns() - start) / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="HEAD", help="git revision to compare with")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("-k", "--only", default="", help="only rows whose name contains this")
    options = parser.parse_args()
    rounds = options.rounds or (3 if options.quick else 15)
    n = 5_000 if options.quick else 20_000

    with tempfile.TemporaryDirectory() as folder:
        before = load_revision(options.against, pathlib.Path(folder))
        sides = {"before": rows(before), "after": rows(after)}
    names_sync = [k for k in sides["after"][0] if options.only in k or k == "bare"]
    names_async = [k for k in sides["after"][1] if options.only in k or k == "bare"]
    best: dict[tuple[str, str, str], float] = {}

    for _ in range(rounds):
        for name in names_sync:
            for side in ("before", "after"):
                fn = sides[side][0].get(name)
                if fn is None:
                    continue
                key = ("sync", name, side)
                best[key] = min(best.get(key, float("inf")), best_sync(fn, n))

    async def run_async() -> None:
        for _ in range(rounds):
            for name in names_async:
                for side in ("before", "after"):
                    fn = sides[side][1].get(name)
                    if fn is None:
                        continue
                    key = ("async", name, side)
                    best[key] = min(best.get(key, float("inf")), await best_async(fn, n))

    asyncio.run(run_async())

    print(f"{'row':48s} {'before':>9s} {'after':>9s} {'after/before':>13s}   (overhead ns)")
    worst = 0.0
    for kind, names in (("sync", names_sync), ("async", names_async)):
        bare_b = best[(kind, "bare", "before")]
        bare_a = best[(kind, "bare", "after")]
        for name in names:
            if name == "bare" or (kind, name, "before") not in best:
                continue
            b = best[(kind, name, "before")] - bare_b
            a = best[(kind, name, "after")] - bare_a
            ratio = a / b if b > 0 else float("nan")
            worst = max(worst, ratio)
            print(f"{kind + ' ' + name:48s} {b:9.0f} {a:9.0f} {ratio:12.3f}x")
    print(f"\nworst ratio: {worst:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
