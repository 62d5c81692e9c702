"""`ResilienceEvent`: what every policy's events have in common, and say about themselves.

A policy sends typed events to its listeners (`Middleware.subscribe`). Each
event class says how it is reported (Polly's ``ResilienceEvent`` carries its
name the same way): the name it is counted under in telemetry, the error it
is about, and the attributes of its span event. `resilience.telemetry` asks
the event; it has no list of event types, so a new policy's events need no
change there.

The attribute names are OpenTelemetry semantic-convention style, all under
``resilience.`` but for OpenTelemetry's own ``error.type``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Final

PIPELINE_NAME: Final = "resilience.pipeline.name"
"""Attribute: the name of the pipeline (or standalone policy) running the call."""
POLICY_TYPE: Final = "resilience.policy.type"
"""Attribute: the kind of layer that sent the event (``retry``, ``circuit_breaker``...)."""
POLICY_NAME: Final = "resilience.policy.name"
"""Attribute: the name of the layer that sent the event."""
EVENT: Final = "resilience.event"
"""Attribute: what happened (``retry_scheduled``, ``circuit_opened``, ``rejected``...)."""
OUTCOME: Final = "resilience.outcome"
"""Attribute: how a call or attempt ended: ``success``, ``failure`` or ``cancelled``."""
ATTEMPT_NUMBER: Final = "resilience.attempt.number"
"""Attribute: the attempt's number, 1-based."""
ERROR_TYPE: Final = "error.type"
"""Attribute (OpenTelemetry's own): the exception's class name."""
CIRCUIT_STATE: Final = "resilience.circuit_breaker.state"
"""Attribute: a circuit breaker state (``closed``, ``open``, ``half_open``...)."""

#: What an event says about itself: its name, its error, its span event's details.
Described = tuple[str, BaseException | None, dict[str, Any]]


class ResilienceEvent:
    """The base of the events policies send to their listeners.

    ``event`` is the name the event is counted under (``resilience.event``);
    `describe` may refine it per event and add the details of its span event.
    A listener may ignore all this: events are plain frozen dataclasses.
    """

    __slots__ = ()

    event: ClassVar[str] = ""
    """The name telemetry counts this kind of event under."""

    def describe(self) -> Described | None:
        """``(name, error, details)`` for telemetry, or None when it is not counted."""
        error = getattr(self, "error", None)
        return self.event, error if isinstance(error, BaseException) else None, {}


WAIT_SECONDS: Final = "resilience.wait.seconds"
"""Attribute: seconds a call waited for its turn (or, refused, was told to wait)."""


class AdmissionEvent(ResilienceEvent):
    """The base of the events of a call that waited for its turn or was refused.

    Throttle, Bulkhead and AdaptiveLimiter send them: ``outcome`` is
    ``"waited"`` or ``"rejected"``, ``seconds`` the wait, ``error`` the
    refusal.
    """

    __slots__ = ()

    if TYPE_CHECKING:  # the fields of each dataclass that derives from it
        outcome: str
        seconds: float
        error: BaseException | None

    def describe(self) -> Described:
        return self.outcome, self.error, {WAIT_SECONDS: self.seconds}
