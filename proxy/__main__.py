"""`python -m proxy --routes build/routes.yaml [--host H] [--port P] [--workers N] ...`

Every flag has a PROXY_<NAME> environment variable; a flag given on the command line wins.
Runs under uvicorn with uvloop: model routes on proxy.server's protocol (or uvicorn's httptools
protocol and the ASGI data plane with --fast-path false), control endpoints on FastAPI.
The routes file is re-read when it changes or on SIGHUP; a bad file keeps the current table.
With --workers N each worker process keeps its own metrics, so /metrics shows the worker that
answered the scrape: prefer one worker per container and more replicas.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

import uvicorn
import yaml
from uvicorn.config import LOGGING_CONFIG

from proxy.app import CONTROL_PATHS, create_app
from proxy.reload import describe_error
from proxy.routing import compile_table, load_route_table
from proxy.server import ProxyProtocol
from proxy.settings import ProxySettings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m proxy", description=__doc__.splitlines()[0])
    for name, field in ProxySettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind = field.annotation if field.annotation in (int, float) else _boolean if field.annotation is bool else str
        default = "required" if field.is_required() else f"default {field.default}"
        help_text = f"{field.description or name.replace('_', ' ')} (env PROXY_{name.upper()}, {default})"
        parser.add_argument(flag, dest=name, type=kind, default=None, help=help_text)
    return parser


def _boolean(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() in ("true", "1", "yes")


def _log_config(level: str) -> dict:
    """uvicorn's own logging config plus the proxy's loggers; applied in every worker process."""
    config = {**LOGGING_CONFIG, "loggers": dict(LOGGING_CONFIG["loggers"])}
    config["loggers"]["proxy"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


def main(argv: Optional[Sequence[str]] = None) -> int:
    flags = vars(_parser().parse_args(argv))
    try:
        settings = ProxySettings.from_env(os.environ, **flags)
        # Fail fast on a bad file at start; later reloads keep the old table instead.
        compile_table(load_route_table(settings.routes), CONTROL_PATHS)
    except (ValueError, OSError, yaml.YAMLError) as exc:  # pydantic's ValidationError is a ValueError
        print(f"proxy: cannot start: {describe_error(exc)}", file=sys.stderr)
        return 2
    # Access logs cost more CPU than forwarding; /metrics counts every request instead.
    options = dict(host=settings.host, port=settings.port, loop="uvloop", lifespan="on", proxy_headers=False,
                   http=ProxyProtocol if settings.fast_path else "httptools",
                   log_level=settings.log_level, log_config=_log_config(settings.log_level), access_log=False,
                   server_header=False, date_header=False, timeout_graceful_shutdown=settings.upstream_timeout_s + 1)
    if settings.workers == 1:
        uvicorn.run(create_app(settings), **options)
    else:
        os.environ.update(settings.to_env())  # uvicorn's worker processes rebuild the app from these
        uvicorn.run("proxy.app:create_app_from_env", factory=True, workers=settings.workers, **options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
