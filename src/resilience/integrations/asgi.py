"""ASGI middleware: shed load on the server side, and inject faults on chaos days.

::

    from resilience.integrations.asgi import ResilienceMiddleware

    shed = rs.Pipeline([rs.Throttle(rate=500, burst=50, max_wait=0),
                        rs.Bulkhead(max_concurrent=64, max_queue=0)])
    app = ResilienceMiddleware(app, shed)                  # any ASGI app
    # Starlette / FastAPI: app.add_middleware(ResilienceMiddleware, policy=shed)

Each HTTP request runs through ``policy`` (a Throttle, Bulkhead,
AdaptiveLimiter, AdaptiveThrottler, or a pipeline of them) for as long as
the app takes to answer it, streamed bodies included, so a slot is held
until the last byte is sent and given back however the request ends (an
answer, an error, a client that went away). A request the policy refuses
never reaches the app: it is answered at once, 429 for a rate (a
`ThrottledError`) and 503 for concurrency or an open breaker (any other
`RejectedError`), with ``Retry-After`` when the policy knows when to come
back. Errors of the app itself go on as they would without the middleware.

Lifespan and WebSocket traffic pass through untouched. The request's
``method`` and ``route`` (its path) are call tags, and ``key=`` (a function
of the ASGI scope: the client's address, a tenant header) adds a ``key``
tag, so ``rs.Keyed(factory, key="key")`` gives each client its own limit.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .._aio import sleep
from .._context import TAGS, VAR
from .._errors import RejectedError, ThrottledError
from .._middleware import Middleware

__all__ = ["HttpFault", "ResilienceMiddleware", "status_for"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def status_for(error: RejectedError) -> int:
    """The status a refused request is answered with: 429 for a rate, 503 for the rest."""
    return 429 if isinstance(error, ThrottledError) else 503


@dataclass(frozen=True)
class HttpFault:
    """A fault to inject into matching requests, as Istio's VirtualService ``fault`` does.

    Give ``abort`` (a status to answer with, without calling the app) or
    ``delay`` (seconds to wait before calling it), or both (the delay comes
    first). ``percentage`` (0 to 100) of the matching requests get it.
    A request matches when its path starts with ``route`` (or, for a
    compiled regex, matches it) and, with ``header``, carries that header
    with that value (``("x-chaos", "on")``).
    """

    abort: int | None = None
    delay: float | None = None
    percentage: float = 100.0
    route: str | re.Pattern[str] = "/"
    header: tuple[str, str] | None = None
    _header: tuple[bytes, bytes] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.abort is None and self.delay is None:
            raise ValueError("HttpFault needs abort= (a status) or delay= (seconds), or both")
        if self.abort is not None and (
            isinstance(self.abort, bool)
            or not isinstance(self.abort, int)
            or not 100 <= self.abort <= 599
        ):
            raise ValueError(f"abort must be an HTTP status from 100 to 599, got {self.abort!r}")
        if self.delay is not None and (
            isinstance(self.delay, bool)
            or not isinstance(self.delay, int | float)
            or not math.isfinite(self.delay)
            or self.delay < 0
        ):
            raise ValueError(f"delay must be a number of seconds >= 0, got {self.delay!r}")
        if (
            isinstance(self.percentage, bool)
            or not isinstance(self.percentage, int | float)
            or not 0 <= self.percentage <= 100
        ):
            raise ValueError(f"percentage must be from 0 to 100, got {self.percentage!r}")
        if not isinstance(self.route, str | re.Pattern):
            raise TypeError(f"route must be a path prefix or a compiled regex, got {self.route!r}")
        if self.header is not None:
            if not (
                isinstance(self.header, tuple)
                and len(self.header) == 2
                and all(isinstance(part, str) and part for part in self.header)
            ):
                raise TypeError(
                    f"header must be a (name, value) pair of strings, got {self.header!r}"
                )
            name, value = self.header
            object.__setattr__(self, "_header", (name.lower().encode(), value.encode()))

    def matches(self, scope: Scope) -> bool:
        path: str = scope.get("path", "")
        route = self.route
        if isinstance(route, str):
            if not path.startswith(route):
                return False
        elif route.search(path) is None:
            return False
        wanted = self._header
        if wanted is None:
            return True
        return any(
            name.lower() == wanted[0] and value == wanted[1]
            for name, value in scope.get("headers", ())
        )


class ResilienceMiddleware:
    """Run each HTTP request of ``app`` through ``policy``; answer its refusals with 429 or 503.

    ``policy`` may be None when only ``faults`` are wanted. ``faults``: a
    list of `HttpFault`, off unless given; the first that matches a request
    and is drawn (``percentage``, from ``seed``) applies. ``key``: a
    function of the ASGI scope whose result becomes the call's ``key`` tag.
    ``retry_after``: seconds to put in Retry-After when the refusal does
    not say (None: no header then).
    """

    def __init__(
        self,
        app: App,
        policy: Middleware | None = None,
        *,
        key: Callable[[Scope], Any] | None = None,
        faults: Sequence[HttpFault] = (),
        seed: int | random.Random | None = None,
        retry_after: float | None = None,
    ) -> None:
        if not callable(app):
            raise TypeError(f"app must be an ASGI application, got {type(app).__name__}")
        if policy is not None and not isinstance(policy, Middleware):
            raise TypeError(
                f"policy must be a resilience policy or Pipeline, got {type(policy).__name__}"
            )
        if key is not None and not callable(key):
            raise TypeError(f"key must be a function of the ASGI scope, got {type(key).__name__}")
        faults = tuple(faults)
        for fault in faults:
            if not isinstance(fault, HttpFault):
                raise TypeError(f"faults must be HttpFault objects, got {type(fault).__name__}")
        if retry_after is not None and (
            isinstance(retry_after, bool)
            or not isinstance(retry_after, int | float)
            or not 0 <= retry_after < math.inf
        ):
            raise ValueError(f"retry_after must be a number of seconds >= 0, got {retry_after!r}")
        self.app = app
        self.policy = policy
        self.key = key
        self.faults = faults
        self.retry_after = retry_after
        self._random = seed if isinstance(seed, random.Random) else random.Random(seed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # lifespan, websocket: untouched
            return
        fault = self._fault(scope)
        if fault is not None:
            if fault.delay:
                await sleep(fault.delay)  # asyncio's or trio's
            if fault.abort is not None:
                await _answer(send, fault.abort, b"fault injected\n", None)
                return
        policy = self.policy
        if policy is None:
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        token = VAR.set(self._tagged(scope))
        try:
            await policy.acall(self.app, scope, receive, tracked)
        except RejectedError as error:
            if started:
                raise
            after = error.retry_after if error.retry_after is not None else self.retry_after
            status = status_for(error)
            await _answer(send, status, f"{type(error).__name__}: {error}\n".encode(), after)
        finally:
            VAR.reset(token)

    def _tagged(self, scope: Scope) -> list[Any]:
        raw = list(VAR.get())
        tags = {**raw[TAGS], "method": scope.get("method", ""), "route": scope.get("path", "")}
        if self.key is not None:
            tags["key"] = self.key(scope)
        raw[TAGS] = MappingProxyType(tags)
        return raw

    def _fault(self, scope: Scope) -> HttpFault | None:
        for fault in self.faults:
            if fault.matches(scope) and self._random.random() * 100 < fault.percentage:
                return fault
        return None


async def _answer(send: Send, status: int, body: bytes, retry_after: float | None) -> None:
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
    ]
    if retry_after is not None:
        headers.append((b"retry-after", str(max(1, math.ceil(retry_after))).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
