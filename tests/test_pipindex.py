"""The platform's package index (FACTORY_PIP_INDEX_URL, FACTORY_PIP_EXTRA_INDEX_URL): checked when read, handed to
pip and uv, and its credentials never written or printed. The serving venv is made for real against a local index
that requires basic auth; the image side is tests/test_e2e_images.py."""

from __future__ import annotations

import io
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from e2e_support.private_index import GREETING, MODULE, PACKAGE, TOKEN, USER, VERSION, private_index
from factory import images, pipindex
from factory.errors import SettingsError
from factory.runtime import runtime_python
from factory.settings import PIP_EXTRA_INDEX_URL_ENV, PIP_INDEX_URL_ENV, Settings

FIX = ("set it to one http(s):// URL of a PEP 503 `simple` index, nothing else (no spaces, quotes, `?`, `#` or `;`), "
       "with any credential as `user:token@` before the host and its other characters percent-encoded")
ARTIFACTORY = "https://build-bot:AKCp8t%2Fk3n@artifactory.example/api/pypi/pypi-remote/simple"


@pytest.mark.parametrize("value", [
    ARTIFACTORY, "http://127.0.0.1:8081/repository/pypi-group/simple", "https://nexus.example/simple/",
    "https://__token__:glpat-x_y.z~1@gitlab.example/api/v4/projects/7/packages/pypi/simple",
])
def test_index_urls_platforms_use_are_accepted(value: str) -> None:
    for name, field in ((PIP_INDEX_URL_ENV, "pip_index_url"), (PIP_EXTRA_INDEX_URL_ENV, "pip_extra_index_url")):
        assert getattr(Settings.from_env({name: value}), field) == value


@pytest.mark.parametrize("value, message", [
    ("artifactory.example/simple", "'artifactory.example/simple' is not a package index URL"),
    ("file:///opt/pypi/simple", "'file:///opt/pypi/simple' is not a package index URL"),
    ("https://a.example/simple --trusted-host evil", "'https://a.example/simple --trusted-host evil' is not a "
                                                     "package index URL"),
    ("https://a.example/simple\n-e .", "'https://a.example/simple\\n-e .' is not a package index URL"),
    ("https://a.example/simple;touch${IFS}x", "'https://a.example/simple;touch${IFS}x' is not a package index URL"),
    ("https://a.example/$(id)", "'https://a.example/$(id)' is not a package index URL"),
    ("https://a.example/simple?token=t0p", "'https://a.example/simple?token=t0p' is not a package index URL"),
    ("https://bob:pa ss@a.example/simple", "'https://***@a.example/simple' is not a package index URL"),
    ("https://bob:pa'ss@a.example/simple?x=1", "'https://***@a.example/simple?x=1' is not a package index URL"),
    ("https://bob:p@ss@a.example/simple", "'https://***@a.example/simple' is not a package index URL"),
    ("https://a.example:80x/simple", "'https://a.example:80x/simple' has a port that is not a number"),
    ("https:///simple", "'https:///simple' names no host"),
    ("https://t0kenonly@a.example/simple", "'https://***@a.example/simple': a credential must be `user:token@` "
                                           "(both parts, no spaces once percent-decoded)"),
    ("https://bob:pa%20ss@a.example/simple", "'https://***@a.example/simple': a credential must be `user:token@` "
                                             "(both parts, no spaces once percent-decoded)"),
])
def test_anything_but_one_index_url_is_one_error_that_never_shows_the_credential(value: str, message: str) -> None:
    with pytest.raises(SettingsError) as error:
        Settings.from_env({PIP_EXTRA_INDEX_URL_ENV: value})
    assert str(error.value) == f"{PIP_EXTRA_INDEX_URL_ENV}: {message}; {FIX}"
    assert "pa ss" not in str(error.value) and "t0kenonly" not in str(error.value)


