"""Attack a served model with requests generated from its own MLflow signature.

Valid requests must get a 200 with one output per row; invalid ones a 4xx naming the bad field, never
a 5xx and never a hang. Hypothesis draws both from a fixed seed and shrinks a failure to the smallest
request that still fails (a hang is kept as found), written to a file so curl can replay it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional, Union

from hypothesis import HealthCheck, Phase, Verbosity, given, settings, strategies as st
from hypothesis import seed as fixed_seed
from hypothesis.errors import Flaky

from factory.errors import ServeError
from factory.exactness import compare
from factory.fuzz_report import (CheckResult, Failure, FuzzResult, RequestRecord, Response, golden_problem,
                                 invalid_problem, minimal_failure, post_predict, strict_json, valid_problem)
from factory.fuzz_requests import (DEFAULT_MAX_BODY_BYTES, TENSOR_DTYPES, Column, as_clients_send,
                                   encode as _encode, invalid_request, invalid_requests_by_kind, signature_columns,
                                   signature_params, unnamed_columns, valid_request, valid_row, within_body_limit)

# The fuzzing API in one place: how requests are drawn lives in factory/fuzz_requests.py.
__all__ = ["TENSOR_DTYPES", "Column", "as_clients_send", "fuzz_service", "invalid_request",
           "invalid_requests_by_kind", "signature_columns", "signature_params", "unnamed_columns", "valid_request",
           "valid_row"]


def fuzz_service(base_url: str, signature: Union[dict, list], max_batch_size: int, *, seed: int,
                 valid_examples: int, invalid_examples: int, golden: Optional[list[dict]] = None,
                 timeout_s: float = 10.0, model: str, report_dir: Union[str, Path],
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, catalog: Optional[str] = None,
                 golden_tolerance: tuple[float, float] = (1e-6, 0.0)) -> FuzzResult:
    """Fuzz POST <base_url>/predict; minimal failing bodies are written to report_dir for replay, and
    the rerun line names `catalog` (the models.yaml the model came from) when given. Golden outputs
    must agree within `golden_tolerance` (rtol, atol; see fuzz_report.golden_problem)."""
    columns, params = signature_columns(signature), signature_params(signature)
    pairs = _golden_pairs(golden)
    run = _Run(base_url.rstrip("/"), timeout_s, model, seed, Path(report_dir).resolve(), catalog)
    checks = [run.valid(columns, max_batch_size, max_body_bytes, valid_examples, params, unnamed_columns(signature)),
              run.invalid(columns, max_batch_size, max_body_bytes, invalid_examples, params),
              run.golden(pairs, *golden_tolerance)]
    return FuzzResult(model=model, base_url=base_url, seed=seed, checks=checks, records=run.records)


class _Failed(AssertionError):
    def __init__(self, **details: Any):  # minimal_failure's keyword arguments
        super().__init__(details["reason"])
        self.details = details


class _Run:
    def __init__(self, base_url: str, timeout_s: float, model: str, seed: int, report_dir: Path,
                 catalog: Optional[str]):
        self.base_url, self.timeout_s, self.model, self.seed = base_url, timeout_s, model, seed
        self.report_dir, self.catalog = report_dir, catalog
        self.records: list[RequestRecord] = []
        self.down: Optional[_Failed] = None  # the request the service stopped answering at, if it did

    def valid(self, columns: list[Column], max_batch_size: int, max_body_bytes: int, examples: int,
              params: list[dict], unnamed: bool = False) -> CheckResult:
        output_kinds: set[str] = set()  # every valid response must keep to the first one's JSON type

        def attempt(drawn: dict) -> None:
            request = within_body_limit(drawn, max_body_bytes)
            self.exchange("valid", _encode(request), None,
                          lambda response: valid_problem(response, len(request["inputs"]), output_kinds))

        strategy = valid_request(columns, max_batch_size, params)
        if unnamed:
            strategy = as_clients_send(strategy, columns)
        return self._check("valid requests", examples > 0, lambda: self._search("valid", strategy, examples, attempt))

    def invalid(self, columns: list[Column], max_batch_size: int, max_body_bytes: int, examples: int,
                params: list[dict]) -> CheckResult:
        def attempt(example: tuple[str, bytes, Optional[str]]) -> None:
            kind, body, field = example
            self.exchange(kind, body, field, lambda response: invalid_problem(response, body, field))

        # Each kind gets its share of the examples, so that a short run still tries every kind.
        by_kind = invalid_requests_by_kind(columns, max_batch_size, max_body_bytes, params)
        share = max(1, examples // len(by_kind))
        failures = (self._search("invalid", strategy, share, attempt) for strategy in by_kind.values())
        return self._check("invalid requests", examples > 0, lambda: next(filter(None, failures), None))

    def golden(self, pairs: Optional[list[tuple[dict, list]]], rtol: float, atol: float) -> CheckResult:
        def attempt(pair: tuple[dict, list]) -> Optional[Failure]:
            request, outputs = pair
            body = _encode(request)

            def problem(response: Response) -> Optional[str]:
                found = golden_problem(response, outputs, rtol, atol)
                return found and self._unsteady(body, response, rtol, atol) or found

            try:
                self.exchange("golden", body, None, problem)
            except _Failed as failed:
                return self._failure("golden", failed)
            return None

        return self._check("golden", pairs is not None, lambda: next(filter(None, map(attempt, pairs)), None))

    def _unsteady(self, body: bytes, first: Response, rtol: float, atol: float) -> Optional[str]:
        """A golden mismatch may be a model that answers the same input differently on every call (sampling, as
        Prophet's intervals do): then no recorded answer can hold, and the fix is in the model. Asking once
        more tells the two apart."""
        try:
            earlier = strict_json(first.body)
        except ValueError:
            return None
        if first.status != 200 or not isinstance(earlier, list):
            return None  # not an answer to compare: the mismatch itself says what it was
        again = post_predict(self.base_url, body, self.timeout_s)
        unusable = valid_problem(again, len(earlier), set())
        self.records.append(RequestRecord("golden", again.status, round(again.latency_ms, 3), not unusable))
        found = None if unusable else compare(earlier, strict_json(again.body), rtol, atol, json_numbers=True)
        if found is None or found.agrees:
            return None
        return (f"the model answered the same request differently twice (output {found.row} was "
                f"{json.dumps(found.expected)}, then {json.dumps(found.actual)}): it is nondeterministic "
                "(it samples at predict time, as Prophet does for yhat_lower/yhat_upper), so no golden prediction "
                "can hold; make its predict deterministic: seed its random generator inside predict (e.g. "
                "np.random.seed(0)), or log it without the sampled outputs (Prophet: uncertainty_samples=0)")

    def exchange(self, kind: str, body: bytes, field: Optional[str],
                 problem_of: Callable[[Response], Optional[str]]) -> None:
        if self.down:  # waiting out a timeout per shrink step could take hours: fail at once instead
            raise _Failed(**self.down.details)
        response = post_predict(self.base_url, body, self.timeout_s)
        problem = problem_of(response)
        self.records.append(RequestRecord(kind, response.status, round(response.latency_ms, 3), problem is None))
        if problem:
            failed = _Failed(kind=kind, field=field, reason=problem, body=body, response=response)
            if response.status is None:
                self.down = failed
            raise failed

    def _check(self, name: str, wanted: bool, find_failure: Callable[[], Optional[Failure]]) -> CheckResult:
        if not wanted or self.down:
            return CheckResult(name, 0, skipped="nothing to send" if not wanted else "the service stopped answering")
        sent_before = len(self.records)
        failure = find_failure()
        return CheckResult(name, len(self.records) - sent_before, failure)

    def _search(self, slug: str, strategy: st.SearchStrategy, examples: int,
                attempt: Callable[[Any], None]) -> Optional[Failure]:
        failures: list[_Failed] = []

        @fixed_seed(self.seed)
        @settings(max_examples=examples, database=None, deadline=None, derandomize=False,
                  phases=(Phase.generate, Phase.shrink), suppress_health_check=list(HealthCheck),
                  report_multiple_bugs=False, print_blob=False, verbosity=Verbosity.quiet)
        @given(strategy)
        def contract_holds(example: Any) -> None:
            try:
                attempt(example)
            except _Failed as failed:
                failures.append(failed)  # hypothesis replays the shrunk example last
                raise

        try:
            contract_holds()
        except (_Failed, Flaky):
            pass
        return self._failure(slug, self.down or failures[-1]) if failures else None

    def _failure(self, slug: str, failed: _Failed) -> Failure:
        return minimal_failure(self.report_dir, self.model, self.seed, self.base_url, slug, catalog=self.catalog,
                               **failed.details)


def _golden_pairs(golden: Optional[list[dict]]) -> Optional[list[tuple[dict, list]]]:
    """(the request, its outputs) per golden case: its rows and, when it was recorded with them, its params."""
    for index, pair in enumerate(golden or []):
        inputs, outputs = (pair.get("inputs"), pair.get("outputs")) if isinstance(pair, dict) else (None, None)
        if not (isinstance(inputs, list) and isinstance(outputs, list) and inputs and len(inputs) == len(outputs)):
            raise ServeError(f"golden example {index} needs non-empty 'inputs' and 'outputs' lists of equal length")
    return None if golden is None else [({key: pair[key] for key in ("inputs", "params") if key in pair}, pair["outputs"])
                                        for pair in golden]
