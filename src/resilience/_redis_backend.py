"""`RedisBackend`: the connection, the scripts, the health and the background sync.

The parts of each policy live beside it (`_redis_circuit`, `_redis_throttle`,
`_redis_bulkhead`, `_redis_budget`); they reach Redis only through
`RedisBackend.run` and `RedisBackend.arun`, which bound every operation by
the backend's timeout and turn every client error into `Unavailable`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry as RedisRetry

from . import _redis_lua as lua
from ._backend import (
    Backend,
    BackendAction,
    BackendErrorEvent,
    BackendUnavailableError,
    Unavailable,
)
from ._clock import Clock, validate_clock
from ._validate import number, seconds

logger = logging.getLogger("resilience")

_MODES = ("strict", "local-first")
_ACTIONS = ("local", "open", "closed")
_SCRIPTS = {
    "circuit": lua.CIRCUIT,
    "throttle": lua.THROTTLE,
    "bulkhead": lua.BULKHEAD,
    "budget": lua.BUDGET,
}


class Shared:
    """What every shared part of a policy has: its backend, its keys, its policy's reports."""

    kind = ""

    def __init__(self, backend: RedisBackend, name: str, policy: Any) -> None:
        self.backend = backend
        self.name = name
        self.policy = weakref.ref(policy) if policy is not None else None
        self.mode = backend.mode
        self.on_backend_error: BackendAction = backend.on_backend_error
        self.lock = threading.Lock()
        self._failing = False

    def key(self, part: str) -> str:
        return self.backend.key(self.kind, self.name, part)

    def failed(self, operation: str, problem: Unavailable, action: BackendAction) -> None:
        """Report a backend failure: logged once per outage, sent to the policy's listeners."""
        if not self._failing:
            self._failing = True
            logger.warning(
                "resilience: %s %r: the backend failed (%s: %s); %s until it answers again",
                self.kind,
                self.name,
                type(problem.error).__name__,
                problem.error,
                {
                    "local": "deciding in this process",
                    "open": "admitting calls",
                    "closed": "refusing calls",
                }[action],
            )
        policy = self.policy() if self.policy is not None else None
        if policy is not None and getattr(policy, "_listeners", None):
            policy._emit(BackendErrorEvent(self.name, operation, problem.error, action))

    def answered(self) -> None:
        if self._failing:
            self._failing = False
            logger.warning("resilience: %s %r: the backend answers again", self.kind, self.name)

    def refusal(self, problem: Unavailable) -> BackendUnavailableError:
        error = BackendUnavailableError(
            f"{self.kind} {self.name!r}: its backend is unavailable "
            f"({type(problem.error).__name__}: {problem.error})",
            name=self.name,
            retry_after=problem.retry_after,
        )
        error.__cause__ = problem.error
        return error

    def flush(self) -> None:
        """Send what waits to be sent, learn what others did (the background sync)."""