def test_two_credentials_for_one_host_are_refused_as_a_netrc_holds_one() -> None:
    other = ARTIFACTORY.replace("AKCp8t%2Fk3n", "other").replace("pypi-remote", "team-local")
    with pytest.raises(SettingsError) as error:
        Settings.from_env({PIP_INDEX_URL_ENV: ARTIFACTORY, PIP_EXTRA_INDEX_URL_ENV: other})
    assert str(error.value) == (f"{PIP_EXTRA_INDEX_URL_ENV}: its credential for artifactory.example differs from "
                                f"{PIP_INDEX_URL_ENV}'s; an image build passes one credential per host: use one "
                                "credential that reads both, or leave it out of one URL")
    same = ARTIFACTORY.replace("pypi-remote", "team-local")
    settings = Settings.from_env({PIP_INDEX_URL_ENV: ARTIFACTORY, PIP_EXTRA_INDEX_URL_ENV: same})
    assert settings.pip_extra_index_url == same


@pytest.mark.parametrize("text, shown", [
    (f"Looking in indexes: {ARTIFACTORY}",
     "Looking in indexes: https://***@artifactory.example/api/pypi/pypi-remote/simple"),
    ("401 for build-bot:AKCp8t%2Fk3n", "401 for ***"),
    ("netrc password AKCp8t/k3n", "netrc password ***"),  # the credential percent-decoded, as a netrc holds it
    ("http://other:pw@mirror.example/x and AKCp8t%2Fk3n", "http://***@mirror.example/x and ***"),
    ("no credential here: https://pypi.org/simple", "no credential here: https://pypi.org/simple"),
])
def test_messages_never_show_a_credential(text: str, shown: str) -> None:
    assert Settings.from_env({PIP_INDEX_URL_ENV: ARTIFACTORY}).redact(text) == shown


def test_pip_gets_the_urls_in_its_environment_and_uv_gets_them_without_credentials() -> None:
    settings = Settings.from_env({PIP_INDEX_URL_ENV: ARTIFACTORY,
                                  PIP_EXTRA_INDEX_URL_ENV: "http://127.0.0.1:8081/simple"})
    assert pipindex.uv_environment(settings) == {"UV_INDEX_URL": ARTIFACTORY,
                                                  "UV_EXTRA_INDEX_URL": "http://127.0.0.1:8081/simple"}
    assert pipindex.uv_options(settings) == ("--index-url https://artifactory.example/api/pypi/pypi-remote/simple "
                                             "--extra-index-url http://127.0.0.1:8081/simple")
    assert pipindex.netrc(settings) == "machine artifactory.example login build-bot password AKCp8t/k3n\n"
    nothing = Settings.from_env({})
    assert (pipindex.uv_environment(nothing), pipindex.uv_options(nothing), pipindex.netrc(nothing)) == ({}, "", "")


def _bento_export(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, text in {"bento.yaml": "service: svc\n", "env/python/requirements.txt": "numpy==2.3.5\n"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            archive.addfile(info, io.BytesIO(text.encode()))
    return path


def test_with_credentials_only_the_first_image_stage_sees_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PIP_INDEX_URL_ENV, ARTIFACTORY)
    dockerfile = images.model_dockerfile("m", "model-factory/python-base:x", 3000)
    assert "AKCp8t" not in dockerfile and "build-bot" not in dockerfile
    first, final = dockerfile.split("\nFROM model-factory/python-base:x\n")
    assert "FROM model-factory/python-base:x AS requirements\nLABEL model-factory.index-credentials=true\n" in first
    assert "COPY index-auth/netrc /run/index-auth/netrc\n" in first
    assert "--index-url https://artifactory.example/api/pypi/pypi-remote/simple -r /opt/bento-requirements.txt" in first
    assert final.startswith("COPY --from=requirements /opt/venv /opt/venv\nCOPY --chown=1034:1034 bento "
                            "/home/bentoml/bento\n") and "index-auth" not in final
    context = images.model_context(_bento_export(tmp_path / "m.bento"), tmp_path / "context", dockerfile)
    assert sorted(path.name for path in context.iterdir()) == ["Dockerfile", "bento", "index-auth"]
    netrc = context / "index-auth" / "netrc"
    assert netrc.read_text() == "machine artifactory.example login build-bot password AKCp8t/k3n\n"
    assert stat.S_IMODE(netrc.stat().st_mode) == 0o600
    assert (context / "bento" / "env" / "python" / "requirements.txt").is_file()


def test_without_credentials_the_image_is_one_stage_as_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PIP_EXTRA_INDEX_URL_ENV, "https://nexus.example/simple")
    dockerfile = images.model_dockerfile("m", "base:x", 3000)
    assert dockerfile.count("FROM ") == 1 and "LABEL" not in dockerfile and "NETRC" not in dockerfile
    assert "--extra-index-url https://nexus.example/simple -r /opt/bento-requirements.txt" in dockerfile
    context = images.model_context(_bento_export(tmp_path / "m.bento"), tmp_path / "context", dockerfile)
    assert sorted(path.name for path in context.iterdir()) == ["Dockerfile", "bento"]


