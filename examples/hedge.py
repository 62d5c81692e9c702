"""Hedged requests: a second copy of a slow request, the first answer wins.

    python examples/hedge.py

A fake service answers 9 calls in 10 in 10 ms; the tenth is stuck for 300 ms,
but a second copy of it answers in 10 ms. The
same 40 calls run without and with a Hedge (a second attempt after 30 ms);
each prints its slowest answer and how many attempts reached the service.
"""

from __future__ import annotations

import asyncio
import time

import resilience as rs

attempts = 0


async def service(key: int) -> str:
    global attempts
    attempts += 1
    slow = key % 10 == 3 and rs.current().attempt <= 1  # a hiccup: a second copy is fast
    await asyncio.sleep(0.3 if slow else 0.01)
    return f"value {key}"


async def run(policy: rs.Middleware | None) -> tuple[float, int]:
    global attempts
    attempts = 0
    slowest = 0.0

    async def one(key: int) -> None:
        nonlocal slowest
        began = time.perf_counter()
        if policy is None:
            await service(key)
        else:
            await policy.acall(service, key)
        slowest = max(slowest, time.perf_counter() - began)

    await asyncio.gather(*(one(key) for key in range(40)))
    return slowest, attempts


def main() -> None:
    events: list[rs.events.HedgeEvent] = []
    hedge = rs.Hedge(0.03, on_hedge=events.append)
    for name, policy in (("no hedging", None), ("Hedge(0.03)", hedge)):
        slowest, made = asyncio.run(run(policy))
        print(f"{name:<12} slowest answer {slowest * 1000:5.0f} ms, {made} attempts for 40 calls")
    print(f"hedges started: {len(events)}, reasons: {sorted({e.reason for e in events})}")


if __name__ == "__main__":
    main()
