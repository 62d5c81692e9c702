"""resilience: in-process resilience middleware for sync and async Python.

Each policy wraps any callable behind one call interface (a decorator,
``call`` and ``acall``), and `Pipeline.builder` stacks them in an explicit
order: the first added is the outermost.

What users write every day is here; the events policies send are in
`resilience.events`, their ``metrics()`` snapshots in `resilience.metrics`,
the storage of their state in `resilience.stores`, the delay strategies in
`resilience.backoff` and the test helpers in `resilience.testing`.
"""

from . import backoff, config, events, metrics, stores
from ._adaptive import AIMD, AdaptiveLimiter, Gradient2, LimitAlgorithm, LimitPermit, Vegas
from ._adaptive_throttler import AdaptiveThrottler
from ._backend import BackendUnavailableError
from ._budget import RetryBudget
from ._bulkhead import Bulkhead
from ._circuit_breaker import CircuitBreaker
from ._circuit_store import CircuitState
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
from ._fallback import Fallback, FallbackContext
from ._faults import FaultInjector
from ._hedge import Hedge, LatencyPercentile
from ._keyed import Keyed
from ._middleware import AsyncEndpoint, Endpoint, Middleware
from ._pipeline import Pipeline, PipelineBuilder, PipelineOrderWarning
from ._retry import Retry
from ._throttle import Throttle
from ._timeout import Timeout
from .config import Registry

__version__ = "0.1.0"

__all__ = [
    "AIMD",
    "AdaptiveLimiter",
    "AdaptiveThrottler",
    "AsyncEndpoint",
    "BackendUnavailableError",
    "Bulkhead",
    "BulkheadFullError",
    "CallContext",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitState",
    "Clock",
    "Endpoint",
    "Fallback",
    "FallbackContext",
    "FaultInjector",
    "Gradient2",
    "Hedge",
    "InjectedFault",
    "Keyed",
    "LatencyPercentile",
    "LimitAlgorithm",
    "LimitExceededError",
    "LimitPermit",
    "Middleware",
    "Pipeline",
    "PipelineBuilder",
    "PipelineOrderWarning",
    "Registry",
    "RejectedError",
    "ResilienceError",
    "Retry",
    "RetryBudget",
    "SystemClock",
    "Throttle",
    "ThrottledError",
    "Timeout",
    "TimeoutExceeded",
    "Vegas",
    "backoff",
    "config",
    "current",
    "events",
    "metrics",
    "stores",
    "tags",
]
