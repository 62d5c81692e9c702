"""`RedisBackend` itself against a real redis-server: its settings, its rest after a failure,
its async clients (one per event loop), its background sync, `flush` and `close`.

What the policies do over a backend is in test_redis.py. Here a request that Redis fails is
made by hand (a script called without its keys: Redis answers with an error), and the
backend's rest is timed on a `FakeClock` (`rest_clock`: the backend reads the process's
monotonic clock, swapped for the fake one), so no test waits for a rest to end.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import logging
import os
import select
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

import resilience as rs
from redis_support import TcpProxy, free_port, no_retry
from resilience import _redis_backend
from resilience._backend import Unavailable
from resilience.redis import RedisBackend
from resilience.testing import FakeClock

pytestmark = pytest.mark.redis

_prefixes = itertools.count()
SYNC_THREAD = "resilience-redis-sync"


def client(
    url: str, timeout: float | None = 0.05, connect: float | None = 0.05, **options: Any
) -> redis.Redis:
    """A sync client that keeps the backend's bound unless told otherwise."""
    options.setdefault("retry", no_retry())
    return redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=connect, **options
    )


def aclient(
    url: str, timeout: float | None = 0.05, connect: float | None = 0.05, **options: Any
) -> redis.asyncio.Redis:
    """An async client that keeps the backend's bound unless told otherwise."""
    options.setdefault("retry", redis.asyncio.retry.Retry(NoBackoff(), 0))
    return redis.asyncio.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=connect, **options
    )


def nowhere() -> str:
    """The URL of a port nothing listens on: every connection is refused."""
    return f"redis://127.0.0.1:{free_port()}/0"


Backends = Callable[..., RedisBackend]


@pytest.fixture
def backends(redis_url: str) -> Iterator[Backends]:
    """Make backends (``from_url`` by default) on a prefix unique to the test; closed after."""
    made: list[RedisBackend] = []
    prefix = f"rb{next(_prefixes)}"

    def make(url: str = redis_url, **options: Any) -> RedisBackend:
        options.setdefault("prefix", prefix)
        options.setdefault("mode", "strict")
        if "client" not in options:
            options.setdefault("timeout", 1.0)  # no load on the machine times a request out
        if "client" in options:
            backend = RedisBackend(**options)
        else:
            backend = RedisBackend.from_url(url, **options)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()
        backend.client.close()


