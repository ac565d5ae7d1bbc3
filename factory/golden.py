"""Golden predictions: requests drawn from the signature, answered by the registry's own pyfunc model.

Recorded at build time; the served Bento must later reproduce them (it loads the model natively,
so this is what proves the lean loader equals MLflow's).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as fixed_seed

from factory import fuzz, pyfunc_answers
from factory.errors import BuildError
from factory.registry import ResolvedModel
from factory.runtime import bento_module, interpreter_environment
from factory.state import write_atomic

ANSWER_TIMEOUT_S = 600


def sample_requests(signature: dict, count: int, batch_size: int, seed: int = 0) -> list[dict]:
    """`count` valid request bodies, the same ones for the same signature and seed."""
    strategy = fuzz.valid_request(fuzz.signature_columns(signature), batch_size, fuzz.signature_params(signature))
    drawn: list[dict] = []

    @fixed_seed(seed)
    @settings(max_examples=count, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(request: dict) -> None:
        drawn.append(request)

    collect()
    return drawn[:count]


@dataclass(frozen=True)
class Golden:
    """Requests the registry's model raised on are left out and described in `errors`; rows it answered NaN or
    infinity for are listed in `non_finite` (recorded as null); both are model bugs that `factory test` will pin
    down to a minimal input. `one_row_only`: it answered no request of several rows, though their rows answer one
    by one (a statsmodels time-series model), so merged requests fail. `miscounted`: it answered another number
    of outputs than rows (an sklearn text pipeline handed MLflow's DataFrame vectorizes its column names)."""

    cases: list[dict]
    errors: list[str]
    non_finite: list
    one_row_only: bool
    miscounted: bool


def record_golden(resolved: ResolvedModel, model_dir: Path, batch_size: int, model_venv: Callable[[], Path],
                  where: str, count: int = 12, here: bool = True) -> Golden:
    """The registry model's answers to sampled requests. `model_venv` makes (once) the venv with the model's own
    requirements, for a model whose library the factory's process lacks, or (`here` false) whose library
    versions differ from the factory's."""
    requests = sample_requests(resolved.signature, count, batch_size)
    inputs, feeds = resolved.signature["inputs"], resolved.flavor.get("feeds")
    values = bento_module("mf_inputs")
    venv: list[Path] = []

    def ask(asked: list[dict]) -> list[dict]:
        answered = _answers_here(resolved, model_dir, inputs, asked, where) if here and not venv else None
        if answered is None:
            if not venv:
                venv.append(model_venv())  # made once: a second question goes to the same venv
            answered = _answers_in(venv[0], model_dir, inputs, asked, where, feeds)
        return answered

    answered = ask(requests)
    cases, errors, non_finite, failed = [], [], [], []
    for request, answer in zip(requests, answered):
        if "error" in answer:
            errors.append(answer["error"])
            failed.append(request)
            continue
        outputs = answer["outputs"]
        non_finite += [row for row, output in zip(request["inputs"], outputs) if not values.all_finite(output)]
        cases.append({**request, "outputs": values.nulled(outputs)})
    return Golden(cases, errors, non_finite, _one_row_only(cases, failed, ask),
                  any(answer.get("miscounted") for answer in answered))


# The registry model's answers to requests ({"inputs": rows}): {"outputs": [...]} or {"error": ...} each.
Answer = Callable[[list[dict]], list[dict]]


def answerer(model_dir: Path, inputs: list[dict], feeds: Optional[list] = None) -> Answer:
    """The registry model's answers in the factory's process, to more requests than the golden ones (the rows a
    compiled form is probed on, compiled.decide); a model this process cannot load answers none of them. `feeds`:
    the flavor's, if any (pyfunc_answers.answers)."""
    def answer(requests: list[dict]) -> list[dict]:
        try:
            return pyfunc_answers.answers(str(model_dir), inputs, requests, bento_module("mf_inputs"), here=True,
                                          feeds=feeds)
        except pyfunc_answers.MissingLibrary as exc:
            return [{"error": str(exc)} for _ in requests]
    return answer


def extend(path: Path, cases: list[dict], answered: Sequence[tuple[Any, Any]], batch_size: int) -> list[dict]:
    """Rewrite golden.json with `answered` (row, registry output) pairs added as requests of `batch_size` rows."""
    pairs = list(answered)
    cases = cases + [{"inputs": [row for row, _ in pairs[start:start + batch_size]],
                      "outputs": [output for _, output in pairs[start:start + batch_size]]}
                     for start in range(0, len(pairs), batch_size)]
    write(path, cases)
    return cases


def write(path: Path, cases: list[dict]) -> None:
    write_atomic(path, json.dumps(cases, indent=1, sort_keys=True) + "\n")


def _one_row_only(cases: list[dict], failed: list[dict], ask: Callable[[list[dict]], list[dict]]) -> bool:
    """No request of several rows was answered, and the rows of one that failed each answer alone: merging them
    is what fails (a model raising on some values fails alone too, on those)."""
    several = [request for request in failed if len(request["inputs"]) > 1]
    if not several or any(len(case["inputs"]) > 1 for case in cases):
        return False
    answered = ask([{**request, "inputs": [row]} for request in several for row in request["inputs"]])
    start = 0
    for request in several:
        end = start + len(request["inputs"])
        if all("outputs" in answer for answer in answered[start:end]):
            return True
        start = end
    return False


def _answers_here(resolved: ResolvedModel, model_dir: Path, inputs: list[dict], requests: list[dict],
                  where: str) -> list[dict] | None:
    """The answers in the factory's process; None when it lacks a library the model imports."""
    try:
        return pyfunc_answers.answers(str(model_dir), inputs, requests, bento_module("mf_inputs"), here=True,
                                      feeds=resolved.flavor.get("feeds"))
    except pyfunc_answers.MissingLibrary:
        return None
    except Exception as exc:  # MLflow refusing the model as it loads it: `mlflow models serve` could not serve it
        raise BuildError(f"{where}: mlflow.pyfunc cannot load {resolved.model_uri} ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:300]}), so neither `mlflow models serve` nor the factory can "
                         "serve it; fix the model as that error says and register a new version") from exc


def _answers_in(python: Path, model_dir: Path, inputs: list[dict], requests: list[dict], where: str,
                feeds: Optional[list]) -> list[dict]:
    job = json.dumps({"model_dir": str(model_dir), "inputs": inputs, "requests": requests, "feeds": feeds})
    try:
        result = subprocess.run([str(python), pyfunc_answers.__file__], input=job, capture_output=True, text=True,
                                env=interpreter_environment(python),
                                timeout=ANSWER_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"{where}: the registry model did not answer {len(requests)} sample requests within "
                         f"{ANSWER_TIMEOUT_S} s in {python.parent.parent}") from exc
    if result.returncode != 0:
        raise BuildError(script_failure(result.stderr, result.returncode, python.parent.parent, where))
    return json.loads(result.stdout)


# What failed, by the last step the golden script announced (pyfunc_answers.STEP_MARK), and how to fix it.
FAILED_STEP = {
    "start": "the golden script did not start in a venv with the model's own requirements ({venv}; {ended}): {error}; "
             "recreate that venv (delete it) and check serving.packages in models.yaml for a package that breaks it",
    "load": "mlflow.pyfunc could not load the registry model even in a venv with its own requirements ({venv}; "
            "{ended}): {error}; check the requirements it was logged with (pip_requirements / code_paths) or add "
            "what it needs to serving.packages in models.yaml",
    "predict": "the registry model loaded in a venv with its own requirements ({venv}), but its predict ended the "
               "process while answering the sample requests ({ended}): {error}; a served model would end the same "
               "way: run mlflow.pyfunc.load_model(...).predict on a sample row in that venv to see why",
    "encode": "the registry model answered the sample requests in a venv with its own requirements ({venv}), but "
              "its answers could not be written as JSON ({ended}): {error}; the model returns a type the factory "
              "does not convert: have predict return numbers, strings, booleans or datetimes",
}


def script_failure(stderr: str, returncode: int, venv: Path, where: str) -> str:
    """One line: the step the script was in when it ended, and the last line the model's own code wrote."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    steps = [line[len(pyfunc_answers.STEP_MARK):] for line in lines if line.startswith(pyfunc_answers.STEP_MARK)]
    own = [line for line in lines if not line.startswith(pyfunc_answers.STEP_MARK)] or ["(no output)"]
    ended = f"killed by signal {-returncode}" if returncode < 0 else f"exit {returncode}"
    step = steps[-1] if steps else "start"
    return f"{where}: " + FAILED_STEP[step].format(venv=venv, ended=ended, error=own[-1][:300])
