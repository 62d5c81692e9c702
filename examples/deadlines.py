"""Deadlines compose, and user code hands what is left to its own I/O.

Run it: python examples/deadlines.py
"""

from __future__ import annotations

import resilience as rs
from resilience.testing import FakeClock

clock = FakeClock()  # a fake clock so the example runs instantly


def http_get(url: str, *, timeout: float | None) -> str:
    """Stands in for an HTTP client that accepts a timeout in seconds."""
    print(f"  GET {url} with timeout={timeout}")
    return "200 OK"


@rs.Timeout(2.0, clock=clock)
def load_profile(user_id: int) -> str:
    # Go code passes ctx along; here the deadline travels in the call context.
    return http_get(f"/users/{user_id}", timeout=rs.current().remaining())


@rs.Timeout(5.0, clock=clock)
def page() -> str:
    clock.advance(0.5)  # some work before the inner call
    # The inner Timeout asks for 2 s, and gets them: the outer one has 4.5 s left.
    return load_profile(1)


@rs.Timeout(1.0, clock=clock)
def hurried_page() -> str:
    # Here the outer deadline is earlier: the inner 2 s never extend it.
    return load_profile(2)


print(page())
print(hurried_page())
with rs.tags(tenant="acme"):
    print(
        "tags seen inside a call:",
        dict(rs.Pipeline.builder("t").build().call(lambda: rs.current().tags)),
    )
