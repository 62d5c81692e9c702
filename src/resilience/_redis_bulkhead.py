"""A bulkhead's slots in Redis: one cap on concurrent calls for every process that uses its name.

The holders are members of a sorted set scored by when their lease ends
(server time, `_redis_lua.BULKHEAD`). A call is admitted when, after the
expired leases are dropped, fewer than ``max_concurrent`` members remain:
the count is exact, whatever the number of processes. A process renews the
leases of its long calls every third of ``lease_seconds``; when it dies
(SIGKILL, a lost host), its leases end and the slots come back within
``lease_seconds``.

A slot given back is sent with this process's next request or, at the
latest, by the background sync, which is woken at once. A bulkhead is
always strict: a concurrency cap that is only roughly kept is no cap.
Calls that find the fleet full wait (when ``max_queue`` lets them) by
asking again after short, growing pauses, for at most ``max_wait`` and
never past the call's deadline; unlike the in-process queue, this wait is
not first-come first-served across processes.
"""

from __future__ import annotations

import itertools
from typing import Any

from ._backend import Unavailable
from ._redis_backend import RedisBackend, Shared

#: The first pause of a call waiting for the fleet, and the longest.
_FIRST_PAUSE = 0.002
_LONGEST_PAUSE = 0.05
#: A member that stands for no slot in Redis (admitted while Redis was unavailable).
UNCOUNTED = ""


class SharedBulkhead(Shared):
    """The slots of one bulkhead, shared in Redis (see the module docs)."""

    kind = "bulkhead"

    def __init__(self, backend: RedisBackend, name: str, policy: Any) -> None:
        super().__init__(backend, name, policy)
        self._keys = [self.key("holders")]
        self._policy = policy
        self._serial = itertools.count(1)
        self._releases: list[str] = []
        self._held: dict[str, float] = {}  # member -> when its lease was last renewed (here)
        # Members whose admission failed in a way that may still reach Redis (a timeout, a
        # cancellation): removed again at every sync until their lease would have ended, in
        # case the admission lands after the first removal.
        self._doubtful: dict[str, float] = {}
        backend.start()

    # -- requests --------------------------------------------------------------------------

    def _member(self) -> str:
        return f"{self.backend.process_id}:{next(self._serial)}"

    def _args(self, member: str, renew: bool = False) -> tuple[list[Any], list[str]]:
        """The script's arguments: the slot asked for, releases and renewals waiting."""
        lease = self.backend.lease_seconds
        now = self._policy.clock.monotonic()
        with self.lock:
            releases, self._releases = self._releases, []
            if self._doubtful:
                for doubtful, since in list(self._doubtful.items()):
                    if now - since > lease:
                        del self._doubtful[doubtful]
                    elif doubtful not in releases:
                        releases.append(doubtful)
            renewals = []
            if renew:
                for held, since in self._held.items():
                    if now - since >= lease / 3:
                        renewals.append(held)
                        self._held[held] = now
        args = [
            self._policy.max_concurrent,
            repr(lease),
            self.backend.key_ttl,
            member,
            ",".join(releases),
            ",".join(renewals),
        ]
        return args, releases

    def _put_back(self, releases: list[str], doubtful: str = "") -> None:
        with self.lock:
            self._releases.extend(releases)
            if doubtful:
                self._doubtful[doubtful] = self._policy.clock.monotonic()

    def _answer(self, member: str, reply: list[Any]) -> bool:
        self.answered()
        if int(reply[0]):
            with self.lock:
                self._held[member] = self._policy.clock.monotonic()
            return True
        return False

    def _pause(self, pause: float, give_up: float) -> float | None:
        """The next pause of a waiting call, or None when it must give up now."""
        left: float = give_up - self._policy.clock.monotonic()
        if left <= 0:
            return None
        return min(pause, left)

    # -- the operations -----------------------------------------------------------------------

    def try_take(self) -> str | None:
        """A slot now, or None when the fleet's slots are all held. Raises `Unavailable`."""
        member = self._member()
        args, releases = self._args(member)
        try:
            reply = self.backend.run("bulkhead", self._keys, args)
        except BaseException:
            self._put_back(releases, member)  # it may have been admitted: never keep it
            self.backend.wake(urgent=False)
            raise
        return member if self._answer(member, reply) else None

    async def atry_take(self) -> str | None:
        """`try_take` for async calls."""
        member = self._member()
        args, releases = self._args(member)
        try:
            reply = await self.backend.arun("bulkhead", self._keys, args)
        except BaseException:  # timed out or cancelled while Redis answered: it goes back
            self._put_back(releases, member)
            self.backend.wake(urgent=False)
            raise
        return member if self._answer(member, reply) else None

    def take(self, give_up: float | None) -> str | None:
        """A slot, waiting until clock time ``give_up`` (None: not at all); None if none came."""
        member = self.try_take()
        pause = _FIRST_PAUSE
        clock = self._policy.clock
        while member is None and give_up is not None:
            wait = self._pause(pause, give_up)
            if wait is None:
                break
            clock.sleep(wait)
            pause = min(_LONGEST_PAUSE, pause * 2)
            member = self.try_take()
        return member

    async def atake(self, give_up: float | None) -> str | None:
        """`take` for async calls."""
        member = await self.atry_take()
        pause = _FIRST_PAUSE
        clock = self._policy.clock
        while member is None and give_up is not None:
            wait = self._pause(pause, give_up)
            if wait is None:
                break
            await clock.asleep(wait)
            pause = min(_LONGEST_PAUSE, pause * 2)
            member = await self.atry_take()
        return member

    def release(self, member: str) -> None:
        """Give a slot back: sent with the next request, or by the sync, woken now."""
        if member == UNCOUNTED:
            return
        with self.lock:
            self._held.pop(member, None)
            self._releases.append(member)
        self.backend.wake(urgent=False)

    def flush(self) -> None:
        with self.lock:
            idle = not self._releases and not self._held and not self._doubtful
        if idle:
            return
        args, releases = self._args("", renew=True)
        if not args[4] and not args[5]:
            return  # nothing to give back and no lease due for renewal: no round trip
        try:
            self.backend.run("bulkhead", self._keys, args)
        except Unavailable:
            self._put_back(releases)
            return
        self.answered()

    def holders(self) -> int:
        """Slots held in the whole fleet now (one round trip); sends what waits too."""
        args, releases = self._args("")
        try:
            reply = self.backend.run("bulkhead", self._keys, args)
        except Unavailable:
            self._put_back(releases)
            raise
        return int(reply[1])