@pytest.fixture
def rest_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The clock the backend times its rests on (the process's monotonic one), made fake."""
    clock = FakeClock(1000.0)
    monkeypatch.setattr(_redis_backend, "time", SimpleNamespace(monotonic=clock.monotonic))
    return clock


def fail(backend: RedisBackend) -> Unavailable:
    """A request that Redis answers with an error (a script without its keys)."""
    with pytest.raises(Unavailable) as failed:
        backend.run("budget", [], [])
    return failed.value


async def afail(backend: RedisBackend) -> Unavailable:
    """`fail` on the async path."""
    with pytest.raises(Unavailable) as failed:
        await backend.arun("budget", [], [])
    return failed.value


async def ok() -> None:
    return None


# -- settings ----------------------------------------------------------------------------------


def test_the_documented_defaults(redis_url: str) -> None:
    backend = RedisBackend.from_url(redis_url)
    assert (backend.prefix, backend.mode, backend.on_backend_error) == (
        "resilience",
        "local-first",
        "local",
    )
    assert (backend.timeout, backend.sync_interval, backend.retry_interval) == (0.05, 0.05, 1.0)
    assert (backend.lease_seconds, backend.key_ttl) == (10.0, 3600)
    assert backend.clock is None
    own = RedisBackend(client=client(redis_url))
    assert (own.timeout, own.sync_interval, own.retry_interval) == (0.05, 0.05, 1.0)
    assert (own.lease_seconds, own.key_ttl, own.aclient) == (10.0, 3600, None)
    backend.client.close()
    own.client.close()


def test_from_url_makes_clients_bounded_by_the_timeout_that_never_retry(redis_url: str) -> None:
    """No retry, no health-check PING before a command: one request is one round trip."""
    backend = RedisBackend.from_url(redis_url, timeout=0.2)
    made: Any
    for made in (backend.client, backend.aclient):
        kwargs = made.connection_pool.connection_kwargs
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (0.2, 0.2)
        assert kwargs["health_check_interval"] == 0
        assert made.get_retry()._retries == 0
    backend.client.close()


@pytest.mark.parametrize(
    "options",
    [
        {"timeout": 5},
        {"sync_interval": 0.001},
        {"sync_interval": 10},
        {"lease_seconds": 0.1},
        {"retry_interval": 0},
        {"key_ttl": 1},
        {"prefix": "p"},
        {"mode": "strict"},
        {"on_backend_error": "closed"},
    ],
)
def test_settings_at_their_bounds_are_taken(redis_url: str, options: dict[str, Any]) -> None:
    backend = RedisBackend.from_url(redis_url, **options)
    for name, value in options.items():
        assert getattr(backend, name) == value
    backend.client.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"timeout": 5.001}, "timeout must be at most 5 seconds"),
        ({"sync_interval": 0.0009}, "sync_interval must be between 0.001 and 10"),
        ({"sync_interval": 10.001}, "sync_interval must be between 0.001 and 10"),
        ({"lease_seconds": 0.0999}, "lease_seconds must be at least 0.1"),
        ({"retry_interval": -0.001}, "retry_interval must be >= 0"),
        ({"key_ttl": 0.999}, "key_ttl must be >= 1"),
        ({"prefix": 5}, "prefix must be a non-empty str"),
        ({"prefix": "a{"}, "prefix must be a non-empty str without braces"),
        ({"prefix": "a}"}, "prefix must be a non-empty str without braces"),
    ],
)
def test_settings_just_past_their_bounds_are_refused(
    redis_url: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        RedisBackend.from_url(redis_url, **options)


def test_a_key_ttl_is_whole_seconds_rounded_up(redis_url: str) -> None:
    assert RedisBackend.from_url(redis_url, key_ttl=1.2).key_ttl == 2


@pytest.mark.parametrize(
    ("read", "connect", "retry"),
    [
        (0.05, 0.05, no_retry()),
        (0.01, 0.02, no_retry()),  # shorter than the backend's bound: fine
        (0.05, 0.05, None),  # redis-py's connections then make no retry either
    ],
)
def test_a_client_within_the_bound_is_taken(
    redis_url: str, read: float, connect: float, retry: Retry | None
) -> None:
    made = client(redis_url, read, connect, retry=retry)
    backend = RedisBackend(client=made, aclient=aclient(redis_url, read, connect), timeout=0.05)
    assert backend.client is made
    made.close()


@pytest.mark.parametrize(
    ("read", "connect", "retries"),
    [
        (None, 0.05, 0),
        (0.05, None, 0),
        (0.051, 0.05, 0),
        (0.05, 0.051, 0),
        (0.05, 0.05, 1),
    ],
)
@pytest.mark.parametrize("which", ["client", "aclient"])
def test_a_client_that_could_wait_past_the_bound_or_retry_is_refused(
    redis_url: str, which: str, read: float | None, connect: float | None, retries: int
) -> None:
    good: dict[str, Any] = {"client": client(redis_url), "aclient": aclient(redis_url)}
    if which == "client":
        good["client"] = client(redis_url, read, connect, retry=Retry(NoBackoff(), retries))
    else:
        good["aclient"] = aclient(
            redis_url, read, connect, retry=redis.asyncio.retry.Retry(NoBackoff(), retries)
        )
    with pytest.raises(ValueError, match=f"{which} must time out within the backend's timeout"):
        RedisBackend(timeout=0.05, **good)


def test_an_async_client_must_be_a_redis_asyncio_client(redis_url: str) -> None:
    with pytest.raises(TypeError, match=r"aclient must be a redis\.asyncio\.Redis or None"):
        RedisBackend(client=client(redis_url), aclient=client(redis_url))


def test_only_the_four_shared_policies_attach(backends: Backends) -> None:
    with pytest.raises(ValueError, match="a timeout cannot keep its state in a RedisBackend"):
        backends().attach("timeout", "t", None)


def test_policies_of_one_kind_with_other_names_share_a_backend(backends: Backends) -> None:
    backend = backends()
    first, second = (
        rs.Throttle(1, per=60, name="a", backend=backend),
        rs.Throttle(1, per=60, name="b", backend=backend),
    )
    assert first.try_acquire()
    assert second.try_acquire()


def test_each_backend_has_its_own_process_id(backends: Backends) -> None:
    one, two = backends(), backends()
    assert one.process_id != two.process_id
    assert one.process_id.split(":")[1] == str(os.getpid())


# -- the rest after a failure ----------------------------------------------------------------


def test_a_failure_rests_the_backend_for_retry_interval(
    backends: Backends, rest_clock: FakeClock
) -> None:
    """While it rests, requests are refused without being sent, the refusal naming the
    failure and the rest left; exactly retry_interval after the failure it asks again."""
    backend = backends(retry_interval=2, on_backend_error="closed")
    throttle = rs.Throttle(100, name="rest", backend=backend)
    assert backend.available()
    failed = fail(backend)
    assert isinstance(failed.error, redis.ResponseError)
    assert (failed.sent, failed.retry_after) == (True, 2)
    assert not backend.available()
    rest_clock.advance(1.5)
    sent = backend.round_trips
    with pytest.raises(rs.BackendUnavailableError) as refused:
        throttle.call(lambda: None)
    assert refused.value.retry_after == pytest.approx(0.5)
    assert refused.value.__cause__ is failed.error
    with pytest.raises(rs.BackendUnavailableError):
        asyncio.run(throttle.acall(ok))
    assert backend.round_trips == sent
    assert not backend.available()
    rest_clock.advance(0.5)
    assert backend.available()
    assert throttle.try_acquire()
    assert backend.round_trips == sent + 1


def test_an_async_failure_rests_the_sync_calls_too(
    backends: Backends, rest_clock: FakeClock
) -> None:
    backend = backends(retry_interval=2, on_backend_error="closed")
    throttle = rs.Throttle(100, name="rest", backend=backend)
    failed = asyncio.run(afail(backend))
    assert (failed.sent, failed.retry_after) == (True, 2)
    with pytest.raises(rs.BackendUnavailableError) as refused:
        throttle.call(lambda: None)
    assert refused.value.retry_after == pytest.approx(2)
    rest_clock.advance(2)
    assert throttle.try_acquire()


def test_with_no_retry_interval_the_backend_asks_again_at_once(
    backends: Backends, rest_clock: FakeClock
) -> None:
    backend = backends(retry_interval=0, on_backend_error="closed")
    throttle = rs.Throttle(100, name="again", backend=backend)
    assert fail(backend).retry_after == 0
    assert backend.available()
    assert throttle.try_acquire()
    assert asyncio.run(throttle.acall(ok)) is None


def test_a_request_that_could_not_connect_was_not_sent(backends: Backends) -> None:
    """A refused connection never reached Redis; a connection Redis dropped may have."""
    refused = fail(backends(url=nowhere(), retry_interval=0))
    assert isinstance(refused.error, redis.ConnectionError)
    assert not refused.sent
    assert asyncio.run(afail(backends(url=nowhere(), retry_interval=0))).sent is False
    listener = socket.create_server(("127.0.0.1", 0))
    hangup = threading.Thread(target=lambda: listener.accept()[0].close(), daemon=True)
    hangup.start()
    try:
        backend = backends(url=f"redis://127.0.0.1:{listener.getsockname()[1]}/0")
        dropped = fail(backend)
    finally:
        hangup.join(10)
        listener.close()
    assert isinstance(dropped.error, redis.ConnectionError)
    assert "connecting to" not in str(dropped.error)
    assert dropped.sent


class HeldClock(FakeClock):
    """A fake clock whose reading in the thread `holding` waits for `go` (once `held` is set).

    The backend reads it once per request, after deciding to send it: a request held
    there is under way while the test does something else."""

    def __init__(self) -> None:
        super().__init__()
        self.holding: threading.Thread | None = None
        self.held = threading.Event()
        self.go = threading.Event()

    def monotonic(self) -> float:
        if threading.current_thread() is self.holding and not self.go.is_set():
            self.held.set()
            assert self.go.wait(10)
        return super().monotonic()


@pytest.mark.parametrize("answered", ["sync", "async"])
def test_an_answer_ends_the_rest_a_failure_began(
    backends: Backends, redis_url: str, answered: str
) -> None:
    """Two requests under way: one fails (the backend rests), then the other is answered,
    which shows Redis is back: the backend is available again at once."""
    clock = HeldClock()
    good, bad = redis_url, nowhere()
    sync_url, async_url = (good, bad) if answered == "sync" else (bad, good)
    async_client = aclient(async_url, 1.0, 1.0)
    backend = backends(
        client=client(sync_url, 1.0, 1.0),
        aclient=async_client,
        timeout=1.0,
        retry_interval=60,
        on_backend_error="closed",
        clock=clock,
    )
    throttle = rs.Throttle(100, name="answered", backend=backend)
    outcome: list[object] = []

    async def acall() -> None:
        outcome.append(await throttle.acall(ok))
        await async_client.aclose()  # yours: closed on the loop it ran on

    def answer() -> None:
        if answered == "sync":
            outcome.append(throttle.try_acquire())
        else:
            asyncio.run(acall())

    clock.holding = threading.Thread(target=answer)
    clock.holding.start()
    try:
        assert clock.held.wait(10)
        if answered == "sync":
            asyncio.run(afail(backend))
        else:
            fail(backend)
        assert not backend.available()
    finally:
        clock.go.set()
        clock.holding.join(10)
    assert outcome == ([True] if answered == "sync" else [None])
    assert backend.available()


def test_each_request_is_one_round_trip(backends: Backends) -> None:
    backend = backends()
    throttle = rs.Throttle(100, name="trips", backend=backend)
    assert backend.round_trips == 0
    assert throttle.try_acquire()
    assert backend.round_trips == 1
    asyncio.run(throttle.acall(ok))
    assert backend.round_trips == 2


# -- the async clients: one per event loop ------------------------------------------------------


class Watched(redis.asyncio.Redis):
    """Your async client, counting the requests sent through it and its closes."""

    requests = 0
    closes = 0

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        self.requests += 1
        return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        self.closes += 1
        await super().aclose(close_connection_pool)


def settled(condition: Callable[[], bool]) -> bool:
    """Whether ``condition`` holds within 5 s (looked at every 10 ms): for what another
    thread, or the server, does on its own time."""
    for _ in range(500):
        if condition():
            return True
        threading.Event().wait(0.01)
    return condition()


def test_your_async_client_serves_the_first_event_loop_and_stays_open(
    backends: Backends, redis_url: str
) -> None:
    mine = Watched.from_url(
        redis_url,
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
        retry=redis.asyncio.retry.Retry(NoBackoff(), 0),
    )
    assert isinstance(mine, Watched)
    backend = backends(client=client(redis_url, 0.5, 0.5), aclient=mine, timeout=0.5)
    throttle = rs.Throttle(100, name="loops", backend=backend)

    async def twice() -> int:
        await throttle.acall(ok)
        first = mine.requests
        await throttle.acall(ok)
        return mine.requests - first

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(twice()) == 1  # the same client, every call
        loop.run_until_complete(loop.shutdown_asyncgens())  # the loop ends (as asyncio.run)
        assert mine.closes == 0  # yours: the backend never closes it
        loop.run_until_complete(mine.aclose())
    finally:
        loop.close()
    sent = mine.requests
    asyncio.run(throttle.acall(ok))  # another loop gets a client of its own
    assert mine.requests == sent
    assert backend.round_trips == 3


def test_the_async_clients_the_backend_made_close_when_their_loop_ends(
    backends: Backends, redis_proxy: TcpProxy
) -> None:
    backend = backends(url=redis_proxy.url, timeout=0.5)
    throttle = rs.Throttle(100, name="loops", backend=backend)

    async def call() -> int:
        await throttle.acall(ok)
        return redis_proxy.open_connections

    for _ in range(2):  # the first loop's client (from_url's), then a second loop's own
        assert asyncio.run(call()) == 1
        assert settled(lambda: redis_proxy.open_connections == 0)


def test_without_an_async_client_async_calls_use_the_sync_one(
    backends: Backends, redis_url: str
) -> None:
    backend = backends(client=client(redis_url, 1.0, 1.0), timeout=1.0, on_backend_error="closed")
    throttle = rs.Throttle(100, name="sync", backend=backend)
    assert asyncio.run(throttle.acall(ok)) is None
    assert backend.round_trips == 1


def test_async_calls_use_the_async_client(backends: Backends, redis_url: str) -> None:
    async_client = aclient(redis_url, 1.0, 1.0)
    backend = backends(
        client=client(nowhere()), aclient=async_client, timeout=1.0, on_backend_error="closed"
    )
    throttle = rs.Throttle(100, name="async", backend=backend, max_wait=0)

    async def main() -> None:
        await throttle.acall(ok)
        await async_client.aclose()

    asyncio.run(main())
    with pytest.raises(rs.BackendUnavailableError):
        throttle.call(lambda: None)


# -- the background sync, flush and close ----------------------------------------------------


class Boom(Exception):
    pass


def boom() -> None:
    raise Boom


def sync_threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name == SYNC_THREAD}