class RedisBackend(Backend):
    """Keep policies' state in Redis (or Valkey), shared by every process that uses it.

    ``client`` is a `redis.Redis`, ``aclient`` an optional `redis.asyncio.Redis`
    for async calls (without it they use ``client``); both must have a socket
    timeout no longer than ``timeout`` and no retries, so that a call never
    waits longer than that on Redis (`from_url` makes such clients).

    * ``prefix`` starts every key; processes with the same prefix and policy
      name share one state.
    * ``mode``: ``"local-first"`` (default) decides the common case in the
      process and syncs every ``sync_interval`` seconds; ``"strict"`` decides
      every call on the server, in one round trip. A Bulkhead is always strict.
    * ``on_backend_error``: ``"local"`` (default) carries on with in-process
      state, ``"open"`` admits calls, ``"closed"`` refuses them with
      `BackendUnavailableError`. After a failure the backend rests for
      ``retry_interval`` seconds before it is asked again.
    * ``lease_seconds``: a Bulkhead slot held by a process that died comes
      back after this long.
    * ``key_ttl``: seconds after which the keys of a policy nobody uses expire.
    * ``clock``: for tests and simulations only. Given, the scripts take their
      ``now`` from ``clock.monotonic()``, sent with each request, instead of
      the server's ``TIME``, so that policies on a `resilience.testing.FakeClock`
      are timed by it on the server too. Leave it None in production: the
      server's clock, one for the fleet, times every decision (a backend
      without it pays nothing for this option).
    """

    def __init__(
        self,
        *,
        client: Any,
        aclient: Any = None,
        prefix: str = "resilience",
        mode: str = "local-first",
        on_backend_error: str = "local",
        timeout: float = 0.05,
        sync_interval: float = 0.05,
        lease_seconds: float = 10.0,
        retry_interval: float = 1.0,
        key_ttl: float = 3600.0,
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(client, redis.Redis):
            raise TypeError(f"client must be a redis.Redis, got {type(client).__name__}")
        if aclient is not None and not isinstance(aclient, redis.asyncio.Redis):
            raise TypeError(
                f"aclient must be a redis.asyncio.Redis or None, got {type(aclient).__name__}"
            )
        if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
            raise ValueError(f"prefix must be a non-empty str without braces, got {prefix!r}")
        if mode not in _MODES:
            raise ValueError(f"mode must be 'strict' or 'local-first', got {mode!r}")
        if on_backend_error not in _ACTIONS:
            raise ValueError(
                f"on_backend_error must be 'local', 'open' or 'closed', got {on_backend_error!r}"
            )
        self.timeout = seconds(timeout, "timeout")
        if self.timeout > 5.0:
            raise ValueError(f"timeout must be at most 5 seconds, got {timeout!r}")
        self.sync_interval = seconds(sync_interval, "sync_interval")
        if not 0.001 <= self.sync_interval <= 10.0:
            raise ValueError(
                f"sync_interval must be between 0.001 and 10 seconds, got {sync_interval!r}"
            )
        self.lease_seconds = seconds(lease_seconds, "lease_seconds")
        if self.lease_seconds < 0.1:
            raise ValueError(f"lease_seconds must be at least 0.1, got {lease_seconds!r}")
        self.retry_interval = seconds(retry_interval, "retry_interval", allow_zero=True)
        self.key_ttl = math.ceil(number(key_ttl, "key_ttl", minimum=1.0))
        self.clock = None if clock is None else validate_clock(clock)
        _check_client(client, self.timeout, "client")
        if aclient is not None:
            _check_client(aclient, self.timeout, "aclient")
        self.client = client
        self.aclient = aclient
        self.prefix = prefix
        self.mode = mode
        self.on_backend_error = on_backend_error  # type: ignore[assignment]
        self._scripts = _register(client, self.clock)
        # A redis.asyncio client belongs to the event loop it first ran on: each loop gets
        # its own (the first one uses ``aclient``), closed when that loop shuts down.
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClient] = (
            weakref.WeakKeyDictionary()
        )
        self._aclient_free = aclient is not None
        self._owns_aclient = False  # from_url: the first loop's client is the backend's own
        self._down_until = 0.0
        self._last_error: BaseException | None = None
        self._parts: weakref.WeakSet[Shared] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._flusher: _Flusher | None = None
        self._pid = os.getpid()
        self.process_id = _process_id()
        self.round_trips = 0
        """Operations sent to Redis by this process (for benchmarks and tests)."""

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisBackend:
        """A backend with a sync and an async client for ``url`` (``redis://host:6379/0``).

        The clients time out after ``timeout`` (default 0.05 s) and never retry
        on their own: the backend decides what a failure means.
        """
        timeout = seconds(kwargs.get("timeout", 0.05), "timeout")
        options: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": RedisRetry(NoBackoff(), 0),
            "health_check_interval": 0,
        }
        client = redis.Redis.from_url(url, **options)
        aclient = redis.asyncio.Redis.from_url(
            url, **{**options, "retry": redis.asyncio.retry.Retry(NoBackoff(), 0)}
        )
        backend = cls(client=client, aclient=aclient, **kwargs)
        backend._owns_aclient = True
        return backend

    def __repr__(self) -> str:
        kwargs = self.client.connection_pool.connection_kwargs
        where = f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
        return (
            f"RedisBackend({where}, prefix={self.prefix!r}, mode={self.mode!r}, "
            f"on_backend_error={self.on_backend_error!r})"
        )

    # -- keys and attachment -------------------------------------------------------------

    def key(self, kind: str, name: str, part: str) -> str:
        """``prefix:{kind:name}:part``: the braces keep a policy's keys in one cluster slot."""
        return f"{self.prefix}:{{{kind}:{name}}}:{part}"

    def attach(self, kind: str, name: str, policy: Any) -> Any:
        import importlib

        modules = {
            "circuit_breaker": ("_redis_circuit", "RedisCircuitStore"),
            "throttle": ("_redis_throttle", "SharedThrottle"),
            "bulkhead": ("_redis_bulkhead", "SharedBulkhead"),
            "retry_budget": ("_redis_budget", "SharedBudget"),
        }
        if kind not in modules:
            raise ValueError(f"a {kind} cannot keep its state in a RedisBackend")
        module, cls = modules[kind]
        maker: Callable[[RedisBackend, str, Any], Shared] = getattr(
            importlib.import_module(f"resilience.{module}"), cls
        )
        part = maker(self, name, policy)
        with self._lock:
            # One live part per kind and name: a policy that was dropped frees its name.
            if any(other.kind == kind and other.name == name for other in self._parts):
                raise ValueError(
                    f"this backend already holds a {kind} named {name!r} in this process: "
                    f"give each policy its own name, or share the policy itself"
                )
            self._parts.add(part)
        return part

    # -- operations ----------------------------------------------------------------------

    def _check(self) -> None:
        if os.getpid() != self._pid:
            self._forked()
        if self._down_until and time.monotonic() < self._down_until:
            assert self._last_error is not None
            raise Unavailable(self._last_error, self._down_until - time.monotonic(), sent=False)

    def _failed(self, error: BaseException) -> Unavailable:
        self._last_error = error
        self._down_until = time.monotonic() + self.retry_interval
        # redis-py drops the connection that failed; the pool's others may be in use by
        # other threads, so they are left alone (each is dropped when it fails in turn).
        # A request that failed to connect never reached the server; any other failure (a
        # timeout above all) may come after the server applied it.
        unsent = isinstance(error, redis.ConnectionError) and "connecting to" in str(error)
        return Unavailable(error, self.retry_interval, sent=not unsent)

    def run(self, script: str, keys: list[str], args: list[Any]) -> list[Any]:
        """Run one script, bounded by the timeout; raises `Unavailable` on any failure."""
        self._check()
        self.round_trips += 1
        try:
            reply: list[Any] = self._scripts[script](keys=keys, args=args, client=self.client)
        except Exception as exc:  # a client error of any kind: the backend failed
            raise self._failed(exc) from exc
        self._down_until = 0.0
        return reply

    async def arun(self, script: str, keys: list[str], args: list[Any]) -> list[Any]:
        """`run` for async callers, on the async client (the sync one without it)."""
        if self.aclient is None:
            return self.run(script, keys, args)
        self._check()
        self.round_trips += 1
        try:
            async with asyncio.timeout(self.timeout * 2):  # the socket timeout bounds each read
                scripts = self._loops.get(asyncio.get_running_loop()) or await self._adopt()
                reply: list[Any] = await scripts.scripts[script](keys=keys, args=args)
        except Exception as exc:  # a timeout, a client error of any kind: the backend failed
            raise self._failed(exc) from exc
        self._down_until = 0.0
        return reply

    async def _adopt(self) -> _LoopClient:
        """The async client of this event loop, made on its first use here."""
        loop = asyncio.get_running_loop()
        template = self.aclient
        assert template is not None
        with self._lock:
            entry = self._loops.get(loop)
            if entry is not None:
                return entry
            if self._aclient_free:
                self._aclient_free = False
                client, owned = template, self._owns_aclient
            else:
                pool = template.connection_pool
                copy = type(pool)(connection_class=pool.connection_class, **pool.connection_kwargs)
                client, owned = redis.asyncio.Redis(connection_pool=copy), True
            entry = _LoopClient(client, owned, self.clock)
            self._loops[loop] = entry
        if entry.closer is not None:
            await entry.closer.__anext__()  # armed: the loop's shutdown closes the client
        return entry

    def available(self) -> bool:
        """False while the backend rests after a failure."""
        return not (self._down_until and time.monotonic() < self._down_until)

    # -- the background sync ---------------------------------------------------------------

    def start(self) -> None:
        """Start the background sync of this process, if it is not running."""
        if os.getpid() != self._pid:
            self._forked()
        with self._lock:
            if self._flusher is None or not self._flusher.is_alive():
                self._flusher = _Flusher(self)
                self._flusher.start()

    def wake(self, *, urgent: bool = True) -> None:
        """Sync now rather than at the next interval: at once (a failure the fleet must
        know), or, not ``urgent``, after a short grace (a slot or tokens to give back, which
        this process's next request may carry instead, saving a round trip)."""
        flusher = self._flusher
        if flusher is not None:
            if urgent:
                flusher.urgent = True
            flusher.wanted.set()

    def flush(self) -> None:
        """Send everything waiting in this process now (and learn the others' state).

        Returns once what was waiting when it was called has been sent (or has failed):
        a background sync already under way is waited for.
        """
        if os.getpid() != self._pid:
            self._forked()  # the parent's sync thread may have held the lock at the fork
        with self._flush_lock:
            self._flush()

    def _flush(self) -> None:
        for part in list(self._parts):
            try:
                part.flush()
            except Exception:  # the sync must go on for the other policies
                logger.exception(
                    "resilience: background sync of %s %r failed", part.kind, part.name
                )

    def close(self) -> None:
        """Stop the background sync after a last flush; the clients stay open (they are yours)."""
        flusher = self._flusher
        self._flusher = None
        if flusher is not None:
            flusher.stop()
        self.flush()

    def _forked(self) -> None:
        """In a child process: a new identity and no background thread (it did not survive)."""
        self._pid = os.getpid()
        self.process_id = _process_id()
        self._flusher = None
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._loops = weakref.WeakKeyDictionary()  # the parent's loops did not come along


