"""Helpers for testing code that uses resilience.

* `FakeClock`: time that moves only when told to;
* `set_testing`: switches that make retries instant or single, and turn fault
  injection off, for a whole test suite;
* `attempts`: count the attempts a call made through a pipeline;
* a pytest plugin (registered automatically) with the fixtures
  ``fake_clock``, ``resilience_events`` and ``resilience_faults``.
"""

from ._attempts import AttemptCounter, attempts
from ._fake_clock import FakeClock
from ._recorder import EventRecorder
from ._switches import FaultScope, TestingSettings, set_testing

__all__ = [
    "AttemptCounter",
    "EventRecorder",
    "FakeClock",
    "FaultScope",
    "TestingSettings",
    "attempts",
    "set_testing",
]