def test_one_sync_thread_per_backend_a_daemon_that_close_ends(backends: Backends) -> None:
    before = sync_threads()
    backend = backends(mode="local-first", sync_interval=10)
    policies = [
        rs.Throttle(10, name="a", backend=backend),
        rs.RetryBudget(name="b", backend=backend),
    ]
    started = sync_threads() - before
    assert len(started) == 1
    thread = started.pop()
    assert thread.daemon  # it never keeps the process alive
    backend.close()
    assert not thread.is_alive()
    backend.close()  # again: nothing to do
    assert len(policies) == 2


def test_a_failure_wakes_the_sync_at_once(backends: Backends) -> None:
    here, there = backends(mode="local-first", sync_interval=10), backends()
    mine = rs.CircuitBreaker(name="woken", consecutive_failures=1, backend=here)
    theirs = rs.CircuitBreaker(name="woken", consecutive_failures=1, backend=there)
    assert mine.call(lambda: 1) == 1
    with pytest.raises(Boom):
        mine.call(boom)
    assert settled(lambda: theirs.metrics().state is rs.CircuitState.OPEN)  # not in 10 s


def test_a_slot_given_back_is_sent_by_the_sync_soon(backends: Backends) -> None:
    here, there = backends(sync_interval=10), backends()
    mine = rs.Bulkhead(1, name="slot", backend=here)
    theirs = rs.Bulkhead(1, name="slot", backend=there)
    with mine:
        assert theirs.metrics().in_flight == 1
    assert settled(lambda: theirs.metrics().in_flight == 0)


