"""The one call interface every policy and pipeline shares.

A middleware turns the next *endpoint* into a new endpoint, once, when a
chain is built (go-kit's ``Middleware func(Endpoint) Endpoint``). An endpoint
is a plain function ``endpoint(fn, args, kwargs)``: the call to protect
travels down the chain as data, so one prebuilt chain serves every function
it is used with, and no list of layers is walked per call.

`Middleware` gives each subclass the decorator, ``call()`` and ``acall()``.
A subclass only writes ``wrap`` (sync) and ``awrap`` (async).
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, ParamSpec, TypeVar, cast

from . import _shells, _shells_sync
from ._context import CLOCK, DEADLINE, TAGS, VAR
from ._misuse import (
    Misuse,
    check_async_entry,
    check_decorated,
    check_sync_entry,
    is_async_callable,
    refuse_async,
)

__all__ = ["AsyncEndpoint", "Endpoint", "Middleware", "is_async_callable"]

logger = logging.getLogger("resilience")
_SUBSCRIBE_LOCK = threading.Lock()

P = ParamSpec("P")
R = TypeVar("R")

Endpoint = Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], Any]
"""``endpoint(fn, args, kwargs) -> result``: the sync shape of one link of a chain."""

AsyncEndpoint = Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], Awaitable[Any]]
"""``endpoint(fn, args, kwargs) -> awaitable``: the async shape of one link of a chain."""


def terminal(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The innermost endpoint: call the function (for async, this returns its awaitable)."""
    return fn(*args, **kwargs)


class Middleware(ABC):
    """Base class of every resilience policy, of `Pipeline`, and of your own layers.

    A subclass implements `wrap` and `awrap`; it inherits the decorator form,
    `call` and `acall`. One instance holds one state: put the same instance in
    two pipelines and they share it.
    """

    kind: ClassVar[str] = "custom"
    """A short name of what the layer does, used by `describe()` and the order advice."""

    name: str | None = None
    """Optional name shown in `describe()`, errors and the call context."""

    _read_only: ClassVar[frozenset[str]] = frozenset()
    """Configuration attributes that cannot be assigned once the layer is built.

    They were accepted and changed nothing (the chains had read them when
    built); the layer's ``update()`` changes what can change at run time.
    """
    _sealed = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" not in cls.__dict__:
            return
        init = cls.__dict__["__init__"]

        @functools.wraps(init)
        def sealing_init(self: Middleware, *args: Any, **kwargs: Any) -> None:
            init(self, *args, **kwargs)
            if type(self).__init__ is sealing_init:  # the outermost __init__ is done
                object.__setattr__(self, "_sealed", True)

        setattr(cls, "__init__", sealing_init)  # noqa: B010 - mypy refuses a plain assignment

    def __setattr__(self, attribute: str, value: Any) -> None:
        if self._sealed and attribute in self._read_only:
            kind = type(self).__name__
            hint = f"; use {kind}.update({attribute}=...)" if hasattr(self, "update") else ""
            raise AttributeError(f"{kind}.{attribute} is read-only{hint}")
        object.__setattr__(self, attribute, value)

    @abstractmethod
    def wrap(self, next: Endpoint, /) -> Endpoint:
        """Return the sync endpoint that runs this layer around ``next``."""

    @abstractmethod
    def awrap(self, next: AsyncEndpoint, /) -> AsyncEndpoint:
        """Return the async endpoint that runs this layer around ``next``."""

    @property
    def _label(self) -> str:
        """`` 'name'``, with a leading space, or nothing: how messages name this layer."""
        return f" {self.name!r}" if self.name else ""

    @property
    def _repr_name(self) -> str:
        """``'name', `` or nothing: how a ``repr`` starts its arguments."""
        return f"{self.name!r}, " if self.name else ""

    def settings(self) -> dict[str, Any]:
        """This layer's configuration, for `describe()`; override to show yours."""
        return {}

    def describe(self) -> dict[str, Any]:
        """The layer's type, kind, name and settings, as plain data."""
        return {
            "type": type(self).__name__,
            "kind": self.kind,
            "name": self.name,
            **self.settings(),
        }

    def _set(self, **values: Any) -> None:
        """Set read-only configuration attributes: for the layer's own ``update()``."""
        for attribute, value in values.items():
            object.__setattr__(self, attribute, value)

    # -- events ----------------------------------------------------------------

    _listeners: tuple[Callable[[Any], object], ...] = ()

    def subscribe(self, listener: Callable[[Any], object], /) -> Callable[[], None]:
        """Call ``listener(event)`` for every notable event of this layer.

        Events are typed objects (`RetryEvent`, `CircuitStateChange`,
        `CircuitOutcome` for rejections, `FallbackEvent`, `FaultEvent`...);
        a successful call makes none. Subscribing to a `Pipeline` subscribes
        to all its layers. A listener that raises is logged to the
        ``resilience`` logger and never breaks the call. Returns a function
        that unsubscribes.
        """
        if not callable(listener):
            raise TypeError(f"listener must be callable, got {type(listener).__name__}")
        refuse_async(listener, "listener")
        with _SUBSCRIBE_LOCK:
            self._listeners = (*self._listeners, listener)

        def unsubscribe() -> None:
            with _SUBSCRIBE_LOCK:
                listeners = list(self._listeners)
                if listener in listeners:
                    listeners.remove(listener)
                    self._listeners = tuple(listeners)

        return unsubscribe

    def _emit(self, event: object) -> None:
        """Hand ``event`` to every listener; their errors are logged, never raised."""
        for listener in self._listeners:
            notify(listener, event, f"a listener of {self!r}")

    # -- the call interface -------------------------------------------------

    # Built on first use and kept, so that a call pays two attribute reads.
    _sync_chain: Endpoint | None = None
    _async_chain: AsyncEndpoint | None = None
    # [sync chain, async chain], shared with the functions this layer decorated.
    _chain_cell: list[Any] | None = None

    def _chains(self) -> tuple[Endpoint, AsyncEndpoint]:
        sync_chain, async_chain = self._sync_chain, self._async_chain
        if sync_chain is None or async_chain is None:
            sync_chain = self._sync_chain = self.wrap(terminal)
            async_chain = self._async_chain = self.awrap(terminal)
        return sync_chain, async_chain

    def _set_chains(self, sync_chain: Endpoint, async_chain: AsyncEndpoint) -> None:
        """Swap this layer's chains, for `call`, `acall` and the functions it decorated."""
        self._sync_chain, self._async_chain = sync_chain, async_chain
        cell = self._chain_cell
        if cell is not None:
            cell[:] = [sync_chain, async_chain]

    def __call__(self, fn: Callable[P, R], /) -> Callable[P, R]:
        """Decorate a function, sync or async (decided once, here).

        A generator function or an async generator function is refused with
        `TypeError`: its body runs only when the caller iterates, after the
        layers have returned, so nothing would protect it. Protect the call
        that opens the stream, or consume the stream inside a protected
        function.
        """
        cell = self._chain_cell
        if cell is None:
            cell = self._chain_cell = list(self._chains())
        return decorate(self.name, cell, fn)

    # The last plain function `call` / `acall` checked, so a call site that calls the
    # same function again skips the check (an identity test).
    _checked_sync: object = None
    _checked_async: object = None

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call ``fn(*args, **kwargs)`` through this layer, synchronously.

        ``fn`` must be a plain (sync) callable: an async function raises
        `TypeError` at once (use `acall`), and so does a generator function
        (see `resilience.Middleware.__call__`).
        """
        if fn is not self._checked_sync:
            check_sync_entry(fn, self)
        chain = self._sync_chain or self._chains()[0]
        parent = VAR.get()  # _context.entered, inlined (tests/test_context.py keeps them equal)
        token = VAR.set([self.name, 1, parent[DEADLINE], parent[CLOCK], parent[TAGS]])
        try:
            return chain(fn, args, kwargs)  # type: ignore[no-any-return]
        except Misuse as misuse:
            raise misuse.error from misuse.__context__
        finally:
            VAR.reset(token)

    async def acall(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await ``fn(*args, **kwargs)`` through this layer.

        ``fn`` is the async function itself, not a coroutine: ``acall(fetch,
        1)``, not ``acall(fetch(1))``. A plain callable that returns an
        awaitable (a lambda, a partial) is fine; one that returns anything
        else raises `TypeError` after its first call, and no layer retries,
        counts or replaces that error.
        """
        if fn is not self._checked_async:
            fn = check_async_entry(fn, self)
        chain = self._async_chain or self._chains()[1]
        parent = VAR.get()  # _context.entered, inlined
        token = VAR.set([self.name, 1, parent[DEADLINE], parent[CLOCK], parent[TAGS]])
        try:
            return await chain(fn, args, kwargs)  # type: ignore[no-any-return]
        except Misuse as misuse:
            raise misuse.error from misuse.__context__
        finally:
            VAR.reset(token)


