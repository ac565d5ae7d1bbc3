"""`factory up`: every built model and the proxy on 127.0.0.1, until Ctrl-C stops them all."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

from factory import manifests
from factory.bento_store import ensure_in_store
from factory.catalog import Catalog
from factory.errors import FactoryError, ServeError
from factory.images import proxy_image_ref
from factory.loader import load_catalog
from factory.routes import routes_yaml
from factory.runtime import bento_python
from factory.serve import container_served, free_port, process_served, served, stop_on_sigterm
from factory.state import StateDir, write_atomic

Progress = Callable[[str], None]
ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def running(catalog_path: Path, progress: Progress, containers: bool = False) -> Iterator[tuple[Catalog, str]]:
    """Serve every model (as its pod would) and a proxy routing to them; stop all of it on exit.

    `containers`: each model's pushed image and the proxy image, under their manifests' memory limits
    (the seeds' docker-compose); otherwise processes in each model's lean runtime venv. Either way on
    127.0.0.1 only.
    """
    catalog = load_catalog(catalog_path)
    state = StateDir.from_env().activate()
    logs = state.up_dir()
    logs.mkdir(parents=True, exist_ok=True)
    serve_model = _model_container if containers else _model_process
    with contextlib.ExitStack() as stack:
        urls, failed = {}, {}
        for position, model in enumerate(catalog.models, start=1):
            # A model that does not start is listed; the others are served all the same.
            try:
                urls[model.name] = stack.enter_context(serve_model(catalog, model.name, state, logs))
                progress(f"[{position}/{len(catalog.models)}] {model.name} at {urls[model.name]}")
            except FactoryError as exc:
                failed[model.name] = str(exc)
                progress(f"[{position}/{len(catalog.models)}] {model.name} did not start: {exc}")
        if not urls:
            raise ServeError("no model started; see the causes above")
        routes = logs / "routes.yaml"
        # A route of a model that did not start points at a closed port: the proxy answers 503 there.
        write_atomic(routes, routes_yaml(catalog, catalog_path.name,
                                         lambda model: f"{urls.get(model.name, 'http://127.0.0.1:9')}/predict"))
        if failed:
            progress(f"not serving ({len(failed)}): {', '.join(sorted(failed))}")
        proxy = _proxy_container(state, routes, logs) if containers else _proxy_process(routes, logs)
        yield catalog, stack.enter_context(proxy)


def _built(catalog: Catalog, name: str, state: StateDir):
    record = state.build_record(name)
    if record is None:
        raise ServeError(f"{catalog.where(name)}: not built; run `factory build {name}` first")
    return record


@contextlib.contextmanager
def _model_process(catalog: Catalog, name: str, state: StateDir, logs: Path,
                   port: int | None = None) -> Iterator[str]:
    record = _built(catalog, name, state)
    ensure_in_store(record)
    with served(record.bento_tag, logs / f"{name}.log", "single", bento_python(state, name), port=port) as server:
        yield server.url


@contextlib.contextmanager
def _model_container(catalog: Catalog, name: str, state: StateDir, logs: Path) -> Iterator[str]:
    record = _built(catalog, name, state)
    if not record.image_built:
        raise ServeError(f"{catalog.where(name)}: no pushed image for {name}; run "
                         f"`factory build {name}` where a Docker engine answers")
    model = next(model for model in catalog.models if model.name == name)
    limit = manifests.sizing_for(model, manifests.measured_peak(state, name)).memory_limit
    with container_served(record.image_ref, logs / f"{name}.log", limit) as server:
        yield server.url


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
    with container_served(image, logs / "proxy.log", manifests.PROXY_MEMORY_LIMIT, command, volumes) as proxy:
        yield proxy.url


def serve_command(catalog_path: Path, name: str, port: int | None, progress: Progress) -> None:
    """One built model, as its pod runs it, until Ctrl-C: where a failure printed by `factory test` replays."""
    catalog = load_catalog(catalog_path)
    if name not in {model.name for model in catalog.models}:
        raise ServeError(f"not in {catalog_path}: {name}; run `factory routes` to list the models")
    state = StateDir.from_env().activate()
    stop_on_sigterm()
    log = state.serve_dir() / f"{name}.log"
    with _model_process(catalog, name, state, state.serve_dir(), port) as url:
        progress(f"{name} at {url}/predict (serve log: {log}); Ctrl-C or `kill {os.getpid()}` stops it")
        _wait_for_stop()


def _wait_for_stop() -> None:
    with contextlib.suppress(KeyboardInterrupt):
        signal.pause()


def up_command(catalog_path: Path, progress: Progress, containers: bool = False) -> None:
    stop_on_sigterm()
    with running(catalog_path, progress, containers) as (catalog, proxy_url):
        progress(f"proxy at {proxy_url} (metrics: {proxy_url}/metrics)\n")
        progress("\n".join(example_commands(catalog, proxy_url, StateDir.from_env())))
        progress("\nCtrl-C (or SIGTERM) stops every process and container started here.")
        _wait_for_stop()


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
    """The shortest golden row, one with every value present where there is one: a row of columns (an object, or a
    list or the value itself for unnamed columns) or a tensor's row (a list), as the model's golden.json holds it."""
    rows = [row for case in state.golden(model) for row in case["inputs"]]
    complete = [row for row in rows if not _missing_value(row)]
    return {"inputs": [min(complete or rows, key=lambda row: len(json.dumps(row)))] if rows else []}


def _missing_value(row: Any) -> bool:
    values = row.values() if isinstance(row, dict) else row if isinstance(row, list) else [row]
    return any(value is None for value in values)


def _curl(url: str, body: dict, headers: list[str] | None = None) -> str:
    return shlex.join(["curl", "-si", "-X", "POST", url, "-H", "Content-Type: application/json", *(headers or []),
                       "-d", json.dumps(body)])
