"""httpx transports that send every request through a resilience pipeline.

    import httpx
    import resilience as rs
    from resilience.integrations.httpx import ResilientTransport, is_transient

    pipeline = (
        rs.Pipeline.builder("users-api")
        .add(rs.Timeout(5.0))                 # the whole call, retries included
        .add(rs.Retry(3, on=is_transient))
        .add(rs.CircuitBreaker())
        .add(rs.Timeout(1.0))                 # each attempt
        .build()
    )
    client = httpx.Client(transport=ResilientTransport(pipeline))

What the transport adds to a plain pipeline around ``client.get``:

- **Statuses become outcomes.** A response whose status is in
  ``retry_statuses`` (429, 502, 503, 504) or ``failure_statuses`` (every 5xx)
  raises `ResponseFailure` inside the pipeline, so a breaker counts it and a
  Retry retries it. Its body is read and its connection given back first.
  When the pipeline gives up, the client gets the last response, as it
  would without the transport (call ``raise_for_status()`` as usual).
- **Retry-After** (seconds or an HTTP date) becomes the failure's
  ``retry_after``: the Retry waits at least that long, at most its
  ``max_delay``, and gives up at once when the wait would pass the deadline.
- **Only what may be repeated is repeated.** A request is retried only when
  its method is idempotent (GET, HEAD, OPTIONS, PUT, DELETE, TRACE), or it
  carries an ``Idempotency-Key`` header, or you pass ``retry_methods``; and
  only when its body can be sent again (bytes, not a generator: call
  ``request.read()`` to make a streamed body replayable). A connection that
  could not be opened is retried for any method, since nothing was sent.
  Everything else is marked ``retryable = False``, which `resilience.Retry`
  honours whatever its ``on`` says.
- **Deadlines reach the socket.** Each attempt's connect, read, write and
  pool timeouts are cut to the time the call has left, and the response body
  is bounded by the same deadline after the transport returns: async reads
  are cancelled at the deadline; a sync read is checked before each chunk
  and each read waits at most what was left when the attempt began (a body
  that drips a byte at a time stops at the first chunk past the deadline).
  Both raise `BodyDeadlineExceeded`, an ``httpx.ReadTimeout`` and a
  `resilience.TimeoutExceeded` at once.
- **Tags.** Each call runs with the tags ``method``, ``host`` and ``route``
  (the path, or what your ``route`` function returns), for FaultInjector
  targeting, keyed policies and telemetry.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from types import MappingProxyType
from typing import Any

import httpx

from .._aio import within
from .._context import CLOCK, DEADLINE, TAGS, VAR
from .._errors import TimeoutExceeded
from .._middleware import Middleware

__all__ = [
    "DEFAULT_RETRY_STATUSES",
    "IDEMPOTENT_METHODS",
    "AsyncResilientTransport",
    "BodyDeadlineExceeded",
    "ResilientTransport",
    "ResponseFailure",
    "is_transient",
    "parse_retry_after",
]

DEFAULT_RETRY_STATUSES: frozenset[int] = frozenset({429, 502, 503, 504})
"""Statuses retried by default: too many requests, and the gateway and overload statuses."""

IDEMPOTENT_METHODS: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
"""Methods RFC 9110 (section 9.2.2) calls idempotent: safe to send twice."""

_SERVER_ERRORS = range(500, 600)
# Errors raised before the request left this process: safe to retry for any method.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Errors of a request that may have reached the server.
_TRANSIENT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
_TIMEOUT_KEYS = ("connect", "read", "write", "pool")

StatusSet = Collection[int] | Callable[[int], bool]


class ResponseFailure(httpx.HTTPStatusError):
    """A response whose status the transport counts as a failure, raised inside the pipeline.

    It is an ``httpx.HTTPStatusError``, so handlers written for
    ``raise_for_status()`` catch it. ``retry_after`` is the server's
    Retry-After in seconds (or None); ``retryable`` is False when the
    request must not be sent again. The body has been read, so
    ``response.text`` works, and the connection has been released.
    """

    def __init__(
        self,
        message: str,
        *,
        request: httpx.Request,
        response: httpx.Response,
        retry_after: float | None,
        retryable: bool,
    ) -> None:
        super().__init__(message, request=request, response=response)
        self.retry_after = retry_after
        self.retryable = retryable


class BodyDeadlineExceeded(httpx.ReadTimeout, TimeoutExceeded):
    """The call's deadline passed while the response body was still being read."""

    def __init__(self, request: httpx.Request, seconds: float) -> None:
        # Both bases have their own __init__; Exception's is the one they share.
        Exception.__init__(
            self, f"the response body was not read within the {seconds:.3g}s the call had left"
        )
        self._request: httpx.Request | None = request
        self.seconds = seconds
        self.name = None

    def __reduce__(self) -> tuple[object, ...]:
        return (Exception.__new__, (type(self),), self.__dict__)


