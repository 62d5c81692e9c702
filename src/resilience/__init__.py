"""resilience: in-process resilience middleware for sync and async Python.

Each policy wraps any callable behind one call interface (a decorator,
``call`` and ``acall``), and `Pipeline.builder` stacks them in an explicit
order: the first added is the outermost.
"""

from . import backoff
from ._adaptive import (
    AIMD,
    AdaptiveLimiter,
    AdaptiveLimiterEvent,
    AdaptiveLimiterMetrics,
    Gradient2,
    LimitAlgorithm,
    LimitChange,
    LimitPermit,
    Vegas,
)
from ._adaptive_throttler import AdaptiveThrottler, AdaptiveThrottlerEvent, AdaptiveThrottlerMetrics
from ._budget import RetryBudget, RetryBudgetExhausted, RetryBudgetMetrics
from ._bulkhead import Bulkhead, BulkheadEvent, BulkheadMetrics
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
    LimitExceededError,
    RejectedError,
    ResilienceError,
    ThrottledError,
    TimeoutExceeded,
)
from ._fallback import Fallback, FallbackContext, FallbackEvent
from ._faults import FaultEvent, FaultInjector, FaultPlan
from ._middleware import AsyncEndpoint, Endpoint, Middleware
from ._pipeline import Pipeline, PipelineBuilder, PipelineOrderWarning
from ._retry import RetriesExhausted, Retry, RetryEvent
from ._throttle import Throttle, ThrottleEvent, ThrottleMetrics
from ._timeout import Timeout, TimeoutEvent

__version__ = "0.1.0"

__all__ = [
    "AIMD",
    "AdaptiveLimiter",
    "AdaptiveLimiterEvent",
    "AdaptiveLimiterMetrics",
    "AdaptiveThrottler",
    "AdaptiveThrottlerEvent",
    "AdaptiveThrottlerMetrics",
    "AsyncEndpoint",
    "Bulkhead",
    "BulkheadEvent",
    "BulkheadFullError",
    "BulkheadMetrics",
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
    "Gradient2",
    "InjectedFault",
    "LimitAlgorithm",
    "LimitChange",
    "LimitExceededError",
    "LimitPermit",
    "MemoryCircuitStore",
    "Middleware",
    "Pipeline",
    "PipelineBuilder",
    "PipelineOrderWarning",
    "RejectedError",
    "ResilienceError",
    "RetriesExhausted",
    "Retry",
    "RetryBudget",
    "RetryBudgetExhausted",
    "RetryBudgetMetrics",
    "RetryEvent",
    "SystemClock",
    "Throttle",
    "ThrottleEvent",
    "ThrottleMetrics",
    "ThrottledError",
    "Timeout",
    "TimeoutEvent",
    "TimeoutExceeded",
    "Vegas",
    "backoff",
    "current",
    "tags",
]
