"""Shared fixtures for the test suite, and the hypothesis seed of the run."""

from __future__ import annotations

import functools
import importlib.util
import inspect
import os
import random
from collections.abc import Iterator

import pytest

from redis_support import RedisServer, TcpProxy, require_redis_server
from resilience._context import EMPTY, VAR
from resilience.testing import FakeClock

#: Hypothesis tests that are not derandomized run with this seed, new for each run unless
#: RESILIENCE_HYPOTHESIS_SEED (or --hypothesis-seed) sets it: a failure is replayed with it.
SEED = os.environ.get("RESILIENCE_HYPOTHESIS_SEED") or str(random.SystemRandom().randrange(2**32))


def pytest_configure(config: pytest.Config) -> None:
    """Give hypothesis the run's seed (it reads the option in its own pytest_configure)."""
    if config.getoption("hypothesis_seed", None) is None:
        config.option.hypothesis_seed = SEED


def pytest_report_header(config: pytest.Config) -> str:
    seed = config.getoption("hypothesis_seed", None)
    return f"hypothesis seed: {seed} (replay: RESILIENCE_HYPOTHESIS_SEED={seed})"


@pytest.fixture(autouse=True)
def _clean_call_context() -> None:
    """Every test starts, and must end, outside any resilient call."""
    assert VAR.get() is EMPTY
    yield
    assert VAR.get() is EMPTY, "a test left a call context behind"


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock starting at 0 that advances instantly when slept on."""
    return FakeClock()


HAVE_TRIO = importlib.util.find_spec("trio") is not None


@pytest.fixture(params=["sync", "async", "trio"])
def mode(request: pytest.FixtureRequest) -> str:
    """Run the test synchronously through call(), then through acall() under asyncio and trio.

    See ``tests/modes.py`` for the helpers that turn one body into all three. In
    ``"trio"`` mode the async test body runs in `trio.run` (`pytest_pyfunc_call` below)
    instead of pytest-asyncio's event loop; the ``trio`` extra is needed for it.
    """
    if request.param == "trio" and not HAVE_TRIO:
        pytest.skip("trio mode needs trio (pip install -e '.[tests]')")
    return str(request.param)


@pytest.fixture(params=["async", "trio"])
def async_mode(request: pytest.FixtureRequest) -> str:
    """Run an async-only test under asyncio, then under trio (as ``mode`` does)."""
    if request.param == "trio" and not HAVE_TRIO:
        pytest.skip("trio mode needs trio (pip install -e '.[tests]')")
    return str(request.param)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run the async body of a test in ``mode`` (or ``async_mode``) "trio" with `trio.run`.

    pytest-asyncio (auto mode) has already swapped the test function for a sync
    wrapper that would run it on its event loop; the body is the wrapper's
    ``__wrapped__``. Every other test is left to pytest and pytest-asyncio.
    """
    callspec = getattr(pyfuncitem, "callspec", None)
    if callspec is None or "trio" not in (
        callspec.params.get("mode"),
        callspec.params.get("async_mode"),
    ):
        return None
    body = pyfuncitem.obj
    if not inspect.iscoroutinefunction(body):
        body = getattr(body, "__wrapped__", body)
    if not inspect.iscoroutinefunction(body):
        return None  # a sync test body: nothing to run on trio
    import trio

    fixtures = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    trio.run(functools.partial(body, **fixtures))
    return True


# -- a real redis-server for the Redis-backed policies (tests/redis_support.py) -------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the session, on a free 127.0.0.1 port, persistence off.

    Skipped with an install hint when redis-server is missing; a failure with CI=true.
    A test that kills it must leave it running (`RedisServer.ensure_running`).
    """
    require_redis_server()
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of the session's server, running and emptied for this test."""
    redis_server.ensure_running()
    redis_server.flushall()
    return redis_server.url


@pytest.fixture
def redis_proxy(redis_url: str, redis_server: RedisServer) -> Iterator[TcpProxy]:
    """A fault proxy in front of the session's server (delay, blackhole, reset), stopped after."""
    proxy = TcpProxy(redis_server.host, redis_server.port)
    try:
        yield proxy
    finally:
        proxy.stop()
