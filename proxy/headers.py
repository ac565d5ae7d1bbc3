"""Which headers cross the proxy, each way: hop-by-hop headers (and any a `Connection:` value names)
never do; framing, addressing and forwarding headers are the proxy's own to set on the way to the upstream,
and the variant headers on the way back (so neither side can spoof them).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from proxy.forward import UpstreamResponse

HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
     b"proxy-authorization", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
# The proxy sets framing, addressing and forwarding headers itself; `expect` is dropped because the
# body is sent whole; a client-supplied X-Forwarded-Host is dropped, never passed on as if it were ours,
# and so is RFC 7239's `Forwarded`, which carries the same claims (for=, proto=, host=) in one header.
_REQUEST_DROP = HOP_BY_HOP | {b"host", b"content-length", b"expect", b"x-forwarded-for", b"x-forwarded-proto",
                              b"x-forwarded-host", b"forwarded"}
# Variant headers are the proxy's to set: an upstream must not be able to spoof them. The upstream's
# `Server` (its software and version) is not passed on either, as nginx does by default; granian sets its own.
_RESPONSE_DROP = HOP_BY_HOP | {b"content-length", b"x-model-variant", b"x-model-version", b"server"}


@functools.lru_cache(maxsize=256)  # nearly every response says "keep-alive": build that set once
def _drop_set(connection: Optional[bytes], base: frozenset[bytes]) -> frozenset[bytes]:
    """`base` plus the header names a `Connection:` value lists (hop-by-hop too, RFC 9110 §7.6.1)."""
    if connection is None:
        return base
    return base | {token.strip().lower() for token in connection.split(b",")}


def _dropped(name: bytes, drop: frozenset[bytes]) -> bool:
    """`X_Forwarded_For` counts as `X-Forwarded-For`: CGI-style servers (WSGI, PHP, nginx's $http_ variables)
    turn `-` and `_` alike into `_`, so a client could pass the proxy's own headers under the other spelling
    and a WSGI model service would read them as the proxy's (nginx drops every such name by default)."""
    return name in drop or (b"_" in name and name.replace(b"_", b"-") in drop)


def request_header_block(headers: list[tuple[bytes, bytes]], connection: Optional[bytes],
                         client_ip: Optional[bytes], scheme: bytes) -> bytes:
    """Client headers to pass on, already serialised, plus the forwarding headers: the client's
    address appended to any X-Forwarded-For it sent, X-Forwarded-Proto set to the scheme it used.
    Names arrive lower-cased from the server."""
    drop = _drop_set(connection, _REQUEST_DROP)
    lines = [name + b": " + value + b"\r\n" for name, value in headers if not _dropped(name, drop)]
    chain = [value for name, value in headers if name == b"x-forwarded-for"]
    if client_ip is not None:
        chain.append(client_ip)
    if chain:
        lines.append(b"x-forwarded-for: " + b", ".join(chain) + b"\r\n")
    lines.append(b"x-forwarded-proto: " + scheme + b"\r\n")
    return b"".join(lines)


def response_headers(response: "UpstreamResponse") -> list[tuple[bytes, bytes]]:
    drop = _drop_set(response.connection, _RESPONSE_DROP)
    return [(name, value) for name, value in response.headers if not _dropped(name, drop)]
