"""A retry budget's window in Redis: one budget for the retries of every process that uses it.

Deposits stay on the call's path without I/O: they are counted in the
process, as without a backend, and the background sync adds them to the
fleet's window every ``sync_interval`` (and any withdrawal carries the
ones not yet sent). A withdrawal, a retry, is decided on the server
(`_redis_lua.BUDGET`), on the window of ``ttl`` seconds cut in slices by
the server's clock. In both modes: the only cost a healthy call pays is
the local count, and the fleet's retries stay within ``ratio`` of the
fleet's calls (deposits not yet sent, at most one interval's worth, make
the budget a little stricter, never looser).
"""

from __future__ import annotations

from typing import Any

from ._backend import Unavailable
from ._redis_backend import RedisBackend, Shared

#: The slices of the window on the server (as in the process: `_budget.SLICES`).
_SLICES = 10


class SharedBudget(Shared):
    """The window of one budget, shared in Redis (see the module docs)."""

    kind = "retry_budget"

    def __init__(self, backend: RedisBackend, name: str, policy: Any) -> None:
        super().__init__(backend, name, policy)
        self._keys = [self.key("window")]
        self._account = policy._account
        self._sent = 0  # deposits counted here and already added on the server
        backend.start()

    def _fresh(self) -> int:
        """Deposits not sent yet, now marked sent (put them back with `_unsend` on failure)."""
        with self.lock:
            total: int = self._account.tally.total()
            fresh, self._sent = total - self._sent, total
        return fresh

    def _unsend(self, count: int) -> None:
        with self.lock:
            self._sent -= count

    def _args(self, op: str, deposits: int) -> list[Any]:
        account = self._account
        return [
            op,
            deposits,
            repr(account.ratio),
            repr(account.min_per_second),
            repr(account.ttl),
            _SLICES,
            self.backend.key_ttl,
        ]

    def _run(self, op: str) -> list[Any]:
        fresh = self._fresh()
        try:
            reply = self.backend.run("budget", self._keys, self._args(op, fresh))
        except Unavailable as problem:
            if not problem.sent:  # else they may have been added: never twice
                self._unsend(fresh)
            raise
        self.answered()
        return reply

    def withdraw(self) -> bool:
        """One retry from the fleet's budget: True if allowed. Raises `Unavailable`."""
        return bool(int(self._run("w")[0]))

    def read(self) -> tuple[int, int, int]:
        """The fleet's balance (in retries), deposits and withdrawals (one round trip)."""
        reply = self._run("m")
        return max(0, int(float(reply[1]))), int(reply[2]), int(reply[3])

    def flush(self) -> None:
        with self.lock:
            idle = self._account.tally.total() == self._sent
        if idle:
            return
        try:
            self._run("d")
        except Unavailable:
            return  # sent with the next sync that works
