"""`create_app(settings)`: the proxy as one ASGI application.

The returned callable is the data plane (plain ASGI, see dataplane.py); it hands lifespan
events and the control endpoints below to a small FastAPI app.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from proxy.dataplane import DataPlane
from proxy.errors import error_body, not_ready, still_starting
from proxy.forward import UpstreamClient
from proxy.metrics import ProxyMetrics
from proxy.reload import RouteStore
from proxy.routing import CONTROL_PATHS
from proxy.settings import ProxySettings
from proxy.shadow import ShadowSender
from proxy.sockets import limit_unread_time_once_listening


# HEAD wherever GET is (RFC 9110 §9.3.2): load balancers and uptime checkers probe with it; granian sends no body.
READ_METHODS = ["GET", "HEAD"]


def create_app(settings: ProxySettings) -> DataPlane:
    metrics = ProxyMetrics()
    client = UpstreamClient(settings.max_connections_per_upstream, settings.connect_timeout_s,
                            settings.max_response_bytes, settings.max_buffered_bytes)
    store = RouteStore(settings.routes, metrics, CONTROL_PATHS, on_swap=lambda t: client.retain_only(t.origins))
    shadows = ShadowSender(client, metrics, settings.max_shadow_in_flight, settings.shadow_timeout_s)
    send_timeout_set = asyncio.Event()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        store.reload("startup")
        store.listen_for_sighup(loop)
        limit_unread_time_once_listening(loop, settings.send_timeout_s, send_timeout_set.set)
        watcher = loop.create_task(store.watch(settings.reload_interval_s)) if settings.reload_interval_s else None
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
            store.stop_listening(loop)
            client.close()  # shadow copies still in flight are not waited for: they are only counted

    control = FastAPI(title="Model Factory proxy", summary="Control endpoints; model routes are POST <route path>",
                      lifespan=lifespan)
    _add_control_routes(control, store, metrics, send_timeout_set)
    return DataPlane(settings, store, client, shadows, metrics, control, CONTROL_PATHS)


def create_app_from_env() -> DataPlane:
    """Factory for a server started by name (bench/proxy.py runs the app on uvicorn too); settings come from PROXY_*."""
    return create_app(ProxySettings.from_env())


def _add_control_routes(control: FastAPI, store: RouteStore, metrics: ProxyMetrics,
                        send_timeout_set: asyncio.Event) -> None:
    @control.api_route("/healthz", methods=READ_METHODS)
    async def healthz() -> dict:
        """The process is up and serving (says nothing about routes)."""
        return {"status": "ok"}

    @control.api_route("/readyz", methods=READ_METHODS)
    async def readyz() -> Response:
        """200 once a routing table is loaded and the send timeout is on the listening socket; 503 before."""
        table = store.table
        if table is None or not send_timeout_set.is_set():
            error = not_ready() if table is None else still_starting()
            return Response(error.body(), status_code=error.status, media_type="application/json")
        return JSONResponse({"status": "ready", "routes": len(table.routes)})

    @control.api_route("/metrics", methods=READ_METHODS)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @control.exception_handler(StarletteHTTPException)
    async def http_error(_, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return Response(error_body(code, str(exc.detail)), status_code=exc.status_code,
                        media_type="application/json", headers=exc.headers)
