"""The registry model's own answers to request rows, through `mlflow.pyfunc`: what golden predictions are.

Run in the factory's process when its venv can load the model (scikit-learn, LightGBM, XGBoost and
plain `PythonModel`s), else as a script in a venv holding the model's own requirements: a statsmodels,
Prophet or CatBoost model needs its library, which the factory does not carry. Either way the batch is
the very frame the served Bento builds (templates/bento/mf_inputs.py). Run as a script it imports only
mlflow, numpy and that module, reads a job as JSON on stdin and writes the answers as JSON on stdout.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

BENTO_TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "bento"
# Run as a script, each step is announced on stderr before it starts: when the process dies (an exception, an
# exit() in the model's library, a signal), the last announced step is the one that failed.
STEP_MARK = "model-factory golden step: "


class MissingLibrary(Exception):
    """This process lacks a library the model imports: ask a venv with the model's requirements instead."""


def answers(model_dir: str, inputs: list[dict], requests: list[dict], mf_inputs: Any, here: bool,
            step: Callable[[str], None] = lambda name: None, feeds: Optional[list] = None) -> list[dict]:
    """One `{"outputs": [...]}` or `{"error": "Type: message"}` per request (`{"inputs": rows}`, maybe with
    `"params"`, passed on as the served model passes them). `here`: in the factory's own
    process, where an ImportError means a library missing from it (MissingLibrary), not a model failure.
    `step` hears "load" and "predict" as each begins. `feeds`: the flavor's layout of one-column tensors the model
    takes (factory/tensor_columns.py), if any."""
    step("load")
    import mlflow.pyfunc

    _errors_only_from_onnxruntime(model_dir)
    try:
        model = mlflow.pyfunc.load_model(model_dir)
    except ImportError as exc:
        _missing_here(exc, here)
        raise  # in the model's own venv: the script fails, and the build says why
    step("predict")
    found = []
    for request in requests:
        rows, params = request["inputs"], request.get("params")
        try:
            with warnings.catch_warnings():
                # pyfunc hands sklearn a DataFrame; a model fit on plain arrays warns about names, harmlessly. Golden
                # and probe rows hold what a model meets rarely, on purpose: categories no encoder knows (an encoder
                # ignoring them warned on each, 26 lines in one build of two models), numbers across ±1e12 that
                # numpy's arithmetic overflows on or takes the log of below zero.
                warnings.filterwarnings("ignore", message="X has feature names")
                warnings.filterwarnings("ignore", message="Found unknown categories")
                warnings.filterwarnings("ignore", category=RuntimeWarning)
                batch = (mf_inputs.feeds(rows, inputs, feeds) if feeds else mf_inputs.tensor(rows, inputs)
                         if mf_inputs.is_tensor(inputs) else mf_inputs.frame(rows, inputs))
                outputs = mf_inputs.as_outputs(model.predict(batch, params=params))
            if not isinstance(outputs, list) or len(outputs) != len(rows):
                # Worded as the pod says it (mf_runtime); a text pipeline handed a DataFrame vectorizes its columns.
                count = len(outputs) if isinstance(outputs, list) else "one value, not a list of"
                found.append({"error": f"ValueError: the model returned {count} outputs for {len(rows)} rows",
                              "miscounted": True})
                continue
            found.append({"outputs": outputs})
        except ImportError as exc:  # a library imported lazily, at predict time
            _missing_here(exc, here)
            found.append({"error": _summary(exc)})
        except Exception as exc:  # the registry model's own failure, whatever its type
            found.append({"error": _summary(exc)})
    return found


def _errors_only_from_onnxruntime(model_dir: str) -> None:
    """An mlflow.onnx graph declaring a fixed output shape (onnxmltools' LightGBM label: [1]) has onnxruntime warn on
    every run, 13 lines in the build of one model; the session MLflow opens takes the process's default severity.
    And mlflow.onnx logs CUDA first among a model's providers by default, so its every load on a CPU warns that
    CUDA is missing: these answers are computed on the CPU, as the compiled form's are."""
    from mlflow.models import Model

    if "onnx" not in Model.load(model_dir).flavors:
        return
    logging.getLogger("mlflow.onnx").setLevel(logging.ERROR)
    try:
        import onnxruntime
    except ImportError:  # the load that follows fails, saying so
        return
    onnxruntime.set_default_logger_severity(3)


def _missing_here(exc: ImportError, here: bool) -> None:
    if here:
        raise MissingLibrary(f"{type(exc).__name__}: {exc}") from exc


def _summary(exc: BaseException) -> str:
    """One line for the build's warning: MLflow's schema errors print the whole frame, rows on lines."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


def _announce(step: str) -> None:
    print(STEP_MARK + step, file=sys.stderr, flush=True)


def main() -> None:
    sys.path.insert(0, str(BENTO_TEMPLATES))
    import mf_inputs

    job = json.load(sys.stdin)
    # Models print while they load or predict (MLflow's Keras wrapper prints a progress bar per call): only
    # the answers go to stdout; the rest goes to stderr, whether Python or native code writes it.
    answers_out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    found = answers(job["model_dir"], job["inputs"], job["requests"], mf_inputs, here=False, step=_announce,
                    feeds=job.get("feeds"))
    sys.stdout.flush()
    _announce("encode")
    json.dump(found, answers_out)
    answers_out.flush()


if __name__ == "__main__":
    main()
