"""The pytest plugin of `resilience` (registered through the ``pytest11`` entry point).

Fixtures:

* ``fake_clock``: a `FakeClock` starting at 0 that advances when slept on;
* ``resilience_events``: an `EventRecorder`; ``.watch(pipeline)`` in the test,
  unsubscribed at the end;
* ``resilience_faults``: a `FaultScope` to change fault injection for one
  test only: ``.update(injector, error_rate=1.0)``, ``.off()``; everything is
  put back when the test ends.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ._fake_clock import FakeClock
from ._recorder import EventRecorder
from ._switches import FaultScope


@pytest.fixture
def fake_clock() -> FakeClock:
    """A FakeClock at 0 that advances instantly when slept on; pass it as ``clock=``."""
    return FakeClock()


@pytest.fixture
def resilience_events() -> Iterator[EventRecorder]:
    """Records the events of what the test watches; stops listening afterwards."""
    with EventRecorder() as recorder:
        yield recorder


@pytest.fixture
def resilience_faults() -> Iterator[FaultScope]:
    """Fault injection changed for this test only; restored when it ends."""
    scope = FaultScope()
    try:
        yield scope
    finally:
        scope.restore()


__all__ = ["fake_clock", "resilience_events", "resilience_faults"]