def notify(listener: Callable[[Any], object], event: object, whose: str) -> None:
    """Hand ``event`` to one listener; its errors are logged, never raised.

    A listener that turns out to return an awaitable (a lambda around an
    async function, which `subscribe` could not tell) never runs: the
    awaitable is closed and an error is logged, instead of a warning at
    garbage collection.
    """
    try:
        returned = listener(event)
    except Exception:
        logger.exception("resilience: %s failed on %s", whose, type(event).__name__)
        return
    if inspect.isawaitable(returned):
        if inspect.iscoroutine(returned):
            returned.close()
        logger.error(
            "resilience: %s returned an awaitable for %s, so it did not run: listeners "
            "must be plain functions (schedule async work from one, e.g. with "
            "loop.create_task)",
            whose,
            type(event).__name__,
        )


def decorate(name: str | None, cell: list[Any], fn: Callable[P, R]) -> Callable[P, R]:
    """Wrap ``fn`` with a prebuilt chain, choosing the sync or async entry once.

    ``cell`` is ``[sync chain, async chain]``, read at each call (one list
    index, about 15 ns where an attribute read costs 35), so that a chain
    swapped later with `Middleware._set_chains`, as
    `resilience.telemetry.instrument` does, reaches functions decorated before.
    """
    if isinstance(fn, staticmethod | classmethod):  # placed above @staticmethod: wrap inside
        return cast(Callable[P, R], type(fn)(decorate(name, cell, fn.__func__)))
    if not callable(fn):
        raise TypeError(f"can only decorate a callable, got {type(fn).__name__}")
    is_async = check_decorated(fn, name)
    if is_async:
        return cast(Callable[P, R], _shells.entry(name, cell, fn))
    return cast(Callable[P, R], _shells_sync.entry(name, cell, fn))
