"""Proxy memory with large answers in flight: the peak RSS of the proxy's process tree (what its
Deployment's memory limit counts) with the in-flight answer budget at its default, against the budget
off, side by side in one run (alternating), and what the clients got.

Usage: python -m bench.proxy_memory [--answer-mib 8] [--clients 16] [--rounds 2] [--runs 3]
The upstream is the proxy tests' one, padding its answers (`x-test-behaviour: pad:N`), on 127.0.0.1; each run
starts a fresh proxy (one worker), sends clients x rounds requests and samples RSS every 10 ms.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import psutil

from factory.manifests import PROXY_MEMORY_LIMIT
from proxy.settings import ProxySettings
from tests.proxy_support.harness import plain_route, start_proxy, start_upstream, write_routes

MIB = 1 << 20
DEPLOYMENT_LIMIT_MIB = int(PROXY_MEMORY_LIMIT.removesuffix("Mi"))
CONFIGS = {"budget (default)": ProxySettings.model_fields["max_buffered_bytes"].default,
           "no budget": 1 << 50}


def one_run(routes: Path, budget: int, answer: int, clients: int, rounds: int) -> tuple[float, Counter]:
    proxy = start_proxy(routes, max_buffered_bytes=budget)
    try:
        tree = psutil.Process(proxy.process.popen.pid)
        peak, done = [0], threading.Event()

        def sample() -> None:
            while not done.is_set():
                try:
                    rss = sum(p.memory_info().rss for p in [tree, *tree.children(recursive=True)])
                except psutil.NoSuchProcess:
                    continue
                peak[0] = max(peak[0], rss)
                time.sleep(0.01)

        sampler = threading.Thread(target=sample)
        sampler.start()
        padded = {"x-test-behaviour": f"pad:{answer}"}
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            replies = list(pool.map(lambda _: proxy.post("/m", b"{}", padded, timeout=30), range(clients * rounds)))
        done.set()
        sampler.join()
        return peak[0] / MIB, Counter(reply.status for reply in replies)
    finally:
        proxy.process.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answer-mib", type=float, default=8)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    upstream = start_upstream("big")
    try:
        routes = write_routes(Path(tempfile.mkdtemp(prefix="bench-proxy-memory-")) / "routes.yaml",
                              {"big": (upstream.url, "1")}, [plain_route("/m", "big")])
        peaks: dict[str, list[float]] = {name: [] for name in CONFIGS}
        statuses: dict[str, Counter] = {name: Counter() for name in CONFIGS}
        for _ in range(args.runs):
            for name, budget in CONFIGS.items():
                peak, seen = one_run(routes, budget, int(args.answer_mib * MIB), args.clients, args.rounds)
                peaks[name].append(peak)
                statuses[name] += seen
    finally:
        upstream.process.stop()
    print(f"{args.clients} clients x {args.rounds} requests of {args.answer_mib:g} MiB answers, {args.runs} runs "
          f"each (alternating); Deployment limit {DEPLOYMENT_LIMIT_MIB} MiB")
    for name in CONFIGS:
        print(f"{name:18} peak RSS MiB median {statistics.median(peaks[name]):6.0f} (runs: "
              f"{', '.join(f'{p:.0f}' for p in peaks[name])}); answers {dict(sorted(statuses[name].items()))}")
    ratio = statistics.median(peaks["budget (default)"]) / statistics.median(peaks["no budget"])
    print(f"budget / no budget peak RSS: {ratio:.2f}")


if __name__ == "__main__":
    main()
