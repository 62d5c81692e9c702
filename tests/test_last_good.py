"""Tests of `Fallback(last_good=True)`: the last good result per key, served stale."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import resilience as rs
from modes import run_plain
from resilience.events import FallbackEvent
from resilience.testing import FakeClock


class Service:
    """Answers ``value-N`` for a user, or fails while ``down`` is set."""

    def __init__(self) -> None:
        self.down = False
        self.version = 0

    def __call__(self, user: int) -> str:
        if self.down:
            raise ConnectionError("down")
        self.version += 1
        return f"user{user}-v{self.version}"


async def test_the_last_good_result_of_the_same_key_is_served_stale(
    mode: str, clock: FakeClock
) -> None:
    events: list[FallbackEvent] = []
    fallback = rs.Fallback(last_good=True, clock=clock, on_fallback=events.append)
    service = Service()
    assert await run_plain(mode, fallback, service, 1) == "user1-v1"
    assert await run_plain(mode, fallback, service, 2) == "user2-v2"
    service.down = True
    clock.advance(7)
    assert await run_plain(mode, fallback, service, 1) == "user1-v1"
    assert [(event.stale, event.age) for event in events] == [(True, 7.0)]
    with pytest.raises(ConnectionError):  # no good result for user 3, no value: it stands
        await run_plain(mode, fallback, service, 3)
    assert len(events) == 1


async def test_a_value_or_handler_answers_when_there_is_no_last_good(
    mode: str, clock: FakeClock
) -> None:
    service = Service()
    with_value = rs.Fallback(last_good=True, value="default", clock=clock)
    seen: list[tuple[Any, float | None]] = []

    def handler(context: rs.FallbackContext) -> str:
        seen.append((context.last_good, context.age))
        return "handled" if context.last_good is None else f"stale {context.last_good}"

    with_handler = rs.Fallback(last_good=True, handler=handler, clock=clock)
    for fallback in (with_value, with_handler):
        service.down = False
        await run_plain(mode, fallback, service, 1)
    service.down = True
    clock.advance(2)
    assert await run_plain(mode, with_value, service, 1) == "user1-v1"
    assert await run_plain(mode, with_value, service, 9) == "default"
    assert await run_plain(mode, with_handler, service, 1) == "stale user1-v2"
    assert await run_plain(mode, with_handler, service, 9) == "handled"
    assert seen == [("user1-v2", 2.0), (None, None)]


async def test_max_age_and_max_entries_bound_what_is_kept(mode: str, clock: FakeClock) -> None:
    fallback = rs.Fallback(last_good=True, value="none", max_age=10, max_entries=2, clock=clock)
    service = Service()
    for user in (1, 2, 3):  # 1 goes: only 2 entries
        await run_plain(mode, fallback, service, user)
    service.down = True
    assert await run_plain(mode, fallback, service, 1) == "none"
    assert await run_plain(mode, fallback, service, 3) == "user3-v3"
    clock.advance(10.5)
    assert await run_plain(mode, fallback, service, 3) == "none"


async def test_a_rejected_result_is_not_remembered(mode: str, clock: FakeClock) -> None:
    answers = iter(["good", "", "boom"])

    def fetch(user: int) -> str:
        answer = next(answers)
        if answer == "boom":
            raise ConnectionError(answer)
        return answer

    fallback = rs.Fallback(last_good=True, on_result=lambda result: result == "", clock=clock)
    assert await run_plain(mode, fallback, fetch, 1) == "good"
    assert await run_plain(mode, fallback, fetch, 1) == "good"  # "" rejected: the last good
    assert await run_plain(mode, fallback, fetch, 1) == "good"


async def test_keys_from_a_tag_a_function_or_unhashable_arguments(
    mode: str, clock: FakeClock
) -> None:
    service = Service()
    by_tag = rs.Fallback(last_good=True, key="tenant", clock=clock)
    by_function = rs.Fallback(last_good=True, key=lambda user, **_: user % 10, clock=clock)
    with rs.tags(tenant="acme"):
        await run_plain(mode, by_tag, service, 1)
    await run_plain(mode, by_function, service, 13)
    service.down = True
    with rs.tags(tenant="acme"):
        assert await run_plain(mode, by_tag, service, 2) == "user1-v1"
    assert await run_plain(mode, by_function, service, 3) == "user13-v2"
    plain = rs.Fallback(last_good=True, clock=clock)
    service.down = False
    with pytest.raises(TypeError, match="not hashable; pass key="):
        await run_plain(mode, plain, lambda ids: ids, [1, 2])


def test_forget_drops_every_result(clock: FakeClock) -> None:
    fallback = rs.Fallback(last_good=True, value="none", clock=clock)
    service = Service()
    fallback.call(service, 1)
    fallback.forget()
    service.down = True
    assert fallback.call(service, 1) == "none"


def test_under_threads_a_failure_gets_a_result_of_its_own_key() -> None:
    fallback = rs.Fallback(last_good=True, value=None)
    lock = threading.Lock()
    calls = {"n": 0}

    def flaky(user: int, round_: int) -> tuple[int, int]:
        with lock:
            calls["n"] += 1
            failing = calls["n"] % 3 == 0
        if failing:
            raise ConnectionError("flaky")
        return user, round_

    def many(user: int) -> list[Any]:
        return [fallback.call(flaky, user, round_) for round_ in range(200)]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(many, range(8)))
    for user, answers in enumerate(results):
        assert len(answers) == 200
        for answer in answers:
            assert answer is None or answer[0] == user


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({}, ValueError, "exactly one of value= or handler="),
        ({"value": 1, "handler": str}, ValueError, "exactly one"),
        ({"last_good": 1}, TypeError, "last_good must be True or False"),
        ({"value": 1, "key": "tenant"}, ValueError, "settings of last_good=True"),
        ({"value": 1, "max_age": 3}, ValueError, "settings of last_good=True"),
        ({"last_good": True, "max_entries": 0}, ValueError, "max_entries"),
        ({"last_good": True, "max_age": -1}, ValueError, "max_age"),
        ({"last_good": True, "key": 5}, TypeError, "key must be"),
    ],
)
def test_bad_arguments_are_refused(options: dict[str, Any], error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        rs.Fallback(**options)
