"""gRPC interceptors that run RPCs through a resilience pipeline, client and server side.

Client::

    import grpc
    import resilience as rs
    from resilience.integrations.grpc import ClientInterceptor, is_transient

    pipeline = (
        rs.Pipeline.builder("cache")
        .add(rs.Retry(3, on=is_transient))
        .add(rs.Timeout(0.5))
        .add(rs.CircuitBreaker(failure_on=is_transient))
        .build()
    )
    channel = grpc.intercept_channel(grpc.insecure_channel(target), ClientInterceptor(pipeline))

and with ``grpc.aio.insecure_channel(target, interceptors=async_client_interceptors(pipeline))``.
The interceptors cover unary-unary and unary-stream methods:

- **Deadlines.** The caller's own ``timeout=`` becomes the call's deadline,
  so Retry never waits past it, and each attempt is sent with
  ``timeout=`` the time left (the earlier of that and any Timeout layer's).
- **Errors keep their type.** What leaves the interceptor is always a
  ``grpc.RpcError`` (a ``grpc.aio.AioRpcError``, in sync and aio alike):
  the server's own errors as they are, and this library's with a fitting
  code and the original as ``__cause__``: `TimeoutExceeded` as
  DEADLINE_EXCEEDED, `CircuitOpenError` and `InjectedFault` as UNAVAILABLE,
  `ThrottledError`, `BulkheadFullError` and `LimitExceededError` as
  RESOURCE_EXHAUSTED (with ``grpc-retry-pushback-ms`` when the policy knows
  when to come back).
- **Server pushback** (gRPC's retry design, A6): ``grpc-retry-pushback-ms``
  in an error's trailing metadata becomes its ``retry_after``; a negative
  or unreadable value marks it ``retryable = False``, which `resilience.Retry`
  honours.
- **Streams** are retried only until their first message arrives: after
  that the client has seen part of the answer and an error goes to it.
- **Tags.** Each call runs with the tag ``method`` (``/package.Service/Method``).

Server: `ServerInterceptor` and `AsyncServerInterceptor` run unary-unary
handlers through a policy (a Throttle, Bulkhead, AdaptiveLimiter,
FaultInjector or a pipeline of them) and answer its rejections with
RESOURCE_EXHAUSTED or UNAVAILABLE plus pushback metadata. Streaming handlers
pass through untouched.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Iterator
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from .._backend import BackendUnavailableError
from .._clock import SYSTEM_CLOCK
from .._context import CLOCK, DEADLINE, TAGS, VAR, child, tags
from .._errors import (
    CircuitOpenError,
    InjectedFault,
    RejectedError,
    ResilienceError,
    TimeoutExceeded,
)
from .._middleware import Middleware

__all__ = [
    "PUSHBACK_KEY",
    "TRANSIENT_CODES",
    "AsyncClientInterceptor",
    "AsyncServerInterceptor",
    "AsyncStreamClientInterceptor",
    "ClientInterceptor",
    "ResilienceRpcError",
    "ServerInterceptor",
    "async_client_interceptors",
    "is_transient",
    "status_of",
    "to_rpc_error",
]

PUSHBACK_KEY = "grpc-retry-pushback-ms"
"""The trailing-metadata key by which a server tells a client when to retry (gRPC A6)."""

TRANSIENT_CODES: frozenset[grpc.StatusCode] = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)
"""Codes worth another attempt: the server was away, overloaded, or the attempt ran out of time."""


def is_transient(error: BaseException) -> bool:
    """Whether a failed attempt is worth another: for ``Retry(on=...)`` and ``failure_on=``.

    True for a ``grpc.RpcError`` whose code is in `TRANSIENT_CODES` and for a
    `resilience.TimeoutExceeded` (an attempt's own timeout, which is how an
    expired attempt shows under grpc.aio); False for every other code
    (INVALID_ARGUMENT, NOT_FOUND, ... would fail again, and say nothing about
    the server's health) and for anything marked ``retryable = False``.
    """
    if getattr(error, "retryable", None) is False:
        return False
    if isinstance(error, grpc.RpcError):
        return _code(error) in TRANSIENT_CODES
    return isinstance(error, TimeoutExceeded)


def _code(error: grpc.RpcError) -> grpc.StatusCode | None:
    code = getattr(error, "code", None)
    if not callable(code):
        return None
    try:
        value = code()
    except Exception:
        return None
    return value if isinstance(value, grpc.StatusCode) else None


def status_of(error: BaseException) -> grpc.StatusCode:
    """The gRPC status that stands for one of this library's errors (UNKNOWN for others)."""
    if isinstance(error, grpc.RpcError):
        return _code(error) or grpc.StatusCode.UNKNOWN
    if isinstance(error, TimeoutExceeded):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if isinstance(error, CircuitOpenError | InjectedFault | BackendUnavailableError):
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(error, RejectedError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return grpc.StatusCode.UNKNOWN


def _pushback(error: BaseException) -> tuple[tuple[str, str], ...]:
    after = getattr(error, "retry_after", None)
    if isinstance(after, int | float) and not isinstance(after, bool) and math.isfinite(after):
        return ((PUSHBACK_KEY, str(max(0, math.ceil(after * 1000)))),)
    return ()


class ResilienceRpcError(grpc.aio.AioRpcError):
    """A ``grpc.RpcError`` standing for one of this library's errors (its ``__cause__``).

    It is a ``grpc.aio.AioRpcError`` so that grpc.aio's call objects answer
    ``code()`` and ``details()`` for it too; sync code catches it as the
    ``grpc.RpcError`` it also is.
    """

    def __init__(self, error: BaseException) -> None:
        super().__init__(
            status_of(error),
            initial_metadata=grpc.aio.Metadata(),
            trailing_metadata=grpc.aio.Metadata(*_pushback(error)),
            details=f"{type(error).__name__}: {error}",
        )
        self.retry_after = getattr(error, "retry_after", None)


def to_rpc_error(error: BaseException) -> grpc.RpcError:
    """``error`` as a ``grpc.RpcError``: itself if it is one, else a `ResilienceRpcError`."""
    if isinstance(error, grpc.RpcError):
        return error
    converted = ResilienceRpcError(error)
    converted.__cause__ = error
    return converted


def _read_pushback(error: BaseException) -> None:
    """Carry a server's ``grpc-retry-pushback-ms`` onto the error, as Retry understands it."""
    trailing = getattr(error, "trailing_metadata", None)
    if not callable(trailing):
        return
    try:
        metadata = trailing() or ()
    except Exception:
        return
    for key, value in metadata:
        if key != PUSHBACK_KEY:
            continue
        text = value.decode() if isinstance(value, bytes) else str(value)
        try:
            millis = int(text.strip())
        except ValueError:
            millis = -1
        if millis < 0:
            error.retryable = False  # type: ignore[attr-defined] # A6: do not retry
        else:
            error.retry_after = millis / 1000.0  # type: ignore[attr-defined]
        return


def _check_pipeline(pipeline: object) -> Middleware:
    if not isinstance(pipeline, Middleware):
        raise TypeError(
            f"pipeline must be a resilience policy or Pipeline, got {type(pipeline).__name__}"
        )
    return pipeline


def _method_name(details: Any) -> str:
    method = details.method
    return method.decode() if isinstance(method, bytes) else str(method)


class _Deadline:
    """The caller's ``timeout=`` as the call's deadline, in force while the pipeline runs."""

    __slots__ = ("method", "token")

    def __init__(self, details: Any) -> None:
        raw = VAR.get()
        timeout = details.timeout
        if timeout is not None:
            deadline = SYSTEM_CLOCK.monotonic() + max(0.0, float(timeout))
            held = raw[DEADLINE]
            clock = raw[CLOCK]
            if held is not None and clock is not None:
                held = held - clock.monotonic() + SYSTEM_CLOCK.monotonic()
            if held is None or deadline < held:
                raw = child(raw, deadline, SYSTEM_CLOCK)
        raw = list(raw)
        raw[TAGS] = MappingProxyType({**raw[TAGS], "method": _method_name(details)})
        self.token = VAR.set(raw)

    def close(self) -> None:
        VAR.reset(self.token)


def _attempt_details(details: Any) -> Any:
    """The call details of one attempt: its ``timeout`` is what the call has left."""
    raw = VAR.get()
    deadline, clock = raw[DEADLINE], raw[CLOCK]
    if deadline is None or clock is None:
        return details
    return details._replace(timeout=max(0.0, deadline - clock.monotonic()))


# -- the sync client ---------------------------------------------------------------------------

if TYPE_CHECKING:
    _Future = grpc.Future[Any]  # generic in the stubs only
else:
    _Future = grpc.Future


class _Outcome(grpc.RpcError, _Future, grpc.Call):
    """What a sync interceptor hands back: an answer (a Fallback's) or an error."""

    def __init__(self, response: Any = None, error: Exception | None = None) -> None:
        self._response = response
        self._error = error

    def result(self, timeout: float | None = None) -> Any:
        if self._error is not None:
            raise self._error
        return self._response

    def exception(self, timeout: float | None = None) -> Exception | None:
        return self._error

    def traceback(self, timeout: float | None = None) -> Any:
        return None if self._error is None else self._error.__traceback__

    def add_done_callback(self, fn: Callable[[Any], object]) -> None:
        fn(self)

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float:
        return 0.0

    def add_callback(self, callback: Callable[[], object]) -> bool:
        return False

    def _ask(self, name: str, default: Any) -> Any:
        method = getattr(self._error, name, None)
        return method() if callable(method) else default

    def initial_metadata(self) -> Any:
        return self._ask("initial_metadata", ())

    def trailing_metadata(self) -> Any:
        return self._ask("trailing_metadata", ())

    def code(self) -> grpc.StatusCode:
        return self._ask("code", grpc.StatusCode.OK)  # type: ignore[no-any-return]

    def details(self) -> str:
        return self._ask("details", "")  # type: ignore[no-any-return]


class _SyncStream:
    """A response stream whose first message arrived inside the pipeline."""

    def __init__(self, call: Any, first: Any, empty: bool) -> None:
        self._call = call
        self._first: Any = first
        self._empty = empty
        self._started = False

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if not self._started:
            self._started = True
            if not self._empty:
                return self._first
        if self._empty:
            raise StopIteration
        return next(self._call)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


_EMPTY = object()


def _unary(continuation: Callable[..., Any], details: Any, request: Any) -> Any:
    """One attempt of a sync unary-unary RPC (a module function: `call` checks it once)."""
    outcome = continuation(_attempt_details(details), request)
    try:
        outcome.result()
    except grpc.RpcError as error:
        _read_pushback(error)
        raise
    return outcome


class ClientInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Runs each unary-unary and unary-stream RPC of a sync channel through ``pipeline``.

    Use with ``grpc.intercept_channel(channel, ClientInterceptor(pipeline))``.
    """

    def __init__(self, pipeline: Middleware) -> None:
        self.pipeline = _check_pipeline(pipeline)

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        scope = _Deadline(client_call_details)
        try:
            result = self.pipeline.call(_unary, continuation, client_call_details, request)
        except Exception as error:
            return _Outcome(error=to_rpc_error(error))
        finally:
            scope.close()
        return result if isinstance(result, grpc.Call) else _Outcome(response=result)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        def attempt() -> tuple[Any, Any]:
            call = continuation(_attempt_details(client_call_details), request)
            try:
                return call, next(call, _EMPTY)
            except grpc.RpcError as error:
                _read_pushback(error)
                raise

        scope = _Deadline(client_call_details)
        try:
            call, first = self.pipeline.call(attempt)
        except grpc.RpcError:
            raise
        except Exception as error:
            raise to_rpc_error(error) from error
        finally:
            scope.close()
        return _SyncStream(call, first, first is _EMPTY)


# -- the aio client ----------------------------------------------------------------------------


def async_client_interceptors(
    pipeline: Middleware,
) -> list[grpc.aio.ClientInterceptor]:
    """The interceptors that run a grpc.aio channel's unary-unary and unary-stream RPCs.

    ``grpc.aio.insecure_channel(target, interceptors=async_client_interceptors(pipeline))``.
    grpc.aio files each interceptor object under one kind of method only, so
    there is one object per kind, sharing the pipeline.
    """
    return [AsyncClientInterceptor(pipeline), AsyncStreamClientInterceptor(pipeline)]


class AsyncClientInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Runs each unary-unary RPC of a grpc.aio channel through ``pipeline``.

    `async_client_interceptors` gives it with its unary-stream sibling.
    """

    def __init__(self, pipeline: Middleware) -> None:
        self.pipeline = _check_pipeline(pipeline)

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        async def attempt() -> Any:
            call = await continuation(_attempt_details(client_call_details), request)
            try:
                await call
            except grpc.RpcError as error:
                _read_pushback(error)
                raise
            except BaseException:
                call.cancel()  # a Timeout cancelled the attempt: so is the RPC
                raise
            return call

        scope = _Deadline(client_call_details)
        try:
            return await self.pipeline.acall(attempt)
        except grpc.RpcError:
            raise
        except Exception as error:
            raise to_rpc_error(error) from error
        finally:
            scope.close()


class AsyncStreamClientInterceptor(grpc.aio.UnaryStreamClientInterceptor):
    """Runs each unary-stream RPC of a grpc.aio channel through ``pipeline``.

    A stream is retried until its first message arrives, not after.
    """

    def __init__(self, pipeline: Middleware) -> None:
        self.pipeline = _check_pipeline(pipeline)

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        async def attempt() -> tuple[Any, Any]:
            call = await continuation(_attempt_details(client_call_details), request)
            try:
                return call, await call.read()
            except grpc.RpcError as error:
                _read_pushback(error)
                raise
            except BaseException:
                call.cancel()
                raise

        scope = _Deadline(client_call_details)
        try:
            call, first = await self.pipeline.acall(attempt)
        except grpc.RpcError:
            raise
        except Exception as error:
            raise to_rpc_error(error) from error
        finally:
            scope.close()
        return _rest(call, first)


async def _rest(call: Any, first: Any) -> AsyncIterator[Any]:
    message = first
    while message is not grpc.aio.EOF:
        yield message
        message = await call.read()


# -- servers -----------------------------------------------------------------------------------


def _check_policy(policy: object) -> Middleware:
    if not isinstance(policy, Middleware):
        raise TypeError(
            f"policy must be a resilience policy or Pipeline, got {type(policy).__name__}"
        )
    return policy


def _rejection(error: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """The status a server answers one of this library's errors with, or None for others."""
    if not isinstance(error, ResilienceError):
        return None
    return status_of(error), f"{type(error).__name__}: {error}"


class ServerInterceptor(grpc.ServerInterceptor):
    """Runs a sync server's unary-unary handlers through ``policy``.

    Its rejections (and injected faults) end the RPC with RESOURCE_EXHAUSTED
    or UNAVAILABLE and ``grpc-retry-pushback-ms`` when the policy knows when
    to come back; the handler's own errors are left to grpc. Use with
    ``grpc.server(executor, interceptors=[ServerInterceptor(policy)])``.
    """

    def __init__(self, policy: Middleware) -> None:
        self.policy = _check_policy(policy)

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        behaviour = handler.unary_unary
        policy = self.policy

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            with tags(method=handler_call_details.method):
                try:
                    return policy.call(behaviour, request, context)
                except ResilienceError as error:
                    code, message = _rejection(error) or (grpc.StatusCode.UNKNOWN, str(error))
                    context.set_trailing_metadata(_pushback(error))
                    context.abort(code, message)

        return handler._replace(unary_unary=guarded)


class AsyncServerInterceptor(grpc.aio.ServerInterceptor):
    """Runs a grpc.aio server's unary-unary handlers through ``policy``; as `ServerInterceptor`.

    Use with ``grpc.aio.server(interceptors=[AsyncServerInterceptor(policy)])``.
    """

    def __init__(self, policy: Middleware) -> None:
        self.policy = _check_policy(policy)

    async def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        behaviour = handler.unary_unary
        policy = self.policy

        async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            with tags(method=handler_call_details.method):
                try:
                    return await policy.acall(behaviour, request, context)
                except ResilienceError as error:
                    code, message = _rejection(error) or (grpc.StatusCode.UNKNOWN, str(error))
                    context.set_trailing_metadata(_pushback(error))
                    await context.abort(code, message)

        return handler._replace(unary_unary=guarded)
