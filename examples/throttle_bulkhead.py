"""Throttle and Bulkhead on both sides of a call, on a fake clock.

* Client side, a Throttle paces calls to a partner API that allows 5
  requests a second, and another one paces an upload in bytes per second.
* Server side, a Bulkhead lets at most two orders run at once and answers
  "503, try later" at once beyond that, with a Retry-After.
* The client's Retry honours that Retry-After.

A fake clock makes every wait pass instantly (or when this script says so).

Run it:  python examples/throttle_bulkhead.py
"""

from __future__ import annotations

import asyncio

import resilience as rs
from resilience.testing import FakeClock


def pace_partner_calls() -> None:
    print("Client: a partner API allows 5 requests a second, in bursts of 2")
    clock = FakeClock()  # auto-advancing: a wait moves time on at once
    partner = rs.Throttle(5, burst=2, max_wait=None, clock=clock, name="partner")
    sent: list[float] = []

    @partner
    def send(request: int) -> None:
        sent.append(clock.monotonic())
        print(f"  t={clock.monotonic():.1f}s  request {request} sent")

    for request in range(6):
        send(request)
    assert [round(t, 9) for t in sent] == [0.0, 0.0, 0.2, 0.4, 0.6, 0.8]  # 2, then 1 per 0.2 s


def pace_an_upload() -> None:
    print("Client: uploading 1 MiB at 256 KiB/s, in 64 KiB chunks")
    clock = FakeClock()
    kib = 1024
    upload = rs.Throttle(256 * kib, burst=64 * kib, cost=len, max_wait=None, clock=clock)

    @upload
    def send_chunk(chunk: bytes) -> int:
        return len(chunk)

    sent = sum(send_chunk(bytes(64 * kib)) for _ in range(16))
    rate = sent / kib / clock.monotonic()
    print(f"  {sent // kib} KiB sent in {clock.monotonic():.2f}s of fake time ({rate:.0f} KiB/s)")
    assert round(clock.monotonic(), 9) == 15 * 0.25  # the first chunk rides the burst


class ServerBusy(Exception):
    """What the client's HTTP layer raises for a 503; Retry reads its retry_after."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"503, retry after {retry_after:g}s")
        self.retry_after = retry_after


async def both_sides() -> None:
    clock = FakeClock(auto_advance=False)  # time moves only when this script says so
    orders = rs.Bulkhead(2, retry_after=0.5, clock=clock, name="orders")

    @orders
    async def handle(order: int) -> str:
        await clock.asleep(1.0)  # one second of work
        return f"order {order} done at t={clock.monotonic():.1f}s"

    async def server(order: int) -> tuple[int, str, float | None]:
        """The HTTP layer: a refusal becomes 503 with Retry-After, at once."""
        try:
            return 200, await handle(order), None
        except rs.BulkheadFullError as full:
            return 503, str(full), full.retry_after

    async def send(order: int) -> str:
        """The client's transport."""
        status, body, retry_after = await server(order)
        if status == 503:
            assert retry_after is not None
            raise ServerBusy(retry_after)
        return body

    def log(event: rs.events.RetryEvent) -> None:
        now = clock.monotonic()
        print(f"  t={now:.1f}s  client: {event.error}; next attempt in {event.delay}s")

    client = rs.Retry(4, on=ServerBusy, backoff=0.1, on_retry=log, clock=clock)

    print("Server: at most 2 orders at once; beyond that, 503 at once")
    first = [asyncio.create_task(handle(order)) for order in (1, 2)]
    await asyncio.sleep(0)
    status, body, retry_after = await server(3)
    print(f"  t=0.0s  order 3 -> {status} ({body}), Retry-After: {retry_after}")
    assert (status, retry_after) == (503, 0.5)

    print("Client: a Retry that honours Retry-After")
    third = asyncio.create_task(client.acall(send, 3))
    for _ in range(4):  # half a second at a time, up to t=2
        for _ in range(5):
            await asyncio.sleep(0)
        clock.advance(0.5)
    for task in first:
        print(f"  {await task}")
    print(f"  {await third}")
    assert await third == "order 3 done at t=2.0s"
    metrics = orders.metrics()
    print(f"  bulkhead: {metrics.in_flight} in flight, {metrics.rejected} refused in all")
    assert (metrics.in_flight, metrics.rejected) == (0, 3)


def main() -> None:
    pace_partner_calls()
    pace_an_upload()
    asyncio.run(both_sides())


if __name__ == "__main__":
    main()
