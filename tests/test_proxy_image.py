"""The proxy image installs exactly the versions the factory tests with."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        name, sep, version = line.strip().partition("==")
        if sep and not line.startswith("#"):
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_image_pins_match_requirements_lock() -> None:
    image, lock = _pins(ROOT / "proxy" / "requirements.txt"), _pins(ROOT / "requirements.lock")
    assert {name: lock.get(name) for name in image} == image


def test_image_pins_cover_every_third_party_import_of_the_proxy() -> None:
    distributions = {"fastapi": "fastapi", "starlette": "fastapi", "httptools": "httptools", "yaml": "pyyaml",
                     "prometheus_client": "prometheus-client", "pydantic": "pydantic", "granian": "granian",
                     "uvloop": "uvloop"}
    imported = set()
    for source in (ROOT / "proxy").glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    import sys

    third_party = {name for name in imported if name not in sys.stdlib_module_names and name != "proxy"}
    assert third_party <= set(distributions), third_party - set(distributions)
    assert {distributions[name] for name in third_party} <= set(_pins(ROOT / "proxy" / "requirements.txt"))
