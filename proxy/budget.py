"""How many bytes of requests and answers one proxy worker may hold at once.

The proxy buffers each request body and each answer whole (their sizes and status decide what happens
next), and an answer exists about twice more on its way out (joined, then the server's copy being
written), so memory follows the bodies in flight: 16 clients of 8 MiB answers took the proxy from 108
to 266–306 MiB, past the Deployment's limit (then 256 Mi), where the kubelet kills it with every request in
flight (bench/proxy_memory.py). Bytes are taken as they arrive and held (`Held`) until the request's
reply is written, or until the answer is gone however it goes (written to its client, dropped as a
shadow's, or as a request's whose client left, or with the exchange that failed to receive it).
The body that would cross the limit is refused and its client told to retry (503 `proxy_overloaded`):
a few refused requests instead of a killed proxy.
"""

from __future__ import annotations


class BufferBudget:
    """The bytes one worker holds: shared by the data plane (request bodies) and every upstream pool (answers)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> bool:
        """Hold `size` more bytes, or refuse them (nothing taken) when that would cross the limit."""
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give_back(self, size: int) -> None:
        self.held -= size


class Held:
    """`size` bytes of `budget`, given back when this object goes. CPython frees it the moment its last
    reference does, so no path that drops an answer can keep its bytes taken."""

    __slots__ = ("budget", "size")

    def __init__(self, budget: BufferBudget, size: int = 0):
        self.budget = budget
        self.size = size

    def take(self, size: int) -> bool:
        """`size` more bytes held here, or none when the budget cannot spare them."""
        if not self.budget.take(size):
            return False
        self.size += size
        return True

    def __del__(self) -> None:
        self.budget.give_back(self.size)