def is_transient(error: BaseException) -> bool:
    """Whether a failed attempt is worth another: for ``Retry(on=is_transient)``.

    True for a `ResponseFailure` with a status to retry, for httpx's timeout,
    network and protocol errors, and for a `resilience.TimeoutExceeded` (an
    attempt's own timeout); False for anything marked ``retryable = False``
    and for errors that would fail again (a bad URL, a redirect loop, a body
    that cannot be decoded).
    """
    if getattr(error, "retryable", None) is False:
        return False
    if isinstance(error, ResponseFailure):
        return True
    return isinstance(error, (*_TRANSIENT, TimeoutExceeded))


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP date (RFC 9110 10.2.3).

    A date in the past gives 0.0; a value that is neither gives None. ``now``
    is the wall-clock time to measure a date from (``time.time()`` by default).
    """
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None  # RFC 9110 dates are GMT; a zone-less one is not one of them
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _status_test(value: object, name: str) -> Callable[[int], bool]:
    if callable(value):
        return value
    if isinstance(value, str | bytes) or not isinstance(value, Collection):
        raise TypeError(
            f"{name} must be a collection of status codes or a predicate, "
            f"got {type(value).__name__}"
        )
    codes = frozenset(value)
    for code in codes:
        if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 599:
            raise ValueError(f"{name} must hold status codes from 100 to 599, got {code!r}")
    return codes.__contains__


def _methods(value: object, name: str) -> frozenset[str]:
    if isinstance(value, str) or not isinstance(value, Collection):
        raise TypeError(f"{name} must be a collection of method names, got {type(value).__name__}")
    out = set()
    for method in value:
        if not isinstance(method, str) or not method.isalpha():
            raise ValueError(f"{name} must hold HTTP method names such as 'GET', got {method!r}")
        out.add(method.upper())
    return frozenset(out)


class _Plan:
    """What the transport decided about one request before its first attempt."""

    __slots__ = ("repeatable", "replayable", "timeouts")

    def __init__(self, repeatable: bool, replayable: bool, timeouts: dict[str, Any]) -> None:
        self.repeatable = repeatable
        """May this request be sent twice once it may have reached the server?"""
        self.replayable = replayable
        """Can its body be sent again at all?"""
        self.timeouts = timeouts
        """The request's own timeouts, before any deadline cut them."""


