"""Convergence of the adaptive limit: AIMD, Vegas and Gradient2 against a server's capacity.

    python bench/plot_adaptive.py                 # writes docs/images/adaptive-limit.png
    python bench/plot_adaptive.py --out FILE.png  # somewhere else

A discrete-event simulation on a `FakeClock` (no real time passes, so every
run draws the same picture). The server has C workers and takes 20 ms a
call; with n calls in, each takes ``20 ms * max(1, n / C)``: past C, calls
queue and latency rises while throughput stays flat. Calls arrive at 1.25x
the largest capacity (4,000 a second), open loop: a refused call is lost.
C is 64, then 32 (half the servers go away), then 64 again. The limiter
ends a window every 0.1 s (about 320 calls). The same model, with the same
parameters, is the simulation test in ``tests/test_adaptive.py``.

It prints, for each algorithm and each phase, the number of windows until
the limit entered C +-25 % for good, and the limits it then kept. Needs
matplotlib.
"""

from __future__ import annotations

import argparse
import heapq
import pathlib
from collections.abc import Callable

import resilience as rs
from resilience.testing import FakeClock

BASE = 0.020
WINDOW = 0.1
PHASES = [(8.0, 64), (6.0, 32), (6.0, 64)]


def simulate(algorithm: rs.LimitAlgorithm) -> list[tuple[float, int]]:
    """``(time, limit)`` at every change of the limit, over all the phases."""
    clock = FakeClock()
    limiter = rs.AdaptiveLimiter(
        algorithm, clock=clock, window_seconds=WINDOW, window_samples=10, max_limit=500
    )
    gap = BASE / (1.25 * max(c for _, c in PHASES))
    pending: list[tuple[float, int, rs.LimitPermit]] = []
    running = 0
    order = 0
    trace = [(0.0, limiter.limit)]
    start = 0.0
    for seconds, capacity in PHASES:
        arrival = start
        while arrival < start + seconds:
            while pending and pending[0][0] <= arrival:
                at, _, permit = heapq.heappop(pending)
                clock.advance(at - clock.monotonic())
                running -= 1
                permit.record()
            clock.advance(arrival - clock.monotonic())
            permit = limiter.try_acquire()
            if permit is not None:
                running += 1
                order += 1
                latency = BASE * max(1.0, running / capacity)
                heapq.heappush(pending, (arrival + latency, order, permit))
            if limiter.limit != trace[-1][1]:
                trace.append((clock.monotonic(), limiter.limit))
            arrival += gap
        start += seconds
    trace.append((start, limiter.limit))
    return trace


def settle(trace: list[tuple[float, int]], start: float, end: float, capacity: int) -> str:
    """Windows until the limit stays within C +-25 %, and its range over the phase's last half."""
    low, high = 0.75 * capacity, 1.25 * capacity
    current = [value for at, value in trace if at <= start][-1]
    entered: float | None = start if low <= current <= high else None
    for at, value in trace:
        if start < at < end:
            inside = low <= value <= high
            entered = (entered if entered is not None else at) if inside else None
    middle = (start + end) / 2
    late = [value for at, value in trace if middle < at < end]
    late.append([value for at, value in trace if at <= middle][-1])
    kept = f"{min(late)}-{max(late)}" if min(late) != max(late) else f"{min(late)}"
    if entered is None:
        return f"never settles within +-25 %; {kept} over the last half"
    windows = (entered - start) / WINDOW
    return f"{windows:4.0f} windows; {kept} over the last half"


ALGORITHMS: list[tuple[str, Callable[[], rs.LimitAlgorithm], str]] = [
    ("Vegas (defaults)", lambda: rs.Vegas(seed=3), "-"),
    ("AIMD (timeout = 1.2 x 20 ms)", lambda: rs.AIMD(timeout=1.2 * BASE), "-"),
    ("Gradient2 (rtt_tolerance = 1.0)", lambda: rs.Gradient2(rtt_tolerance=1.0), "-"),
    ("Gradient2 (defaults: tolerance 1.5)", lambda: rs.Gradient2(), ":"),
]


def main() -> None:
    root = pathlib.Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(root / "docs" / "images" / "adaptive-limit.png"))
    options = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 4.5))
    start = 0.0
    for seconds, capacity in PHASES:
        axes.fill_between(
            [start, start + seconds], 0.75 * capacity, 1.25 * capacity, color="0.9", lw=0
        )
        axes.plot([start, start + seconds], [capacity, capacity], color="black", lw=1.5)
        start += seconds
    axes.plot([], [], color="black", lw=1.5, label="capacity C (grey: C +-25 %)")
    for label, make, style in ALGORITHMS:
        trace = simulate(make())
        times = [at for at, _ in trace]
        limits = [value for _, value in trace]
        axes.step(times, limits, where="post", ls=style, label=label)
        print(label)
        start = 0.0
        for seconds, capacity in PHASES:
            print(f"  C={capacity:3d}: {settle(trace, start, start + seconds, capacity)}")
            start += seconds
    axes.set_xlabel("simulated seconds (windows of 0.1 s)")
    axes.set_ylabel("concurrency limit")
    axes.set_ylim(0, 120)
    axes.set_title("AdaptiveLimiter: the limit follows the server's capacity")
    axes.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    out = pathlib.Path(options.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
