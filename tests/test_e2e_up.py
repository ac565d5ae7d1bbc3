"""`factory up`: real Bentos behind the real proxy, then everything stopped."""

from __future__ import annotations

import http.client
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest

from e2e_support.factory_env import ALIAS_MODEL, MIXED_MODEL, ROOT, FactoryEnv
from factory.dockerapi import PID_LABEL

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("bento")]

CATALOG = f"""\
models:
  - {{name: {MIXED_MODEL}, version: 1, endpoint: probability, parameters: [2, TAXI, trafficaware]}}
  - {{name: {ALIAS_MODEL}, alias: champion, endpoint: eta, parameters: [5, PHV]}}
experiments:
  - name: split_by_user
    endpoint: both
    sticky_key: {{header: X-User-Id}}
    variants: [{{model: {MIXED_MODEL}, weight: 50}}, {{model: {ALIAS_MODEL}, weight: 50}}]
"""


def post(url: str, body: dict, headers: dict | None = None) -> tuple[int, object, object]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    connection.request("POST", parts.path, body=json.dumps(body), headers={"Content-Type": "application/json",
                                                                           **(headers or {})})
    response = connection.getresponse()
    payload = json.loads(response.read())
    connection.close()
    return response.status, response.msg, payload  # response.msg: case-insensitive headers


def test_up_serves_models_through_the_proxy_and_stops_everything(built: FactoryEnv, tmp_path: Path) -> None:
    from factory.state import StateDir
    from factory.up import example_commands, running

    catalog = tmp_path / "models.yaml"
    catalog.write_text(CATALOG)
    with built.activated():
        with running(catalog, progress=lambda line: None) as (parsed, proxy):
            children = psutil.Process().children(recursive=True)
            golden = json.loads((built.state / "builds" / ALIAS_MODEL / "golden.json").read_text())
            case = golden[0]
            status, headers, outputs = post(proxy + "/eta/5/PHV", {"inputs": case["inputs"]})
            assert status == 200 and len(outputs) == len(case["outputs"])
            variants = {post(proxy + "/both", {"inputs": case["inputs"]}, {"X-User-Id": f"user-{i}"})[1]
                        .get("X-Model-Variant") for i in range(40)}
            assert variants == {MIXED_MODEL, ALIAS_MODEL}  # both variants reached, by user
            commands = example_commands(parsed, proxy, StateDir(built.state))
            assert any("X-User-Id: user-42" in line for line in commands)
    assert len(children) >= 3 and not any(child.is_running() and child.status() != psutil.STATUS_ZOMBIE
                                           for child in children)


def _containers(env: FactoryEnv, pid: int) -> set[str]:
    """The containers process `pid` started (others on a shared engine are not this test's)."""
    listed = subprocess.run(["docker", "ps", "-aq", "--no-trunc", "--filter", f"label={PID_LABEL}={pid}"], env=env.env,
                            capture_output=True, text=True, check=True)
    return set(listed.stdout.split())


def test_up_containers_serves_the_images_and_stops_them_on_sigterm(built: FactoryEnv, docker_engine: str,
                                                                    tmp_path: Path) -> None:
    catalog = tmp_path / "models.yaml"
    catalog.write_text(CATALOG)
    up = subprocess.Popen([sys.executable, "-m", "factory.cli", "up", "-f", str(catalog), "--containers"], cwd=ROOT,
                          env={**built.env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not any("Ctrl-C" in line for line in lines):
            line = up.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        proxy = re.search(r"proxy at (http://127\.0\.0\.1:\d+)", "".join(lines)).group(1)
        started = _containers(built, up.pid)
        assert len(started) == 3  # two models and the proxy
        golden = json.loads((built.state / "builds" / ALIAS_MODEL / "golden.json").read_text())
        status, headers, outputs = post(proxy + "/eta/5/PHV", {"inputs": golden[0]["inputs"]})
        assert status == 200 and len(outputs) == len(golden[0]["outputs"])
        assert any(line.startswith("curl ") for line in lines)
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=120)
    assert not _containers(built, up.pid)
