"""The one-process server's own app (templates/bento/mf_serve.py `Pod`), in process: the service's lifecycle
through ASGI lifespan, the probes, error-shaped answers for what nothing serves, and POST /predict reaching
the service once it exists."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from pod_support import Service, mf_serve, pod_app


def _app(pod: mf_serve.Pod):
    return pod_app(pod, max_bytes=1000)


def _requests(pod: mf_serve.Pod, *requests: tuple) -> list[tuple[int, object]]:
    async def scenario():
        transport = httpx.ASGITransport(app=_app(pod))
        async with httpx.AsyncClient(transport=transport, base_url="http://model") as client:
            answers = [await client.request(method, path, **options) for method, path, options in requests]
        return [(answer.status_code, answer.json()) for answer in answers]

    return asyncio.run(scenario())


def _lifespan(pod: mf_serve.Pod) -> list[dict]:
    """Startup then shutdown through the app as uvicorn drives it; what the app sent back."""
    async def scenario():
        inbox = asyncio.Queue()
        for kind in ("lifespan.startup", "lifespan.shutdown"):
            inbox.put_nowait({"type": kind})
        sent = []

        async def send(message: dict) -> None:
            sent.append(message)

        await _app(pod)({"type": "lifespan"}, inbox.get, send)
        return sent

    return asyncio.run(scenario())


def test_startup_creates_the_service_and_predict_reaches_it() -> None:
    pod = mf_serve.Pod(Service)
    assert _requests(pod, ("GET", "/readyz", {}))[0][0] == 503  # still loading
    assert _lifespan(pod) == [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]
    answers = _requests(pod, ("GET", "/readyz", {}), ("GET", "/livez", {}), ("GET", "/healthz", {}),
                        ("POST", "/predict", {"json": {"inputs": [{"x": 1.5}, {"x": 2}]}}))
    assert answers == [(200, "ok"), (200, "ok"), (200, "ok"), (200, [3.0, 4.0])]


def test_a_service_that_fails_to_start_fails_the_startup_with_its_error() -> None:
    def broken():
        raise RuntimeError("model file missing")

    pod = mf_serve.Pod(broken)
    assert _lifespan(pod) == [{"type": "lifespan.startup.failed", "message": "RuntimeError: model file missing"}]
    assert pod.instance is None and pod.answer() is None


@pytest.mark.parametrize("method, path, options, status, code", [
    ("POST", "/readyz", {}, 405, "method_not_allowed"),
    ("GET", "/predict", {}, 405, "method_not_allowed"),
    ("POST", "/predict", {"content": b"x=1", "headers": {"content-type": "text/plain"}}, 415,
     "unsupported_media_type"),
    ("GET", "/docs", {}, 404, "not_found"),
])
def test_what_nothing_serves_gets_the_error_shape(method: str, path: str, options: dict, status: int,
                                                  code: str) -> None:
    pod = mf_serve.Pod(Service)
    _lifespan(pod)
    (answered, body), = _requests(pod, (method, path, options))
    assert answered == status and body["error"]["code"] == code and body["error"]["message"]
