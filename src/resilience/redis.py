"""Policies shared by many processes, with their state in Redis (or Valkey).

::

    import resilience as rs
    from resilience.redis import RedisBackend

    backend = RedisBackend.from_url("redis://127.0.0.1:6379/0", prefix="shop")
    payments = rs.CircuitBreaker(name="payments", failure_ratio=0.5, backend=backend)
    partner = rs.Throttle(100, name="partner-api", backend=backend)
    legacy = rs.Bulkhead(20, name="legacy-db", backend=backend)
    budget = rs.RetryBudget(ratio=0.2, name="payments", backend=backend)

Every process that uses the same server, prefix and policy name shares one
state. Needs redis-py 5 or later: ``pip install 'resilience-layers[redis]'``.
See the "Many processes" page of the docs for the modes and what happens
when Redis fails.
"""

try:
    import redis as _redis  # noqa: F401
except ImportError as error:  # pragma: no cover - the extra is installed in the tests
    raise ImportError(
        "resilience.redis needs redis-py: pip install 'resilience-layers[redis]'"
    ) from error

from ._backend import BackendErrorEvent, BackendUnavailableError
from ._redis_backend import RedisBackend

__all__ = ["BackendErrorEvent", "BackendUnavailableError", "RedisBackend"]
