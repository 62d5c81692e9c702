"""The events policies send to their listeners (`resilience.Middleware.subscribe`).

Every one is a frozen dataclass and a `ResilienceEvent`, which says how it is
counted in telemetry. A successful call sends none. The events of a call
that waited for its turn or was refused (Throttle, Bulkhead,
AdaptiveLimiter) are also `AdmissionEvent`s.

::

    from resilience.events import RetryEvent

    retry.subscribe(lambda event: print(event) if isinstance(event, RetryEvent) else None)
"""

from ._adaptive import AdaptiveLimiterEvent, LimitChange
from ._adaptive_throttler import AdaptiveThrottlerEvent
from ._backend import BackendErrorEvent
from ._budget import RetryBudgetExhausted
from ._bulkhead import BulkheadEvent
from ._circuit_breaker import CircuitOutcome, CircuitStateChange
from ._events import AdmissionEvent, ResilienceEvent
from ._fallback import FallbackEvent
from ._faults import FaultEvent, FaultPlan
from ._hedge import HedgeEvent
from ._retry import RetriesExhausted, RetryEvent
from ._throttle import ThrottleEvent
from ._timeout import TimeoutEvent

__all__ = [
    "AdaptiveLimiterEvent",
    "AdaptiveThrottlerEvent",
    "AdmissionEvent",
    "BackendErrorEvent",
    "BulkheadEvent",
    "CircuitOutcome",
    "CircuitStateChange",
    "FallbackEvent",
    "FaultEvent",
    "FaultPlan",
    "HedgeEvent",
    "LimitChange",
    "ResilienceEvent",
    "RetriesExhausted",
    "RetryBudgetExhausted",
    "RetryEvent",
    "ThrottleEvent",
    "TimeoutEvent",
]
