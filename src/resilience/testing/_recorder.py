"""`EventRecorder`: collect the events of policies and pipelines during a test."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from .._middleware import Middleware
from .._pipeline import Pipeline

__all__ = ["EventRecorder"]

E = TypeVar("E")


class EventRecorder:
    """Subscribes to policies and keeps every event they send, in order.

    ::

        recorder = EventRecorder()
        recorder.watch(users_get)          # a pipeline: all its layers
        users_get.call(fetch, 42)
        assert len(recorder.of(rs.events.RetryEvent)) == 2
        recorder.close()                   # unsubscribe (the pytest fixture does it)
    """

    def __init__(self) -> None:
        self.events: list[Any] = []
        """Every event received, in the order they came."""
        self._lock = threading.Lock()
        self._stops: list[Callable[[], None]] = []
        self._watched: dict[int, Middleware] = {}  # by id: each layer listened to once

    def watch(self, *policies: Middleware) -> EventRecorder:
        """Record the events of these policies (or pipelines) from now on.

        A layer is listened to once, however many of the watched pipelines
        hold it, so each of its events is recorded once.
        """
        for policy in policies:
            if not isinstance(policy, Middleware):
                raise TypeError(
                    f"can only watch a resilience.Middleware, got {type(policy).__name__}"
                )
        for layer in _layers(policies):
            if id(layer) not in self._watched:
                self._watched[id(layer)] = layer
                self._stops.append(Middleware.subscribe(layer, self._record))
        return self

    def _record(self, event: object) -> None:
        with self._lock:
            self.events.append(event)

    def of(self, kind: type[E]) -> list[E]:
        """The events of one type, e.g. ``recorder.of(rs.events.RetryEvent)``."""
        with self._lock:
            return [event for event in self.events if isinstance(event, kind)]

    def clear(self) -> None:
        """Forget the events recorded so far."""
        with self._lock:
            self.events.clear()

    def close(self) -> None:
        """Stop listening to everything watched."""
        stops, self._stops = self._stops, []
        self._watched = {}
        for stop in stops:
            stop()

    def __enter__(self) -> EventRecorder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EventRecorder({len(self.events)} events)"


def _layers(policies: tuple[Middleware, ...]) -> list[Middleware]:
    """Every layer of these policies, pipelines (and what they nest) included, in order."""
    out: list[Middleware] = []
    for policy in policies:
        out.append(policy)
        if isinstance(policy, Pipeline):
            out.extend(_layers(policy.layers))
    return out
