"""A registry model's own requirements.txt: untrusted input on its way to pip and to the image's uv.

MLflow writes the author's `pip_requirements` into requirements.txt verbatim, pip options included, and pip
and uv obey a requirements file's options as if they were on the command line. So a model could point the
build at another package index, a URL, a local path or a git checkout, or turn TLS checks off, and a CI job
holding registry credentials would run it. A build takes its package indexes and sources from the platform,
never from a model: only requirement lines (name, extras, version, markers) are taken from the file; every
other line is one error naming the file, the line and the fix. A model without requirements.txt has its
conda.yaml's pip entries read the same way (factory/model_env.py); python_env.yaml is never read.
"""

from __future__ import annotations

import re

from packaging.requirements import InvalidRequirement, Requirement

from factory.errors import BuildError

# MLflow writes `-c constraints.txt` itself when a model is logged with constraints; the runtime's lock
# constrains the serving venv instead, so the line is left out (it never reaches pip).
IGNORED_OPTIONS = frozenset({"-c", "--constraint"})
OPTION_MEANINGS = {
    "-i": "another package index", "--index-url": "another package index",
    "--extra-index-url": "another package index", "--no-index": "no package index",
    "-f": "a place to find packages", "--find-links": "a place to find packages",
    "--trusted-host": "a host whose TLS certificate is not checked",
    "-e": "an editable install of a source tree or VCS checkout",
    "--editable": "an editable install of a source tree or VCS checkout",
    "-r": "another requirements file", "--requirement": "another requirements file",
}
INDEX_OPTIONS = frozenset({"-i", "--index-url", "--extra-index-url", "--no-index", "-f", "--find-links",
                           "--trusted-host"})
INDEX_HINT = ("; a package index is the platform's choice (FACTORY_PIP_INDEX_URL / FACTORY_PIP_EXTRA_INDEX_URL; "
              "FACTORY_TORCH_CPU_INDEX for PyTorch's CPU builds)")
_SOURCE = re.compile(r"^(?:[a-z][a-z0-9+.-]*://|[a-z]+\+[a-z]+:|\.{0,2}/|~)|\.(?:whl|zip|tar\.gz|tar\.bz2|tgz)$",
                     re.IGNORECASE)
FIX = "remove it from the model's pip_requirements and register a new version"


def model_requirements(text: str, source: str) -> list[Requirement]:
    """The requirement lines of a model's requirements.txt; comments, blank lines and MLflow's own
    constraints line are skipped, anything else that is not a plain requirement is refused."""
    found = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}:{number}"
        if line.startswith("-"):
            _option(line, where)
            continue
        found.append(_requirement(line, where))
    return found


def _option(line: str, where: str) -> None:
    # pip's parsing: a long option ends at `=` or a space, a short one is one letter (`-ihttp://…` is -i).
    name = re.split(r"[\s=]", line, maxsplit=1)[0] if line.startswith("--") else line[:2]
    if name in IGNORED_OPTIONS:
        return
    meaning = OPTION_MEANINGS.get(name)
    what = f"pip option {name} ({meaning})" if meaning else f"pip option {name}"
    hint = INDEX_HINT if name in INDEX_OPTIONS else ""
    raise BuildError(f"{where}: {what} is refused: a build takes its package indexes and sources from the "
                     f"platform, never from a model; {FIX}{hint}")


def _requirement(line: str, where: str) -> Requirement:
    option = re.search(r"\s(--?[A-Za-z][A-Za-z-]*)", line)
    if option:  # per-requirement options: --hash, --config-settings, --global-option
        raise BuildError(f"{where}: pip option {option.group(1)} after {line.split()[0]!r} is refused: only the "
                         f"requirement itself is taken from a model; re-log the model without the option")
    try:
        requirement, error = Requirement(line), None
    except InvalidRequirement as exc:
        requirement, error = None, exc
    if requirement is not None and requirement.url:
        raise BuildError(f"{where}: '{requirement.name} @ {requirement.url}' installs from a URL, which is refused: "
                         f"a build installs published packages only; require '{requirement.name}' by version "
                         f"instead ({FIX})")
    if _SOURCE.search(line.split(";", 1)[0].strip()):
        raise BuildError(f"{where}: {line!r} is a file, URL or VCS source, which is refused: a build installs "
                         f"published packages only; publish it to your package index and require it by name and "
                         f"version ({FIX})")
    if requirement is None:
        raise BuildError(f"{where}: not a requirement: {line!r} ({error}); re-log the model with valid "
                         "pip_requirements") from error
    return requirement
