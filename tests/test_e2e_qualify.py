"""`factory test` and `factory manifests` on real served models: fuzzing, golden checks, memory sizing."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from kubernetes.utils import parse_quantity

from e2e_support.factory_env import ALIAS_MODEL, MIXED_MODEL, ROOT, FactoryEnv
from e2e_support.planted import PLANTED_MODEL

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("bento")]


@pytest.mark.parametrize("model", [MIXED_MODEL, ALIAS_MODEL])
def test_reports_record_fuzzing_golden_and_memory_per_phase(tested: FactoryEnv, model: str) -> None:
    reports = tested.state / "reports" / model
    report = json.loads((reports / "report.json").read_text())
    assert report["passed"] and report["fuzz"]["requests_fuzzed"] >= 100
    assert set(report["memory"]["phases"]) == {"idle", "fuzz", "load"}
    assert report["memory"]["phases"]["load"]["samples"] > 10
    assert 50 < report["memory"]["peak_mib"] < 400
    capacity = report["capacity"]  # the load phase is the capacity search: every rung ran, nothing malformed
    assert [step["connections"] for step in capacity["steps"]] == [1, 2, 4, 8, 16, 32, 64]
    assert capacity["slo_p99_ms"] == 100 and not any(step["failures"] for step in capacity["steps"])
    suite = ET.parse(reports / "junit.xml").getroot()
    cases = {case.get("name") for case in suite.iter("testcase")}
    assert {"valid requests", "invalid requests", "golden"} <= cases
    assert not list(suite.iter("failure"))


def test_manifests_request_at_least_the_measured_peak(tested: FactoryEnv) -> None:
    result = tested.run("manifests", MIXED_MODEL, ALIAS_MODEL, "--proxy")
    assert "validated (Kubernetes 1.33, strict)" in result.stdout
    for model, k8s_name in [(MIXED_MODEL, "match-probability-2-taxi-trafficaware"), (ALIAS_MODEL, "eta-minutes-5-phv")]:
        peak = json.loads((tested.state / "reports" / model / "report.json").read_text())["peak_bytes"]
        deployment = yaml.safe_load((tested.state / "k8s" / k8s_name / "deployment.yaml").read_text())
        resources = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
        request = parse_quantity(resources["requests"]["memory"])
        assert peak <= request <= peak * 1.2 + 2**20  # headroom 0.2, rounded up to whole MiB
        assert parse_quantity(resources["limits"]["memory"]) >= request
    kustomization = yaml.safe_load((tested.state / "k8s" / "kustomization.yaml").read_text())
    assert "proxy/routes-000.yaml" in kustomization["resources"]
    summary = tested.run("summary").stdout
    assert "/probability/2/TAXI/trafficaware" in summary and "pass" in summary and "capacity rps" in summary
    hpa = yaml.safe_load((tested.state / "k8s" / "eta-minutes-5-phv" / "hpa.yaml").read_text())
    assert hpa["metadata"]["annotations"]["model-factory/capacity-slo-p99-ms"] == "100"


def test_deploy_without_a_cluster_is_one_clear_error(tested: FactoryEnv) -> None:
    tested.run("manifests", MIXED_MODEL, "--proxy")
    env = {**tested.env, "KUBECONFIG": str(tested.root / "missing-kubeconfig")}
    result = subprocess.run([sys.executable, "-m", "factory.cli", "deploy"], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.startswith("no Kubernetes cluster configured:") and "Traceback" not in result.stderr


def test_planted_crash_is_found_and_printed_with_a_replay(built: FactoryEnv, tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "tests" / "e2e_support" / "planted.py"),
                    str(built.root / "registry")], env=built.env, check=True, capture_output=True, timeout=300)
    catalog = tmp_path / "models.yaml"
    catalog.write_text(f"- {{name: {PLANTED_MODEL}, version: 1, endpoint: crashy}}\n")
    built.run("build", "-f", str(catalog), PLANTED_MODEL, "--no-image")  # keeps the host-process path tested
    result = built.run("test", "-f", str(catalog), PLANTED_MODEL, "--examples", "40", check=False)
    assert result.returncode == 1
    assert f"{PLANTED_MODEL}: failed" in result.stderr
    assert "expected 200, got 500" in result.stderr
    assert '"hour_of_day"' in result.stderr  # the minimal failing request is printed
    assert "  response: " in result.stderr and "the model raised " in result.stderr  # and what the model raised
    assert f"rerun:  {shlex.join(['factory', 'test', '-f', str(catalog), PLANTED_MODEL, '--seed', '0'])}" in result.stderr
    serve_line = next(line for line in result.stderr.splitlines() if "replay: factory serve" in line)
    curl_line = result.stderr.splitlines()[result.stderr.splitlines().index(serve_line) + 1]
    assert json.loads(Path(curl_line.split("@", 1)[1].strip("' ")).read_text())["inputs"]
    serve = shlex.split(serve_line.split("replay:", 1)[1].split("&", 1)[0])
    _replay_after_the_run(built, serve, shlex.split(curl_line))


def _replay_after_the_run(env: FactoryEnv, serve: list[str], curl: list[str]) -> None:
    """The printed reproduction works as printed: `factory serve` stays up, the curl gets the same 500."""
    assert serve[:2] == ["factory", "serve"] and curl[0] == "curl"
    server = subprocess.Popen([sys.executable, "-m", "factory.cli", *serve[1:]], cwd=ROOT,
                              env={**env.env, "PYTHONUNBUFFERED": "1"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        announced = server.stdout.readline()  # printed once the model answers /readyz
        assert "serve log:" in announced, announced
        replayed = subprocess.run([*curl, "-w", "\n%{http_code}"], capture_output=True, text=True, timeout=30)
        body, status = replayed.stdout.rsplit("\n", 1)
        assert status == "500" and json.loads(body)["error"]["code"] == "model_error", replayed.stdout
    finally:
        server.terminate()  # SIGTERM, as `kill` stops the background job: its server goes with it
        assert server.wait(timeout=60) == 0