def test_close_sends_what_waits(backends: Backends) -> None:
    here, there = backends(mode="local-first", sync_interval=10), backends()
    mine = rs.RetryBudget(ratio=1, min_per_second=0, name="budget", backend=here)
    theirs = rs.RetryBudget(ratio=1, min_per_second=0, name="budget", backend=there)
    mine.deposit()
    here.close()
    assert theirs.balance == 1


def test_a_policy_outlives_the_close_of_its_backend(backends: Backends) -> None:
    here, there = backends(mode="local-first", sync_interval=10), backends()
    mine = rs.CircuitBreaker(name="after", consecutive_failures=1, backend=here)
    theirs = rs.CircuitBreaker(name="after", consecutive_failures=1, backend=there)
    here.close()
    with pytest.raises(Boom):
        mine.call(boom)  # it would wake the sync, which is gone
    here.flush()  # by hand
    with pytest.raises(rs.CircuitOpenError):
        theirs.call(lambda: None)


def test_a_sync_that_fails_for_one_policy_goes_on_for_the_others(
    backends: Backends, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    here, there = backends(mode="local-first", sync_interval=10), backends()
    broken = here.attach("retry_budget", "broken", rs.RetryBudget())

    def bug() -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(broken, "flush", bug)
    mine = rs.RetryBudget(ratio=1, min_per_second=0, name="budget", backend=here)
    theirs = rs.RetryBudget(ratio=1, min_per_second=0, name="budget", backend=there)
    mine.deposit()
    with caplog.at_level(logging.ERROR, logger="resilience"):
        here.flush()
    assert theirs.balance == 1
    assert "background sync of retry_budget 'broken' failed" in caplog.text


def test_a_backend_dropped_unclosed_ends_its_sync_thread_quietly(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    errors: list[object] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))
    before = sync_threads()
    backend = RedisBackend.from_url(redis_url, sync_interval=0.001)
    backend.start()
    (thread,) = sync_threads() - before
    backend.client.close()
    del backend
    gc.collect()
    thread.join(10)
    assert not thread.is_alive()
    assert errors == []


