"""What a fuzz run found: the verdict on each response, the records, and the two report files
(JUnit XML for CI, JSON for people).

Both writers are deterministic for a given result (stable order, sorted keys), so a report can be
diffed between runs; the XML is built with xml.etree so every user string is escaped for us.
"""

from __future__ import annotations

import http.client
import json
import math
import re
import shlex
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional
from urllib.parse import urlsplit

from factory import atomic
from factory.exactness import compare

# XML 1.0 cannot carry these characters even escaped, and generated strings contain them.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True)
class RequestRecord:
    kind: str  # "valid", "golden" or an invalid kind such as "non_finite"
    status: Optional[int]  # None: no HTTP answer (timeout or connection failure)
    latency_ms: float
    ok: bool


@dataclass(frozen=True)
class Failure:
    """The smallest request found that breaks the contract, and how to send it again."""

    kind: str
    field: Optional[str]
    reason: str
    status: Optional[int]
    request_excerpt: str
    response_excerpt: str
    body_file: str
    replay_curl: str
    replay_factory: str


@dataclass(frozen=True)
class CheckResult:
    name: str  # "valid requests", "invalid requests" or "golden"
    requests: int
    failure: Optional[Failure] = None
    skipped: Optional[str] = None


@dataclass(frozen=True)
class FuzzResult:
    model: str
    base_url: str
    seed: int
    checks: list[CheckResult]
    records: list[RequestRecord]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> list[Failure]:
        return [check.failure for check in self.checks if check.failure]

    @property
    def requests_fuzzed(self) -> int:
        return len(self.records)

    @property
    def failed_requests(self) -> int:
        return sum(not record.ok for record in self.records)

    def latency_ms(self, percentile: float) -> float:
        """Over every request sent, shrinking included."""
        return nearest_rank([record.latency_ms for record in self.records], percentile)

    def summary(self) -> dict:
        return {
            "passed": self.passed,
            "requests_fuzzed": self.requests_fuzzed,
            "failed_requests": self.failed_requests,
            "latency_p50_ms": round(self.latency_ms(50), 3),
            "latency_p99_ms": round(self.latency_ms(99), 3),
        }


# --- verdicts: why one response breaks the service contract (None when it keeps it) -------------


@dataclass(frozen=True)
class Response:
    status: Optional[int]  # None: no HTTP answer
    body: bytes
    latency_ms: float
    error: str = ""


def valid_problem(response: Response, rows: int, output_kinds: set[str]) -> Optional[str]:
    """Why a valid request's response breaks the contract; output_kinds holds the one JSON type
    established by earlier responses (empty at first)."""
    if response.status != 200:
        return _status_problem(response, "200")
    try:
        outputs = strict_json(response.body)
    except ValueError as exc:
        return f"200 with a body that is not JSON: {exc}"
    if not isinstance(outputs, list) or len(outputs) != rows:
        return f"expected a JSON list of {rows} outputs, got {excerpt(response.body, 200)}"
    # null stands for a non-finite prediction (JSON has no NaN/inf): allowed beside any one type.
    kinds = ({_json_kind(output) for output in outputs} | output_kinds) - {"null"}
    if len(kinds) > 1:
        return f"outputs are not of one JSON type: {', '.join(sorted(kinds))}"
    output_kinds.update(kinds)
    return None


def invalid_problem(response: Response, body: bytes, field: Optional[str]) -> Optional[str]:
    if response.status is None or not 400 <= response.status < 500:
        return _status_problem(response, "a 4xx")
    # A 413 refuses the body unread, and a NaN token may fail parsing before any field is looked at.
    if field is None or response.status == 413 or not parses(body, strict_json):
        return None
    try:
        detail = strict_json(response.body)
    except ValueError:
        return f"{response.status} without a JSON body naming {field!r}"
    # Named as sent, or escaped as a JSON path writes a key (inputs[0]["\u001f"]).
    spellings = {field, json.dumps(field, ensure_ascii=False)[1:-1]}
    if not any(name in text for name in spellings for text in _strings(detail)):
        return f"{response.status} body does not name the field {field!r}"
    return None


def golden_problem(response: Response, expected: list, rtol: float = 1e-6, atol: float = 0.0) -> Optional[str]:
    """The served outputs against the golden ones, compared as `factory build` compares a compiled form
    (factory/exactness.py): 1e-90 against 0 beside a 1.0 is no difference; integers must be equal."""
    problem = valid_problem(response, len(expected), set())
    if problem:
        return problem
    served = strict_json(response.body)
    found = compare(expected, served, rtol, atol, json_numbers=True)
    if found.agrees:
        return None
    return f"output {found.row} is {json.dumps(found.actual)}, golden {json.dumps(found.expected)}"


def _status_problem(response: Response, wanted: str) -> str:
    return response.error if response.status is None else f"expected {wanted}, got {response.status}"


def _json_kind(value: Any) -> str:
    kinds = ((bool, "boolean"), ((int, float), "number"), (str, "string"), (list, "list"), (dict, "object"))
    return next((name for types, name in kinds if isinstance(value, types)), "null")


