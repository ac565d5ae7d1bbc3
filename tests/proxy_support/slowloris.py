"""Slow clients: connections that send a request a few bytes at a time, as slowloris does.

Used by the slowloris test and by bench/slowloris.py (which keeps them open by reconnecting).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

HOST = "127.0.0.1"
SLOW_HEAD = b"POST %s HTTP/1.1\r\nHost: slow\r\n"
SLOW_BODY = b"POST %s HTTP/1.1\r\nHost: slow\r\nContent-Length: 1000\r\n\r\n{"
SLOW_CHUNKED = b"POST %s HTTP/1.1\r\nHost: slow\r\nTransfer-Encoding: chunked\r\n\r\n"
START = {"head": SLOW_HEAD, "body": SLOW_BODY, "chunked": SLOW_CHUNKED}
DRIP = {"head": b"X", "body": b" ", "chunked": b"1\r\n \r\n"}  # chunked: one 1-byte chunk each time


@dataclass
class SlowResult:
    kind: str  # "head": never finishes its header section; "body", "chunked": never finishes its body
    answer: bytes  # everything the proxy sent before closing
    closed: bool  # the proxy closed the connection (False: still open at the limit)


async def slow_client(port: int, kind: str, drip_every: float, limit: float, opened: asyncio.Event | None = None,
                      path: bytes = b"/m") -> SlowResult:
    """Open, send the start of a request for `path` (a route, so that a slow body is read, not
    refused), then one more byte every `drip_every` s until the proxy closes the connection or `limit` s pass."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(START[kind] % path)
    await writer.drain()
    if opened is not None:
        opened.set()

    async def drip() -> None:
        while True:
            await asyncio.sleep(drip_every)
            writer.write(DRIP[kind])

    dripping = asyncio.create_task(drip())
    try:
        answer = await asyncio.wait_for(reader.read(), limit)
        closed = True
    except asyncio.TimeoutError:
        answer, closed = b"", False
    except ConnectionError:
        answer, closed = b"", True
    finally:
        dripping.cancel()
        writer.close()
    return SlowResult(kind, answer, closed)
