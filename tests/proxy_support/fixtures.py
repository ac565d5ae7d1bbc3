"""pytest fixtures for the proxy tests; test modules import the ones they use."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.proxy_support.harness import Proxy, Upstream, start_proxy, start_upstream


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, Upstream]]:
    """Three echoing upstreams shared by a module: a, b and shadow."""
    with contextlib.ExitStack() as stack:
        started = {}
        for name in ("a", "b", "shadow"):
            started[name] = start_upstream(name)
            stack.callback(started[name].process.stop)
        yield started


@pytest.fixture
def make_proxy() -> Iterator[Callable[..., Proxy]]:
    """Start proxies for one test; all are stopped (process group) at teardown."""
    started: list[Proxy] = []

    def make(routes: Path, **settings: object) -> Proxy:
        proxy = start_proxy(routes, **settings)
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.process.stop()


@pytest.fixture
def make_upstream() -> Iterator[Callable[[str], Upstream]]:
    started: list[Upstream] = []

    def make(name: str) -> Upstream:
        upstream = start_upstream(name)
        started.append(upstream)
        return upstream

    yield make
    for upstream in started:
        upstream.process.stop()
