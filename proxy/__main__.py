"""`python -m proxy --routes build/routes.yaml [--host H] [--port P] [--workers N] ...`

Every flag has a PROXY_<NAME> environment variable; a flag given on the command line wins.
Runs on granian (proxy.serve) with uvloop: model routes on the ASGI data plane, control
endpoints on FastAPI. The routes file is re-read when it changes or on SIGHUP; a bad file keeps
the current table. With --workers N, /metrics adds up every worker's samples. On SIGTERM the
proxy stops accepting, lets requests in flight finish for up to --drain-timeout-s, then exits.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from proxy.reload import describe_error
from proxy.routing import load_compiled
from proxy.serve import serve
from proxy.settings import ProxySettings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m proxy", description=__doc__.splitlines()[0])
    for name, field in ProxySettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind = field.annotation if field.annotation in (int, float) else str
        default = "required" if field.is_required() else f"default {field.default}"
        help_text = f"{field.description or name.replace('_', ' ')} (env PROXY_{name.upper()}, {default})"
        parser.add_argument(flag, dest=name, type=kind, default=None, help=help_text)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    flags = vars(_parser().parse_args(argv))
    try:
        settings = ProxySettings.from_env(os.environ, **flags)
        # Fail fast on a bad file at start; later reloads keep the old table instead.
        load_compiled(settings.routes)
    except ValueError as exc:  # pydantic's ValidationError (settings) is one; the table's name its file
        print(f"proxy: cannot start: {describe_error(exc)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="proxy-metrics-") as metrics_dir:
        serve(settings, Path(metrics_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
