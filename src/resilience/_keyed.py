"""`Keyed`: one policy (or pipeline) per key, made on first use, evicted when idle.

A client that calls many hosts wants a breaker per host; a gateway wants a
rate per tenant. `Keyed` routes each call to the policy of its key, which a
factory makes the first time the key is seen, once, however many threads and
tasks race to make it. Keys are evicted least recently used past
``max_keys`` and when idle past ``idle_seconds``, but never while a call is
running through them, and never while their policy holds state that
eviction would throw away: an open or half-open breaker, a throttle whose
bucket is not full (see `Keyed` for why).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ._circuit_breaker import CircuitBreaker
from ._circuit_store import CircuitState
from ._clock import Clock, validate_clock
from ._context import TAGS, VAR, current
from ._middleware import AsyncEndpoint, Endpoint, Middleware
from ._pipeline import Pipeline
from ._throttle import Throttle
from ._validate import callable_or_none, integer, optional_name
from ._validate import seconds as _seconds

__all__ = ["Keyed", "KeyedMetrics"]

KeySource = str | Callable[[Any], Hashable]


@dataclass(frozen=True, slots=True)
class KeyedMetrics:
    """A snapshot of a `Keyed` layer."""

    keys: int
    """Keys held now."""
    created: int
    """Policies made since the layer was made (a key evicted and seen again counts twice)."""
    evicted: int
    """Keys evicted, idle or least recently used."""
    pinned: int
    """Keys held past ``max_keys`` because their calls were running or their state mattered."""
    per_key: dict[Hashable, Any] = field(default_factory=dict)
    """``metrics()`` of the most recently used keys' policies (at most ``limit`` of them)."""


class _Entry:
    """One key's policy, its chains around each ``next`` it was asked for, and its use."""

    __slots__ = ("async_chains", "in_flight", "last_used", "policy", "sync_chains")

    def __init__(self, policy: Middleware, now: float) -> None:
        self.policy = policy
        # The policy's chain around each ``next`` it runs before (one per pipeline it is in).
        self.sync_chains: dict[Endpoint, Endpoint] = {}
        self.async_chains: dict[AsyncEndpoint, AsyncEndpoint] = {}
        self.in_flight = 0
        self.last_used = now


def _at_rest(policy: Middleware) -> bool:
    """Whether dropping ``policy`` loses nothing a fresh one would not have.

    A breaker that is not closed would come back closed, letting through the
    calls it was refusing; a throttle with a drained bucket would come back
    full, letting through a burst the rate forbids. Other policies' state is
    either empty when no call runs (a bulkhead's slots) or statistics. A
    policy whose state is in a shared backend loses nothing: the state stays
    there, under the policy's name.
    """
    if getattr(policy, "backend", None) is not None:
        return True
    if isinstance(policy, Pipeline):
        return all(_at_rest(layer) for layer in policy.layers)
    if isinstance(policy, CircuitBreaker):
        return policy.state is CircuitState.CLOSED
    if isinstance(policy, Throttle):
        return policy.metrics().available >= policy.burst
    return True


