"""Serve this Bento as ONE process, the way its pod runs it: uvicorn, POST /predict (mf_fast, mf_protocol), probes.

`bentoml serve` runs an arbiter (~80 MiB) beside the worker; in a Kubernetes pod the kubelet already
restarts a failed container, so the arbiter buys nothing there but memory. BentoML's service app is not
loaded either: the pod uses none of it (POST /predict is mf_fast's, the probes are three lines, BentoML
metrics are off), and importing it costs ~19 MiB per process (aiohttp and pyparsing for its CLI proxy,
circus and zmq for its arbiter, its OpenTelemetry middleware: BENCHMARKS.md, "Compiled fast path").
The service class is BentoML's as `bentoml serve` runs it (same constructor, same `answer`). Copied
verbatim into each model's folder by `factory render`.

Usage (from the Bento's src directory): python -m mf_serve [--host 0.0.0.0] [--port 3000]
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any, Callable, Optional

import mf_fast
import mf_http

LOG = logging.getLogger("mf_serve")
PROBES = ("/readyz", "/livez", "/healthz")


class Pod:
    """Everything but a JSON POST /predict: the service instance's lifecycle (ASGI lifespan), the probes,
    and error-shaped answers for paths and methods nothing serves."""

    def __init__(self, create: Callable[[], Any], predict_path: str = "/predict"):
        self.create = create
        self.predict_path = predict_path
        self.instance: Optional[Any] = None

    def answer(self) -> Optional[Callable]:
        """The service's `answer` for mf_fast; None until the instance exists."""
        return None if self.instance is None else self.instance.answer

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            status, code, message = self._route(scope["method"], scope["path"])
            body = b'"ok"' if status == 200 else mf_http.error_body(code, message)
            await mf_fast._answer(send, mf_http.Reply(status, body, await mf_http.after_body(scope, receive)))

    def _route(self, method: str, path: str) -> tuple[int, str, str]:
        if path in PROBES:
            if method not in ("GET", "HEAD"):
                return 405, "method_not_allowed", f"{path} answers GET"
            if path == "/readyz" and self.instance is None:
                return 503, "overloaded", "the model is still loading"
            return 200, "", ""
        if path == self.predict_path:
            if method != "POST":
                return 405, "method_not_allowed", f"{path} answers POST"
            return 415, "unsupported_media_type", f"send the request body as application/json to {path}"
        return 404, "not_found", f"nothing is served at {path}; POST {self.predict_path}"

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.instance = self.create()  # loads the model; before the first connection is accepted
                except Exception as exc:
                    LOG.exception("the model service failed to start")
                    await send({"type": "lifespan.startup.failed", "message": f"{type(exc).__name__}: {exc}"})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


def fast_predict(app: Any, answer: Callable[[], Optional[Callable]]) -> mf_fast.FastPredict:
    """POST /predict in front of `app`, as the pod serves it: the API's own input model, mf_decode's shortcut when
    the signature has one, `answer()` the running service's."""
    import mf_decode
    from service import MAX_BODY_BYTES, MAX_ROWS, RESOLVED, ModelService

    return mf_fast.FastPredict(app, ModelService.apis["predict"].input_spec, answer, max_bytes=MAX_BODY_BYTES,
                               rows_of=mf_decode.decoder(RESOLVED["signature"]["inputs"], MAX_ROWS))


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve this Bento in one process.")
    parser.add_argument("--host", default=os.environ.get("MF_HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("MF_PORT", "3000")))
    args = parser.parse_args()
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

    import uvicorn

    from service import MAX_BODY_BYTES, ModelService

    pod = Pod(ModelService)
    app = fast_predict(mf_http.ErrorShape(pod, max_bytes=MAX_BODY_BYTES), pod.answer)
    uvicorn.run(app, host=args.host, port=args.port, **options(app))


def options(app: mf_fast.FastPredict) -> dict:
    """uvicorn's options for the pod's app, beside host and port."""
    import mf_protocol

    # proxy_headers off: nothing here reads the client's address, and the middleware costs ~3 % of a request.
    # lifespan "on": a model that fails to load stops the server instead of serving without a model.
    # http: uvicorn's httptools protocol, answering POST /predict without an ASGI request (mf_protocol).
    return {"access_log": False, "log_level": "warning", "proxy_headers": False, "lifespan": "on",
            "timeout_graceful_shutdown": 20, "http": mf_protocol.protocol(app)}


if __name__ == "__main__":
    main()
