"""Engine API helpers: how a tag splits for the API, which pushes carry GitLab's job credentials, and the modes a
build context reaches the engine with."""

from __future__ import annotations

import os
import tarfile
from types import SimpleNamespace

import pytest

from factory import dockerapi
from factory.dockerapi import repository, unreachable
from factory.images import registry_auth

GITLAB = {"CI_REGISTRY": "registry.gitlab.com", "CI_REGISTRY_USER": "gitlab-ci-token", "CI_REGISTRY_PASSWORD": "t0k"}


@pytest.mark.parametrize("tag, split", [
    ("127.0.0.1:5000/a/b:1f2e", ("127.0.0.1:5000/a/b", "1f2e")),
    ("127.0.0.1:5000/a/b", ("127.0.0.1:5000/a/b", None)),
    ("model-factory/python-base:abc", ("model-factory/python-base", "abc")),
    ("debian", ("debian", None)),
])
def test_a_tag_splits_into_repository_and_tag(tag: str, split: tuple) -> None:
    assert repository(tag) == split


@pytest.mark.parametrize("environ, tag, auth", [
    (GITLAB, "registry.gitlab.com/group/project/model:1",
     {"username": "gitlab-ci-token", "password": "t0k", "serveraddress": "registry.gitlab.com"}),
    (GITLAB, "registry.gitlab.com.evil.io/group/project/model:1", None),  # another host: never the job token
    (GITLAB, "127.0.0.1:5000/model-factory/model:1", None),
    ({"CI_REGISTRY": "registry.gitlab.com"}, "registry.gitlab.com/group/project/model:1", None),
    ({}, "registry.gitlab.com/group/project/model:1", None),
])
def test_only_pushes_to_ci_registry_carry_the_job_credentials(monkeypatch: pytest.MonkeyPatch, environ: dict,
                                                              tag: str, auth) -> None:
    for name in GITLAB:
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert registry_auth(tag) == auth


@pytest.mark.parametrize("environ, reason", [
    ({"DOCKER_HOST": "unix://{tmp}/gone.sock"},
     "Error while fetching server API version: ('Connection aborted.', FileNotFoundError(2, 'No such file or "
     "directory'))"),
    ({"DOCKER_HOST": "tcp://docker:2376", "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": "{tmp}"},
     "no TLS client certificate (cert.pem, key.pem, ca.pem) in DOCKER_CERT_PATH; on GitLab the runner must share "
     "/certs/client with the Docker-in-Docker service (README \"What the GitLab runner needs\")"),
])
def test_an_engine_that_does_not_answer_says_why_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path,
                                                             environ: dict, reason: str) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value.format(tmp=tmp_path))
    assert unreachable() == reason


def test_a_build_context_written_under_umask_077_reaches_the_engine_readable_by_the_images_user(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`COPY` keeps each context file's mode: a checkout made under umask 077 gave a proxy image whose uid 1034 got
    `PermissionError: '/app/proxy/__init__.py'` (session 10). The engine now gets every entry readable by all, as
    root's, executables still executable, whatever the umask."""
    context = tmp_path / "context"
    previous = os.umask(0o077)
    try:
        (context / "proxy" / "sub").mkdir(parents=True)
        (context / "Dockerfile").write_text("FROM scratch\n")
        (context / "proxy" / "sub" / "app.py").write_text("")
        (context / "uv").write_bytes(b"\x7fELF")
        (context / "uv").chmod(0o700)
    finally:
        os.umask(previous)
    sent: dict = {}

    class Engine:
        def build(self, fileobj, custom_context, **_):
            with tarfile.open(fileobj=fileobj) as tar:
                sent.update({entry.name: (oct(entry.mode), entry.uid, entry.gid) for entry in tar})
            sent["custom_context"] = custom_context
            return iter([{"stream": "Successfully built 0123\n"}])

    monkeypatch.setattr(dockerapi, "_client", lambda *_: SimpleNamespace(api=Engine()))
    dockerapi.build(context, "Dockerfile", "t:1", tmp_path / "image.log")
    assert sent == {"Dockerfile": ("0o644", 0, 0), "proxy": ("0o755", 0, 0), "proxy/sub": ("0o755", 0, 0),
                    "proxy/sub/app.py": ("0o644", 0, 0), "uv": ("0o755", 0, 0), "custom_context": True}
