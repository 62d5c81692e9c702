"""Where a stateful policy keeps its state: the interfaces, and the in-process stores.

A `resilience.CircuitBreaker` keeps its state in a `CircuitStore`, by default
a `MemoryCircuitStore`; `resilience.redis` has the stores shared by many
processes. Every store enters through the same door: the operations of its
interface, and the `CircuitLane` it may open to its breaker for the fast path.
A policy given ``backend=`` (a `Backend`, such as `resilience.redis.RedisBackend`)
asks it for its shared part once, at construction.
"""

from ._backend import Backend
from ._circuit_store import NO_LANE, CircuitLane, CircuitRules, CircuitStore, MemoryCircuitStore

__all__ = [
    "NO_LANE",
    "Backend",
    "CircuitLane",
    "CircuitRules",
    "CircuitStore",
    "MemoryCircuitStore",
]
