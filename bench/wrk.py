"""Run wrk (Debian package) with a POST body, pinned to core 0, and parse what it prints."""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[{body}]==]
"""


@dataclass(frozen=True)
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


def run_wrk(url: str, body: str, seconds: float, connections: int, core: str = "0") -> WrkResult:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(LUA.format(body=body))
    try:
        output = subprocess.run(["taskset", "-c", core, "wrk", "-t1", f"-c{connections}", f"-d{int(round(seconds))}s",
                                 "--latency", "-s", script.name, url],
                                capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    finally:
        Path(script.name).unlink(missing_ok=True)
    return parse(output)


def parse(output: str) -> WrkResult:
    requests = int(re.search(r"(\d+) requests in", output).group(1))
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", output))
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    errors += sum(int(n) for n in socket.groups()) if socket else 0
    return WrkResult(rps=float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
                     p50_ms=_percentile(output, "50"), p99_ms=_percentile(output, "99"),
                     requests=requests, errors=errors)


def _percentile(output: str, percent: str) -> float:
    value, unit = re.search(rf"^\s+{percent}(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", output, re.M).groups()
    return float(value) * UNITS_MS[unit]