# -- a forked child ------------------------------------------------------------------------------


def in_child(work: Callable[[], object]) -> object:
    """What ``work`` returns in a forked child of this process (through JSON); None when the
    child fails, or has not answered within 10 s (it is then killed)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns to pytest
        status = 1
        try:
            os.close(read)
            os.write(write, json.dumps(work()).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        ready, _, _ = select.select([pipe], [], [], 10)
        answer = pipe.read() if ready else b""
    if not answer:
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return json.loads(answer) if answer else None


@pytest.mark.parametrize("first", ["request", "policy"])
def test_a_forked_child_takes_a_process_id_of_its_own(backends: Backends, first: str) -> None:
    """Whether the child's first use of the backend is a request or a new policy; the
    parent keeps its own."""
    backend = backends()
    throttle = rs.Throttle(100, name="forked", backend=backend)
    assert throttle.try_acquire()
    parent = backend.process_id

    def child() -> list[str]:
        if first == "policy":
            rs.RetryBudget(name="child", backend=backend)
        else:
            assert throttle.try_acquire()
        seen = backend.process_id
        assert throttle.try_acquire()
        return [seen, backend.process_id, str(os.getpid())]

    answer = in_child(child)
    assert isinstance(answer, list)
    seen, later, pid = answer
    assert seen != parent
    assert later == seen
    assert seen.split(":")[1] == pid
    assert backend.process_id == parent


@pytest.mark.parametrize("first", ["policy", "flush", "close"])
def test_a_child_forked_during_a_sync_can_sync(
    backends: Backends, monkeypatch: pytest.MonkeyPatch, first: str
) -> None:
    """The parent's sync thread is mid-sync when the process forks: that thread is gone in
    the child, whose own syncs must not wait for it (whatever the child does first)."""
    backend = backends(mode="local-first", sync_interval=10)
    part = backend.attach("retry_budget", "held", rs.RetryBudget())
    parent, entered, release = os.getpid(), threading.Event(), threading.Event()

    def held() -> None:  # the parent's sync thread waits here
        if os.getpid() == parent and threading.current_thread().name == SYNC_THREAD:
            entered.set()
            assert release.wait(10)

    monkeypatch.setattr(part, "flush", held)
    backend.wake()
    assert entered.wait(10)
    try:

        def child() -> bool:
            if first == "policy":
                assert rs.Throttle(100, name="child", backend=backend).try_acquire()
                backend.flush()
            else:
                getattr(backend, first)()
            return True

        assert in_child(child) is True
    finally:
        release.set()


class Stalling(redis.asyncio.Redis):
    """An async client whose scripts are registered only once `release` is set."""

    entered = threading.Event()
    release = threading.Event()

    def register_script(self, script: Any) -> Any:
        self.entered.set()
        assert self.release.wait(10)
        return super().register_script(script)


def test_a_child_forked_while_an_event_loop_takes_its_client_can_attach_policies(
    backends: Backends, redis_url: str
) -> None:
    """A thread's event loop is getting its async client when the process forks: the child
    does not wait for that thread, which it does not have."""
    stalling = Stalling.from_url(
        redis_url,
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
        retry=redis.asyncio.retry.Retry(NoBackoff(), 0),
    )
    assert isinstance(stalling, Stalling)
    stalling.entered, stalling.release = threading.Event(), threading.Event()
    backend = backends(client=client(redis_url, 1.0, 1.0), aclient=stalling, timeout=1.0)
    throttle = rs.Throttle(100, name="loop", backend=backend)

    async def call() -> None:
        await throttle.acall(ok)
        await stalling.aclose()

    thread = threading.Thread(target=asyncio.run, args=(call(),))
    thread.start()
    try:
        assert stalling.entered.wait(10)

        def child() -> bool:
            return rs.RetryBudget(name="child", backend=backend).balance >= 0

        assert in_child(child) is True
    finally:
        stalling.release.set()
        thread.join(10)


# -- a fork as the backend sees it: a new process id (no fork, so that coverage sees it) -------


def pretend_forked(monkeypatch: pytest.MonkeyPatch) -> int:
    """From now on the backend finds itself in a new process (its module's os.getpid)."""
    pid = os.getpid() + 100_000
    monkeypatch.setattr(_redis_backend, "os", SimpleNamespace(getpid=lambda: pid))
    return pid


def done_within_10s(work: Callable[[], object]) -> bool:
    """Whether ``work``, run in a thread, is done within 10 s."""
    done = threading.Event()

    def run() -> None:
        work()
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done.wait(10)


@pytest.mark.parametrize("first", ["request", "policy", "flush"])
def test_in_a_new_process_the_backend_takes_a_process_id_of_its_own(
    backends: Backends, monkeypatch: pytest.MonkeyPatch, first: str
) -> None:
    backend = backends(sync_interval=10)
    throttle = rs.Throttle(100, name="moved", backend=backend)
    assert throttle.try_acquire()
    parent = backend.process_id
    pid = pretend_forked(monkeypatch)
    if first == "request":
        assert throttle.try_acquire()
    elif first == "policy":
        rs.RetryBudget(name="new", backend=backend)
    else:
        backend.flush()
    seen = backend.process_id
    assert seen != parent
    assert seen.split(":")[1] == str(pid)
    assert throttle.try_acquire()
    assert backend.process_id == seen


def test_in_a_new_process_the_backend_does_not_wait_on_the_old_ones_locks(
    backends: Backends, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old process's sync thread holds the flush lock, and a thread of its event loop
    the backend's lock, when the backend finds itself in a new process: neither stops it."""
    stalling = Stalling.from_url(
        redis_url,
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
        retry=redis.asyncio.retry.Retry(NoBackoff(), 0),
    )
    assert isinstance(stalling, Stalling)
    stalling.entered, stalling.release = threading.Event(), threading.Event()
    backend = backends(
        client=client(redis_url, 1.0, 1.0), aclient=stalling, timeout=1.0, sync_interval=10
    )
    part = backend.attach("retry_budget", "held", rs.RetryBudget())
    entered, release = threading.Event(), threading.Event()

    def held() -> None:  # the old sync thread waits here, holding the flush lock
        if threading.current_thread().name == SYNC_THREAD:
            entered.set()
            assert release.wait(10)

    monkeypatch.setattr(part, "flush", held)
    backend.wake()
    throttle = rs.Throttle(100, name="loop", backend=backend)

    async def call() -> None:
        await throttle.acall(ok)
        await stalling.aclose()

    loop_thread = threading.Thread(target=asyncio.run, args=(call(),))
    loop_thread.start()
    try:
        assert entered.wait(10)
        assert stalling.entered.wait(10)  # the loop's thread holds the backend's lock
        pretend_forked(monkeypatch)
        assert done_within_10s(backend.flush)
        assert done_within_10s(lambda: rs.RetryBudget(name="new", backend=backend))
    finally:
        release.set()
        stalling.release.set()
        loop_thread.join(10)
