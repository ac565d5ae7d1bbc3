"""Weighted variant assignment: pure functions, no I/O, no clock.

A key maps to one of BUCKETS buckets by a cryptographic digest of (route path, key).
The digest is stable across processes, machines and restarts (unlike `hash()`, which is
salted per process), so every proxy replica sends the same user to the same variant.
Salting with the route path keeps assignments of different experiments independent.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from dataclasses import dataclass

BUCKETS = 10_000


def bucket_for_key(route_path: str, key: str) -> int:
    """The bucket 0..BUCKETS-1 of a sticky key on one route."""
    # Route paths never contain NUL, so the separator keeps (path, key) pairs unambiguous.
    material = route_path.encode("utf-8") + b"\x00" + key.encode("utf-8", "surrogatepass")
    digest = hashlib.blake2b(material, digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def random_bucket(rng: random.Random) -> int:
    return rng.randrange(BUCKETS)


@dataclass(frozen=True, slots=True)
class Split:
    """Variants laid end to end over the bucket range, each as wide as its weight."""

    names: tuple[str, ...]
    upper_bounds: tuple[int, ...]

    @classmethod
    def from_weights(cls, weights: list[tuple[str, int]]) -> "Split":
        total = sum(weight for _, weight in weights)
        if total <= 0 or any(weight < 0 for _, weight in weights):
            raise ValueError(f"weights must be non-negative and sum to more than 0, got {weights}")
        bounds, running = [], 0
        for _, weight in weights:
            running += weight
            bounds.append(running * BUCKETS // total)
        return cls(tuple(name for name, _ in weights), tuple(bounds))

    def pick(self, bucket: int) -> str:
        """The variant owning `bucket`; a zero-weight variant owns an empty range, so never wins."""
        return self.names[bisect.bisect_right(self.upper_bounds, bucket)]