def strict_json(data: bytes) -> Any:
    def refuse(token: str) -> None:
        raise ValueError(f"{token} is not JSON")

    return json.loads(data, parse_constant=refuse)


def parses(body: bytes, parse: Callable[[bytes], Any]) -> bool:
    try:
        parse(body)
    except ValueError:
        return False
    return True


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def excerpt(data: bytes, limit: int = 2000) -> str:
    text = data.decode("utf-8", "backslashreplace")
    return text if len(text) <= limit else f"{text[:limit]}... ({len(data)} bytes in all)"


def nearest_rank(values: list[float], percentile: float) -> float:
    """The nearest-rank percentile of `values`; 0 when there are none."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(percentile / 100 * len(ordered)) - 1)] if ordered else 0.0


def minimal_failure(report_dir: Path, model: str, seed: int, base_url: str, slug: str, *, kind: str,
                    field: Optional[str], reason: str, body: bytes, response: Response,
                    catalog: Optional[str] = None) -> Failure:
    """Writes the minimal failing body into report_dir: the replay lines name that file, so no body
    text ever lands in a shell line."""
    body_file = report_dir / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', model)}.{slug}.minimal.json"
    atomic.write_file(body_file, body, atomic.IN_STATE)
    curl = ["curl", "-sS", "-X", "POST", f"{base_url}/predict", "-H", "Content-Type: application/json",
            "--data-binary", f"@{body_file}"]
    return Failure(kind=kind, field=field, reason=reason, status=response.status, request_excerpt=excerpt(body),
                   response_excerpt=excerpt(response.body), body_file=str(body_file), replay_curl=shlex.join(curl),
                   replay_factory=shlex.join(["factory", "test", *(["-f", catalog] if catalog else []), model,
                                              "--seed", str(seed)]))


# --- report files -------------------------------------------------------------------------------


def json_text(result: FuzzResult) -> str:
    document = {**asdict(result), **result.summary()}
    return json.dumps(document, sort_keys=True, indent=2) + "\n"


def junit_text(results: list[FuzzResult]) -> bytes:
    """One testsuite per model; one testcase per check, failing with the minimal request and its replay."""
    root = _element(None, "testsuites", name="factory fuzz", tests=sum(len(r.checks) for r in results),
                    failures=sum(len(r.failures) for r in results))
    for result in results:
        suite = _element(root, "testsuite", name=result.model, tests=len(result.checks),
                         failures=len(result.failures), errors=0,
                         skipped=sum(check.skipped is not None for check in result.checks))
        properties = _element(suite, "properties")
        for name, value in {"base_url": result.base_url, "seed": result.seed, **result.summary()}.items():
            _element(properties, "property", name=name, value=value)
        for check in result.checks:
            case = _element(suite, "testcase", classname=f"fuzz.{result.model}", name=check.name)
            if check.skipped is not None:
                _element(case, "skipped", message=check.skipped)
            elif check.failure:
                _element(case, "failure", _failure_text(check.failure), message=check.failure.reason,
                         type=check.failure.kind)
    return _xml(root)


def junit_error_text(model: str, error: str) -> bytes:
    """The JUnit of a model that never answered: one errored testcase saying why."""
    root = _element(None, "testsuites", name="factory fuzz", tests=1, failures=0, errors=1)
    suite = _element(root, "testsuite", name=model, tests=1, failures=0, errors=1, skipped=0)
    case = _element(suite, "testcase", classname=f"fuzz.{model}", name="serve")
    _element(case, "error", error, message=error.splitlines()[0] if error else "", type="not served")
    return _xml(root)


def _xml(root: ET.Element) -> bytes:
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _failure_text(failure: Failure) -> str:
    return "\n".join([
        f"kind: {failure.kind}",
        f"field: {failure.field if failure.field is not None else '-'}",
        f"status: {failure.status if failure.status is not None else 'no response'}",
        f"minimal request ({failure.body_file}):",
        failure.request_excerpt,
        "response:",
        failure.response_excerpt,
        "replay:",
        failure.replay_curl,
        failure.replay_factory,
    ])


def _element(parent: Optional[ET.Element], tag: str, text: Optional[str] = None, **attributes: object) -> ET.Element:
    safe = {key: _xml_safe(str(value)) for key, value in attributes.items()}
    element = ET.Element(tag, safe) if parent is None else ET.SubElement(parent, tag, safe)
    if text is not None:
        element.text = _xml_safe(text)
    return element


def _xml_safe(text: str) -> str:
    return _NOT_XML.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def post_predict(base_url: str, body: bytes, timeout_s: float) -> Response:
    """One POST on a fresh connection, so one broken exchange cannot leak into the next."""
    url = urlsplit(base_url)
    connection_type = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    connection = connection_type(url.hostname, url.port, timeout=timeout_s)
    started = time.perf_counter()
    try:
        connection.request("POST", f"{url.path}/predict", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return Response(response.status, response.read(), (time.perf_counter() - started) * 1000)
    except (OSError, http.client.HTTPException) as exc:
        error = f"no response within {timeout_s} s" if isinstance(exc, TimeoutError) else f"connection failed: {exc!r}"
        return Response(None, b"", (time.perf_counter() - started) * 1000, error)
    finally:
        connection.close()
