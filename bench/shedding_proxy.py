"""Past a pod's capacity, behind the proxy: the proxy's queue budget (routes.yaml `queue_ms`) on against off,
side by side (alternating) in one run. Open-loop load (Poisson arrivals) from many client connections, as a
proxy's clients are, to one model's container (its memory limit, a CFS quota of `--cpu`) through two proxies
that differ only in `queue_ms`, each with `--pod-connections` connections to the pod.

Usage: python -m bench.shedding_proxy --state STATE --model NAME --capacity RPS [--cpu 0.125] [--multiples 1 3]
       [--queue-ms 200] [--pod-connections 32] [--client-connections 2048] [--seconds 6] [--rounds 2]
STATE holds a `factory build` of the model with its image pushed (e.g. `make demo`'s factory-state). The rates
are multiples of --capacity; one client process (factory.loadgen's open loop), so keep them under ~6,000 req/s.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import yaml

from factory.loadgen import run_open_load
from factory.fuzz_report import nearest_rank
from factory.serve import container_served
from factory.state import StateDir
from tests.proxy_support.harness import Proxy, start_proxy


def proxy_for(pod_url: str, queue_ms: int | None, pod_connections: int, folder: Path) -> Proxy:
    upstream = {"url": pod_url + "/predict", "model_version": "1", **({"queue_ms": queue_ms} if queue_ms else {})}
    table = {"format_version": 1, "upstreams": {"pod": upstream},
             "routes": [{"path": "/predict", "variants": [{"name": "main", "upstream": "pod", "weight": 100}]}]}
    routes = folder / f"routes-{queue_ms or 'off'}.yaml"
    routes.write_text(yaml.safe_dump(table, sort_keys=False))
    return start_proxy(routes, max_connections_per_upstream=pod_connections)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--capacity", type=float, required=True, help="req/s the multiples are of")
    parser.add_argument("--cpu", type=Fraction, default=Fraction(1, 8))
    parser.add_argument("--multiples", nargs="+", type=float, default=[1.0, 3.0])
    parser.add_argument("--queue-ms", type=int, default=200)
    parser.add_argument("--pod-connections", type=int, default=32)
    parser.add_argument("--client-connections", type=int, default=2048)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    record = StateDir(args.state).build_record(args.model)
    bodies = [json.dumps({"inputs": case["inputs"]}).encode() for case in json.loads(Path(record.golden).read_text())]
    folder = Path(tempfile.mkdtemp(prefix="bench-shedding-proxy-"))
    print(f"{args.model} on {float(args.cpu):g} cpu behind the proxy ({args.pod_connections} connections to the pod), "
          f"{args.client_connections} client connections at most; queue_ms {args.queue_ms} vs off")
    with container_served(record.image_ref, folder / "pod.log", "256Mi", cpus=args.cpu) as pod:
        proxies = {queue: proxy_for(pod.url, queue, args.pod_connections, folder) for queue in (args.queue_ms, None)}
        try:
            for round_ in range(1, args.rounds + 1):
                for multiple in args.multiples:
                    for queue, proxy in proxies.items():
                        url = f"http://127.0.0.1:{proxy.port}"
                        load = run_open_load(url, bodies, args.capacity * multiple, args.seconds, seed=round_,
                                             connections=args.client_connections)
                        print(f"round {round_} {multiple:g}x ({args.capacity * multiple:,.0f} req/s) queue_ms "
                              f"{queue or 'off':>4}: statuses {dict(sorted(load.statuses.items()))} (503s without the error shape "
                              f"or Retry-After: {load.malformed_sheds}), p99 "
                              f"{nearest_rank(load.latencies_ms, 99):,.1f} ms (200s "
                              f"{nearest_rank(load.answered_ms, 99):,.1f}), "
                              f"client connections {load.connections}, client late {load.late_ms:.1f} ms", flush=True)
                        time.sleep(2)
        finally:
            for proxy in proxies.values():
                proxy.process.stop()


if __name__ == "__main__":
    main()
