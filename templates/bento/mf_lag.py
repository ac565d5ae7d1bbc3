"""How long the server's event loop has lately been too busy to look at new work: the wait a request has
already had before the app sees it.

A compiled model runs on the event loop (mf_batch INLINE_RUN_S). Past its capacity nothing queues where
the batcher can count it: requests wait unread on their connections (in the socket buffers, or parsed by
the HTTP server and scheduled behind the loop's other work) while each loop turn answers what the
previous turn read, and every turn grows longer than the last. Measured at 2× and 4× a compiled model's
capacity before this: p99 213 ms and 1 s, not one 503. A timer shows that wait whatever the HTTP server
(uvicorn, granian, asyncio's loop or uvloop): it fires late by as long as the loop was held. A request
read now arrived during the turn before (at most that long ago) and waits for the rest of this one.

Past capacity every turn is long, so every tick is late; one late tick is a stall (a model thread holding the
GIL for a few ms of pandas, the machine preempting the pod), and the requests read after it mostly arrived once
it was over. So a tick's lateness counts once the tick before it was late too (the lesser of the two): a lone
client of an idle pyfunc model with a 2 ms budget had 37 of 200 requests refused, each charged with a stall of
2-4 ms it arrived after (session 15's stranger sweep). And a timer is on time within GRAIN_S: uvloop's clock and
timers count whole milliseconds (libuv's), asyncio's selector rounds its timeout up to one; with a 1 ms budget
that rounding alone refused 147 of 200 requests of that client.

Copied verbatim into each model's folder by `factory render`; imports nothing heavy.
"""

from __future__ import annotations

import asyncio
from typing import Optional

# The timer's period while requests arrive; it stops after IDLE_S without one, so an idle pod never wakes.
INTERVAL_S = 0.005
IDLE_S = 1.0
GRAIN_S = 0.001


class LoopLag:
    """The loop's lag, from a timer that runs while requests arrive (`seen()` starts it)."""

    def __init__(self, interval_s: float = INTERVAL_S, idle_s: float = IDLE_S):
        self.interval_s = interval_s
        self.idle_s = idle_s
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.due: Optional[float] = None  # when the timer should fire next; None while it is stopped
        self.late_s = 0.0  # how late it fired last
        self.before_s = 0.0  # how late it fired the time before
        self.last_seen = 0.0

    def seen(self) -> float:
        """Notes a request arriving now; returns the wait it likely had before the app saw it (seconds): how
        late the timer fired the last two times (the lesser), or how overdue it is now, whichever is longer, less
        the timer's grain."""
        loop = asyncio.get_running_loop()
        if loop is not self.loop:  # the first request, or a new loop (a timer of a closed one never fires)
            self.loop, self.due = loop, None
        now = loop.time()
        self.last_seen = now
        if self.due is None:
            self.late_s = self.before_s = 0.0
            self._schedule(now)
            return 0.0
        return max(0.0, max(min(self.late_s, self.before_s), now - self.due) - GRAIN_S)

    def _schedule(self, now: float) -> None:
        self.due = now + self.interval_s
        self.loop.call_at(self.due, self._tick)

    def _tick(self) -> None:
        now = self.loop.time()
        self.late_s, self.before_s = max(0.0, now - self.due), self.late_s
        if now - self.last_seen < self.idle_s:
            self._schedule(now)
        else:
            self.due, self.late_s, self.before_s = None, 0.0, 0.0
