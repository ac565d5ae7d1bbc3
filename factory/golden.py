"""Golden predictions: requests drawn from the signature, answered by the registry's own pyfunc model.

Recorded at build time; the served Bento must later reproduce them (it loads the model natively,
so this is what proves the lean loader equals MLflow's).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Callable

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as fixed_seed

from factory import fuzz, pyfunc_answers
from factory.errors import BuildError
from factory.registry import ResolvedModel
from factory.runtime import bento_module

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


def record_golden(resolved: ResolvedModel, model_dir: Path, batch_size: int, model_venv: Callable[[], Path],
                  where: str, count: int = 12) -> tuple[list[dict], list[str], list]:
    """(cases, errors, non-finite rows): requests the registry's model raised on are left out and described
    instead, rows it answered NaN or infinity for are listed (recorded as null); both are model bugs that
    `factory test` will pin down to a minimal input. `model_venv` makes (once) the venv with the model's own
    requirements, for a model whose library the factory's process lacks."""
    requests = sample_requests(resolved.signature, count, batch_size)
    inputs = resolved.signature["inputs"]
    values = bento_module("mf_inputs")
    try:
        answered = pyfunc_answers.answers(str(model_dir), inputs, requests, values, here=True)
    except pyfunc_answers.MissingLibrary:
        answered = _answers_in(model_venv(), model_dir, inputs, requests, where)
    cases, errors, non_finite = [], [], []
    for request, answer in zip(requests, answered):
        if "error" in answer:
            errors.append(answer["error"])
            continue
        outputs = answer["outputs"]
        non_finite += [row for row, output in zip(request["inputs"], outputs) if not values.all_finite(output)]
        cases.append({**request, "outputs": values.nulled(outputs)})
    return cases, errors, non_finite


def _answers_in(python: Path, model_dir: Path, inputs: list[dict], requests: list[dict], where: str) -> list[dict]:
    job = json.dumps({"model_dir": str(model_dir), "inputs": inputs, "requests": requests})
    try:
        result = subprocess.run([str(python), pyfunc_answers.__file__], input=job, capture_output=True, text=True,
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