def test_the_serving_venv_installs_from_a_private_index_with_basic_auth(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Real pip, a real venv, an index that answers 401 without the credential (a package only it has); nothing
    the venv keeps holds the credential."""
    monkeypatch.setenv("FACTORY_RUNTIME_HOME", str(tmp_path / "runtime"))
    monkeypatch.delenv("FACTORY_RUNTIME_PYTHON", raising=False)
    with private_index(tmp_path / "index") as url:
        monkeypatch.setenv(PIP_INDEX_URL_ENV, url)
        python = runtime_python(tmp_path, (f"{PACKAGE}=={VERSION}",))
    answer = subprocess.run([str(python), "-c", f"import {MODULE}; print({MODULE}.WHERE)"], capture_output=True,
                            text=True, check=True)
    assert answer.stdout == f"{GREETING}\n"
    home = python.parent.parent
    assert not [path for path in home.glob("*.txt") if TOKEN in path.read_text() or USER in path.read_text()]


def test_the_proxy_image_installs_as_a_model_image_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The proxy's recipe shares the model's install (templates/images/_venv.j2): the base image's uv, the platform's
    index URLs as options, the credential only in a labelled first stage's netrc; its build context holds the
    proxy's sources, never their bytecode."""
    monkeypatch.setenv(PIP_INDEX_URL_ENV, ARTIFACTORY)
    dockerfile = images.proxy_dockerfile("model-factory/python-base:x")
    assert "AKCp8t" not in dockerfile and "build-bot" not in dockerfile and "pip install" not in dockerfile.replace(
        "uv pip install", "")
    first, final = dockerfile.split("\nFROM model-factory/python-base:x\n")
    assert "FROM model-factory/python-base:x AS requirements\nLABEL model-factory.index-credentials=true\n" in first
    assert ("COPY proxy/requirements.txt /opt/proxy-requirements.txt\nCOPY index-auth/netrc /run/index-auth/netrc\n"
            "RUN uv venv --quiet --python /usr/bin/python3 /opt/venv \\\n && uv pip install --quiet --compile-bytecode "
            "--index-strategy unsafe-first-match --python /opt/venv/bin/python \\\n    --index-url "
            "https://artifactory.example/api/pypi/pypi-remote/simple -r /opt/proxy-requirements.txt") in first
    assert final.startswith("COPY --from=requirements /opt/venv /opt/venv\nCOPY proxy /app/proxy\n")
    assert "index-auth" not in final and 'ENTRYPOINT ["python", "-m", "proxy"]' in final
    (images.ROOT / "proxy" / "__pycache__").mkdir(exist_ok=True)  # as any test run that imported the proxy leaves
    context = images.proxy_context(tmp_path / "context", dockerfile)
    assert sorted(path.name for path in context.iterdir()) == ["Dockerfile", "index-auth", "proxy"]
    assert stat.S_IMODE((context / "index-auth" / "netrc").stat().st_mode) == 0o600
    assert sorted(path.name for path in (context / "proxy").iterdir()) == sorted(
        path.name for path in (images.ROOT / "proxy").iterdir() if path.name != "__pycache__")


def test_without_credentials_the_proxy_image_is_one_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PIP_EXTRA_INDEX_URL_ENV, "https://nexus.example/simple")
    dockerfile = images.proxy_dockerfile("base:x")
    assert dockerfile.count("FROM ") == 1 and "LABEL" not in dockerfile and "NETRC" not in dockerfile
    assert "--extra-index-url https://nexus.example/simple -r /opt/proxy-requirements.txt" in dockerfile
