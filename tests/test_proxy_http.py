"""The proxy as clients see it: a real `python -m proxy` in front of real upstream processes."""

from __future__ import annotations

import http.client
import json
import os
from pathlib import Path

import psutil
import pytest

from proxy.split import Split, bucket_for_key
from tests.proxy_support.fixtures import make_proxy, upstreams  # noqa: F401 (pytest fixtures)
from tests.proxy_support.harness import (HOST, Proxy, experiment_route, free_port, plain_route, request, start_proxy,
                                   wait_until, write_routes)

FORCE = "X-Force-Variant"
MAX_BODY = 1024
TIMEOUT = 1.0


@pytest.fixture(scope="module")
def routes_file(upstreams, tmp_path_factory) -> Path:  # noqa: F811
    ups = {name: (u.url, f"v-{name}") for name, u in upstreams.items()}
    ups["dead"] = (f"http://{HOST}:{free_port()}/predict", "v-dead")
    return write_routes(tmp_path_factory.mktemp("routes") / "routes.yaml", ups, [
        plain_route("/models/plain", "a"),
        plain_route("/models/dead", "dead"),
        experiment_route("/models/exp", {"a": 50, "b": 50}, {"source": "header", "name": "X-User"},
                         shadows=("shadow",)),
        experiment_route("/models/field", {"a": 50, "b": 50}, {"source": "field", "name": "user_id"}),
        experiment_route("/models/zero", {"a": 100, "b": 0}),
        experiment_route("/models/to-dead-shadow", {"a": 100}, shadows=("dead",)),
    ])


@pytest.fixture(scope="module")
def proxy(routes_file) -> Proxy:
    started = start_proxy(routes_file, force_variant_header=FORCE, max_body_bytes=MAX_BODY,
                          upstream_timeout_s=TIMEOUT, connect_timeout_s=0.5)
    yield started
    started.process.stop()


def expected_variant(route: str, key: str, weights: dict[str, int]) -> str:
    return Split.from_weights(list(weights.items())).pick(bucket_for_key(route, key))


def test_forwards_body_as_is_and_labels_the_variant(proxy, upstreams):  # noqa: F811
    body = b'{"rows": [{"x": 1.5}], "note": "caf\\u00e9"}'
    reply = proxy.post("/models/plain", body)
    assert reply.status == 200
    echo = reply.json()
    assert echo["upstream"] == "a" and echo["path"] == "/predict"
    assert echo["body"].encode() == body
    assert echo["headers"]["Host"] == f"{HOST}:{upstreams['a'].port}"
    assert reply.headers["x-model-variant"] == "main"
    assert reply.headers["x-model-version"] == "v-a"


def test_sticky_header_assignment_matches_the_stable_hash(proxy):
    seen = set()
    for i in range(60):
        key = f"user-{i}"
        variant = expected_variant("/models/exp", key, {"a": 50, "b": 50})
        for _ in range(2):
            reply = proxy.post("/models/exp", headers={"X-User": key})
            assert reply.status == 200
            assert reply.headers["x-model-variant"] == variant == reply.json()["upstream"]
        seen.add(variant)
    assert seen == {"a", "b"}


def test_sticky_field_assignment_reads_the_json_body(proxy):
    for key in ["u1", "u2", "u3", "u4", "u5", "u6", 42]:
        body = json.dumps({"user_id": key, "rows": []}).encode()
        reply = proxy.post("/models/field", body)
        assert reply.status == 200
        assert reply.headers["x-model-variant"] == expected_variant("/models/field", str(key), {"a": 50, "b": 50})


def test_a_replica_started_later_assigns_the_same_variants(proxy, routes_file, make_proxy):  # noqa: F811
    replica = make_proxy(routes_file)
    for i in range(30):
        headers = {"X-User": f"replica-{i}"}
        assert (proxy.post("/models/exp", headers=headers).headers["x-model-variant"]
                == replica.post("/models/exp", headers=headers).headers["x-model-variant"])


def test_zero_weight_variant_gets_nothing(proxy):
    assert {proxy.post("/models/zero").headers["x-model-variant"] for _ in range(40)} == {"a"}


def test_force_header_picks_the_variant(proxy):
    for variant in ("a", "b"):
        reply = proxy.post("/models/zero", headers={FORCE: variant})
        assert reply.headers["x-model-variant"] == variant == reply.json()["upstream"]


