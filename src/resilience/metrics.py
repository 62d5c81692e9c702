"""The snapshots policies return from ``metrics()``: frozen dataclasses, read at once."""

from ._adaptive import AdaptiveLimiterMetrics
from ._adaptive_throttler import AdaptiveThrottlerMetrics
from ._budget import RetryBudgetMetrics
from ._bulkhead import BulkheadMetrics
from ._circuit_store import CircuitMetrics
from ._keyed import KeyedMetrics
from ._throttle import ThrottleMetrics

__all__ = [
    "AdaptiveLimiterMetrics",
    "AdaptiveThrottlerMetrics",
    "BulkheadMetrics",
    "CircuitMetrics",
    "KeyedMetrics",
    "RetryBudgetMetrics",
    "ThrottleMetrics",
]