#: How long a sync woken for something that is not urgent waits for a request to carry it.
_GRACE = 0.002


class _LoopClient:
    """The async client of one event loop and its scripts.

    A client the backend made is closed when its loop shuts down: ``closer``
    is an async generator started on that loop, and `asyncio.run` (like any
    loop's ``shutdown_asyncgens``) closes the generators still open, which
    runs its ``finally`` on the loop, while it can still close sockets.
    """

    __slots__ = ("client", "closer", "scripts")

    def __init__(self, client: Any, owned: bool, clock: Clock | None) -> None:
        self.client = client
        self.scripts = _register(client, clock)
        self.closer = _close_at_shutdown(client) if owned else None


async def _close_at_shutdown(client: Any) -> Any:
    try:
        yield
    finally:
        await client.aclose(close_connection_pool=True)


class _Flusher(threading.Thread):
    """The background sync of one backend in this process: every interval, or when woken."""

    def __init__(self, backend: RedisBackend) -> None:
        super().__init__(name="resilience-redis-sync", daemon=True)
        self.backend = weakref.ref(backend)
        self.interval = backend.sync_interval
        self.wanted = threading.Event()
        self.urgent = False
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            if self.wanted.wait(self.interval) and not self.urgent:
                self.stopped.wait(min(_GRACE, self.interval))
            self.wanted.clear()
            self.urgent = False
            backend = self.backend()
            if backend is None or self.stopped.is_set():
                return
            backend.flush()
            del backend

    def stop(self) -> None:
        self.stopped.set()
        self.wanted.set()
        if threading.current_thread() is not self:
            self.join(5.0)


