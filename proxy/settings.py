"""Proxy settings: defaults < environment (PROXY_<FIELD>) < command-line flags."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Literal, Mapping, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from proxy.routing import HeaderName

ENV_PREFIX = "PROXY_"


def _ip_address(host: str) -> str:
    """granian binds IP addresses only: anything else failed inside it, with a traceback."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address, such as 127.0.0.1, 0.0.0.0 or ::") from None
    return host


class ProxySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    routes: Path = Field(description="routes.yaml written by `factory render`")
    host: Annotated[str, AfterValidator(_ip_address)] = Field("127.0.0.1", description="the IP address to listen on")
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    upstream_timeout_s: float = Field(10.0, gt=0, description="whole upstream exchange; over it → 504")
    connect_timeout_s: float = Field(1.0, gt=0, description="opening one upstream connection; over it → 503")
    max_body_bytes: int = Field(1_048_576, ge=0, description="larger request bodies → 413")
    max_connections_per_upstream: int = Field(256, ge=1)
    max_client_connections: int = Field(
        4096, ge=16, le=1_000_000, description="open client connections per worker; more wait unaccepted in the "
        "listen backlog (granian's backpressure, whose default of 1024 let 1,100 idle connections lock new clients "
        "out until the header timeout; each idle connection costs ~2.3 KB)")
    shadow_timeout_s: float = Field(5.0, gt=0)
    max_shadow_in_flight: int = Field(64, ge=0, description="shadow copies over this are dropped and counted")
    force_variant_header: Optional[HeaderName] = Field(
        None, description="header that lets QA force a variant; unset (off) in production")
    max_header_bytes: int = Field(16_384, ge=8_192, description="request line plus header section (at most 100 "
                                  "header fields, fixed by the server); larger → 431")
    header_timeout_s: float = Field(10.0, ge=0.001, le=60, description="reading a request's header section, also "
                                    "on an idle keep-alive connection; over it the connection is closed")
    body_timeout_s: float = Field(10.0, gt=0, description="reading a whole request body; over it → 408 and close")
    send_timeout_s: float = Field(30.0, ge=0.001, le=3600, description="a client that takes none of an answer's "
                                  "bytes for this long is disconnected (TCP_USER_TIMEOUT; nginx: send_timeout)")
    max_response_bytes: int = Field(16_777_216, ge=0, description="larger upstream responses → 502")
    max_buffered_bytes: int = Field(
        33_554_432, ge=0, description="request and answer bytes one worker holds at once; the request or answer that "
        "would cross it → 503 proxy_overloaded (bytes live ~3-4 times over on their way through: the Deployment's "
        "384 Mi hold the default with one worker, with room: its peak measured 210-255 MiB)")
    drain_timeout_s: int = Field(20, ge=1, le=1800, description="on SIGTERM, time in-flight requests get to finish "
                                 "before the proxy exits (the Deployment's grace period covers it)")
    reload_interval_s: float = Field(1.0, ge=0, description="routes file mtime poll; 0 = reload on SIGHUP only")
    cpu_scheduling: Literal["batch", "normal"] = Field(
        "batch", description="Linux scheduling policy of the proxy's threads; batch: a thread woken by another does "
        "not preempt it (README, \"The proxy\")")

    @field_validator("max_buffered_bytes")
    @classmethod
    def _one_answer_fits(cls, value: int, info: ValidationInfo) -> int:
        largest = info.data.get("max_response_bytes", 0)
        if value < largest:
            raise ValueError(f"{value} is below max_response_bytes ({largest}): an answer the size limit allows could "
                             "never be held; raise this or lower max_response_bytes")
        return value

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **flags: object) -> "ProxySettings":
        """Flags given as None fall back to the environment, then to the defaults."""
        values: dict[str, object] = {}
        for name in cls.model_fields:
            raw = environ.get(ENV_PREFIX + name.upper(), "")
            if raw != "":
                values[name] = raw
        values.update({name: value for name, value in flags.items() if value is not None})
        return cls.model_validate(values)

    def to_env(self) -> dict[str, str]:
        """The same settings as PROXY_* environment variables, for `create_app_from_env` in another process."""
        return {ENV_PREFIX + name.upper(): str(value) for name, value in self.model_dump().items() if value is not None}
