"""Engine API helpers: how a tag splits for the API, and which pushes carry GitLab's job credentials."""

from __future__ import annotations

import pytest

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
