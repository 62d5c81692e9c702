"""resilience: in-process resilience middleware for sync and async Python.

Each policy wraps any callable behind one call interface (a decorator,
``call`` and ``acall``), and `Pipeline.builder` stacks them in an explicit
order: the first added is the outermost.
"""

from . import backoff
from ._circuit_breaker import CircuitBreaker, CircuitOutcome, CircuitStateChange
from ._circuit_store import (
    CircuitMetrics,
    CircuitRules,
    CircuitState,
    CircuitStore,
    MemoryCircuitStore,
)
from ._clock import Clock, SystemClock
from ._context import CallContext, current, tags
from ._errors import (
    BulkheadFullError,
    CircuitOpenError,
    InjectedFault,
    RejectedError,
    ResilienceError,
    ThrottledError,
    TimeoutExceeded,
)
from ._fallback import Fallback, FallbackContext, FallbackEvent
from ._faults import FaultEvent, FaultInjector, FaultPlan
from ._middleware import AsyncEndpoint, Endpoint, Middleware
from ._pipeline import Pipeline, PipelineBuilder, PipelineOrderWarning
from ._retry import Retry, RetryEvent
from ._timeout import Timeout

__version__ = "0.1.0"

__all__ = [
    "AsyncEndpoint",
    "BulkheadFullError",
    "CallContext",
    "CircuitBreaker",
    "CircuitMetrics",
    "CircuitOpenError",
    "CircuitOutcome",
    "CircuitRules",
    "CircuitState",
    "CircuitStateChange",
    "CircuitStore",
    "Clock",
    "Endpoint",
    "Fallback",
    "FallbackContext",
    "FallbackEvent",
    "FaultEvent",
    "FaultInjector",
    "FaultPlan",
    "InjectedFault",
    "MemoryCircuitStore",
    "Middleware",
    "Pipeline",
    "PipelineBuilder",
    "PipelineOrderWarning",
    "RejectedError",
    "ResilienceError",
    "Retry",
    "RetryEvent",
    "SystemClock",
    "ThrottledError",
    "Timeout",
    "TimeoutExceeded",
    "backoff",
    "current",
    "tags",
]
