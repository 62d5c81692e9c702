"""Helpers for tests that run once synchronously and once under asyncio.

The ``mode`` fixture (in ``conftest.py``) is ``"sync"`` or ``"async"``; these
helpers turn one test body into both: a sync ``call()`` with a plain function,
or an ``acall()`` with an async function doing the same thing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import resilience as rs


def flavour(mode: str, body: Callable[..., Any], *, pause: bool = True) -> Callable[..., Any]:
    """``body`` itself in sync mode; in async mode an async def that runs it.

    With ``pause`` the async def first yields to the event loop once, so
    other tasks can interleave with it.
    """
    if mode == "sync":
        return body

    async def async_body(*args: Any, **kwargs: Any) -> Any:
        if pause:
            await asyncio.sleep(0)
        return body(*args, **kwargs)

    return async_body


async def run(
    mode: str, policy: rs.Middleware, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
) -> Any:
    """Call ``fn`` through ``policy`` with call() or acall() according to ``mode``.

    ``fn`` must already suit the mode (see `flavour`).
    """
    if mode == "sync":
        return policy.call(fn, *args, **kwargs)
    return await policy.acall(fn, *args, **kwargs)


async def run_plain(mode: str, policy: rs.Middleware, fn: Callable[..., Any], /, *args: Any) -> Any:
    """Call the plain function ``fn`` through ``policy``, as an async def in async mode."""
    return await run(mode, policy, flavour(mode, fn, pause=False), *args)


async def run_yielding(
    mode: str, policy: rs.Middleware, fn: Callable[..., Any], /, *args: Any
) -> Any:
    """As `run_plain`, but in async mode the function first yields to the event loop once."""
    return await run(mode, policy, flavour(mode, fn), *args)