def test_shadow_gets_a_copy_and_the_client_gets_the_primary(proxy, upstreams):  # noqa: F811
    before = upstreams["shadow"].posts()
    reply = proxy.post("/models/exp", b'{"shadowed": true}', headers={"X-User": "s"})
    assert reply.json()["upstream"] in ("a", "b")
    wait_until(lambda: upstreams["shadow"].posts() == before + 1, 5, "the shadow copy")
    wait_until(lambda: proxy.metric("proxy_shadow_requests_total", route="/models/exp", outcome="2xx") >= 1, 5,
               "the shadow outcome metric")


def test_failing_shadow_is_only_counted(proxy):
    reply = proxy.post("/models/to-dead-shadow")
    assert reply.status == 200
    wait_until(lambda: proxy.metric("proxy_shadow_requests_total", route="/models/to-dead-shadow",
                                    upstream="dead", outcome="connect") >= 1, 5, "the failed shadow count")


def test_upstream_5xx_is_passed_through_and_counted(proxy):
    reply = proxy.post("/models/plain", headers={"x-test-behaviour": "status:500"})
    assert reply.status == 500 and reply.json()["upstream"] == "a"
    assert proxy.metric("proxy_upstream_failures_total", route="/models/plain", kind="5xx") >= 1


def test_refused_connection_is_503(proxy):
    reply = proxy.post("/models/dead")
    assert reply.status == 503 and reply.json()["error"]["code"] == "upstream_unavailable"
    assert proxy.metric("proxy_upstream_failures_total", route="/models/dead", kind="connect") >= 1


def test_slow_upstream_is_504_at_the_timeout(proxy):
    reply = proxy.post("/models/plain", headers={"x-test-behaviour": "sleep:3"})
    assert reply.status == 504
    assert reply.json() == {"error": {"code": "upstream_timeout", "message":
                            "the model service behind /models/plain (variant main) did not answer within 1 s; "
                            "retry later or send fewer rows"}}


def test_upstream_dropping_the_connection_is_502(proxy):
    reply = proxy.post("/models/plain", headers={"x-test-behaviour": "close"})
    assert reply.status == 502 and reply.json()["error"]["code"] == "upstream_error"
    assert proxy.post("/models/plain").status == 200


def test_hop_by_hop_headers_are_stripped_both_ways(proxy):
    reply = proxy.post("/models/plain", headers={
        "Connection": "keep-alive, X-Drop-Me", "X-Drop-Me": "1", "Keep-Alive": "timeout=9", "TE": "trailers",
        "Proxy-Authorization": "Basic eA==", "Upgrade": "h2c", "X-Normal": "kept", "x-test-hop": "1"})
    sent = {k.lower() for k in reply.json()["headers"]}
    assert "x-normal" in sent
    assert not sent & {"x-drop-me", "keep-alive", "te", "proxy-authorization", "upgrade"}
    assert reply.headers["x-kept"] == "yes"
    assert not set(reply.headers) & {"keep-alive", "x-secret-hop", "proxy-authenticate"}
    assert reply.headers["x-model-variant"] == "main"  # the upstream's spoofed value is replaced


def test_request_cannot_choose_the_upstream_host(proxy, upstreams):  # noqa: F811
    b = upstreams["b"]
    reply = proxy.post("/models/plain", headers={"Host": f"{HOST}:{b.port}", "X-Forwarded-Host": f"{HOST}:{b.port}"})
    assert reply.json()["upstream"] == "a"
    conn = http.client.HTTPConnection(HOST, proxy.port, timeout=5)
    conn.putrequest("POST", f"http://{HOST}:{b.port}/predict", skip_host=True)
    conn.putheader("Content-Length", "2")
    conn.endheaders(b"{}")
    assert conn.getresponse().status == 404
    conn.close()


def test_control_endpoints(proxy):
    assert request(proxy.port, "GET", "/healthz").json() == {"status": "ok"}
    assert request(proxy.port, "GET", "/readyz").json() == {"status": "ready", "routes": 6}
    assert request(proxy.port, "GET", "/openapi.json").status == 200
    reply = request(proxy.port, "POST", "/healthz")
    assert reply.status == 405 and reply.json()["error"]["code"] == "method_not_allowed"


