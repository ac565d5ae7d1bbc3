"""`factory render`: deterministic, atomic, and every output valid for the tool that reads it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factory.cli import main
from factory.loader import parse_catalog
from factory.manifests import kustomization, validate_manifests
from factory.render import render_catalog, write_tree
from proxy.routing import RouteTable

ROOT = Path(__file__).resolve().parents[1]


def _gitlab_schema():
    """The schema `check-jsonschema --builtin-schema vendor.gitlab-ci` uses, loaded once, in-process."""
    import json

    import check_jsonschema
    import jsonschema

    path = Path(check_jsonschema.__file__).parent / "builtin_schemas" / "vendor" / "gitlab-ci.json"
    schema = json.loads(path.read_text())
    return jsonschema.validators.validator_for(schema)(schema)


GITLAB_SCHEMA = _gitlab_schema()

names = st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True)
segments = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,8}", fullmatch=True)


@st.composite
def catalogs(draw) -> str:
    """A valid models.yaml in the full form: matrix entries, overrides, GPU models and an experiment."""
    count = draw(st.integers(1, 5))
    model_names = draw(st.lists(names, min_size=count, max_size=count, unique=True))
    models = []
    for index, name in enumerate(model_names):
        model = {"name": f"m_{name}", "endpoint": "p", "parameters": [str(index), draw(segments)],
                 **draw(st.sampled_from([{"version": draw(st.integers(1, 99))}, {"alias": "champion"}]))}
        if draw(st.booleans()):
            model["batching"] = {"enabled": draw(st.booleans()), "max_batch_size": draw(st.integers(1, 512)),
                                 "max_latency_ms": draw(st.integers(1, 10_000))}
        if draw(st.booleans()):
            gpu = draw(st.integers(0, 4))
            model["resources"] = {"cpu": draw(st.sampled_from(["250m", "1", "2", 0.5])), "gpu": gpu,
                                  **({"gpu_type": "nvidia-tesla-t4"} if gpu and draw(st.booleans()) else {})}
        models.append(model)
    if draw(st.booleans()):
        models.append({"matrix": {"city": [2, 5], "segment": ["TAXI", "PHV"]}, "name": "mx_{city}_{segment}",
                       "version": 1, "endpoint": "q", "parameters": ["{city}", "{segment}"]})
    document = {"defaults": {"scaling": {"min_replicas": 1, "max_replicas": draw(st.integers(1, 9))}},
                "models": models}
    if len(model_names) >= 2:
        weight = draw(st.integers(0, 100))
        document["experiments"] = [{"name": "ab", "endpoint": "x", "sticky_key": {"header": "X-User-Id"},
                                    "variants": [{"model": f"m_{model_names[0]}", "weight": weight},
                                                 {"model": f"m_{model_names[1]}", "weight": 100 - weight}]}]
    return yaml.safe_dump(document, sort_keys=False)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(catalogs())
def test_any_valid_catalog_renders_to_valid_outputs(text: str) -> None:
    catalog = parse_catalog(text)
    files = render_catalog(catalog)
    assert render_catalog(parse_catalog(text)) == files  # byte-identical re-render
    for name, content in files.items():
        if name.endswith((".yaml", ".yml")):
            list(yaml.safe_load_all(content))
        elif name.endswith(".py"):
            compile(content, name, "exec")
    table = RouteTable.model_validate(yaml.safe_load(files["routes.yaml"]))
    # The proxy refuses a request that waited in its pool longer than the model's own budget (queue_ms).
    assert {name: upstream.queue_ms for name, upstream in table.upstreams.items()} == {
        model.name: model.batching.max_latency_ms for model in catalog.models}
    errors = sorted(GITLAB_SCHEMA.iter_errors(yaml.safe_load(files["child-pipeline.yml"])), key=str)
    assert errors == []
    preview = {name[len("k8s/"):]: text for name, text in files.items() if name.startswith("k8s/")}
    assert_preview_not_deployable(preview)
    # With an image filled in, the preview is a valid manifest set (`factory manifests` adds the digest).
    image = "registry.example.com/m@sha256:" + "0" * 64
    filled = {name: re.sub(r"(containers:\n        - name: (?:model|proxy)\n)", rf"\1          image: {image}\n", text)
              for name, text in preview.items()}
    validate_manifests({**filled, "kustomization.yaml": kustomization(catalog.kubernetes, sorted(filled))})


def assert_preview_not_deployable(preview: dict[str, str]) -> None:
    """No image anywhere (none is pushed before `factory build`), and nothing to `kubectl apply -k`."""
    assert "kustomization.yaml" not in preview
    for name, text in preview.items():
        for document in yaml.safe_load_all(text):
            if document["kind"] == "Deployment":
                assert [container.get("image") for container in document["spec"]["template"]["spec"]["containers"]
                        ] == [None], name


def test_render_writes_no_image_that_no_registry_holds() -> None:
    files = render_catalog(parse_catalog((ROOT / "models.yaml").read_text()))
    preview = {name[len("k8s/"):]: text for name, text in files.items() if name.startswith("k8s/")}
    assert_preview_not_deployable(preview)
    assert sum(name.endswith("/deployment.yaml") for name in preview) == 9  # 8 models and the proxy
    assert not [name for name, text in files.items() if "unbuilt" in text or ":latest" in text]


def test_rendered_pipelines_pass_gitlab_schema(tmp_path: Path) -> None:
    write_tree(render_catalog(parse_catalog((ROOT / "models.yaml").read_text())), tmp_path / "build")
    for pipeline in (tmp_path / "build" / "child-pipeline.yml", ROOT / ".gitlab-ci.yml"):
        result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.gitlab-ci",
                                 str(pipeline)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_child_pipeline_has_build_test_deploy_per_model_and_small_needs() -> None:
    files = render_catalog(parse_catalog((ROOT / "models.yaml").read_text()))
    pipeline = yaml.safe_load(files["child-pipeline.yml"])
    # No job downloads artifacts through `needs`/`dependencies` (GitLab refuses to start such a job once they
    # expired): each fetches its inputs through the API first, then regenerates what did not arrive.
    assert pipeline["test-eta-minutes-5-phv"]["needs"] == [{"job": "build-eta-minutes-5-phv", "artifacts": False}]
    assert pipeline["test-eta-minutes-5-phv"]["script"][0] == "factory fetch-artifacts build-eta-minutes-5-phv"
    assert pipeline["deploy-eta-minutes-5-phv"]["needs"] == [{"job": "test-eta-minutes-5-phv", "artifacts": False}]
    assert pipeline["apply"]["dependencies"] == []
    assert pipeline["apply"]["script"][0] == "factory fetch-artifacts collect-1"
    assert len(pipeline["collect-1"]["needs"]) == 8
    assert not [need for job in pipeline.values() if isinstance(job, dict) for need in job.get("needs", [])
                if need.get("artifacts") is not False]
    assert [name for name, job in pipeline.items() if isinstance(job, dict) and "tags" in job] == [
        "build-fare-estimate-2-taxi-gpu", "test-fare-estimate-2-taxi-gpu", "deploy-fare-estimate-2-taxi-gpu"]
    assert max(len(job.get("needs", [])) for job in pipeline.values() if isinstance(job, dict)) <= 50


def test_gpu_model_gets_gpu_in_bento_and_manifest() -> None:
    files = render_catalog(parse_catalog((ROOT / "models.yaml").read_text()))
    assert '"gpu": 1, "gpu_type": "nvidia-tesla-t4"' in files["models/fare_estimate_2_TAXI_gpu/service.py"]
    deployment = yaml.safe_load(files["k8s/fare-estimate-2-taxi-gpu/deployment.yaml"])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"


BROKEN = textwrap.dedent("""\
    - {name: m_a, version: 1, endpoint: p, batching: {max_batch_size: 0}}
    """)


def test_render_cli_writes_then_reports_unchanged_then_checks(tmp_path: Path) -> None:
    catalog = tmp_path / "models.yaml"
    catalog.write_text((ROOT / "models.yaml").read_text())
    out = tmp_path / "build"
    runner = CliRunner()
    first = runner.invoke(main, ["render", "-f", str(catalog), "-o", str(out)])
    assert first.exit_code == 0 and "files written" in first.output
    assert "files unchanged" in runner.invoke(main, ["render", "-f", str(catalog), "-o", str(out)]).output
    assert runner.invoke(main, ["render", "-f", str(catalog), "-o", str(out), "--check"]).exit_code == 0
    (out / "routes.yaml").write_text("stale\n")
    stale = runner.invoke(main, ["render", "-f", str(catalog), "-o", str(out), "--check"])
    assert stale.exit_code == 1 and "routes.yaml" in stale.output


def test_failed_render_changes_nothing_under_out(tmp_path: Path) -> None:
    catalog = tmp_path / "models.yaml"
    catalog.write_text((ROOT / "models.yaml").read_text())
    out = tmp_path / "build"
    runner = CliRunner()
    runner.invoke(main, ["render", "-f", str(catalog), "-o", str(out)])
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    catalog.write_text(BROKEN)
    result = runner.invoke(main, ["render", "-f", str(catalog), "-o", str(out)])
    assert result.exit_code == 1
    assert result.output.strip() == (f"{catalog}:1:67: models[0].batching.max_batch_size: must be ≥ 1 (got 0)")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build", "models.yaml"]  # no staging left behind


def test_validate_cli_reports_problems_without_traceback(tmp_path: Path) -> None:
    catalog = tmp_path / "models.yaml"
    catalog.write_text(BROKEN)
    result = CliRunner().invoke(main, ["validate", "-f", str(catalog)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert result.output.count("\n") == 1


def test_validate_cli_accepts_the_example() -> None:
    result = CliRunner().invoke(main, ["validate", "-f", str(ROOT / "models.yaml")])
    assert result.exit_code == 0
    assert "ok (8 models, 1 experiments)" in result.output


def test_missing_file_is_one_clear_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["validate", "-f", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1
    assert result.output == (f"{tmp_path / 'nope.yaml'}: file not found (hint: run from the repository root or "
                             "pass -f PATH/TO/models.yaml)\n")


THREADS_CATALOG = textwrap.dedent("""\
    - {name: m_half, version: 1, endpoint: a, resources: {cpu: 500m}}
    - {name: m_one_and_half, version: 1, endpoint: b, resources: {cpu: "1.5"}}
    - {name: m_two, version: 1, endpoint: c, resources: {cpu: "2"}}
    - {name: m_three, version: 1, endpoint: d, resources: {cpu: "2.5"}}
    """)


def test_native_thread_pools_are_sized_from_the_cpu_budget_before_any_library_loads() -> None:
    """OpenMP and BLAS pools start one thread per core the process sees; the service sizes them from resources.cpu
    (rounded up) first thing, so the real pool of an OpenMP library loaded afterwards has that many threads."""
    files = render_catalog(parse_catalog(THREADS_CATALOG))
    for name, threads in (("m_half", 1), ("m_one_and_half", 2), ("m_two", 2), ("m_three", 3)):
        service = files[f"models/{name}/service.py"]
        prelude = service[:service.index("from typing import")]
        assert f'os.environ.setdefault(_threads, "{threads}")' in prelude and "import bentoml" not in prelude
    # 3 threads, which no 2-core CI machine would start by itself; joblib's n_jobs=-1 as many workers, at most one per
    # core (LOKY_MAX_CPU_COUNT only lowers its count): 1 at 500m, where a 2-core machine would give 2.
    environment = {key: value for key, value in os.environ.items()
                   if not key.endswith("_NUM_THREADS") and key != "LOKY_MAX_CPU_COUNT"}
    for name, pools in (("m_three", f"[3] {min(3, os.cpu_count())}"), ("m_half", "[1] 1")):
        probe = (files[f"models/{name}/service.py"].split("from typing import")[0]
                 + "import joblib, sklearn.utils._openmp_helpers, threadpoolctl\n"
                 "print([pool['num_threads'] for pool in threadpoolctl.threadpool_info()"
                 " if pool['user_api'] == 'openmp'], joblib.effective_n_jobs(-1))\n")
        ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=environment, check=True)
        assert ran.stdout.strip() == pools
