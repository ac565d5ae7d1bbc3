"""ASGI middleware giving every error of a model service one shape, as the proxy's:
`{"error": {"code": ..., "message": ..., "field": ...}}`.

- bodies over `max_bytes` → 413 before they are parsed (after the rest is read and dropped: `refuse_too_large`);
  answers that need no body (mf_serve.Pod's) go out once it is read and dropped too (`after_body`);
- BentoML's validation errors (400) → the JSON path of the first bad field in `field`;
- overload (mf_batch refusing work, `overloaded()`; BentoML's own "process is overloaded") → 503
  `overloaded` with `Retry-After`;
- a 200 whose outputs hold a row failure marker (`mf_runtime.failure`) → 500 for that request alone.
The pod's POST /predict (mf_fast) answers by the same rules with the helpers here, without the wrapping.
Copied verbatim into each model's folder by `factory render`.
"""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple, Optional

FAILURE_MARK = b"__model_factory_failure__"
MARK_KEY = FAILURE_MARK.decode()
RETRY_AFTER_S = "1"
CODES = {400: "invalid_input", 404: "not_found", 405: "method_not_allowed", 413: "body_too_large",
         415: "unsupported_media_type", 422: "invalid_input", 500: "internal", 503: "overloaded"}
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# How much of a body over the limit is read (and dropped) before its 413 goes out; past it the 413 goes out at once
# and the connection closes, so a client cannot keep the server reading. 16 times the 1 MiB limit.
DRAIN_BYTES = 16 << 20
CLOSE = (b"connection", b"close")


def error_body(code: str, message: str, field: Optional[str] = None) -> bytes:
    return json.dumps({"error": {"code": code, "message": message, "field": field}}).encode()


def json_path(loc: list) -> str:
    """pydantic's loc as a JSON path: inputs[3]["surge multiplier"], inputs[0].distance_km."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif IDENTIFIER.fullmatch(str(part)):
            path += f".{part}" if path else str(part)
        else:
            path += f"[{json.dumps(str(part), ensure_ascii=False)}]"
    return path or "$"


class Reply(NamedTuple):
    """A whole answer of the pod's own: status, JSON body, headers beyond content-type and content-length."""

    status: int
    body: bytes
    headers: tuple = ()

    def framed(self) -> list:
        """Every header of the answer: its type and length, then its own."""
        return [(b"content-type", b"application/json"), (b"content-length", str(len(self.body)).encode()),
                *self.headers]


def overloaded(message: str, retry_after_s: int) -> Reply:
    """The 503 a request refused at the door gets: the error shape and when to come back."""
    return Reply(503, error_body("overloaded", message), ((b"retry-after", str(retry_after_s).encode()),))


def response(reply: Reply) -> Any:
    """`reply` as a Starlette response, for BentoML's own API path (`bentoml serve`)."""
    from starlette.responses import Response

    return Response(reply.body, status_code=reply.status, media_type="application/json",
                    headers={name.decode(): value.decode() for name, value in reply.headers})


class ErrorShape:
    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await refuse_too_large(scope, receive, send, self.max_bytes, BodyTooLarge(declared=int(declared)))
            return
        seen = 0
        response = _Response(send)

        async def counting_receive() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BodyTooLarge(seen=seen, more=message.get("more_body", False))
            return message

        try:
            await self.app(scope, counting_receive, response.send)
        except BodyTooLarge as refused:
            if not response.started:
                await refuse_too_large(scope, receive, send, self.max_bytes, refused)

    @staticmethod
    async def _send(send: Any, status: int, body: bytes, headers: Optional[list] = None) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                *(headers or [])]})
        await send({"type": "http.response.body", "body": body})


