"""What the registry's metadata alone decides, over real MLflow metadata: checked-in MLmodel files of MLflow's
GenAI interfaces, and MLflow's own ModelVersion entities in each registration status."""

from __future__ import annotations

from pathlib import Path

import pytest

from factory.errors import RegistryError
from factory.registry import _answers_rows, _ready, _servable, _signature

FIXTURES = Path(__file__).parent / "model_fixtures"
GENAI = [("mlflow_3_17_chat_model", "ChatModel (mlflow.pyfunc.loaders.chat_model)"),
         ("mlflow_3_17_responses_agent", "ResponsesAgent (mlflow.pyfunc.loaders.responses_agent)")]


@pytest.mark.parametrize("fixture, interface", GENAI, ids=[fixture for fixture, _ in GENAI])
def test_an_mlflow_genai_interface_is_refused_for_what_it_is_not_for_its_any_fields(fixture: str,
                                                                                   interface: str) -> None:
    from mlflow.models import Model

    model = Model.load(FIXTURES / fixture / "MLmodel")
    with pytest.raises(RegistryError, match="unsupported type 'any'"):  # what the author would have read before
        _servable(_signature(model.signature), "m")
    with pytest.raises(RegistryError) as caught:
        _answers_rows(model.flavors, "models.yaml:3: model 'agent': agent version 1")
    assert str(caught.value) == (
        f"models.yaml:3: model 'agent': agent version 1: it is an MLflow {interface}: MLflow fixes its request "
        "schema and it answers one chat request per call with one response object, not one prediction per row, so "
        "the factory cannot serve it; serve it with `mlflow models serve` or an agent-serving platform, or log its "
        "logic as an mlflow.pyfunc.PythonModel with a typed signature that answers one output per input row, and "
        "register a new version")


def test_a_row_model_passes_the_genai_check() -> None:
    from mlflow.models import Model

    model = Model.load(FIXTURES / "mlflow_2_9_conda_only" / "MLmodel")
    _answers_rows(model.flavors, "m")
    _answers_rows({"python_function": {"loader_module": "mlflow.pyfunc.model"}}, "m")


STATUSES = [
    ("READY", None, None),
    (None, None, None),  # a registry that does not report a status
    ("PENDING_REGISTRATION", None,
     "models.yaml:2: model 'm': m version 3 is still being registered (status PENDING_REGISTRATION, not READY); "
     "build it once the registry shows it READY, or name a READY version in models.yaml"),
    ("FAILED_REGISTRATION", "upload of artifacts failed",
     "models.yaml:2: model 'm': m version 3 failed to register (status FAILED_REGISTRATION: upload of artifacts "
     "failed); its artifacts may be incomplete: register the model again and name the new version in models.yaml"),
    ("FAILED_REGISTRATION", None,
     "models.yaml:2: model 'm': m version 3 failed to register (status FAILED_REGISTRATION); its artifacts may be "
     "incomplete: register the model again and name the new version in models.yaml"),
]


@pytest.mark.parametrize("status, status_message, message", STATUSES,
                         ids=["ready", "unreported", "pending", "failed", "failed-no-message"])
def test_only_a_ready_version_is_built(status, status_message, message) -> None:
    from mlflow.entities.model_registry import ModelVersion

    version = ModelVersion("m", "3", 0, status=status, status_message=status_message)
    if message is None:
        assert _ready(version, "models.yaml:2: model 'm': m version 3") == 3
        return
    with pytest.raises(RegistryError) as caught:
        _ready(version, "models.yaml:2: model 'm': m version 3")
    assert str(caught.value) == message
