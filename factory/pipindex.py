"""The platform's package index (FACTORY_PIP_INDEX_URL, FACTORY_PIP_EXTRA_INDEX_URL, read and checked in
factory/settings.py) as each installer takes it, its credentials kept out of everything the factory writes.

The serving venv's `uv pip install` gets the URLs, credentials included, in its environment (never its command
line, which `ps` shows). An image build gets the URLs without credentials as `uv pip install` options in its Dockerfile, and
the credentials as a netrc file (uv reads $NETRC) that only the Dockerfile's first stage copies: the image copies
the installed venv out of that stage, and factory/images.py deletes the stage once the build ends. Messages pass
through `Settings.redact`.
"""

from __future__ import annotations

import shlex

from factory.settings import Settings, index_credentials, public_url

# Where the build context carries the netrc (beside the Bento's own folder, which the image copies whole).
NETRC_DIR = "index-auth"
# Every image stage that saw the netrc carries this label: what is deleted after the build, whether it passed.
SECRET_STAGE_LABEL = "model-factory.index-credentials"


def _urls(settings: Settings) -> list[tuple[str, str]]:
    return [(option, url) for option, url in (("--index-url", settings.pip_index_url),
                                              ("--extra-index-url", settings.pip_extra_index_url)) if url]


def uv_environment(settings: Settings) -> dict[str, str]:
    """uv's own variables for the platform's indexes, credentials included (messages pass through redact)."""
    names = {"--index-url": "UV_INDEX_URL", "--extra-index-url": "UV_EXTRA_INDEX_URL"}
    return {names[option]: url for option, url in _urls(settings)}


def uv_options(settings: Settings) -> str:
    """`uv pip install` options naming the platform's indexes, without credentials (they go in the Dockerfile)."""
    return " ".join(f"{option} {shlex.quote(public_url(url))}" for option, url in _urls(settings))


def netrc(settings: Settings) -> str:
    """The credentials of the platform's indexes as a netrc file; "" when the URLs carry none."""
    entries = {}
    for _, url in _urls(settings):
        found = index_credentials(url)
        if found:
            host, user, password = found
            entries.setdefault(host, f"machine {host} login {user} password {password}\n")
    return "".join(entries[host] for host in sorted(entries))
