"""Images: size per model and for the fleet, build time cold vs warm, container vs host-process memory.

Usage: python -m bench.images [MODEL ...] [--seconds 6]   (default: the two e2e example models)
Needs `make engine` (Docker engine + registry on 127.0.0.1:5000) and models built with images
(`make demo`, or `factory build ...` with FACTORY_IMAGE_REGISTRY=127.0.0.1:5000/model-factory).
For each model, in one run: its image rebuilt cold (no cache, requirements installed from the index)
and warm (layer cache: what a second model with the same requirements costs); idle and peak memory of the
same load served in its container (cgroup working set, `docker stats`) and as a host process tree (RSS).
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.request
from pathlib import Path

from factory import dockerapi, engine
from factory.golden import sample_requests
from factory.images import model_context, model_dockerfile
from factory.baseimage import ensure_base_image
from factory.loadgen import run_load
from factory.memory import MIB, MemoryProfile
from factory.runtime import bento_python
from factory.serve import container_served, served
from factory.state import BuildRecord, StateDir
from factory.tables import table

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS = ["match_probability_2_TAXI_trafficaware", "eta_minutes_5_PHV"]
IDLE_SECONDS = 3.0


def build_times(record: BuildRecord, state: StateDir, base: str) -> tuple[float, float]:
    """(cold, warm) seconds of this model's image build, through the Engine API as `factory build` does."""
    folder = state.root / "bench-images" / record.model
    context = model_context(Path(record.bento_export), folder / "context", model_dockerfile(record.model, base, 3000))
    log = folder / "build.log"
    log.write_text("", encoding="utf-8")
    times = []
    for tag, nocache in ((f"{record.image}-bench-cold", True), (f"{record.image}-bench-warm", False)):
        started = time.monotonic()
        dockerapi.build(context, "Dockerfile", tag, log, nocache=nocache)
        times.append(time.monotonic() - started)
        dockerapi.remove(tag)
    return times[0], times[1]


def memory_figures(record: BuildRecord, state: StateDir, limit: str, seconds: float) -> dict[str, float]:
    signature = state.resolved(record.model).signature
    bodies = [json.dumps(request).encode() for request in sample_requests(signature, 16, 8, seed=3)]
    figures = {}
    log = state.root / "bench-images" / f"{record.model}.log"
    with container_served(record.image_ref, log, limit) as server, MemoryProfile.of_container(server.container) as memory:
        figures.update(_phases("container", server.url, memory, bodies, seconds))
    with served(record.bento_tag, log, "single", bento_python(state, record.model)) as server, \
            MemoryProfile.of_process(server.pid) as memory:
        figures.update(_phases("process", server.url, memory, bodies, seconds))
    return figures


def _phases(label: str, url: str, memory: MemoryProfile, bodies: list[bytes], seconds: float) -> dict[str, float]:
    with memory.phase("idle") as idle:
        time.sleep(IDLE_SECONDS)
    with memory.phase("load"):
        run_load(url, bodies, concurrency=16, duration_s=seconds)
    return {f"{label} idle": idle.rss / MIB, f"{label} peak": memory.peak_bytes / MIB}


def registry_bytes(references: list[str]) -> tuple[int, int]:
    """(stored once, naive sum): compressed blob bytes the registry holds for these images, from their
    manifests; layers shared between images are stored once."""
    blobs: dict[str, int] = {}
    naive = 0
    for reference in references:
        host_repo, digest = reference.split("@")
        host, repo = host_repo.split("/", 1)
        request = urllib.request.Request(f"http://{host}/v2/{repo}/manifests/{digest}",
                                         headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            manifest = json.loads(response.read())
        for blob in [manifest["config"], *manifest["layers"]]:
            blobs[blob["digest"]] = blob["size"]
            naive += blob["size"]
    return sum(blobs.values()), naive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=DEFAULT_MODELS)
    parser.add_argument("--seconds", type=float, default=6)
    args = parser.parse_args()
    state = StateDir.from_env().activate()
    engine.hold()  # a test session ending meanwhile must not stop the engine under this benchmark
    records = {path.parent.name: state.build_record(path.parent.name)
               for path in sorted(state.root.glob("builds/*/record.json"))}
    built = {name: record for name, record in records.items() if record and record.image_built}
    print(table(["model", "image MiB"], [[name, f"{r.image_size_bytes / MIB:.0f}"] for name, r in built.items()]))
    stored, naive = registry_bytes([record.image_ref for record in built.values()])
    print(f"\nfleet: {len(built)} images, {sum(r.image_size_bytes for r in built.values()) / MIB:.0f} MiB unpacked in "
          f"all; the registry stores {stored / MIB:.0f} MiB compressed (layers shared, stored once) vs "
          f"{naive / MIB:.0f} MiB without sharing\n")
    base = ensure_base_image()
    rows = []
    for name in args.models:
        record = built[name]
        cold, warm = build_times(record, state, base)
        figures = memory_figures(record, state, "768Mi", args.seconds)
        rows.append([name, f"{cold:.0f}", f"{warm:.1f}", f"{cold / warm:.0f}x",
                     *(f"{figures[key]:.0f}" for key in ("container idle", "container peak", "process idle",
                                                         "process peak")),
                     f"{figures['container peak'] / figures['process peak']:.2f}"])
    print(table(["model", "build cold s", "warm s", "cold/warm", "container idle MiB", "container peak MiB",
                 "process idle MiB", "process peak MiB", "container/process"], rows))


if __name__ == "__main__":
    main()