def _register(client: Any, clock: Clock | None) -> dict[str, Any]:
    """The scripts, registered with ``client``: timed by the server, or by ``clock``."""
    if clock is None:
        return {name: client.register_script(src) for name, src in _SCRIPTS.items()}
    return {
        name: _GivenNow(client.register_script(lua.given_now(src)), clock)
        for name, src in _SCRIPTS.items()
    }


class _GivenNow:
    """A script of `lua.given_now`, called as a plain one: it appends the clock's reading
    (``RedisBackend(clock=...)``, for tests and simulations)."""

    __slots__ = ("clock", "script")

    def __init__(self, script: Any, clock: Clock) -> None:
        self.script = script
        self.clock = clock

    def __call__(self, keys: list[str], args: list[Any], client: Any = None) -> Any:
        args = [*args, repr(self.clock.monotonic())]
        if client is None:
            return self.script(keys=keys, args=args)
        return self.script(keys=keys, args=args, client=client)


def _process_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _check_client(client: Any, timeout: float, name: str) -> None:
    """A client that keeps the backend's bound: a socket timeout within it, no retries."""
    kwargs = client.connection_pool.connection_kwargs
    read = kwargs.get("socket_timeout")
    connect = kwargs.get("socket_connect_timeout")
    retries = getattr(client.get_retry(), "_retries", 0) if client.get_retry() else 0
    if read is None or read > timeout or connect is None or connect > timeout or retries:
        raise ValueError(
            f"{name} must time out within the backend's timeout ({timeout:g}s) and not retry "
            f"(it has socket_timeout={read}, socket_connect_timeout={connect}, "
            f"{retries} retries): make it with socket_timeout={timeout:g}, "
            f"socket_connect_timeout={timeout:g}, retry=redis.retry.Retry("
            f"redis.backoff.NoBackoff(), 0), or use RedisBackend.from_url"
        )