def test_every_thread_of_the_proxy_runs_under_sched_batch(proxy):
    """granian's HTTP and Python-entry threads start after the policy is set and inherit it (proxy/serve.py)."""
    main = psutil.Process(proxy.process.popen.pid)
    threads = [t.id for p in [main, *main.children(recursive=True)] for t in p.threads()]
    assert len(threads) >= 4  # the server, the worker's event loop, its Rust HTTP thread, its Python-entry thread
    assert {os.sched_getscheduler(tid) for tid in threads} == {os.SCHED_BATCH}


def test_two_force_headers_are_400_not_a_silent_pick(proxy):
    conn = http.client.HTTPConnection(HOST, proxy.port, timeout=5)
    conn.putrequest("POST", "/models/exp")
    for variant in ("a", "b"):
        conn.putheader(FORCE, variant)
    conn.putheader("Content-Length", "2")
    conn.endheaders(b"{}")
    reply = conn.getresponse()
    assert (reply.status, json.loads(reply.read())["error"]) == (400, {
        "code": "ambiguous_header",
        "message": f"the request has more than one {FORCE} header; /models/exp reads one value from it, so send it "
                   "exactly once"})
    conn.close()


def test_metrics_labels_stay_bounded(proxy):
    for i in range(15):
        assert proxy.post(f"/no/such/route/{i}").status == 404
    proxy.post("/models/plain")
    text = proxy.metrics()
    routes = {line.split('route="')[1].split('"')[0] for line in text.splitlines()
              if line.startswith("proxy_requests_total{")}
    assert "unknown" in routes and "/models/plain" in routes
    assert not any(r.startswith("/no/") for r in routes)
    assert proxy.metric("proxy_requests_total", route="unknown", status="404") >= 15
    assert proxy.metric("proxy_request_duration_seconds_count", route="/models/plain", variant="main") >= 1


HINT = "check the route list in models.yaml (each model is served at POST /<its route path>)"
ERROR_TABLE = [
    pytest.param("POST", "/models/field", b'{"user_id": ', {}, 400, "invalid_json",
                 "request body is not valid JSON (Expecting value: line 1 column 13 (char 12)); /models/field "
                 "reads the experiment key from the JSON field 'user_id', so the body must be a JSON object",
                 id="bad-json-with-field-key"),
    pytest.param("POST", "/models/field", b'{"user_id": ' + b"[" * 1000, {}, 400, "invalid_json",
                 "request body is not valid JSON (nested too deeply); /models/field reads the experiment key "
                 "from the JSON field 'user_id', so the body must be a JSON object", id="json-nested-too-deeply"),
    pytest.param("POST", "/models/plain", b"x" * (MAX_BODY + 1), {}, 413, "body_too_large",
                 f"request body is larger than the proxy's limit of {MAX_BODY} bytes; send fewer rows per "
                 "request (the operator can raise PROXY_MAX_BODY_BYTES)", id="too-large-body"),
    pytest.param("POST", "/models/nope", b"{}", {}, 404, "not_a_model_route",
                 f"POST /models/nope is not a model route; {HINT}", id="unknown-route"),
    pytest.param("GET", "/models/plain", None, {}, 405, "method_not_allowed",
                 "/models/plain accepts POST only, not GET; send the JSON request body with POST",
                 id="wrong-method"),
    pytest.param("POST", "/models/exp", b"{}", {FORCE: "c"}, 400, "unknown_variant",
                 f"header {FORCE} names variant 'c', which /models/exp does not have; use one of: a, b",
                 id="unknown-forced-variant"),
]


@pytest.mark.parametrize("method, path, body, headers, status, code, message", ERROR_TABLE)
def test_error_table(proxy, method, path, body, headers, status, code, message):
    reply = request(proxy.port, method, path, body, headers)
    assert (reply.status, reply.json()) == (status, {"error": {"code": code, "message": message}})
    assert reply.headers["content-type"] == "application/json"


def test_streamed_body_over_the_limit_is_413(proxy):
    conn = http.client.HTTPConnection(HOST, proxy.port, timeout=5)
    chunks = iter([b"y" * 600, b"y" * 600])  # no Content-Length: only the byte count can catch it
    conn.request("POST", "/models/plain", body=chunks, encode_chunked=True)
    reply = conn.getresponse()
    assert reply.status == 413 and json.loads(reply.read())["error"]["code"] == "body_too_large"
    conn.close()
