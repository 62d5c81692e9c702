"""Shared fixtures for the test suite."""

from __future__ import annotations

import pytest

from resilience._context import EMPTY, VAR
from resilience.testing import FakeClock


@pytest.fixture(autouse=True)
def _clean_call_context() -> None:
    """Every test starts, and must end, outside any resilient call."""
    assert VAR.get() is EMPTY
    yield
    assert VAR.get() is EMPTY, "a test left a call context behind"


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock starting at 0 that advances instantly when slept on."""
    return FakeClock()


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    """Run the test once synchronously through call(), once under asyncio through acall().

    See ``tests/modes.py`` for the helpers that turn one body into both.
    """
    return str(request.param)
