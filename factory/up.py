"""`factory up`: every built model and the proxy on 127.0.0.1, until Ctrl-C stops them all."""

from __future__ import annotations

import contextlib
import json
import shlex
import signal
import sys
from pathlib import Path
from typing import Callable, Iterator

from factory import manifests
from factory.build import ensure_in_store
from factory.catalog import Catalog, ModelSpec
from factory.errors import ServeError
from factory.loader import load_catalog
from factory.routes import routes_yaml
from factory.runtime import runtime_python
from factory.images import proxy_image_ref
from factory.serve import container_served, free_port, process_served, served
from factory.state import BuildRecord, StateDir

Progress = Callable[[str], None]
ROOT = Path(__file__).resolve().parent.parent
# The proxy's own Deployment limit (templates/k8s/proxy-deployment.yaml.j2).
PROXY_MEMORY_LIMIT = "256Mi"


@contextlib.contextmanager
def running(catalog_path: Path, progress: Progress, containers: bool = False) -> Iterator[tuple[Catalog, str]]:
    """Serve every model (as its pod would) and a proxy routing to them; stop all of it on exit.

    `containers`: each model's pushed image and the proxy image, under their manifests' memory limits
    (the seeds' docker-compose); otherwise processes in the lean runtime venv. Either way on 127.0.0.1 only.
    """
    catalog = load_catalog(catalog_path)
    state = StateDir.from_env().activate()
    logs = state.up_dir()
    logs.mkdir(parents=True, exist_ok=True)
    serve_model = _container_model(state) if containers else _process_model(state)
    with contextlib.ExitStack() as stack:
        urls = {}
        for position, model in enumerate(catalog.models, start=1):
            record = state.build_record(model.name)
            if record is None:
                raise ServeError(f"{catalog.where(model.name)}: not built; run `factory build --all` first")
            urls[model.name] = stack.enter_context(serve_model(catalog, model, record, logs / f"{model.name}.log"))
            progress(f"[{position}/{len(catalog.models)}] {model.name} at {urls[model.name]}")
        routes = logs / "routes.yaml"
        routes.write_text(routes_yaml(catalog, catalog_path.name, lambda model: f"{urls[model.name]}/predict"),
                          encoding="utf-8")
        proxy = _proxy_container(state, routes, logs) if containers else _proxy_process(routes, logs)
        yield catalog, stack.enter_context(proxy)


def _process_model(state: StateDir):
    runtime = runtime_python(state.root)

    @contextlib.contextmanager
    def serve(catalog: Catalog, model: ModelSpec, record: BuildRecord, log: Path) -> Iterator[str]:
        ensure_in_store(record)
        with served(record.bento_tag, log, "single", runtime) as server:
            yield server.url
    return serve


def _container_model(state: StateDir):
    @contextlib.contextmanager
    def serve(catalog: Catalog, model: ModelSpec, record: BuildRecord, log: Path) -> Iterator[str]:
        if not record.image_built:
            raise ServeError(f"{catalog.where(model.name)}: no pushed image for {model.name}; run "
                             f"`factory build {model.name}` where a Docker engine answers")
        limit = manifests.sizing_for(model, manifests.measured_peak(state, model.name)).memory_limit
        with container_served(record.image_ref, log, limit) as server:
            yield server.url
    return serve


@contextlib.contextmanager
def _proxy_process(routes: Path, logs: Path) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "proxy", "--routes", str(routes), "--host", "127.0.0.1", "--port", str(port)]
    with process_served(command, ROOT, logs / "proxy.log", port, "/readyz") as proxy:
        yield proxy.url


@contextlib.contextmanager
def _proxy_container(state: StateDir, routes: Path, logs: Path) -> Iterator[str]:
    image = proxy_image_ref(state)
    if not image:
        raise ServeError("no pushed proxy image; run `factory build --proxy` where a Docker engine answers")

    def command(port: int) -> list[str]:
        return ["--routes", f"/etc/model-factory/{routes.name}", "--host", "127.0.0.1", "--port", str(port)]

    volumes = {str(routes.parent): {"bind": "/etc/model-factory", "mode": "ro"}}
    with container_served(image, logs / "proxy.log", PROXY_MEMORY_LIMIT, command, volumes) as proxy:
        yield proxy.url


def up_command(catalog_path: Path, progress: Progress, containers: bool = False) -> None:
    # SIGTERM (docker stop, CI cancel, kill) must clean up like Ctrl-C does: no container outlives `up`.
    signal.signal(signal.SIGTERM, _interrupt)
    with running(catalog_path, progress, containers) as (catalog, proxy_url):
        progress(f"proxy at {proxy_url} (metrics: {proxy_url}/metrics)\n")
        progress("\n".join(example_commands(catalog, proxy_url, StateDir.from_env())))
        progress("\nCtrl-C (or SIGTERM) stops every process and container started here.")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def example_commands(catalog: Catalog, proxy_url: str, state: StateDir) -> list[str]:
    """Ready-to-paste curl lines: one plain route, and one experiment route with its sticky key."""
    lines = []
    plain = catalog.models[0]
    lines += [f"# {plain.route} -> {plain.name}", _curl(proxy_url + plain.route, _example_body(state, plain.name))]
    for experiment in catalog.experiments[:1]:
        body = _example_body(state, experiment.variants[0].model)
        headers = []
        if experiment.sticky_key and experiment.sticky_key.source == "header":
            headers = ["-H", f"{experiment.sticky_key.key_name}: user-42"]
        elif experiment.sticky_key:
            body = {**body, experiment.sticky_key.key_name: "user-42"}
        lines += [f"# {experiment.route} -> experiment {experiment.name} (see the X-Model-Variant header)",
                  _curl(proxy_url + experiment.route, body, headers)]
    return lines


def _example_body(state: StateDir, model: str) -> dict:
    golden = state.golden(model)
    rows = [row for case in golden for row in case["inputs"] if None not in row.values()]
    return {"inputs": [min(rows, key=lambda row: len(json.dumps(row)))]}


def _curl(url: str, body: dict, headers: list[str] | None = None) -> str:
    return shlex.join(["curl", "-si", "-X", "POST", url, "-H", "Content-Type: application/json", *(headers or []),
                       "-d", json.dumps(body)])
