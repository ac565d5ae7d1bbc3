"""The suite's own contract: tests marked with one xdist_group really run on one worker.

pytest 9 with pytest-xdist 3.8 silently ignored the marks (xdist rewrites a node id attribute pytest 9
no longer reads), so each worker built the e2e Bentos again; requirements.lock pins a pair that groups.
"""

from __future__ import annotations

import os

import pytest


@pytest.mark.xdist_group("bento")
def test_xdist_group_marks_group(request: pytest.FixtureRequest) -> None:
    if "PYTEST_XDIST_WORKER" not in os.environ:
        pytest.skip("grouping only exists under pytest -n (make test)")
    assert request.config.getvalue("loadgroup"), "make test runs pytest -n 2 with --dist loadgroup (pyproject.toml)"
    assert request.node.nodeid.endswith("@bento"), (
        f"{request.node.nodeid}: xdist_group is ignored by this pytest/pytest-xdist pair; pin one that groups")
