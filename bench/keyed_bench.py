"""`Keyed`: per-call overhead from 1 to 100,000 keys, and the memory of an idle key.

    python bench/keyed_bench.py            # the full run (about half a minute)
    python bench/keyed_bench.py --quick    # a smoke run: figures are noise

Each key holds a `CircuitBreaker` (the per-host breaker of the docs). The
keys are made first; then calls go to keys drawn in a fixed pseudo-random
order over all of them, so that the dict and the LRU order are exercised as
a large, cold key space would. Rows are timed in turn, once per round,
keeping each row's median round. The overhead is the call through `Keyed`
minus the bare call of the same function. Target: the overhead at 100,000
keys at most 1.2x that at 1 key. Memory per idle key: tracemalloc's
growth over making 10,000 keys, divided by 10,000.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
import tracemalloc

import resilience as rs

SIZES = (1, 100, 10_000, 100_000)


def work(key: int) -> int:
    return key


def layer(size: int) -> tuple[rs.Keyed, list[int]]:
    keyed = rs.Keyed(
        lambda key: rs.CircuitBreaker(), key_from_args=lambda key: key, max_keys=max(SIZES)
    )
    for key in range(size):
        keyed.call(work, key)
    order = [random.Random(size).randrange(size) for _ in range(4096)]
    return keyed, order


def per_call(fn, order: list[int], repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        for key in order:
            fn(key)
    return (time.perf_counter() - start) / (repeat * len(order))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    options = parser.parse_args(argv)
    sizes = SIZES[:3] if options.quick else SIZES
    rounds, repeat = (3, 1) if options.quick else (9, 5)
    layers = {size: layer(size) for size in sizes}
    samples: dict[object, list[float]] = {"bare": [], **{size: [] for size in sizes}}
    order = layers[sizes[0]][1]
    for _ in range(rounds):
        samples["bare"].append(per_call(work, order, repeat))
        for size, (keyed, keys) in layers.items():
            samples[size].append(per_call(lambda key, k=keyed: k.call(work, key), keys, repeat))
    bare = statistics.median(samples["bare"])
    overhead = {size: statistics.median(samples[size]) - bare for size in sizes}
    print(f"python {sys.version.split()[0]}; {rounds} rounds; CircuitBreaker per key")
    print(f"{'keys':>8}{'overhead µs/call':>18}{'x 1 key':>9}")
    for size in sizes:
        print(f"{size:>8}{overhead[size] * 1e6:>18.3f}{overhead[size] / overhead[1]:>9.2f}")
    worst = overhead[sizes[-1]] / overhead[1]
    print(f"target: {sizes[-1]} keys at most 1.2x 1 key: {'met' if worst <= 1.2 else 'MISSED'}")
    del layers
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    keyed, _ = layer(10_000)
    after = tracemalloc.take_snapshot()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    tracemalloc.stop()
    print(f"memory per idle key (a CircuitBreaker with its chain): {grown / 10_000:,.0f} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
