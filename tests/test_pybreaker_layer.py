"""Tests of `PybreakerLayer`: a user's pybreaker breaker as a pipeline layer."""

from __future__ import annotations

import asyncio

import pybreaker
import pytest

import resilience as rs
from resilience.integrations.pybreaker import PybreakerLayer


def fail() -> None:
    raise ConnectionError("down")


async def afail() -> None:
    await asyncio.sleep(0)
    raise ConnectionError("down")


async def aok() -> str:
    await asyncio.sleep(0)
    return "ok"


def test_refuses_anything_but_a_pybreaker_breaker() -> None:
    """The adapter checks its argument at construction."""
    with pytest.raises(TypeError, match=r"^breaker must be a pybreaker\.CircuitBreaker"):
        PybreakerLayer(object())  # type: ignore[arg-type]


def test_settings_repr_and_name() -> None:
    """It describes the wrapped breaker and takes its name."""
    layer = PybreakerLayer(pybreaker.CircuitBreaker(fail_max=4, reset_timeout=9, name="legacy"))
    assert layer.name == "legacy"
    assert layer.settings() == {"fail_max": 4, "reset_timeout": 9}
    assert repr(layer) == "PybreakerLayer('legacy', state='closed')"
    assert layer.kind == "circuit_breaker"


def test_sync_calls_follow_pybreaker_and_rejections_become_circuit_open_errors() -> None:
    """Failures trip the breaker as pybreaker decides; refusals raise CircuitOpenError."""
    breaker = pybreaker.CircuitBreaker(fail_max=2, reset_timeout=30, name="legacy")
    layer = PybreakerLayer(breaker)
    assert layer.call(lambda: "ok") == "ok"
    with pytest.raises(ConnectionError):
        layer.call(fail)
    with pytest.raises(pybreaker.CircuitBreakerError):  # the tripping call: pybreaker's error
        layer.call(fail)
    ran: list[bool] = []
    with pytest.raises(rs.CircuitOpenError) as caught:
        layer.call(lambda: ran.append(True))
    assert ran == []
    assert caught.value.name == "legacy"
    assert caught.value.retry_after is not None
    assert 0 < caught.value.retry_after <= 30
    assert isinstance(caught.value.__cause__, pybreaker.CircuitBreakerError)


async def test_async_calls_run_on_asyncio() -> None:
    """Async calls go through pybreaker's rules without Tornado."""
    breaker = pybreaker.CircuitBreaker(fail_max=2, reset_timeout=30)
    layer = PybreakerLayer(breaker)
    assert await layer.acall(aok) == "ok"
    with pytest.raises(ConnectionError):
        await layer.acall(afail)
    with pytest.raises(pybreaker.CircuitBreakerError):
        await layer.acall(afail)
    assert breaker.current_state == "open"
    with pytest.raises(rs.CircuitOpenError, match="pybreaker breaker is open"):
        await layer.acall(aok)


async def test_async_calls_through_one_breaker_overlap() -> None:
    """Unlike pybreaker.call, the async path holds no lock while the call runs."""
    layer = PybreakerLayer(pybreaker.CircuitBreaker(fail_max=5))
    inside = 0
    most = 0
    gate = asyncio.Event()

    async def held() -> None:
        nonlocal inside, most
        inside += 1
        most = max(most, inside)
        await gate.wait()
        inside -= 1

    tasks = [asyncio.create_task(layer.acall(held)) for _ in range(5)]
    for _ in range(3):
        await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(*tasks)
    assert most == 5


def test_fallback_handles_its_rejections() -> None:
    """A Fallback outside the layer serves the substitute while pybreaker is open."""
    breaker = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=30)
    pipeline = rs.Pipeline(
        [rs.Fallback(value="cached", on=rs.CircuitOpenError), PybreakerLayer(breaker)]
    )
    with pytest.raises(pybreaker.CircuitBreakerError):
        pipeline.call(fail)
    assert pipeline.call(lambda: "fresh") == "cached"
