"""Properties of the A/B split. Keys and the hash are fixed and hypothesis is derandomized,
so these tests are deterministic: they cannot flake, only fail on a real regression."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.split import BUCKETS, Split, bucket_for_key

KEYS = [f"user-{i}" for i in range(10_000)]
ROUTES = ["/models/iris", "/models/churn/v2", "/a"]
_BUCKETS = {route: [bucket_for_key(route, key) for key in KEYS] for route in ROUTES}

weights_lists = st.lists(st.integers(min_value=0, max_value=100), min_size=1, max_size=5).filter(
    lambda ws: sum(ws) > 0)
deterministic = settings(derandomize=True, max_examples=150, deadline=None, database=None)


def _as_percentages(raw: list[int]) -> list[tuple[str, int]]:
    """Scale arbitrary weights to integers summing to 100, as routes.yaml requires."""
    total = sum(raw)
    scaled = [w * 100 // total for w in raw]
    scaled[max(range(len(raw)), key=lambda i: raw[i])] += 100 - sum(scaled)
    return [(f"v{i}", w) for i, w in enumerate(scaled)]


@deterministic
@given(raw=weights_lists, route=st.sampled_from(ROUTES))
def test_shares_over_10000_keys_are_within_2_points_of_the_weights(raw, route):
    weights = _as_percentages(raw)
    split = Split.from_weights(weights)
    counts = Counter(split.pick(b) for b in _BUCKETS[route])
    for name, weight in weights:
        assert abs(counts[name] / len(KEYS) - weight / 100) <= 0.02, (name, weight, counts)


@deterministic
@given(raw=weights_lists, key=st.text(max_size=40), route=st.sampled_from(ROUTES))
def test_the_same_key_always_lands_on_the_same_variant(raw, key, route):
    weights = _as_percentages(raw)
    first = Split.from_weights(weights).pick(bucket_for_key(route, key))
    assert all(Split.from_weights(weights).pick(bucket_for_key(route, key)) == first for _ in range(3))


@deterministic
@given(zero_at=st.integers(min_value=0, max_value=1), route=st.sampled_from(ROUTES))
def test_a_zero_weight_variant_receives_nothing(zero_at, route):
    weights = [("zero", 0), ("all", 100)] if zero_at == 0 else [("all", 100), ("zero", 0)]
    split = Split.from_weights(weights)
    assert all(split.pick(b) == "all" for b in _BUCKETS[route])
    assert all(split.pick(b) == "all" for b in range(BUCKETS))


def test_bucket_values_are_pinned():
    """The assignment must never change between releases: pin a few buckets."""
    assert [bucket_for_key("/models/iris", k) for k in ("alice", "bob", "", "ü")] == [4723, 2130, 6529, 6956]


def test_buckets_stay_in_range_and_depend_on_the_route():
    assert all(0 <= b < BUCKETS for b in _BUCKETS["/a"])
    assert _BUCKETS["/a"] != _BUCKETS["/models/iris"]


@pytest.mark.parametrize("bad", [[], [("a", 0)], [("a", -1), ("b", 101)]])
def test_invalid_weights_are_rejected(bad):
    with pytest.raises(ValueError):
        Split.from_weights(bad)