class _Base:
    """What the sync and async transports share: the decisions, with no I/O."""

    def __init__(
        self,
        pipeline: Middleware,
        *,
        retry_statuses: StatusSet,
        failure_statuses: StatusSet,
        retry_methods: Collection[str],
        idempotency_header: str | None,
        route: Callable[[httpx.Request], str] | None,
    ) -> None:
        if not isinstance(pipeline, Middleware):
            raise TypeError(
                f"pipeline must be a resilience policy or Pipeline, got {type(pipeline).__name__}"
            )
        if idempotency_header is not None and not (
            isinstance(idempotency_header, str) and idempotency_header
        ):
            raise TypeError("idempotency_header must be a header name or None")
        if route is not None and not callable(route):
            raise TypeError(f"route must be a function of the request, got {type(route).__name__}")
        self.pipeline = pipeline
        self._retry_status = _status_test(retry_statuses, "retry_statuses")
        self._failure_status = _status_test(failure_statuses, "failure_statuses")
        self.retry_methods = _methods(retry_methods, "retry_methods")
        self.idempotency_header = idempotency_header
        self._route = route

    def _plan(self, request: httpx.Request) -> _Plan:
        replayable = isinstance(request.stream, httpx.ByteStream)
        header = self.idempotency_header
        repeatable = replayable and (
            request.method in self.retry_methods
            or (header is not None and header in request.headers)
        )
        timeouts = dict(request.extensions.get("timeout") or {})
        return _Plan(repeatable, replayable, timeouts)

    def _tagged(self, request: httpx.Request) -> list[Any]:
        """The caller's call context with the request's tags added (as `resilience.tags`)."""
        url = request.url
        route = self._route(request) if self._route is not None else url.path
        raw = list(VAR.get())
        raw[TAGS] = MappingProxyType(
            {**raw[TAGS], "method": request.method, "host": url.host, "route": route}
        )
        return raw

    @staticmethod
    def _cut_timeouts(request: httpx.Request, plan: _Plan) -> None:
        """Give this attempt timeouts no longer than the time the call has left."""
        raw = VAR.get()
        deadline, clock = raw[DEADLINE], raw[CLOCK]
        if deadline is None or clock is None:
            return
        left = max(0.0, deadline - clock.monotonic())
        cut = {}
        for key in _TIMEOUT_KEYS:
            own = plan.timeouts.get(key)
            cut[key] = left if own is None or own > left else own
        request.extensions["timeout"] = cut

    def _mark(self, error: BaseException, request: httpx.Request, plan: _Plan) -> None:
        """Say on an httpx error whether the request may be sent again."""
        if isinstance(error, httpx.RequestError):
            error.request = request
        if not isinstance(error, httpx.HTTPError):
            return
        sent = not isinstance(error, _NOT_SENT)
        if not plan.replayable or (sent and not plan.repeatable):
            error.retryable = False  # type: ignore[attr-defined]

    def _failure(
        self, request: httpx.Request, response: httpx.Response, plan: _Plan
    ) -> ResponseFailure | None:
        """The failure this response stands for, or None when it is an answer."""
        status = response.status_code
        retry = self._retry_status(status)
        if not retry and not self._failure_status(status):
            return None
        response.request = request
        phrase = response.reason_phrase or "failure"
        return ResponseFailure(
            f"{status} {phrase} from {request.method} {request.url}",
            request=request,
            response=response,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
            retryable=retry and plan.repeatable,
        )

    @staticmethod
    def _deadline() -> tuple[float, Any] | None:
        raw = VAR.get()
        deadline, clock = raw[DEADLINE], raw[CLOCK]
        if deadline is None or clock is None:
            return None
        return deadline, clock


class ResilientTransport(_Base, httpx.BaseTransport):
    """An ``httpx.Client`` transport that sends each request through ``pipeline``.

    ``transport`` is the one that really sends (``httpx.HTTPTransport()`` by
    default). ``retry_statuses`` and ``failure_statuses`` are collections of
    status codes or predicates of the code; ``retry_methods`` the methods
    retried without an ``idempotency_header``; ``route`` a function of the
    request giving the ``route`` tag (the URL's path by default: pass one
    that returns a template such as ``/users/{id}`` to keep telemetry's
    cardinality low). See the module's documentation for what each does.
    """

    def __init__(
        self,
        pipeline: Middleware,
        transport: httpx.BaseTransport | None = None,
        *,
        retry_statuses: StatusSet = DEFAULT_RETRY_STATUSES,
        failure_statuses: StatusSet = _SERVER_ERRORS,
        retry_methods: Collection[str] = IDEMPOTENT_METHODS,
        idempotency_header: str | None = "Idempotency-Key",
        route: Callable[[httpx.Request], str] | None = None,
    ) -> None:
        super().__init__(
            pipeline,
            retry_statuses=retry_statuses,
            failure_statuses=failure_statuses,
            retry_methods=retry_methods,
            idempotency_header=idempotency_header,
            route=route,
        )
        if transport is not None and not isinstance(transport, httpx.BaseTransport):
            raise TypeError(
                f"transport must be an httpx.BaseTransport, got {type(transport).__name__}"
            )
        self.transport = transport if transport is not None else httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        plan = self._plan(request)
        token = VAR.set(self._tagged(request))
        try:
            return self.pipeline.call(_send, self, request, plan)
        except ResponseFailure as failure:
            if failure.request is not request:
                raise
            return failure.response
        finally:
            VAR.reset(token)

    def _attempt(self, request: httpx.Request, plan: _Plan) -> httpx.Response:
        self._cut_timeouts(request, plan)
        try:
            response = self.transport.handle_request(request)
        except Exception as error:
            self._mark(error, request, plan)
            raise
        failure = self._failure(request, response, plan)
        if failure is not None:
            try:
                response.read()
            finally:
                response.close()
            raise failure
        deadline = self._deadline()
        if deadline is not None:
            stream = response.stream
            assert isinstance(stream, httpx.SyncByteStream)
            response.stream = _SyncDeadlineStream(stream, request, *deadline)
        return response

    def close(self) -> None:
        self.transport.close()


