"""`Tally`: a counter that hot paths bump without a lock.

``next()`` on an `itertools.count` runs in C and holds the GIL throughout, so
taking a number is atomic: any number of threads and tasks can count through
one tally with no lock and no lost update. A fast path calls
``next(tally.counter)`` itself (a bound local, no method call); the number it
gets back is the tally's *raw* value, which also counts the reads below.

The owner reads the total under its own lock with `total`. A read takes a
number as well, so the tally remembers how many reads it made: ``raw -
reads`` is the number of hits before that raw value.
"""

from __future__ import annotations

import itertools

__all__ = ["Tally"]


class Tally:
    """Counts events with one atomic ``next()`` each; see the module docs."""

    __slots__ = ("counter", "reads")

    def __init__(self) -> None:
        self.counter = itertools.count()
        self.reads = 0
        """Numbers taken by `total` (not hits); only the owner's lock changes it."""

    def total(self) -> int:
        """Hits so far. Call it under the owner's lock: it takes a number too."""
        value = next(self.counter) - self.reads
        self.reads += 1
        return value
