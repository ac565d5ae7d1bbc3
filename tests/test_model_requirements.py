"""A registry model's requirements.txt is untrusted input: only requirement lines reach pip and the image's uv.
And the CPU builds a model without a GPU is served with (PyTorch's `+cpu` from its own index, tensorflow-cpu)."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.requirements import Requirement

from factory.errors import BuildError, SettingsError
from factory.modelreqs import model_requirements
from factory.runtime import lock_pins, resolve_requirements
from factory.settings import Settings

SOURCE = "models.yaml:7: model 'm': m version 3: requirements.txt"
FIX = "remove it from the model's pip_requirements and register a new version"
INDEX = ("; a package index is the platform's choice (FACTORY_PIP_INDEX_URL / FACTORY_PIP_EXTRA_INDEX_URL; "
         "FACTORY_TORCH_CPU_INDEX for PyTorch's CPU builds)")
PLATFORM = "is refused: a build takes its package indexes and sources from the platform, never from a model; "
SOURCE_REFUSED = ("is a file, URL or VCS source, which is refused: a build installs published packages only; publish "
                  f"it to your package index and require it by name and version ({FIX})")
INDEX_URL = "http://127.0.0.1:8123/simple"
WHERE = "models.yaml:3: model 'm'"
PINS = lock_pins()
# What mlflow.pytorch.log_model recorded for a small nn.Module (torch 2.13.0+cpu, mlflow 3.17.2): MLflow strips
# the local label, so the requirement names PyPI's build.
TORCH_MODEL = "mlflow==3.17.2\ncloudpickle==3.1.2\nnumpy==2.4.6\nnvidia-ml-py==13.615.71\npandas==3.1.1\ntorch==2.13.0"


@pytest.mark.parametrize("line, message", [
    ("--index-url http://evil.example/simple",
     f"pip option --index-url (another package index) {PLATFORM}{FIX}{INDEX}"),
    ("-ihttp://evil.example/simple", f"pip option -i (another package index) {PLATFORM}{FIX}{INDEX}"),
    ("--extra-index-url=http://evil.example/simple",
     f"pip option --extra-index-url (another package index) {PLATFORM}{FIX}{INDEX}"),
    ("--no-index", f"pip option --no-index (no package index) {PLATFORM}{FIX}{INDEX}"),
    ("-f /tmp/wheels", f"pip option -f (a place to find packages) {PLATFORM}{FIX}{INDEX}"),
    ("--trusted-host evil.example",
     f"pip option --trusted-host (a host whose TLS certificate is not checked) {PLATFORM}{FIX}{INDEX}"),
    ("-e git+https://evil.example/x.git#egg=x",
     f"pip option -e (an editable install of a source tree or VCS checkout) {PLATFORM}{FIX}"),
    ("-r /etc/other.txt", f"pip option -r (another requirements file) {PLATFORM}{FIX}"),
    ("--pre", f"pip option --pre {PLATFORM}{FIX}"),
    ("numpy==2.4.6 --hash=sha256:00ff", "pip option --hash after 'numpy==2.4.6' is refused: only the requirement "
                                        "itself is taken from a model; re-log the model without the option"),
    ("evil @ https://evil.example/evil-1.0.tar.gz",
     "'evil @ https://evil.example/evil-1.0.tar.gz' installs from a URL, which is refused: a build installs published "
     f"packages only; require 'evil' by version instead ({FIX})"),
    ("evil@file:///tmp/evil", "'evil @ file:///tmp/evil' installs from a URL, which is refused: a build installs "
                              f"published packages only; require 'evil' by version instead ({FIX})"),
    ("git+https://evil.example/x.git", f"'git+https://evil.example/x.git' {SOURCE_REFUSED}"),
    ("./vendored/pkg", f"'./vendored/pkg' {SOURCE_REFUSED}"),
    ("/abs/evil-1.0-py3-none-any.whl", f"'/abs/evil-1.0-py3-none-any.whl' {SOURCE_REFUSED}"),
    ("evil-1.0-py3-none-any.whl", f"'evil-1.0-py3-none-any.whl' {SOURCE_REFUSED}"),
])
def test_pip_options_and_sources_in_a_model_are_refused_naming_the_line(line: str, message: str) -> None:
    with pytest.raises(BuildError) as error:
        model_requirements(f"# written by MLflow\nnumpy==2.4.6\n{line}\n", SOURCE)
    assert str(error.value) == f"{SOURCE}:3: {message}"


def test_requirements_extras_markers_and_mlflow_constraints_line_are_taken() -> None:
    text = ("# comment\n-c constraints.txt\nnumpy>=1  # inline\n\nlightgbm==4.7.0; python_version < '3'\n"
            "pandas[performance]==3.1.1\n--constraint constraints.txt\n")
    assert [str(r) for r in model_requirements(text, SOURCE)] == [
        "numpy>=1", 'lightgbm==4.7.0; python_version < "3"', "pandas[performance]==3.1.1"]
    assert "lightgbm" not in " ".join(resolve_requirements(model_requirements(text, SOURCE), ("scikit-learn",), (),
                                                           True, WHERE))
    with pytest.raises(BuildError, match=r"^models.yaml:7: .*requirements.txt:2: not a requirement: 'numpy =='"):
        model_requirements("numpy\nnumpy ==\n", SOURCE)


def test_mlflow_writes_pip_options_verbatim_and_the_build_refuses_them(tmp_path: Path) -> None:
    import mlflow.pyfunc

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

    mlflow.pyfunc.save_model(str(tmp_path / "m"), python_model=Echo(),
                             pip_requirements=["pandas", "--extra-index-url http://evil.example/simple"])
    text = (tmp_path / "m" / "requirements.txt").read_text(encoding="utf-8")
    assert "--extra-index-url http://evil.example/simple" in text.splitlines()
    number = text.splitlines().index("--extra-index-url http://evil.example/simple") + 1
    with pytest.raises(BuildError) as error:
        model_requirements(text, SOURCE)
    assert str(error.value).startswith(f"{SOURCE}:{number}: pip option --extra-index-url (another package index)")


def _torch(recorded: str, gpu: bool = False, packages=()) -> tuple[str, ...]:
    model = [Requirement(line) for line in recorded.splitlines()]
    return resolve_requirements(model, ("mlflow", "pandas"), packages, False, WHERE, gpu=gpu, torch_index=INDEX_URL)


def test_a_torch_model_without_a_gpu_is_served_pytorchs_cpu_build_from_the_cpu_index() -> None:
    served = _torch(TORCH_MODEL)
    assert served[0] == f"--extra-index-url {INDEX_URL}"
    assert "torch==2.13.0+cpu" in served and "numpy==" + PINS["numpy"] in served
    assert _torch(TORCH_MODEL, gpu=True)[0] != f"--extra-index-url {INDEX_URL}"  # a GPU model: PyPI's CUDA build
    assert "torch==2.13.0" in _torch(TORCH_MODEL, gpu=True)


@pytest.mark.parametrize("recorded, gpu, packages, served, cpu_index", [
    ("torch==2.13.0", False, (), ["torch==2.13.0+cpu"], True),
    ("torch==2.13.0", True, (), ["torch==2.13.0"], False),
    ("torch==2.13.0", False, ("torch==2.13.0",), ["torch==2.13.0"], False),  # an override restores PyPI's build
    ("torch==2.13.0", True, ("torch==2.13.0+cpu",), ["torch==2.13.0+cpu"], True),  # a CPU build asked for by name
    ("torch>=2.1", False, (), ["torch>=2.1"], True),  # a range: the CPU index, named first, serves it
    ("torch", False, (), ["torch"], True),
    ("torch==2.*", False, (), ["torch==2.*"], True),
    ("torch==2.13.0+cu126", False, (), ["torch==2.13.0+cu126"], False),  # the author named a CUDA build
    ("torchvision==0.29.1; python_version >= '3.8'", False, (), ['torchvision==0.29.1+cpu; python_version >= "3.8"'],
     True),
    ("tensorflow==2.21.0", False, (), ["tensorflow-cpu==2.21.0"], False),
    ("tensorflow==2.21.0", True, (), ["tensorflow==2.21.0"], False),
    ("tensorflow==2.0.0", False, (), ["tensorflow==2.0.0"], False),  # before tensorflow-cpu existed
])
def test_cpu_builds_of_deep_learning_frameworks(recorded, gpu, packages, served, cpu_index) -> None:
    lines = _torch(recorded, gpu, packages)
    assert [line for line in lines if line.startswith(("torch", "tensorflow"))] == served
    assert (lines[0] == f"--extra-index-url {INDEX_URL}") is cpu_index


@pytest.mark.parametrize("value, accepted", [
    (None, "https://download.pytorch.org/whl/cpu"),
    ("http://127.0.0.1:8123/simple", "http://127.0.0.1:8123/simple"),
    ("https://mirror.example/pytorch/whl/cpu", "https://mirror.example/pytorch/whl/cpu"),
    ("https://x.example/simple\n--trusted-host evil", None),
    ("mirror.example/whl/cpu", None),
    ("https://x.example/cpu --index-url http://evil", None),
])
def test_the_torch_cpu_index_must_be_one_index_url(value, accepted) -> None:
    environ = {} if value is None else {"FACTORY_TORCH_CPU_INDEX": value}
    if accepted:
        assert Settings.from_env(environ).torch_cpu_index == accepted
        return
    with pytest.raises(SettingsError) as error:
        Settings.from_env(environ)
    assert str(error.value) == (
        f"FACTORY_TORCH_CPU_INDEX: {value!r} is not a package index URL; set it to the http(s):// address of "
        "PyTorch's CPU index or a mirror of it (a PEP 503 `simple` page), or unset it for "
        "https://download.pytorch.org/whl/cpu")
