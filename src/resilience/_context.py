"""The per-call context: which pipeline, which attempt, which deadline, which tags.

It lives in one `contextvars.ContextVar`, so it follows the call into the
tasks it starts and into threads started with a copied context.

On the hot path the variable holds a small list, one per call, made when
the call enters its pipeline. The layers of that call change it in place and
put back what they changed on the way out (a Timeout its deadline, a Retry
its attempt number): writing a list item costs a fraction of a
`ContextVar.set` and `reset` pair. The public, frozen `CallContext` is made
only when someone asks for it through `current()`. A task or thread that the
call starts and that outlives the layer sees the context as it is now, not
as it was when it started.

The list's fields are read and written by name everywhere, through the
constants below (`PIPELINE`, `ATTEMPT`, `DEADLINE`, `CLOCK`, `TAGS`); only
this module knows their order. A new context is always made from another
one (`entered`, `child`), so a new field is added here and nowhere else.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, overload

from ._clock import Clock

__all__ = ["CallContext", "current", "tags"]

#: The fields of one call's record, read and written by these names only.
Raw = list[Any]

PIPELINE: Final = 0
"""The name of the pipeline (or policy) the call entered."""
ATTEMPT: Final = 1
"""The attempt number, 1-based (0 outside any call)."""
DEADLINE: Final = 2
"""The absolute deadline on `CLOCK`'s timeline, or None."""
CLOCK: Final = 3
"""The clock the deadline is measured on, or None."""
TAGS: Final = 4
"""The user's tags, a read-only mapping."""

NO_TAGS: Mapping[str, Any] = MappingProxyType({})
# Outside any call. A tuple, so that nothing can change it by mistake.
EMPTY: Any = (None, 0, None, None, NO_TAGS)
VAR: ContextVar[Raw] = ContextVar("resilience.call", default=EMPTY)


def entered(parent: Raw, name: str | None) -> Raw:
    """The record of a call entering ``name``: the parent's deadline and tags, attempt 1.

    The entry points (`resilience.Middleware`) inline this one literal, which
    costs less than the call of this function; a test keeps them equal.
    """
    return [name, 1, parent[DEADLINE], parent[CLOCK], parent[TAGS]]


def child(parent: Raw, deadline: float | None, clock: Any) -> Raw:
    """A copy of ``parent`` with another deadline, for a call run on another thread."""
    raw = list(parent)
    raw[DEADLINE] = deadline
    raw[CLOCK] = clock
    return raw


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a running call knows about itself. Read it with `resilience.current()`.

    Outside any call, `current()` returns a context with ``attempt == 0``,
    no pipeline, no deadline and no tags, so ``current().remaining()`` can be
    called anywhere.
    """

    pipeline: str | None
    """Name of the pipeline (or standalone policy) running the call, if it has one."""
    attempt: int
    """Attempt number, 1-based; 0 outside any call."""
    deadline: float | None
    """Absolute deadline in the deadline clock's ``monotonic()`` seconds, or None."""
    tags: Mapping[str, Any]
    """User tags set with `resilience.tags()` (read-only)."""
    clock: Clock | None = field(default=None, repr=False)
    """The clock the deadline is measured on."""

    @overload
    def remaining(self) -> float | None: ...

    @overload
    def remaining(self, default: float) -> float: ...

    def remaining(self, default: float | None = None) -> float | None:
        """Seconds left before the deadline (never negative); ``default`` without one.

        Pass the result to a client's timeout. ``remaining(default=5.0)``
        gives 5 s where no deadline is set, where ``remaining() or 5.0``
        would also turn an expired deadline (0.0) into 5 s.
        """
        if self.deadline is None or self.clock is None:
            return default
        return max(0.0, self.deadline - self.clock.monotonic())

    @property
    def expired(self) -> bool:
        """True when there is a deadline and it has passed."""
        left = self.remaining()
        return left is not None and left <= 0.0


def current() -> CallContext:
    """The context of the call running here (or an empty one outside any call)."""
    raw = VAR.get()
    return CallContext(raw[PIPELINE], raw[ATTEMPT], raw[DEADLINE], raw[TAGS], raw[CLOCK])


@contextlib.contextmanager
def own_context() -> Iterator[Raw]:
    """A call context of its own for a chain run where no call set one.

    A custom layer may run the rest of its chain on a thread or in a task
    without the caller's context; the layers that write into the context
    (Timeout, Retry) then make one here instead of writing into `EMPTY`.
    """
    raw = entered(EMPTY, None)
    token = VAR.set(raw)
    try:
        yield raw
    finally:
        VAR.reset(token)


@contextlib.contextmanager
def tags(**values: Any) -> Iterator[Mapping[str, Any]]:
    """Attach tags to every resilient call made inside the ``with`` block.

    Tags merge over the ones already set, flow into nested calls, tasks and
    copied contexts, and are readable as ``resilience.current().tags``::

        with resilience.tags(tenant="acme", chaos=True):
            users_get.call(fetch, 42)
    """
    raw = list(VAR.get())
    merged = MappingProxyType({**raw[TAGS], **values})
    raw[TAGS] = merged
    token = VAR.set(raw)
    try:
        yield merged
    finally:
        VAR.reset(token)


def effective_deadline(raw: Raw, clock: Clock, now: float) -> float | None:
    """The deadline already in force, expressed on ``clock``'s timeline."""
    deadline: float | None = raw[DEADLINE]
    if deadline is None:
        return None
    other: Clock | None = raw[CLOCK]
    if other is clock or other is None:
        return deadline
    return deadline - other.monotonic() + now


def remaining(raw: Raw) -> float | None:
    """Seconds left before the raw context's deadline, or None."""
    deadline: float | None = raw[DEADLINE]
    clock: Clock | None = raw[CLOCK]
    if deadline is None or clock is None:
        return None
    return deadline - clock.monotonic()
