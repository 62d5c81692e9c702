"""Helpers for testing code that uses resilience: a clock you move by hand."""

from ._fake_clock import FakeClock

__all__ = ["FakeClock"]
