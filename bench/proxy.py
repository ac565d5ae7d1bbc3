"""Benchmark the proxy against nginx, both in front of the same fast upstream.

    .venv/bin/python -m bench.proxy [--duration 5] [--runs 3] [--connections 4 16] [--servers proxy uvicorn]
                                    [--layouts shared own-core] [--baseline REV]

Each round measures direct → upstream, nginx → upstream, the proxy (`python -m proxy`, granian) →
upstream and the same app on uvicorn + httptools; rounds are interleaved so drift on a shared
machine hits all alike, and the tables report medians over rounds. `--baseline REV` adds the proxy of an
earlier git revision (its `proxy/` package, as `proxy@REV`) to the same rounds: a change measured side by side.

Two placements of the same processes on the 2 CPUs (`--layouts`), every proxy (nginx, ours,
uvicorn) placed alike:
- `shared` (the original one): wrk on CPU 0; the upstream (nginx `return 200`, which also answers
  the shadow copies) and the proxy under test on CPU 1. The proxy then waits for the CPU while the
  very upstream it forwards to answers (twice per request: primary and shadow), so its added latency
  is partly core sharing: nginx-as-proxy adds +1.2 ms at p99 this way on the quiet machine.
- `own-core`: the proxy under test alone on CPU 1, wrk and the upstream on CPU 0; the direct path is
  wrk + upstream on CPU 0 too. A proxy is its own Deployment, scheduled on its own CPU, so this is
  the layout closer to what "added latency" means in production. Both layouts' figures are printed
  side by side; neither replaces the other, and the throughput goal is read from `shared` as before.

Both proxies do the same work: a 90/10 split keyed on the X-User header (100 users), a copy of
every request to a shadow upstream (nginx: `mirror`) and a variant response header; the proxy
also counts every request in /metrics.

Two phases. Saturated: wrk sends as fast as answers come back; it gives throughput, CPU and
context switches per request. Its latencies are mostly queueing (a closed loop at full load has
latency = connections / throughput), so the added latency is measured in a second, paced phase:
every path gets the same offered load, `--paced-fraction` of the slowest proxy's saturated
throughput in that layout (the same rule in both), each connection waiting an exponentially
distributed think time between requests.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import psutil

from bench.wrk import parse
from proxy.settings import ProxySettings

REPO = Path(__file__).resolve().parents[1]
BODY = '{"user_id": "u1", "rows": [{"sepal_length": 5.1, "sepal_width": 3.5}]}'
ROUTE = "/models/bench"
LOAD_CPU, SERVER_CPU = "0", "1"


@dataclass(frozen=True)
class Layout:
    """Which CPU wrk, the upstream and the proxy under test run on (module docstring)."""
    load_cpu: str
    upstream_cpu: str
    proxy_cpu: str


LAYOUTS = {"shared": Layout(LOAD_CPU, SERVER_CPU, SERVER_CPU), "own-core": Layout(LOAD_CPU, LOAD_CPU, SERVER_CPU)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def nginx_conf(work: Path) -> str:
    return textwrap.dedent(f"""\
        worker_processes 1;
        daemon off;
        pid {work}/nginx-%(name)s.pid;
        error_log {work}/nginx-%(name)s.err warn;
        events {{ worker_connections 4096; }}
        http {{
          access_log off;
          client_body_temp_path {work}/%(name)s-body;
          proxy_temp_path {work}/%(name)s-proxy;
          fastcgi_temp_path {work}/%(name)s-f; uwsgi_temp_path {work}/%(name)s-u; scgi_temp_path {work}/%(name)s-s;
          keepalive_requests 1000000;
          %(http)s
        }}
        """)


def upstream_http(port: int) -> str:
    return (f"server {{ listen 127.0.0.1:{port}; location / {{ default_type application/json; "
            f"return 200 '{{\"prediction\": [0]}}'; }} }}")


def reference_proxy_http(port: int, upstream_port: int) -> str:
    return textwrap.dedent(f"""\
        upstream variant_a {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
        upstream variant_b {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
        upstream shadow {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
        split_clients "{ROUTE}${{http_x_user}}" $variant {{ 90% a; * b; }}
        server {{
          listen 127.0.0.1:{port};
          location = {ROUTE} {{
            mirror /_shadow;
            proxy_pass http://variant_$variant/predict;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            add_header X-Model-Variant $variant;
          }}
          location = /_shadow {{
            internal;
            proxy_pass http://shadow/predict;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
          }}
        }}""")


def routes_yaml(upstream_port: int) -> str:
    return textwrap.dedent(f"""\
        format_version: 1
        upstreams:
          a: {{url: "http://127.0.0.1:{upstream_port}/predict", model_version: "1"}}
          b: {{url: "http://127.0.0.1:{upstream_port}/predict", model_version: "2"}}
          shadow: {{url: "http://127.0.0.1:{upstream_port}/predict", model_version: "3"}}
        routes:
          - path: {ROUTE}
            experiment: bench
            sticky_key: {{source: header, name: X-User}}
            variants: [{{name: a, upstream: a, weight: 90}}, {{name: b, upstream: b, weight: 10}}]
            shadows: [shadow]
        """)


WRK_SCRIPT = textwrap.dedent("""\
    local requests = {}
    local think_ms = 0
    local i = 0
    init = function(args)
      think_ms = tonumber(args[1]) or 0
      math.randomseed(os.time())
      for u = 1, 100 do
        requests[u] = wrk.format("POST", nil,
          {["Content-Type"] = "application/json", ["X-User"] = "user-" .. u}, [[BODY]])
      end
    end
    request = function()
      i = i % 100 + 1
      return requests[i]
    end
    """).replace("BODY", BODY)
# The paced phase: a think time per connection between an answer and the next request, exponential
# (arrivals close to a Poisson process, not 16 connections firing in step); wrk takes whole ms.
PACED_SCRIPT = WRK_SCRIPT + textwrap.dedent("""\
    delay = function()
      return -think_ms * math.log(1 - math.random())
    end
    """)


# `proxy` is the real thing (granian, proxy.serve); `proxy-normal` the same under the normal scheduling
# policy instead of SCHED_BATCH (README, "The proxy"); `uvicorn` runs the same ASGI app on uvicorn's
# httptools protocol, the floor any maintained server should beat (it cannot enforce 431 or a
# header read timeout, which is why it is not the proxy's server).
SERVERS: dict[str, Callable[[int], list[str]]] = {
    "proxy": lambda port: [sys.executable, "-m", "proxy", "--port", str(port)],
    "proxy-normal": lambda port: [sys.executable, "-m", "proxy", "--port", str(port), "--cpu-scheduling", "normal"],
    "uvicorn": lambda port: [sys.executable, "-m", "uvicorn", "--factory", "--http", "httptools", "--loop", "uvloop",
                             "--no-access-log", "--log-level", "warning", "--port", str(port),
                             "proxy.app:create_app_from_env"],
}


@dataclass
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us_per_req: float
    switches_per_req: float


def context_switches(procs: list[psutil.Process]) -> int:
    """Voluntary + involuntary context switches of every thread (psutil counts the main thread only)."""
    total = 0
    for proc in procs:
        for task in Path(f"/proc/{proc.pid}/task").iterdir():
            with contextlib.suppress(OSError):  # a thread that ended in between
                status = (task / "status").read_text()
                total += sum(int(line.split()[1]) for line in status.splitlines() if "ctxt_switches" in line)
    return total


def run_wrk(url: str, script: Path, connections: int, duration: float, cpu_of: list[psutil.Process],
            think_ms: float = 0.0, load_cpu: str = LOAD_CPU) -> Sample:
    before, switches = sum(sum(p.cpu_times()[:2]) for p in cpu_of), context_switches(cpu_of)
    out = subprocess.run(["taskset", "-c", load_cpu, "wrk", "-t1", f"-c{connections}", f"-d{duration:g}s",
                          "--latency", "-s", str(script), url, "--", f"{think_ms:.3f}"],
                         capture_output=True, text=True, check=True).stdout
    cpu = sum(sum(p.cpu_times()[:2]) for p in cpu_of) - before
    switches = context_switches(cpu_of) - switches
    result = parse(out)
    requests = max(result.requests, 1)
    return Sample(rps=result.rps, p50_ms=result.p50_ms, p99_ms=result.p99_ms, errors=result.errors,
                  cpu_us_per_req=1e6 * cpu / requests, switches_per_req=switches / requests)


class Servers:
    """Start everything pinned to the server CPU; stop it all by process group on exit."""

    def __init__(self, work: Path):
        self.work = work
        self.procs: list[subprocess.Popen] = []

    def start(self, args: list[str], env: Optional[dict[str, str]] = None, cwd: Path = REPO) -> psutil.Process:
        proc = subprocess.Popen(["taskset", "-c", SERVER_CPU, *args], cwd=cwd, start_new_session=True, env=env,
                                stdout=subprocess.DEVNULL, stderr=open(self.work / "servers.log", "ab"))
        self.procs.append(proc)
        return psutil.Process(proc.pid)

    def nginx(self, name: str, http: str) -> psutil.Process:
        conf = self.work / f"{name}.conf"
        conf.write_text(nginx_conf(self.work) % {"name": name, "http": http})
        return self.start(["nginx", "-c", str(conf), "-p", str(self.work)])

    def stop(self) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)


Targets = dict[str, tuple[str, list[psutil.Process]]]
Samples = dict[tuple[str, str, int], list[Sample]]  # (layout, path, connections) -> one sample per round


def baseline_tree(rev: str, work: Path) -> Path:
    """The `proxy` package of git revision `rev`, unpacked under `work`; `python -m proxy` started there runs it."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "proxy"], capture_output=True)
    if archive.returncode != 0:
        raise SystemExit(f"bench/proxy.py: --baseline {rev}: git archive failed: {archive.stderr.decode().strip()} "
                         "(give a commit, branch or tag of this repository that has proxy/)")
    tree = work / "baseline"
    tree.mkdir()
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def start_targets(servers: Servers, work: Path, names: list[str],
                  baseline: Optional[str] = None) -> tuple[Targets, list[psutil.Process]]:
    """direct (the upstream itself), nginx, each server in `names` and `proxy@<baseline>` if given: URL and
    processes to account; and the upstream's processes."""
    up_port, ref_port = free_port(), free_port()
    upstream = servers.nginx("upstream", upstream_http(up_port))
    reference = servers.nginx("reference", reference_proxy_http(ref_port, up_port))
    routes = work / "routes.yaml"
    routes.write_text(routes_yaml(up_port))
    targets = {"direct": (f"http://127.0.0.1:{up_port}/predict", [upstream]),
               "nginx": (f"http://127.0.0.1:{ref_port}{ROUTE}", [reference])}
    env = {**os.environ, **ProxySettings(routes=routes, log_level="warning").to_env()}
    for name in names:
        port = free_port()
        targets[name] = (f"http://127.0.0.1:{port}{ROUTE}", [servers.start(SERVERS[name](port), env)])
    if baseline is not None:
        port, tree = free_port(), baseline_tree(baseline, work)
        targets[f"proxy@{baseline}"] = (f"http://127.0.0.1:{port}{ROUTE}",
                                        [servers.start(SERVERS["proxy"](port), env, cwd=tree)])
    for url, _ in targets.values():
        wait_port(int(url.split(":")[2].split("/")[0]))
    return targets, [upstream]


def with_children(procs: list[psutil.Process]) -> list[psutil.Process]:
    return [q for p in procs for q in [p, *p.children(recursive=True)]]


def pin(procs: list[psutil.Process], cpu: str) -> None:
    """Move every thread of these processes (and their children) to `cpu`; threads started later
    inherit it. taskset at start only moves the first thread of each."""
    for proc in with_children(procs):
        for task in Path(f"/proc/{proc.pid}/task").iterdir():
            with contextlib.suppress(OSError):  # a thread that ended in between
                os.sched_setaffinity(int(task.name), {int(cpu)})


def rounds(targets: Targets, upstream: list[psutil.Process], script: Path, think_ms: dict[tuple[str, int], float],
           runs: int, duration: float) -> Samples:
    """`runs` interleaved rounds over every (layout, connection count) in think_ms and every target."""
    samples: Samples = {}
    for round_ in range(runs):
        for (name_of_layout, connections), think in think_ms.items():
            layout = LAYOUTS[name_of_layout]
            pin(upstream, layout.upstream_cpu)
            for name, (url, procs) in targets.items():
                if name != "direct":
                    pin(procs, layout.proxy_cpu)
                sample = run_wrk(url, script, connections, duration, with_children(procs), think, layout.load_cpu)
                samples.setdefault((name_of_layout, name, connections), []).append(sample)
                print(f"round {round_ + 1} {name_of_layout:<8} c={connections:<3} {'paced ' if think else ''}"
                      f"{name:<7} {sample.rps:>9.0f} req/s p50 {sample.p50_ms:.3f} ms p99 {sample.p99_ms:.3f} ms "
                      f"errors {sample.errors}", file=sys.stderr)
    return samples


def measure(args: argparse.Namespace, work: Path) -> tuple[Samples, Samples, dict[tuple[str, int], float]]:
    """Saturated rounds, then paced rounds of every path at the offered rates returned (per layout and
    connection count: `--paced-fraction` of that layout's slowest proxy's saturated rate)."""
    servers = Servers(work)
    try:
        targets, upstream = start_targets(servers, work, args.servers, args.baseline)
        saturated_script, paced_script = work / "post.lua", work / "paced.lua"
        saturated_script.write_text(WRK_SCRIPT)
        paced_script.write_text(PACED_SCRIPT)
        for url, procs in targets.values():  # warm-up: connection pools, caches, CPU frequency
            run_wrk(url, saturated_script, max(args.connections), 1.0, with_children(procs))
        saturated = rounds(targets, upstream, saturated_script,
                           {(layout, c): 0.0 for layout in args.layouts for c in args.connections},
                           args.runs, args.duration)
        rates = {(layout, c): args.paced_fraction * min(median(saturated[(layout, name, c)], "rps")
                                                        for name in targets if name != "direct")
                 for layout in args.layouts for c in args.paced_connections if c in args.connections}
        paced = rounds(targets, upstream, paced_script,
                       {key: 1000 * key[1] / rate for key, rate in rates.items()}, args.runs, args.duration)
        return saturated, paced, rates
    finally:
        servers.stop()


def median(samples: list[Sample], attr: str) -> float:
    return statistics.median(getattr(s, attr) for s in samples)


def report(samples: Samples, layouts: list[str], connections: list[int], names: list[str]) -> str:
    """The saturated phase: throughput and what each request cost the server's processes."""
    lines = ["| layout | conns | path | req/s | p50 ms | p99 ms | CPU µs/req | ctx switches/req | req/s vs nginx "
             "| errors |", "|---|---|---|---|---|---|---|---|---|---|"]
    for layout in layouts:
        for c in connections:
            nginx = samples[(layout, "nginx", c)]
            for name in names:
                s = samples[(layout, name, c)]
                ratio = "—" if name == "direct" else f"{median(s, 'rps') / median(nginx, 'rps'):.2f}"
                lines.append(f"| {layout} | {c} | {name} | {median(s, 'rps'):,.0f} | {median(s, 'p50_ms'):.3f} | "
                             f"{median(s, 'p99_ms'):.3f} | {median(s, 'cpu_us_per_req'):.0f} | "
                             f"{median(s, 'switches_per_req'):.1f} | {ratio} | {sum(x.errors for x in s)} |")
    return "\n".join(lines)


def added(samples: Samples, layout: str, name: str, c: int, attr: str) -> float:
    """A path's percentile minus the direct path's, same layout, connections and phase."""
    return median(samples[(layout, name, c)], attr) - median(samples[(layout, "direct", c)], attr)


def busy(samples: list[Sample]) -> float:
    """The share of one core the path's own processes used. A paced request cost the Python servers about
    twice the CPU of a saturated one here (BENCHMARKS.md, "Proxy"), so at the same offered load their core
    is far busier than nginx's, and queueing drives their p99."""
    return statistics.median(s.cpu_us_per_req * s.rps / 1e6 for s in samples)


def paced_report(samples: Samples, rates: dict[tuple[str, int], float], names: list[str]) -> str:
    """The paced phase: the same offered load on every path of a layout."""
    lines = ["| layout | conns | path | offered req/s | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms "
             "| CPU µs/req | core busy | errors |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (layout, c), rate in rates.items():
        for name in names:
            s = samples[(layout, name, c)]
            extra = "— | —" if name == "direct" else (
                f"{added(samples, layout, name, c, 'p50_ms'):+.3f} | {added(samples, layout, name, c, 'p99_ms'):+.3f}")
            lines.append(f"| {layout} | {c} | {name} | {rate:,.0f} | {median(s, 'rps'):,.0f} | "
                         f"{median(s, 'p50_ms'):.3f} | {median(s, 'p99_ms'):.3f} | {extra} | "
                         f"{median(s, 'cpu_us_per_req'):.0f} | {busy(s):.0%} | {sum(x.errors for x in s)} |")
    return "\n".join(lines)


def round_arguments(description: str) -> argparse.ArgumentParser:
    """--duration and --runs, shared by the proxy benchmarks."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--runs", type=int, default=3, help="interleaved rounds; the tables show medians")
    return parser


def goals(saturated: Samples, paced: Samples, rates: dict[tuple[str, int], float], args: argparse.Namespace) -> None:
    """Issue 13's two bench goals for the first server, per layout (throughput is read from `shared`)."""
    first = args.servers[0]
    for layout in args.layouts:
        ratios = [median(saturated[(layout, first, c)], "rps") / median(saturated[(layout, "nginx", c)], "rps")
                  for c in args.connections]
        print(f"goal: {first}/nginx throughput >= 0.50 ({layout}): {min(ratios):.2f} "
              f"({'met' if min(ratios) >= 0.5 else 'NOT met'})")
    for layout in args.layouts:
        if (layout, 16) in rates:
            ours, nginx = (added(paced, layout, name, 16, "p99_ms") for name in (first, "nginx"))
            print(f"goal: added p99 <= 1 ms at 16 connections (paced, {layout}): {ours:.2f} ms, nginx's {nginx:.2f} "
                  f"ms ({'met' if ours <= 1 else 'NOT met'})")


def main() -> int:
    parser = round_arguments(__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--servers", nargs="+", choices=sorted(SERVERS), default=["proxy", "uvicorn"])
    parser.add_argument("--layouts", nargs="+", choices=sorted(LAYOUTS), default=["shared", "own-core"],
                        help="CPU placements to measure (module docstring)")
    parser.add_argument("--paced-connections", type=int, nargs="*", default=[16],
                        help="connection counts (of --connections) also measured paced; none: skip that phase")
    parser.add_argument("--baseline", metavar="REV", help="also run the proxy of this git revision, as proxy@REV")
    parser.add_argument("--paced-fraction", type=float, default=0.5,
                        help="paced offered load, as a fraction of the slowest proxy's saturated req/s")
    args = parser.parse_args()
    missing = [tool for tool in ("wrk", "nginx", "taskset") if shutil.which(tool) is None]
    if missing:
        print(f"bench/proxy.py needs {', '.join(missing)} (apt-get install wrk nginx util-linux)", file=sys.stderr)
        return 2
    if len(os.sched_getaffinity(0)) < 2:
        print("bench/proxy.py needs 2 CPUs: wrk on one, the servers on the other", file=sys.stderr)
        return 2
    print(f"load average before: {os.getloadavg()[0]:.1f} (2 cores; above ~1 the machine is shared)")
    with tempfile.TemporaryDirectory(prefix="proxy-bench-") as work:
        saturated, paced, rates = measure(args, Path(work))
    names = ["direct", "nginx", *args.servers, *([f"proxy@{args.baseline}"] if args.baseline else [])]
    placement = "; ".join(f"{name}: wrk on CPU {layout.load_cpu}, upstream on CPU {layout.upstream_cpu}, proxy "
                          f"under test on CPU {layout.proxy_cpu}" for name, layout in LAYOUTS.items()
                          if name in args.layouts)
    print(f"\nmedians of {args.runs} runs x {args.duration:g} s, wrk -t1 ({placement})\n\n"
          "saturated (wrk as fast as answers come):\n")
    print(report(saturated, args.layouts, args.connections, names))
    if rates:
        print(f"\npaced ({args.paced_fraction:g} x the slowest proxy's saturated req/s in that layout, the same for "
              "every path):\n")
        print(paced_report(paced, rates, names))
    print()
    goals(saturated, paced, rates, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
