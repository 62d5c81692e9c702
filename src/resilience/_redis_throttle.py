"""A throttle's bucket in Redis: one rate for every process that uses the throttle's name.

The bucket is GCRA's "theoretical arrival time" on the server's clock
(`_redis_lua.THROTTLE`). A call that must wait *reserves* its tokens in the
same round trip and sleeps here for the time the server gave; a waiter
that gives up (cancelled, interrupted) gives its tokens back.

* *strict*: every call is one round trip.
* *local-first*: the process leases a few tokens at a time and serves calls
  from them; a lease not used within ``lease`` seconds (twice the sync
  interval) goes back to the bucket. The lease grows while the process
  uses it up, and shrinks when tokens go back unused. Over any ``t``
  seconds the fleet admits at most ``burst + rate * (t + lease) / per``
  tokens: a token can be spent up to ``lease`` seconds after it left the
  bucket.
"""

from __future__ import annotations

from typing import Any

from ._backend import Unavailable
from ._redis_backend import RedisBackend, Shared

#: The most tokens one process leases at a time.
_MOST = 1024


class SharedThrottle(Shared):
    """The bucket of one throttle, shared in Redis (see the module docs)."""

    kind = "throttle"

    def __init__(self, backend: RedisBackend, name: str, policy: Any) -> None:
        super().__init__(backend, name, policy)
        self._keys = [self.key("bucket")]
        self._settings = policy
        self._tokens = 0.0  # leased, here
        self._expires = 0.0  # when they go back (this process's clock)
        self._batch = 1.0
        self._returns = 0.0  # tokens to give back at the next sync
        self.lease = 2 * backend.sync_interval
        self._monotonic = policy.clock.monotonic
        backend.start()

    # -- the request ---------------------------------------------------------------------------

    def _args(self, op: str, cost: float, max_wait: float | None, want: float = 0) -> list[Any]:
        policy = self._settings
        return [
            op,
            repr(policy.per / policy.rate),
            repr(policy.burst),
            repr(cost),
            "-1" if max_wait is None else repr(max_wait),
            repr(policy.initial_tokens),
            self.backend.key_ttl,
            repr(want),
        ]

    def take_now(self, cost: float) -> bool:
        """Local-first: take ``cost`` from this process's lease if it holds that many, unexpired
        (the fast path of every call: no round trip)."""
        with self.lock:
            if self._tokens >= cost and self._monotonic() < self._expires:
                self._tokens -= cost
                return True
        return False

    def _most(self) -> float:
        """The largest lease: a quarter of the burst, and no more than the fleet's tokens of
        one lease period, nor `_MOST`."""
        policy = self._settings
        most: float = min(_MOST, policy.burst / 4, policy.rate * self.lease / policy.per)
        return max(1.0, most)

    def _give_back(self, now: float) -> None:
        """An expired lease goes back to the bucket; the next lease is smaller (mutex held)."""
        unused = self._tokens
        self._tokens = 0.0
        self._returns += unused
        if unused * 2 >= self._batch:
            self._batch = max(1.0, self._batch / 2)

    def _request(self, cost: float, max_wait: float | None) -> tuple[str, list[Any]] | None:
        """What to ask the server for ``cost`` tokens; None when this process's lease has
        them (local-first)."""
        if self.mode == "strict":
            return "r", self._args("r", cost, max_wait)
        if self.take_now(cost):
            return None
        with self.lock:
            want = max(cost, self._batch)
        return "l", self._args("l", cost, max_wait, want)

    def _granted(self, op: str, reply: list[Any], cost: float, now: float) -> tuple[bool, float]:
        """The server's answer: granted, and the seconds to wait (or, refused, until when)."""
        granted, wait = float(reply[0]), max(0.0, float(reply[1]))
        self.answered()
        if granted >= 0 and op == "l":
            with self.lock:
                if self._expires > now:  # the lease was used up before it expired: grow it
                    self._batch = min(self._most(), self._batch * 2)
                self._tokens += granted - cost
                self._expires = now + self.lease
        return granted >= 0, wait  # -1 is a refusal; a grant may be of 0 tokens

    # -- the operations ------------------------------------------------------------------------

    def take(self, cost: float, max_wait: float | None, now: float) -> tuple[bool, float]:
        """Tokens for one call: ``(True, seconds to wait for them)``, or ``(False, retry_after)``.

        Raises `Unavailable` when Redis did not answer.
        """
        request = self._request(cost, max_wait)
        if request is None:
            return True, 0.0
        reply = self.backend.run("throttle", self._keys, request[1])
        return self._granted(request[0], reply, cost, now)

    async def atake(self, cost: float, max_wait: float | None, now: float) -> tuple[bool, float]:
        """`take` for async calls."""
        request = self._request(cost, max_wait)
        if request is None:
            return True, 0.0
        reply = await self.backend.arun("throttle", self._keys, request[1])
        return self._granted(request[0], reply, cost, now)

    def give_back(self, cost: float) -> None:
        """A waiter that gave up: its reserved tokens go back at the next sync."""
        with self.lock:
            self._returns += cost
        self.backend.wake(urgent=False)

    def flush(self) -> None:
        now = self._settings.clock.monotonic()
        with self.lock:
            if self._tokens and now >= self._expires:
                self._give_back(now)
            returns, self._returns = self._returns, 0.0
        if not returns:
            return
        try:
            self.backend.run("throttle", self._keys, self._args("g", returns, 0.0))
        except Unavailable:
            return  # tokens not given back are spent: the fleet stays under its rate

    def metrics(self) -> float:
        """Tokens in the fleet's bucket now (one round trip). Raises `Unavailable`."""
        reply = self.backend.run("throttle", self._keys, self._args("m", 0.0, 0.0))
        return max(0.0, float(reply[2]))