class _Response:
    """Holds a response's start until its body is known, so status and body can be rewritten together."""

    def __init__(self, send: Any):
        self.downstream = send
        self.start: Optional[dict] = None
        self.chunks: list[bytes] = []
        self.started = False

    async def send(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.start = message
            return
        if message["type"] != "http.response.body" or self.start is None:
            await self.downstream(message)
            return
        self.chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        self.started = True
        status, body = self.start["status"], b"".join(self.chunks)
        rewritten = _rewrite(status, body)
        if rewritten is None:
            await self.downstream(self.start)
            await self.downstream({"type": "http.response.body", "body": body})
            return
        status, body, headers = rewritten
        await ErrorShape._send(self.downstream, status, body, headers)


def _rewrite(status: int, body: bytes) -> Optional[tuple[int, bytes, list]]:
    if status < 400:
        return _row_failure(body) if FAILURE_MARK in body else None
    try:
        detail = json.loads(body)
    except ValueError:
        detail = None
    if isinstance(detail, dict) and isinstance(detail.get("error"), dict):
        return None  # already in shape
    if status == 503:
        return status, error_body("overloaded", "the model server is overloaded; retry after "
                                                f"{RETRY_AFTER_S} s"), [(b"retry-after", RETRY_AFTER_S.encode())]
    if status == 400 and isinstance(detail, dict) and detail.get("detail"):
        return status, _validation(detail["detail"]), []
    message = detail.get("error") if isinstance(detail, dict) and isinstance(detail.get("error"), str) else None
    return status, error_body(CODES.get(status, f"http_{status}"), message or body.decode("utf-8", "replace")[:300]
                              or f"HTTP {status}"), []


# The body itself has the wrong shape (not a per-row problem): say what shape it must have. Clients used to
# `mlflow models serve` send dataframe_split / dataframe_records / instances, which land here.
ENVELOPE_ERRORS = {"missing", "model_type", "model_attributes_type", "dict_type", "list_type", "extra_forbidden",
                   "json_invalid", "json_type"}
ENVELOPE_HINT = ('; send {"inputs": [row, ...]}, one row per prediction (MLflow\'s dataframe_split, '
                 'dataframe_records and instances bodies are not accepted)')


def _validation(errors: list) -> bytes:
    first = errors[0] if isinstance(errors[0], dict) else {}
    loc = list(first.get("loc") or [])
    # The message names the value as `field` does: inputs[3].tokens[2], unambiguous for any key.
    message = f"{json_path(loc)}: {first.get('msg', 'invalid')}" if loc else str(first.get("msg", "invalid request body"))
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problems)"
    if loc in ([], ["inputs"]) and first.get("type") in ENVELOPE_ERRORS:
        message += ENVELOPE_HINT
    return error_body("invalid_input", message, json_path(loc) if loc else None)


def _row_failure(body: bytes) -> Optional[tuple[int, bytes, list]]:
    failed = row_failure(json.loads(body))
    return None if failed is None else (500, failed, [])


def row_failure(outputs: Any) -> Optional[bytes]:
    """The 500 body of the first row holding a failure marker (`mf_runtime.failure`), or None."""
    for index, output in enumerate(outputs if isinstance(outputs, list) else []):
        if isinstance(output, dict) and MARK_KEY in output:
            failed = output[MARK_KEY]
            return error_body(failed["code"], failed["message"], f"inputs[{index}]")
    return None


def too_large(max_bytes: int) -> bytes:
    return error_body("body_too_large", f"request body is larger than {max_bytes} bytes; send fewer rows per request")


async def refuse_too_large(scope: dict, receive: Any, send: Any, max_bytes: int, refused: "BodyTooLarge") -> None:
    """The 413 for a body over `max_bytes`, once the rest of it is read and dropped (`drained`). A body past
    DRAIN_BYTES, or one a client holds back until told to continue (`Expect: 100-continue`), is not read: the 413
    goes out at once and the connection closes."""
    waiting = refused.seen == 0 and _continue_expected(scope)
    left = await drained(receive, refused.seen, refused.declared, refused.more and not waiting)
    await ErrorShape._send(send, 413, too_large(max_bytes), [CLOSE] if left or waiting else None)


async def after_body(scope: dict, receive: Any) -> tuple:
    """The headers an answer that needs no body gets once the body is read and dropped (`drained`): none, or
    `connection: close` when some of it is left unread (past DRAIN_BYTES, or held back for `Expect: 100-continue`)."""
    if _continue_expected(scope):
        return (CLOSE,)
    declared = dict(scope.get("headers") or []).get(b"content-length", b"")
    return (CLOSE,) if await drained(receive, declared=int(declared) if declared.isdigit() else 0) else ()


async def drained(receive: Any, seen: int = 0, declared: int = 0, more: bool = True) -> bool:
    """Reads and drops the rest of a request's body, as nginx's lingering close does: a connection closed with request
    bytes unread is reset by the kernel, and the reset destroys the answer before the client reads it (what every
    client sending `Connection: close` got). Stops past DRAIN_BYTES, declared or read, so a client cannot keep the
    server reading. Whether some of the body is left unread: the answer must then close the connection."""
    while more and max(declared, seen) <= DRAIN_BYTES:
        message = await receive()
        seen += len(message.get("body", b""))
        more = message.get("more_body", False)
    return more


def _continue_expected(scope: dict) -> bool:
    return dict(scope.get("headers") or []).get(b"expect", b"").lower() == b"100-continue"


class BodyTooLarge(Exception):
    """A body over the limit, as far as it was read: its declared length (0: none), the bytes read, and whether
    more are left to read."""

    def __init__(self, declared: int = 0, seen: int = 0, more: bool = True):
        super().__init__(f"request body over the limit: {declared or seen} bytes")
        self.declared, self.seen, self.more = declared, seen, more
