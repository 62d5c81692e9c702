"""Fault injection: a seeded, flaky "recommendations" service, with and without protection.

One `FaultInjector` makes 25 % of the calls fail and 10 % of them slow (3 s,
on a fake clock, so nothing really sleeps). Seeded, it draws the same faults
run after run. The protected pipeline retries, times out slow attempts, and
falls back to an empty list; then the faults are limited to chaos-tagged
calls, switched off at run time, and switched off for a whole test suite.

Run it:  python examples/fault_injection.py
"""

from __future__ import annotations

import time

import resilience as rs
from resilience.testing import FakeClock, set_testing

SEED = 2024
CALLS = 1000


def recommendations(user_id: int) -> list[str]:
    """The real service, healthy: every failure below is injected."""
    return [f"book-{user_id}", f"film-{user_id}"]


def flaky(clock: FakeClock) -> rs.FaultInjector:
    return rs.FaultInjector(
        error=ConnectionResetError(104, "connection reset by peer"),
        error_rate=0.25,
        latency=3.0,
        latency_rate=0.10,
        seed=SEED,
        clock=clock,
        name="recommender",
    )


def unprotected() -> tuple[int, float]:
    """Successes out of CALLS, and the fake seconds spent, with the injector alone."""
    clock = FakeClock()
    chaos = flaky(clock)
    ok = 0
    for user in range(CALLS):
        try:
            chaos.call(recommendations, user)
            ok += 1
        except ConnectionError:
            pass
    return ok, clock.monotonic()


def protected() -> tuple[int, int, float]:
    """Real answers, fallbacks and fake seconds spent, through a whole pipeline."""
    clock = FakeClock()
    fallbacks = 0

    def count_fallback(event: rs.events.FallbackEvent) -> None:
        nonlocal fallbacks
        fallbacks += 1

    pipeline = (
        rs.Pipeline.builder("recommendations")
        .add(rs.Fallback(value=[], on_fallback=count_fallback))
        .add(
            rs.Retry(attempts=3, on=(ConnectionError, rs.TimeoutExceeded), backoff=0.1, clock=clock)
        )
        .add(rs.Timeout(1.0, clock=clock))  # per attempt: a 3 s injected delay times out
        .add(flaky(clock))  # innermost, next to the call
        .build()
    )
    real = 0
    for user in range(CALLS):
        if pipeline.call(recommendations, user):
            real += 1
    return real, fallbacks, clock.monotonic()


def main() -> None:
    started = time.perf_counter()

    print(f"{CALLS} calls, 25 % injected errors, 10 % injected 3 s delays (seed {SEED}):")
    ok, spent = unprotected()
    print(f"  unprotected: {ok} succeeded ({ok / CALLS:.0%}), {spent:.0f} s of fake time")
    assert abs(ok / CALLS - 0.75) < 0.05, ok
    assert unprotected() == (ok, spent), "the same seed must give the same faults"

    real, fallbacks, spent = protected()
    print(
        f"  protected:   {real} real answers ({real / CALLS:.1%}), {fallbacks} empty "
        f"fallbacks, no exception, {spent:.0f} s of fake time"
    )
    assert real + fallbacks == CALLS
    assert real / CALLS > 0.95 > ok / CALLS  # retries hide nearly every fault

    # Only the calls tagged chaos=True get faults: the blast radius of a game day.
    chaos = rs.FaultInjector(error_rate=1.0, enabled=lambda ctx: ctx.tags.get("chaos") is True)
    assert chaos.call(recommendations, 1) == ["book-1", "film-1"]
    with rs.tags(chaos=True):
        try:
            chaos.call(recommendations, 1)
            raise AssertionError("a chaos-tagged call should have failed")
        except rs.InjectedFault as exc:
            print(f"  chaos-tagged call: {type(exc).__name__}: {exc}")

        # Switched off at run time, then for a whole test suite.
        chaos.disable()
        assert chaos.call(recommendations, 2) == ["book-2", "film-2"]
        chaos.enable()
        with set_testing(inject_faults=False):
            assert chaos.call(recommendations, 3) == ["book-3", "film-3"]
        print("  disable() and set_testing(inject_faults=False) let calls through")

    # A rate computed per call: one tenant always fails, the others never.
    per_tenant = rs.FaultInjector(
        error_rate=lambda ctx: 1.0 if ctx.tags.get("tenant") == "acme" else 0.0
    )
    for tenant in ("acme", "globex"):
        with rs.tags(tenant=tenant):
            try:
                answer = per_tenant.call(recommendations, 4)
            except rs.InjectedFault:
                answer = "injected"
        print(f"  tenant {tenant}: {answer}")

    real_seconds = time.perf_counter() - started
    print(f"done in {real_seconds:.2f} s of real time")
    assert real_seconds < 30


if __name__ == "__main__":
    main()