class AsyncResilientTransport(_Base, httpx.AsyncBaseTransport):
    """An ``httpx.AsyncClient`` transport that sends each request through ``pipeline``.

    The arguments are those of `ResilientTransport`; ``transport`` defaults
    to ``httpx.AsyncHTTPTransport()``. An async Timeout in the pipeline
    cancels the attempt, and a body still being read at the deadline is
    cancelled too.
    """

    def __init__(
        self,
        pipeline: Middleware,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        retry_statuses: StatusSet = DEFAULT_RETRY_STATUSES,
        failure_statuses: StatusSet = _SERVER_ERRORS,
        retry_methods: Collection[str] = IDEMPOTENT_METHODS,
        idempotency_header: str | None = "Idempotency-Key",
        route: Callable[[httpx.Request], str] | None = None,
    ) -> None:
        super().__init__(
            pipeline,
            retry_statuses=retry_statuses,
            failure_statuses=failure_statuses,
            retry_methods=retry_methods,
            idempotency_header=idempotency_header,
            route=route,
        )
        if transport is not None and not isinstance(transport, httpx.AsyncBaseTransport):
            raise TypeError(
                f"transport must be an httpx.AsyncBaseTransport, got {type(transport).__name__}"
            )
        self.transport = transport if transport is not None else httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        plan = self._plan(request)
        token = VAR.set(self._tagged(request))
        try:
            return await self.pipeline.acall(_asend, self, request, plan)
        except ResponseFailure as failure:
            if failure.request is not request:
                raise
            return failure.response
        finally:
            VAR.reset(token)

    async def _attempt(self, request: httpx.Request, plan: _Plan) -> httpx.Response:
        self._cut_timeouts(request, plan)
        try:
            response = await self.transport.handle_async_request(request)
        except Exception as error:
            self._mark(error, request, plan)
            raise
        failure = self._failure(request, response, plan)
        if failure is not None:
            try:
                await response.aread()
            finally:
                await response.aclose()
            raise failure
        deadline = self._deadline()
        if deadline is not None:
            stream = response.stream
            assert isinstance(stream, httpx.AsyncByteStream)
            response.stream = _AsyncDeadlineStream(stream, request, *deadline)
        return response

    async def aclose(self) -> None:
        await self.transport.aclose()


# One function object each, so that `call` and `acall` check them once (not a bound method,
# which is a new object at every access).
def _send(transport: ResilientTransport, request: httpx.Request, plan: _Plan) -> httpx.Response:
    return transport._attempt(request, plan)


async def _asend(
    transport: AsyncResilientTransport, request: httpx.Request, plan: _Plan
) -> httpx.Response:
    return await transport._attempt(request, plan)


class _SyncDeadlineStream(httpx.SyncByteStream):
    """A response body that stops at the call's deadline (checked before each chunk)."""

    def __init__(
        self,
        stream: httpx.SyncByteStream,
        request: httpx.Request,
        deadline: float,
        clock: Any,
    ) -> None:
        self._stream = stream
        self._request = request
        self._deadline = deadline
        self._clock = clock
        self._seconds = max(0.0, deadline - clock.monotonic())

    def __iter__(self) -> Iterator[bytes]:
        deadline, clock = self._deadline, self._clock
        chunks = iter(self._stream)
        while True:
            if clock.monotonic() >= deadline:
                raise BodyDeadlineExceeded(self._request, self._seconds)
            try:
                chunk = next(chunks)
            except StopIteration:
                return
            yield chunk

    def close(self) -> None:
        self._stream.close()


class _AsyncDeadlineStream(httpx.AsyncByteStream):
    """A response body whose reads are cancelled at the call's deadline."""

    def __init__(
        self,
        stream: httpx.AsyncByteStream,
        request: httpx.Request,
        deadline: float,
        clock: Any,
    ) -> None:
        self._stream = stream
        self._request = request
        self._deadline = deadline
        self._clock = clock
        self._seconds = max(0.0, deadline - clock.monotonic())

    async def __aiter__(self) -> AsyncIterator[bytes]:
        deadline, clock = self._deadline, self._clock
        chunks = self._stream.__aiter__()
        while True:
            left = deadline - clock.monotonic()
            if left <= 0:
                raise BodyDeadlineExceeded(self._request, self._seconds)
            try:
                chunk = await within(left, chunks.__anext__())  # asyncio or trio
            except StopAsyncIteration:
                return
            except TimeoutError as error:
                raise BodyDeadlineExceeded(self._request, self._seconds) from error
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()
