"""The pod's one-process app (templates/bento/mf_serve.py) in process, around a stand-in service: one double
column `x`, answered doubled, 1..4 rows a request. Importing this puts the Bento templates on sys.path."""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from typing import Any, Iterator

import uvicorn
from pydantic import BaseModel, Field

from factory.runtime import BENTO_TEMPLATES

sys.path.insert(0, str(BENTO_TEMPLATES))
import mf_fast  # noqa: E402
import mf_http  # noqa: E402
import mf_schema  # noqa: E402
import mf_serve  # noqa: E402

ROW = mf_schema.row_model([{"type": "double", "name": "x", "required": True}])


class Inputs(BaseModel):
    inputs: list[ROW] = Field(min_length=1, max_length=4)


class Service:
    async def answer(self, rows: list, params: object = None) -> list:
        return [row["x"] * 2 for row in rows]


def pod_app(pod: mf_serve.Pod, max_bytes: int) -> mf_fast.FastPredict:
    """As mf_serve stacks them: mf_fast's POST /predict in front of ErrorShape around the Pod."""
    return mf_fast.FastPredict(mf_http.ErrorShape(pod, max_bytes=max_bytes), Inputs, pod.answer, max_bytes=max_bytes)


def config(app: Any) -> uvicorn.Config:
    """uvicorn's config for `app` with the pod's options (mf_serve.options), lifespan off: the tests' service exists."""
    return uvicorn.Config(app, **{**mf_serve.options(app), "lifespan": "off"})


@contextlib.contextmanager
def serving(app: Any) -> Iterator[uvicorn.Server]:
    """`app` under uvicorn with the pod's options (mf_serve.options: its protocol, mf_protocol) on a free port of
    127.0.0.1, in a thread; the server's `port` set. Stopped as SIGTERM stops it (graceful shutdown) on exit."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    server = uvicorn.Server(config(app))
    server.port = listener.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield server
    finally:
        server.should_exit = True
        thread.join(30)
