"""The SRE book's client-side throttling, on a backend that loses most of its capacity.

    python bench/plot_throttler.py                 # writes docs/images/adaptive-throttler.png
    python bench/plot_throttler.py --out FILE.png  # somewhere else

A client offers 100 calls a second, through one `AdaptiveThrottler` with its
defaults (K = 2, a two-minute window), to a backend that accepts up to 100
calls a second, then only 20 from t = 60 s to t = 360 s, then 100 again. A
request over the backend's capacity is refused (`ConnectionRefusedError`,
which the throttler counts as not accepted). Everything runs on a
`FakeClock` with a fixed seed, so every run draws the same picture.

It prints what reached the backend while it was overloaded (the book's
claim: about K times what it accepts) and how long the client took to stop
shedding once the capacity came back. Needs matplotlib.
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib

import resilience as rs
from resilience.testing import FakeClock

OFFERED = 100  # calls a second
SECONDS = 600
OVERLOAD = (60, 360)
CAPACITY = (100, 20)  # healthy, overloaded


def simulate() -> tuple[list[int], list[int], list[float]]:
    """Per second: calls sent to the backend, calls it accepted, rejection probability."""
    clock = FakeClock()
    throttler = rs.AdaptiveThrottler(seed=7, clock=clock)
    sent = [0] * SECONDS
    accepted = [0] * SECONDS
    chance = [0.0] * SECONDS
    used = 0

    def backend(second: int) -> str:
        nonlocal used
        sent[second] += 1
        capacity = CAPACITY[1] if OVERLOAD[0] <= second < OVERLOAD[1] else CAPACITY[0]
        if used >= capacity:
            raise ConnectionRefusedError("over capacity")
        used += 1
        accepted[second] += 1
        return "ok"

    for second in range(SECONDS):
        used = 0
        chance[second] = throttler.probability
        for _ in range(OFFERED):
            with contextlib.suppress(rs.ThrottledError, ConnectionRefusedError):
                throttler.call(backend, second)
            clock.advance(1 / OFFERED)
    return sent, accepted, chance


def main() -> None:
    root = pathlib.Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(root / "docs" / "images" / "adaptive-throttler.png"))
    options = parser.parse_args()
    sent, accepted, chance = simulate()
    steady = range(OVERLOAD[1] - 60, OVERLOAD[1])
    mean_sent = sum(sent[s] for s in steady) / len(steady)
    mean_accepted = sum(accepted[s] for s in steady) / len(steady)
    print(
        f"overloaded, last minute: {mean_sent:.1f} calls/s reached the backend, which accepted "
        f"{mean_accepted:.1f}/s: {mean_sent / mean_accepted:.2f}x (K = 2)"
    )
    first = next(s for s in range(OVERLOAD[0], SECONDS) if sent[s] < OFFERED)
    print(f"shedding began {first - OVERLOAD[0]} s after the capacity dropped")
    back = next(s for s in range(OVERLOAD[1], SECONDS) if sent[s] == OFFERED and chance[s] == 0)
    print(f"shedding stopped {back - OVERLOAD[1]} s after the capacity came back")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
    seconds = range(SECONDS)
    capacity = [CAPACITY[1] if OVERLOAD[0] <= s < OVERLOAD[1] else CAPACITY[0] for s in seconds]
    top.plot(seconds, [OFFERED] * SECONDS, color="0.6", ls="--", label="offered by the client")
    top.plot(seconds, capacity, color="black", lw=3, alpha=0.3, label="backend capacity")
    top.plot(seconds, sent, label="sent to the backend")
    top.plot(seconds, accepted, label="accepted by the backend")
    top.set_ylabel("calls per second")
    top.set_ylim(0, 115)
    top.legend(loc="lower right", fontsize=8)
    top.set_title("AdaptiveThrottler (K = 2, two-minute window): sheds locally, recovers")
    bottom.plot(seconds, chance, color="tab:red")
    bottom.set_ylabel("rejection probability")
    bottom.set_xlabel("simulated seconds")
    bottom.set_ylim(0, 1)
    figure.tight_layout()
    out = pathlib.Path(options.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
