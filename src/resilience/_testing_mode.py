"""Process-wide switches for test suites, set with `resilience.testing.set_testing`.

The policies read them only on their slow paths (a retry's wait, an injector
that is about to draw), so they cost nothing on the happy path.
"""

from __future__ import annotations


class TestingMode:
    """The current switches (one instance, `MODE`)."""

    __slots__ = ("inject_faults", "instant_waits", "max_attempts")

    def __init__(self) -> None:
        self.instant_waits = False
        """Retry waits (backoff and retry_after hints) become zero."""
        self.inject_faults = True
        """False turns every FaultInjector off."""
        self.max_attempts: int | None = None
        """Caps the attempts of every Retry."""


MODE = TestingMode()
