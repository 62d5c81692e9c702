"""The door through which a policy keeps its state outside the process.

A policy given ``backend=`` asks the backend for a *shared* part of its
own kind (`Backend.attach`) and hands its decisions to it; without a
backend nothing here is used and the policy runs exactly as before.
`resilience.redis.RedisBackend` is the backend this package ships. This
module imports no client library.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Literal

from ._errors import RejectedError
from ._events import Described, ResilienceEvent

__all__ = ["Backend", "BackendErrorEvent", "BackendUnavailableError"]

logger = logging.getLogger("resilience")

BackendAction = Literal["local", "open", "closed"]


class BackendUnavailableError(RejectedError):
    """A policy kept in a shared backend refused a call because the backend did not answer.

    Raised only with ``on_backend_error="closed"``; ``retry_after`` is when
    the backend will be tried again.
    """


@dataclass(frozen=True, slots=True)
class BackendErrorEvent(ResilienceEvent):
    """Sent to a policy's listeners when its shared backend failed an operation.

    ``action`` says what the policy did instead: ``"local"`` (decided with
    its in-process state), ``"open"`` (admitted the call) or ``"closed"``
    (refused it with `BackendUnavailableError`).
    """

    name: str | None
    """The policy's name."""
    operation: str
    """What the policy asked the backend (``acquire``, ``sync``, ``release``...)."""
    error: BaseException
    """The client's error (a timeout, a refused connection...)."""
    action: BackendAction

    event = "backend_error"

    def describe(self) -> Described:
        return self.event, self.error, {"resilience.backend.action": self.action}


class Unavailable(Exception):
    """The backend failed an operation, or is resting after a failure (internal)."""

    def __init__(self, error: BaseException, retry_after: float, sent: bool = True) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after
        self.sent = sent
        """False when the request surely never reached the server (the backend was resting,
        or no connection could be made); True when it may have been applied."""


class Backend(ABC):
    """Where policies shared by many processes keep their state.

    Every process that gives a policy of the same kind and name the same
    backend (same server, same prefix) shares one state with the others.
    """

    mode: str
    """``"strict"`` or ``"local-first"``: see the "Many processes" docs page."""
    on_backend_error: BackendAction
    """What policies do when the backend fails: ``"local"``, ``"open"`` or ``"closed"``."""

    @abstractmethod
    def attach(self, kind: str, name: str, policy: Any) -> Any:
        """The shared part of a policy of ``kind`` named ``name`` (called once, by the policy)."""


def check_backend(backend: object, name: str | None, kind: str) -> Backend | None:
    """A policy's ``backend=``: a `Backend` or None; a shared policy needs a name."""
    if backend is None:
        return None
    if not isinstance(backend, Backend):
        raise TypeError(
            f"backend must be a resilience backend (resilience.redis.RedisBackend) or None, "
            f"got {type(backend).__name__}"
        )
    if not name:
        raise ValueError(
            f"a {kind} with a backend needs a name: every process that uses the same name "
            f"shares its state (name='payments', say)"
        )
    return backend
