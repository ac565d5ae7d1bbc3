"""The registry as GitLab's jobs reach it: a real `mlflow server` over HTTP behind a gateway that wants a bearer
token (MLFLOW_TRACKING_TOKEN), its artifacts proxied (`mlflow-artifacts:/`, never a path on this disk), a model found
by alias. The other end-to-end tests read the embedded sqlite registry, where MLflow opens artifact files directly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from e2e_support.factory_env import FACTORY, ROOT
from e2e_support.token_proxy import TOKEN, token_gateway
from factory.serve import free_port

pytestmark = pytest.mark.e2e
READY_TIMEOUT_S = 120.0
LOGGED = """
import mlflow, numpy as np, pandas as pd
from mlflow.models import infer_signature
from sklearn.linear_model import LogisticRegression

rng = np.random.default_rng(0)
frame = pd.DataFrame({"distance_km": rng.uniform(0, 30, 200), "surge": rng.uniform(1, 3, 200)})
model = LogisticRegression().fit(frame, (frame.distance_km * frame.surge > 30).astype(int))
info = mlflow.sklearn.log_model(model, name="model", serialization_format="cloudpickle",
                                signature=infer_signature(frame, model.predict_proba(frame)),
                                pyfunc_predict_fn="predict_proba", registered_model_name="remote_fraud")
mlflow.MlflowClient().set_registered_model_alias("remote_fraud", "champion", info.registered_model_version)
print(mlflow.MlflowClient().get_model_version("remote_fraud", info.registered_model_version).source)
"""


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("tracking")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination", str(folder / "store")],
        cwd=folder, stdout=(folder / "server.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_healthy(url, process, folder / "server.log")
        with token_gateway(url) as gateway:
            yield gateway
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # a scratch server: nothing of it is kept
        process.wait(timeout=30)


def _wait_until_healthy(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"mlflow server did not become healthy: {log.read_text(errors='replace')[-2000:]}")


def test_a_model_on_a_tracking_server_builds_by_alias(tracking_server: str, tmp_path: Path) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_server, "MLFLOW_TRACKING_TOKEN": TOKEN,
           "MLFLOW_DISABLE_TELEMETRY": "true",
           "FACTORY_STATE": str(tmp_path / "state"), "BENTOML_HOME": str(tmp_path / "state" / "bentoml"),
           "BENTOML_DO_NOT_TRACK": "true"}
    logged = subprocess.run([sys.executable, "-c", LOGGED], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300, check=True)
    assert logged.stdout.strip().startswith("models:/")  # the artifacts live behind the server, not here
    catalog = tmp_path / "models.yaml"
    catalog.write_text("- {name: fraud, registry_name: remote_fraud, alias: champion, endpoint: fraud, "
                       "parameters: [TAXI]}\n", encoding="utf-8")
    result = subprocess.run([*FACTORY, "build", "-f", str(catalog), "fraud", "--no-image"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fraud: serves compiled: ONNX float64 reproduces the registry model on " in result.stdout
    record = json.loads((tmp_path / "state" / "builds" / "fraud" / "record.json").read_text())
    assert record["registry"] == {"name": "remote_fraud", "version": 1, "ref": "@champion", "uri": tracking_server,
                                  "run_id": record["registry"]["run_id"]}
    cases = json.loads(Path(record["golden"]).read_text())
    assert cases and all(len(row) == 2 for case in cases for row in case["outputs"])  # both classes' probabilities
    # The token opened the gateway, and went nowhere else: not the output, the records, the Bento or its store.
    assert TOKEN not in result.stdout + result.stderr
    written = [path for path in (tmp_path / "state").rglob("*") if path.is_file()]
    assert written and not [path for path in written if TOKEN.encode() in path.read_bytes()]