class Keyed(Middleware):
    """Route each call to the policy of its key, made by ``factory(key)`` on first use.

    ::

        per_host = rs.Keyed(lambda host: rs.CircuitBreaker(name=f"api:{host}"),
                            key="host", max_keys=10_000, idle_seconds=600)

    ``key`` says where the key comes from: the name of a tag (``"host"``
    reads ``current().tags["host"]``), or a function of the `CallContext`.
    ``key_from_args`` is a function of the call's own arguments instead
    (``lambda user_id, **_: user_id``). A call whose key is missing (a tag
    not set) raises `KeyError` naming it, before anything runs.

    ``factory`` makes a policy or a pipeline for a key, exactly once per key
    while the key is held, even when threads and tasks race for a new key
    (it runs under the layer's lock: keep it quick, and don't call through
    the layer from it).

    Eviction: past ``max_keys`` the least recently used keys go; a key
    unused for ``idle_seconds`` goes too (checked as calls come, on
    ``clock``). A key is never evicted while a call runs through it, nor
    while its policy holds state a fresh one would not: a breaker that is
    open or half-open stays until it closes (a new, closed breaker would let
    through the calls the open one refuses: the outage would go unprotected
    for as long as it takes to trip again), and a throttle stays until its
    bucket is full again. Such keys are *pinned*: the layer may hold more
    than ``max_keys`` while they are, and says so in `metrics`.

    ``tag``: when set, the key is added to the call's tags under that name,
    for the layers inside and telemetry. Off by default: a key per tenant or
    host can be many distinct values for a metrics backend.
    """

    kind = "keyed"
    _read_only = frozenset({"factory", "key", "key_from_args", "max_keys", "clock", "name"})

    def __init__(
        self,
        factory: Callable[[Any], Middleware],
        *,
        key: KeySource | None = None,
        key_from_args: Callable[..., Hashable] | None = None,
        max_keys: int = 10_000,
        idle_seconds: float | None = None,
        tag: str | None = None,
        clock: Clock | None = None,
        name: str | None = None,
    ) -> None:
        if not callable(factory):
            raise TypeError(f"factory must be a function of the key, got {type(factory).__name__}")
        if (key is None) == (key_from_args is None):
            raise TypeError(
                "give exactly one of key= (a tag name or a function of the context) "
                "and key_from_args= (a function of the call's arguments)"
            )
        if key is not None and not (isinstance(key, str) and key) and not callable(key):
            raise TypeError(f"key must be a tag name or a function of the context, got {key!r}")
        self.factory = factory
        self.key = key
        self.key_from_args = callable_or_none(key_from_args, "key_from_args")
        if key is not None and not isinstance(key, str):
            callable_or_none(key, "key")
        self.max_keys = integer(max_keys, "max_keys", minimum=1)
        self.idle_seconds = None if idle_seconds is None else _seconds(idle_seconds, "idle_seconds")
        if tag is not None and not (isinstance(tag, str) and tag):
            raise TypeError(f"tag must be a non-empty tag name or None, got {tag!r}")
        self.tag = tag
        self.clock = validate_clock(clock)
        self.name = optional_name(name)
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._created = 0
        self._evicted = 0
        self._pinned = 0
        self._subscribers: list[Callable[[Any], object]] = []
        self._unsubscribers: dict[int, list[Callable[[], None]]] = {}

    def settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key if self.key is not None else self.key_from_args}
        out["max_keys"] = self.max_keys
        if self.idle_seconds is not None:
            out["idle_seconds"] = self.idle_seconds
        return out

    def __repr__(self) -> str:
        source = self.key if self.key is not None else self.key_from_args
        return f"Keyed({self._repr_name}key={source!r}, max_keys={self.max_keys})"

    # -- keys ------------------------------------------------------------------------------

    def _key_of(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
        source = self.key
        if isinstance(source, str):
            tags = VAR.get()[TAGS]
            try:
                return tags[source]  # type: ignore[no-any-return]
            except KeyError:
                raise KeyError(
                    f"Keyed{self._label}: the call has no tag {source!r} to take its key from; "
                    f"set it with resilience.tags({source}=...)"
                ) from None
        if source is not None:
            return source(current())
        assert self.key_from_args is not None
        key: Hashable = self.key_from_args(*args, **kwargs)
        return key

    def _enter(self, key: Hashable) -> _Entry:
        """The entry of ``key``, made if new, marked used and busy (under the lock)."""
        now = self.clock.monotonic()
        with self._lock:
            entries = self._entries
            entry = entries.get(key)
            if entry is None:
                entry = self._make(key, now)
            else:
                entries.move_to_end(key)
            entry.in_flight += 1
            entry.last_used = now
            return entry

    def _leave(self, entry: _Entry) -> None:
        now = self.clock.monotonic()
        with self._lock:
            entry.in_flight -= 1
            entry.last_used = now

    def _make(self, key: Hashable, now: float) -> _Entry:
        policy = self.factory(key)
        if not isinstance(policy, Middleware):
            raise TypeError(
                f"Keyed{self._label}: factory({key!r}) returned {type(policy).__name__}, "
                "not a resilience policy or Pipeline"
            )
        entry = _Entry(policy, now)
        for listener in self._subscribers:
            self._unsubscribers.setdefault(id(listener), []).append(policy.subscribe(listener))
        self._evict(now)
        self._entries[key] = entry
        self._created += 1
        return entry

    def _evict(self, now: float) -> None:
        """Drop idle keys, then the least recently used past ``max_keys - 1`` (for a new one)."""
        entries = self._entries
        idle = self.idle_seconds
        room = self.max_keys - 1
        if len(entries) <= room and (
            not entries or idle is None or now - next(iter(entries.values())).last_used < idle
        ):
            # Room, and the least recently used key is not idle: keys are in the order they
            # were last entered, so no later one is idle either.
            self._pinned = 0
            return
        pinned = 0
        for key in list(entries):
            entry = entries[key]
            over = len(entries) > room
            stale = idle is not None and now - entry.last_used >= idle
            if not over and not stale:
                if idle is None:
                    break  # LRU order: the rest are newer and there is room
                continue
            if entry.in_flight or not _at_rest(entry.policy):
                pinned += over
                continue
            del entries[key]
            self._evicted += 1
        self._pinned = pinned

    def evict_idle(self) -> int:
        """Drop the keys idle past ``idle_seconds`` now (they also go as calls come); how many."""
        with self._lock:
            before = self._evicted
            self._evict_idle_only(self.clock.monotonic())
            return self._evicted - before

    def _evict_idle_only(self, now: float) -> None:
        idle = self.idle_seconds
        if idle is None:
            return
        for key in list(self._entries):
            entry = self._entries[key]
            if now - entry.last_used >= idle and not entry.in_flight and _at_rest(entry.policy):
                del self._entries[key]
                self._evicted += 1

    def policy_for(self, key: Hashable) -> Middleware | None:
        """The policy held for ``key``, or None (this does not make one, nor mark it used)."""
        with self._lock:
            entry = self._entries.get(key)
            return None if entry is None else entry.policy

    def keys(self) -> list[Hashable]:
        """The keys held now, least recently used first."""
        with self._lock:
            return list(self._entries)

    def metrics(self, limit: int = 100) -> KeyedMetrics:
        """Counts, and the ``metrics()`` of the ``limit`` most recently used keys' policies."""
        limit = integer(limit, "limit", minimum=0)
        with self._lock:
            recent = list(self._entries.items())[-limit:] if limit else []
            counts = (len(self._entries), self._created, self._evicted, self._pinned)
        per_key = {}
        for key, entry in reversed(recent):
            read = getattr(entry.policy, "metrics", None)
            if callable(read):
                per_key[key] = read()
        return KeyedMetrics(*counts, per_key=per_key)

    def subscribe(self, listener: Callable[[Any], object], /) -> Callable[[], None]:
        """Listen to the events of every key's policy, those made later included."""
        stop_own = super().subscribe(listener)
        with self._lock:
            self._subscribers.append(listener)
            stops = self._unsubscribers.setdefault(id(listener), [])
            for entry in self._entries.values():
                stops.append(entry.policy.subscribe(listener))

        def unsubscribe() -> None:
            stop_own()
            with self._lock:
                if listener in self._subscribers:
                    self._subscribers.remove(listener)
                for stop in self._unsubscribers.pop(id(listener), []):
                    stop()

        return unsubscribe

    # -- the shells ------------------------------------------------------------------------

    def _tagged(self, key: Hashable) -> Any:
        if self.tag is None:
            return None
        raw = list(VAR.get())
        raw[TAGS] = MappingProxyType({**raw[TAGS], self.tag: key})
        return VAR.set(raw)

    def wrap(self, next: Endpoint, /) -> Endpoint:

        def keyed(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            key = self._key_of(args, kwargs)
            entry = self._enter(key)
            token = self._tagged(key)
            try:
                chain = entry.sync_chains.get(next)
                if chain is None:
                    chain = entry.sync_chains[next] = entry.policy.wrap(next)
                return chain(fn, args, kwargs)
            finally:
                if token is not None:
                    VAR.reset(token)
                self._leave(entry)

        return keyed

    def awrap(self, next: AsyncEndpoint, /) -> AsyncEndpoint:

        async def keyed(
            fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            key = self._key_of(args, kwargs)
            entry = self._enter(key)
            token = self._tagged(key)
            try:
                chain = entry.async_chains.get(next)
                if chain is None:
                    chain = entry.async_chains[next] = entry.policy.awrap(next)
                return await chain(fn, args, kwargs)
            finally:
                if token is not None:
                    VAR.reset(token)
                self._leave(entry)

        return keyed
