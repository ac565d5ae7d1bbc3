"""`factory up`: every built model and the proxy on 127.0.0.1, until Ctrl-C stops them all."""

from __future__ import annotations

import contextlib
import json
import shlex
import signal
import sys
from pathlib import Path
from typing import Callable, Iterator

from factory.build import ensure_in_store
from factory.catalog import Catalog
from factory.errors import ServeError
from factory.loader import load_catalog
from factory.routes import routes_yaml
from factory.runtime import runtime_python
from factory.serve import Served, free_port, process_served, served
from factory.state import StateDir

Progress = Callable[[str], None]
ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def running(catalog_path: Path, progress: Progress) -> Iterator[tuple[Catalog, Served]]:
    """Serve every model (as its pod would) and a proxy routing to them; stop all of it on exit."""
    catalog = load_catalog(catalog_path)
    state = StateDir.from_env().activate()
    runtime = runtime_python(state.root)
    logs = state.up_dir()
    logs.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        urls = {}
        for position, model in enumerate(catalog.models, start=1):
            record = state.build_record(model.name)
            if record is None:
                raise ServeError(f"{catalog.where(model.name)}: not built; run `factory build --all` first")
            ensure_in_store(record)
            server = stack.enter_context(served(record.bento_tag, logs / f"{model.name}.log", "single", runtime))
            urls[model.name] = server.url
            progress(f"[{position}/{len(catalog.models)}] {model.name} at {server.url}")
        routes = logs / "routes.yaml"
        routes.write_text(routes_yaml(catalog, catalog_path.name, lambda model: f"{urls[model.name]}/predict"),
                          encoding="utf-8")
        port = free_port()
        command = [sys.executable, "-m", "proxy", "--routes", str(routes), "--host", "127.0.0.1", "--port", str(port)]
        proxy = stack.enter_context(process_served(command, ROOT, logs / "proxy.log", port, "/readyz"))
        yield catalog, proxy


def up_command(catalog_path: Path, progress: Progress) -> None:
    with running(catalog_path, progress) as (catalog, proxy):
        progress(f"proxy at {proxy.url} (metrics: {proxy.url}/metrics)\n")
        progress("\n".join(example_commands(catalog, proxy.url, StateDir.from_env())))
        progress("\nCtrl-C stops every process started here.")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


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
