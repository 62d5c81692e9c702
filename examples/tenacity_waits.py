"""tenacity wait strategies work as Retry backoffs; the engine stays ours.

Run it: python examples/tenacity_waits.py
"""

from __future__ import annotations

import tenacity

import resilience as rs
from resilience.testing import FakeClock

clock = FakeClock()
calls = 0


@rs.Retry(attempts=4, backoff=tenacity.wait_exponential(multiplier=0.5, max=3), clock=clock)
def unstable() -> str:
    global calls
    calls += 1
    if calls < 4:
        raise ConnectionError(f"failure {calls}")
    return "ok"


print(unstable(), "after", calls, "calls; waited", clock.sleeps)
assert clock.sleeps == [0.5, 1.0, 2.0]
