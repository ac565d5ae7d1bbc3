"""Normal-request latency while 200 slow (slowloris) connections are held, proxy vs nginx.

    .venv/bin/python -m bench.slowloris [--duration 5] [--runs 3] [--slow 200] [--connections 4]

Same setup as bench/proxy.py (upstream, nginx reference and `python -m proxy` on CPU 1; wrk on
CPU 0). Each round measures both proxies without and with an attacker process (also on CPU 0)
that keeps `--slow` connections open to the benchmarked route, half dripping a header section and
half a body, one byte every 0.5 s, reconnecting whenever the proxy cuts one off. Rounds are interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.proxy import (LOAD_CPU, ROUTE, WRK_SCRIPT, Sample, Servers, free_port, median, reference_proxy_http,
                         round_arguments, routes_yaml, run_wrk, upstream_http, wait_port)
from proxy.settings import ProxySettings
from tests.proxy_support.slowloris import slow_client


async def _attack(port: int, count: int, seconds: float) -> None:
    """Keep `count` slow connections open for `seconds`: each one is replaced once it is cut off."""
    deadline = time.monotonic() + seconds

    async def keep_one(kind: str) -> None:
        while (left := deadline - time.monotonic()) > 0:
            try:
                await slow_client(port, kind, 0.5, left, path=ROUTE.encode())
            except OSError:
                await asyncio.sleep(0.05)

    await asyncio.gather(*(keep_one("head" if i % 2 else "body") for i in range(count)))


def _attacker(port: int, count: int, seconds: float) -> subprocess.Popen:
    return subprocess.Popen(["taskset", "-c", LOAD_CPU, sys.executable, "-m", "bench.slowloris", "--attack", str(port),
                             "--slow", str(count), "--duration", str(seconds)])


def measure(args: argparse.Namespace, work: Path) -> dict[tuple[str, bool], list[Sample]]:
    servers = Servers(work)
    try:
        up_port, ref_port, proxy_port = free_port(), free_port(), free_port()
        servers.nginx("upstream", upstream_http(up_port))
        reference = servers.nginx("reference", reference_proxy_http(ref_port, up_port))
        routes = work / "routes.yaml"
        routes.write_text(routes_yaml(up_port))
        env = {**os.environ, **ProxySettings(routes=routes, log_level="warning").to_env()}
        proxy = servers.start([sys.executable, "-m", "proxy", "--port", str(proxy_port)], env)
        targets = {"nginx": (ref_port, [reference]), "proxy": (proxy_port, [proxy])}
        for port, _ in targets.values():
            wait_port(port)
        script = work / "post.lua"
        script.write_text(WRK_SCRIPT)
        samples: dict[tuple[str, bool], list[Sample]] = {}
        for round_ in range(args.runs):
            for name, (port, procs) in targets.items():
                for attacked in (False, True):
                    attacker = _attacker(port, args.slow, args.duration + 3) if attacked else None
                    if attacker:
                        time.sleep(2)  # let the slow connections open before measuring
                    url = f"http://127.0.0.1:{port}{ROUTE}"
                    sample = run_wrk(url, script, args.connections, args.duration,
                                     [q for p in procs for q in [p, *p.children(recursive=True)]])
                    if attacker:
                        attacker.wait(timeout=args.duration + 30)
                    samples.setdefault((name, attacked), []).append(sample)
                    print(f"round {round_ + 1} {name:<6} slow={args.slow if attacked else 0:<4} "
                          f"{sample.rps:>8.0f} req/s p50 {sample.p50_ms:.3f} p99 {sample.p99_ms:.3f} ms "
                          f"errors {sample.errors}", file=sys.stderr)
        return samples
    finally:
        servers.stop()


def report(samples: dict[tuple[str, bool], list[Sample]], slow: int) -> str:
    """One row per path and attack state; p99 is also shown as a multiple of nginx's in the same state."""
    lines = ["| path | slow conns | req/s | p50 ms | p99 ms | p99 vs nginx | errors |", "|---|---|---|---|---|---|---|"]
    for (name, attacked), runs in samples.items():
        p99 = median(runs, "p99_ms")
        lines.append(f"| {name} | {slow if attacked else 0} | {median(runs, 'rps'):,.0f} | "
                     f"{median(runs, 'p50_ms'):.3f} | {p99:.3f} | {p99 / median(samples[('nginx', attacked)], 'p99_ms'):.2f} | "
                     f"{sum(s.errors for s in runs)} |")
    return "\n".join(lines)


def main() -> int:
    parser = round_arguments(__doc__.splitlines()[0])
    parser.add_argument("--slow", type=int, default=200, help="slow connections held during the attacked runs")
    parser.add_argument("--connections", type=int, default=4, help="wrk connections sending normal requests")
    parser.add_argument("--attack", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attack:
        asyncio.run(_attack(args.attack, args.slow, args.duration))
        return 0
    with tempfile.TemporaryDirectory(prefix="slowloris-bench-") as work:
        samples = measure(args, Path(work))
    print(f"\nmedians of {args.runs} runs x {args.duration:g} s, wrk -t1 -c{args.connections} on CPU {LOAD_CPU}\n")
    print(report(samples, args.slow))
    p99 = median(samples[("proxy", True)], "p99_ms")
    print(f"\ngoal: proxy p99 with {args.slow} slow connections <= 5 ms: {p99:.2f} ms "
          f"({'met' if p99 <= 5 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
