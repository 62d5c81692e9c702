"""`set_testing`: make a test suite fast and deterministic in one line."""

from __future__ import annotations

from typing import Any

from .._faults import FaultInjector
from .._testing_mode import MODE
from .._validate import integer

__all__ = ["FaultScope", "TestingSettings", "set_testing"]

_UNSET: Any = object()


class TestingSettings:
    """What `set_testing` changed; leaving it as a context manager restores the old values.

    Only the switches that call set are put back, so scopes that set
    different switches and end out of order (two threads or tasks, say) do
    not undo each other's. Scopes setting the same switch must end in
    reverse order, as nested ``with`` blocks do.
    """

    __slots__ = ("_previous",)

    def __init__(self, previous: dict[str, object]) -> None:
        self._previous = previous

    def restore(self) -> None:
        """Put back the switches this `set_testing` call changed, as they were before it."""
        for switch, value in self._previous.items():
            setattr(MODE, switch, value)

    def __enter__(self) -> TestingSettings:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.restore()


def set_testing(
    *,
    instant_waits: bool = _UNSET,
    inject_faults: bool = _UNSET,
    max_attempts: int | None = _UNSET,
) -> TestingSettings:
    """Change process-wide switches for tests; the ones you leave out stay as they are.

    * ``instant_waits=True``: every `Retry` waits zero seconds between
      attempts (backoff and ``retry_after`` hints alike).
    * ``inject_faults=False``: every `FaultInjector` lets calls through.
    * ``max_attempts=1``: every `Retry` makes at most that many attempts
      (None removes the cap).

    The switches apply at once. The return value restores the previous ones,
    with ``.restore()`` or as a context manager::

        with set_testing(instant_waits=True, max_attempts=1):
            ...
    """
    if instant_waits is not _UNSET and not isinstance(instant_waits, bool):
        raise TypeError(f"instant_waits must be a bool, got {type(instant_waits).__name__}")
    if inject_faults is not _UNSET and not isinstance(inject_faults, bool):
        raise TypeError(f"inject_faults must be a bool, got {type(inject_faults).__name__}")
    if max_attempts is not _UNSET and max_attempts is not None:
        integer(max_attempts, "max_attempts", minimum=1)
    changes = {
        "instant_waits": instant_waits,
        "inject_faults": inject_faults,
        "max_attempts": max_attempts,
    }
    previous: dict[str, object] = {}
    for switch, value in changes.items():
        if value is not _UNSET:
            previous[switch] = getattr(MODE, switch)
            setattr(MODE, switch, value)
    return TestingSettings(previous)


class FaultScope:
    """Changes to fault injection that are undone together by `restore`.

    ``update(injector, **changes)`` calls `FaultInjector.update` after saving
    the injector's settings; ``off()`` turns every injector off. The pytest
    fixture ``resilience_faults`` restores at the end of the test.
    """

    def __init__(self) -> None:
        self._saved: list[tuple[FaultInjector, object]] = []
        self._switches: list[TestingSettings] = []

    def update(self, injector: FaultInjector, **changes: Any) -> FaultInjector:
        """Change ``injector`` until `restore` (same keywords as `FaultInjector.update`)."""
        if not isinstance(injector, FaultInjector):
            raise TypeError(f"injector must be a FaultInjector, got {type(injector).__name__}")
        self._saved.append((injector, injector._snapshot()))
        injector.update(**changes)
        return injector

    def off(self) -> None:
        """Turn every FaultInjector off until `restore`."""
        self._switches.append(set_testing(inject_faults=False))

    def restore(self) -> None:
        """Undo every change, newest first."""
        while self._switches:
            self._switches.pop().restore()
        while self._saved:
            injector, snapshot = self._saved.pop()
            injector._restore(snapshot)
