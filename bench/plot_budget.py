"""What a retry budget saves a failing dependency: calls per second, with and without one.

    python bench/plot_budget.py                 # writes docs/images/retry-budget.png
    python bench/plot_budget.py --out FILE.png  # somewhere else

A client makes 100 calls a second through ``Retry(attempts=3, backoff=0)``
to a dependency that is healthy, then fails every call from t = 20 s to
t = 80 s, then recovers. Without a budget, each failing call is tried three
times: 300 calls a second reach the dependency. With ``RetryBudget()``
(Finagle's defaults: 0.2 of the calls, plus 10 a second, over 10 s) the
retries are capped at about 20 + 10 a second. Everything runs on a
`FakeClock`, so every run draws the same picture. Needs matplotlib.
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib

import resilience as rs
from resilience.testing import FakeClock

OFFERED = 100
SECONDS = 100
OUTAGE = (20, 80)


def simulate(budget: bool) -> list[int]:
    """Calls that reached the dependency in each second."""
    clock = FakeClock()
    retry = rs.Retry(3, backoff=0, budget=rs.RetryBudget(clock=clock) if budget else None)
    reached = [0] * SECONDS

    def dependency(second: int) -> str:
        reached[second] += 1
        if OUTAGE[0] <= second < OUTAGE[1]:
            raise ConnectionError("down")
        return "ok"

    for second in range(SECONDS):
        for _ in range(OFFERED):
            with contextlib.suppress(ConnectionError):
                retry.call(dependency, second)
            clock.advance(1 / OFFERED)
    return reached


def main() -> None:
    root = pathlib.Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(root / "docs" / "images" / "retry-budget.png"))
    options = parser.parse_args()
    without, with_budget = simulate(budget=False), simulate(budget=True)
    outage = range(*OUTAGE)
    offered = OFFERED * len(outage)
    for label, reached in (("without a budget", without), ("with RetryBudget()", with_budget)):
        total = sum(reached[s] for s in outage)
        print(
            f"{label:20s}: {total} calls reached the dependency during the outage, "
            f"{total / offered:.2f}x the {offered} offered"
        )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 4))
    seconds = range(SECONDS)
    axes.axvspan(*OUTAGE, color="0.92", lw=0, label="the dependency fails every call")
    axes.plot(seconds, [OFFERED] * SECONDS, color="0.5", ls="--", label="offered calls")
    axes.step(seconds, without, where="post", label="Retry(attempts=3)")
    axes.step(seconds, with_budget, where="post", label="Retry(attempts=3, budget=RetryBudget())")
    axes.set_xlabel("simulated seconds")
    axes.set_ylabel("calls reaching the dependency per second")
    axes.set_ylim(0, 330)
    axes.set_title("RetryBudget: retries at most 20 % of calls + 10 a second, per 10 s window")
    axes.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    out = pathlib.Path(options.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
