"""Every response the proxy writes itself is an error with this shape:

    {"error": {"code": "<stable machine code>", "message": "<what happened and what to do>"}}

Messages are written for the developer calling the proxy: they say what was wrong with the
request and what to change. They never name upstream hosts, ports or other routes.
"""

from __future__ import annotations

import json
from typing import Iterable, Optional

ROUTES_HINT = "check the route list in models.yaml (each model is served at POST /<its route path>)"


class ProxyError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers

    def body(self) -> bytes:
        return error_body(self.code, self.message)


RETRY_AFTER = ((b"retry-after", b"1"),)


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode("utf-8")


def _shown(path: str) -> str:
    """Echo at most a readable prefix of a client-supplied path."""
    return path if len(path) <= 120 else path[:120] + "..."


def not_a_route(method: str, path: str) -> ProxyError:
    shown = _shown(path) if path else "(a target without a path)"
    return ProxyError(404, "not_a_model_route", f"{method} {shown} is not a model route; {ROUTES_HINT}")


def method_not_allowed(method: str, path: str) -> ProxyError:
    return ProxyError(
        405, "method_not_allowed",
        f"{path} accepts POST only, not {method}; send the JSON request body with POST",
        headers=((b"allow", b"POST"),),
    )


def body_too_large(limit: int) -> ProxyError:
    return ProxyError(
        413, "body_too_large",
        f"request body is larger than the proxy's limit of {limit} bytes; "
        "send fewer rows per request (the operator can raise PROXY_MAX_BODY_BYTES)",
    )


def body_timeout(seconds: float) -> ProxyError:
    return ProxyError(
        408, "body_timeout",
        f"the request body did not arrive within {seconds:g} s; send the whole body at once "
        "(the operator can raise PROXY_BODY_TIMEOUT_S)",
        headers=((b"connection", b"close"),),
    )


def incomplete_body() -> ProxyError:
    return ProxyError(
        400, "incomplete_body",
        "the request body ended before it was complete, or its chunked framing is invalid; send the whole body, "
        "framed by a Content-Length or by valid chunks",
        headers=((b"connection", b"close"),),
    )


def buffers_full(budget: int, service: Optional[str] = None) -> ProxyError:
    """The worker holds its budget of request and answer bytes (proxy.budget): a passing state of the proxy,
    neither the client's fault nor the model's. Refused while its body arrived, a request's connection is
    closed (the rest of the body is never read); an answer refused is `service`'s."""
    dropped = f" and dropped the answer of {service}" if service else ""
    return ProxyError(
        503, "proxy_overloaded",
        f"the proxy holds its limit of {budget} bytes of requests and answers in flight{dropped}; retry in a moment "
        "(the operator raises PROXY_MAX_BUFFERED_BYTES with the proxy's memory limit, or adds proxy replicas)",
        headers=RETRY_AFTER if service else RETRY_AFTER + ((b"connection", b"close"),),
    )


def unsupported_transfer_coding(codings: str) -> ProxyError:
    """RFC 9112 §6.1: 501 for a coding the server does not understand. The proxy decodes only `chunked`;
    passed on after that, a gzip-coded body would reach the model as if it were plain JSON, and a body
    chunked twice would arrive still chunk-framed."""
    return ProxyError(
        501, "unsupported_transfer_coding",
        f"the request's Transfer-Encoding is {codings!r}; the proxy decodes only 'chunked' (once): send the "
        "body uncompressed, with a Content-Length or as 'Transfer-Encoding: chunked'",
        headers=((b"connection", b"close"),),
    )


def ambiguous_header(name: str, path: str) -> ProxyError:
    return ProxyError(
        400, "ambiguous_header",
        f"the request has more than one {name} header; {path} reads one value from it, so send it exactly once",
    )


def duplicate_host() -> ProxyError:
    return ProxyError(400, "duplicate_host", "the request has more than one Host header; send one (any value: the "
                      "proxy sets the upstream's own)")


def invalid_json(path: str, field: str, detail: str) -> ProxyError:
    return ProxyError(
        400, "invalid_json",
        f"request body is not valid JSON ({detail}); {path} reads the experiment key "
        f"from the JSON field {field!r}, so the body must be a JSON object",
    )


def unknown_variant(header: str, name: str, path: str, known: Iterable[str]) -> ProxyError:
    return ProxyError(
        400, "unknown_variant",
        f"header {header} names variant {name!r}, which {path} does not have; "
        f"use one of: {', '.join(sorted(known))}",
    )


def not_ready() -> ProxyError:
    return ProxyError(503, "not_ready", "the proxy has not loaded a routing table yet; retry in a few seconds")


def still_starting() -> ProxyError:
    return ProxyError(503, "not_ready", "the proxy is still starting (setting the send timeout on its listening "
                                        "socket); retry in a moment")


def upstream_failed(kind: str, path: str, variant: str, timeout: float, limit: int, budget: int) -> ProxyError:
    service = f"the model service behind {path} (variant {variant})"
    if kind == "over_budget":
        return buffers_full(budget, service)
    if kind == "connect":
        return ProxyError(503, "upstream_unavailable",
                          f"{service} is not accepting connections; retry later")
    if kind == "saturated":
        return ProxyError(503, "upstream_overloaded",
                          f"{service} is saturated: every connection to it stayed busy for longer than its latency "
                          "budget (batching.max_latency_ms in models.yaml); retry in a moment (its HPA adds replicas "
                          "as its CPU rises)", RETRY_AFTER)
    if kind == "timeout":
        return ProxyError(504, "upstream_timeout",
                          f"{service} did not answer within {timeout:g} s; retry later or send fewer rows")
    if kind == "local":
        return ProxyError(503, "proxy_overloaded",
                          f"the proxy has no free file descriptor for a connection to {service}; retry later (the "
                          "operator raises the proxy's open-file limit, ulimit -n, or adds proxy replicas)", RETRY_AFTER)
    if kind == "too_large":
        return ProxyError(502, "upstream_response_too_large",
                          f"{service} answered with more than the proxy's limit of {limit} bytes; "
                          "send fewer rows per request (the operator can raise PROXY_MAX_RESPONSE_BYTES)")
    if kind == "protocol":
        return ProxyError(502, "upstream_error",
                          f"{service} answered with a response that is not valid HTTP/1.1; retry the request")
    return ProxyError(502, "upstream_error",
                      f"{service} closed the connection without a complete response; retry the request")
