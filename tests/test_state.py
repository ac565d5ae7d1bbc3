"""The state directory contract: typed records, exact errors for unreadable files, one settings object."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from factory.errors import SettingsError, StateError
from factory.settings import Settings, documentation
from factory.state import BuildRecord, StateDir, TestReport

ROOT = Path(__file__).resolve().parent.parent

BUILD = {"model": "m", "content_hash": "h", "registry": {"name": "m", "version": 1}, "bento_model_tag": "m:1",
         "bento_tag": "m:1", "bento_export": "/x.bento", "image": "r/m:1", "image_ref": "r/m@sha256:0123",
         "image_size_bytes": 5, "image_build_seconds": 1.5,
         "dockerfile": "/Dockerfile", "golden": "/golden.json"}
REPORT = {"model": "m", "route": "/m", "bento_tag": "m:1", "seed": 0, "passed": True,
          "fuzz": {"passed": True, "requests_fuzzed": 3, "failed_requests": 0, "latency_p50_ms": 1.0,
                   "latency_p99_ms": 2.0},
          "capacity": {"slo_p99_ms": 100, "rps": 5.0, "connections": 1, "p99_ms": 2.0, "cpu_percent": 40.0,
                       "steps": [{"connections": 1, "requests": 5, "rps": 5.0, "p50_ms": 1.0, "p99_ms": 2.0,
                                  "shed": 0, "failures": 0, "statuses": {"200": 5}, "cpu_percent": 40.0}]},
          "memory": {"peak_mib": 190.0, "sampler": "process tree", "phases": {"idle": {"rss_mib": 180.0}}},
          "peak_bytes": 199229440, "failures": []}


def test_records_round_trip(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    BuildRecord(**BUILD).save(state.record_path("m"))
    TestReport(**REPORT).save(state.report_path("m"))
    assert state.build_record("m") == BuildRecord(**BUILD)
    assert state.test_report("m").peak_bytes == REPORT["peak_bytes"]
    assert state.build_record("other") is None and state.test_report("other") is None
    assert not list(tmp_path.rglob(".*.partial"))


@pytest.mark.parametrize("content, message", [
    (b"", "{path}: empty, probably cut short by an interrupted run; run `factory test m` again"),
    (b'{"model": "m", "route"', "{path}: not valid JSON at line 1 column 23 (Expecting ':' delimiter), probably "
                                "cut short by an interrupted run; run `factory test m` again"),
    (b"\xff\xfe", "{path}: unreadable (UnicodeDecodeError); run `factory test m` again"),
    (b"[]", "{path}: (top level): Input should be a valid dictionary or instance of TestReport; "
            "the file is not what this factory writes: run `factory test m` again"),
], ids=["empty", "truncated", "binary", "wrong shape"])
def test_unreadable_report_names_file_and_fix(tmp_path: Path, content: bytes, message: str) -> None:
    state = StateDir(tmp_path)
    path = state.report_path("m")
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(StateError) as caught:
        state.test_report("m")
    assert str(caught.value) == message.format(path=path)


def test_wrong_field_is_named(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.report_path("m").parent.mkdir(parents=True)
    state.report_path("m").write_text(__import__("json").dumps({**REPORT, "peak_bytes": "lots"}))
    with pytest.raises(StateError, match=r"report\.json: peak_bytes: Input should be a valid integer"):
        state.test_report("m")


def test_settings_read_every_variable() -> None:
    settings = Settings.from_env({"FACTORY_STATE": "/s", "MLFLOW_TRACKING_URI": "http://mlflow:5000",
                                  "FACTORY_RUNTIME_PYTHON": "/py", "FACTORY_RUNTIME_HOME": "/rt",
                                  "FACTORY_PROXY_IMAGE": "r/proxy:1", "FACTORY_IMAGE_REGISTRY": "ci/r",
                                  "DOCKER_HOST": "tcp://docker:2376", "FACTORY_PINNED_VERSIONS": "m=2",
                                  "FACTORY_BASE_ROOTFS": "debian:b", "FACTORY_BASE_CACHE": "gl.io/p/base",
                                  "CI_REGISTRY": "gl.io", "CI_REGISTRY_USER": "u", "CI_REGISTRY_PASSWORD": "p",
                                  "FACTORY_TORCH_CPU_INDEX": "http://mirror/cpu",
                                  "FACTORY_PIP_INDEX_URL": "https://u:t@art.example/simple",
                                  "FACTORY_PIP_EXTRA_INDEX_URL": "http://127.0.0.1:8/simple",
                                  "MLFLOW_REGISTRY_URI": "sqlite:////r.db", "MLFLOW_TRACKING_USERNAME": "ci",
                                  "MLFLOW_TRACKING_PASSWORD": "pw", "MLFLOW_TRACKING_TOKEN": "tok"})
    assert settings == Settings(Path("/s"), "http://mlflow:5000", Path("/py"), Path("/rt"), "r/proxy:1", "ci/r",
                                "tcp://docker:2376", "m=2", "debian:b", "gl.io/p/base", "gl.io", "u", "p",
                                "http://mirror/cpu", "https://u:t@art.example/simple", "http://127.0.0.1:8/simple",
                                "sqlite:////r.db", "ci", "pw", "tok")
    empty = Settings.from_env({})
    assert empty.state_dir == (Path.cwd() / "factory-state") and empty.tracking_uri is None
    assert empty.torch_cpu_index == "https://download.pytorch.org/whl/cpu"
    assert empty.pip_index_url is None and empty.pip_extra_index_url is None


@pytest.mark.parametrize("variable, value, message", [
    ("FACTORY_IMAGE_REGISTRY", "reg.example.com/a\nkind: Secret", "'reg.example.com/a\\nkind: Secret' is not an "
     "image repository prefix such as registry.example.com/team"),
    ("FACTORY_IMAGE_REGISTRY", "Registry.Example.com/Team", "'Registry.Example.com/Team' is not an image repository "
     "prefix such as registry.example.com/team"),
    ("FACTORY_BASE_CACHE", "gl.io/p/base; docker rm -f x", "'gl.io/p/base; docker rm -f x' is not an image "
     "repository such as registry.example.com/team/python-base"),
    ("FACTORY_PROXY_IMAGE", "$(curl evil)/proxy", "'$(curl evil)/proxy' is not an image reference such as "
     "registry.example.com/team/proxy:1.2 (or @sha256:...)"),
    ("FACTORY_BASE_ROOTFS", "x" * 300, "'" + "x" * 77 + "'... is not an image reference such as "
     "debian:bookworm-20251229-slim"),
])
def test_an_image_setting_that_is_no_image_name_is_refused_by_name(variable: str, value: str, message: str) -> None:
    """They become references the engine is asked for and a Deployment's `image:` (a YAML document)."""
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({variable: value})
    assert str(caught.value) == (f"{variable}: {message} (lowercase letters, digits and . _ - / :); set it to one, "
                                 "or unset it")


@pytest.mark.parametrize("variable, value, message", [
    ("MLFLOW_TRACKING_URI", "http://mlflow:5000\nX-Injected: 1", "MLFLOW_TRACKING_URI: 'http://mlflow:5000\\nX-Injected: "
     "1' holds a space or control character; set it to one URI such as http://mlflow:5000 or sqlite:////abs/mlflow.db "
     "(a space in a path written %20)"),
    ("FACTORY_STATE", __file__, f"FACTORY_STATE: {__file__} is a file, not a directory; point it at a directory (it "
     "is created if missing)"),
])
def test_a_setting_the_factory_cannot_use_is_refused_by_name(variable: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({variable: value})
    assert str(caught.value) == message


def test_readme_documents_every_variable() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = dict(re.findall(r"^\| `([A-Z0-9_]+)` \| (.+) \|$", readme, flags=re.MULTILINE))
    assert table == documentation()


def test_no_module_reads_the_environment_itself() -> None:
    """Settings is the one reader of the factory's variables (state.activate only sets BentoML defaults)."""
    readers = sorted(path.name for path in (ROOT / "factory").glob("*.py")
                     if re.search(r"os\.environ\.get|os\.getenv|environ\[", path.read_text(encoding="utf-8")))
    assert readers == []
