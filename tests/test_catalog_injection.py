"""Hostile strings never get past `factory validate`: nothing user-supplied reaches a shell line,
a YAML document, a URL path or a Kubernetes name unvalidated."""

from __future__ import annotations

import json

import pytest
import yaml

from factory.errors import CatalogError
from factory.loader import parse_catalog

HOSTILE = [
    "a; rm -rf /",
    "$(curl evil)",
    "`id`",
    "a\nb: injected",
    "a\r\nX-Injected: 1",
    "../../etc/passwd",
    "..",
    "a/../b",
    "!!python/object/apply:os.system ['id']",
    "&anchor",
    "*alias",
    "{{ config }}",
    "{% raw %}",
    "p\u0430yment",        # Cyrillic 'а' looks like Latin 'a'
    "ｆｕｌｌwidth",        # fullwidth letters
    "name\u200bzero",      # zero-width space
    "caf\u00e9",
    "a b",
    "a\tb",
    "a'b",
    'a"b',
    "a\\b",
    "a#b",
    "a:b",
    "a|b",
    "a>b",
    "",
    "x" * 64,
    "-leading-dash",
]

FIELDS = {
    "name": lambda v: {"models": [{"name": v, "version": 1, "endpoint": "p"}]},
    "registry_name": lambda v: {"models": [{"name": "m", "registry_name": v, "version": 1, "endpoint": "p"}]},
    "alias": lambda v: {"models": [{"name": "m", "alias": v, "endpoint": "p"}]},
    "endpoint": lambda v: {"models": [{"name": "m", "version": 1, "endpoint": v}]},
    "parameter": lambda v: {"models": [{"name": "m", "version": 1, "endpoint": "p", "parameters": [v]}]},
    "gpu_type": lambda v: {"models": [{"name": "m", "version": 1, "endpoint": "p",
                                       "resources": {"gpu": 1, "gpu_type": v}}]},
    "namespace": lambda v: {"kubernetes": {"namespace": v}, "models": [{"name": "m", "version": 1, "endpoint": "p"}]},
    "image_registry": lambda v: {"kubernetes": {"image_registry": v},
                                 "models": [{"name": "m", "version": 1, "endpoint": "p"}]},
    "image pull secret": lambda v: {"kubernetes": {"image_pull_secrets": [v]},
                                    "models": [{"name": "m", "version": 1, "endpoint": "p"}]},
    "sticky header": lambda v: _experiment({"header": v}),
    "sticky field": lambda v: _experiment({"field": v}),
    "experiment name": lambda v: _experiment({"header": "X-User"}, name=v),
}

# Long or dash-led values are legitimate in a few fields; everything else in HOSTILE never is.
ALLOWED = {("registry_name", "-leading-dash"), ("alias", "x" * 64), ("image pull secret", "x" * 64), ("registry_name", "x" * 64),
           ("image_registry", "x" * 64), ("sticky header", "x" * 64), ("sticky field", "x" * 64)}


def _experiment(sticky: dict, name: str = "ab") -> dict:
    return {
        "models": [{"name": "m_a", "version": 1, "endpoint": "p", "parameters": ["a"]},
                   {"name": "m_b", "version": 1, "endpoint": "p", "parameters": ["b"]}],
        "experiments": [{"name": name, "endpoint": "q", "sticky_key": sticky,
                         "variants": [{"model": "m_a", "weight": 50}, {"model": "m_b", "weight": 50}]}],
    }


CASES = [(field, value) for field in sorted(FIELDS) for value in HOSTILE if (field, value) not in ALLOWED]


@pytest.mark.parametrize("field, value", CASES, ids=[f"{f}={json.dumps(v)[:24]}" for f, v in CASES])
def test_hostile_value_is_rejected_with_its_location(field: str, value: str) -> None:
    # Fully quoted scalars: the hostile text reaches the validator intact, as a careful attacker would write it.
    text = yaml.safe_dump(FIELDS[field](value), default_style='"')
    with pytest.raises(CatalogError) as caught:
        parse_catalog(text)
    (line, *_) = caught.value.lines()
    assert line.startswith("models.yaml:")
    # The echo of the value escapes control and non-ASCII characters, so the message itself is safe.
    assert "\n" not in line and line.isascii()


def test_every_accepted_name_is_a_valid_kubernetes_name() -> None:
    catalog = parse_catalog("- {name: Match_Prob_2_TAXI, version: 1, endpoint: p}\n")
    (model,) = catalog.models
    assert model.k8s_name == "match-prob-2-taxi"
