"""Every rejection of models.yaml, pinned to its exact text: what, where (file:line:col, YAML path), and the fix."""

from __future__ import annotations

import os
import textwrap

import pytest
from click.testing import CliRunner

from factory import yamlsource
from factory.cli import main
from factory.errors import CatalogError
from factory.loader import parse_catalog

VALID_MODEL = """\
- name: m_a
  version: 1
  endpoint: probability
  parameters: [2, TAXI]
"""

LONG_SEGMENT = "Z" + "x" * 62  # the longest route segment

CASES = [
    ("duplicate yaml key", """\
        - name: m_a
          version: 1
          version: 2
          endpoint: p
        """, ["models.yaml:3:3: models[0].version: duplicate key 'version' (first at line 2) "
              "(hint: keep only one of them)"]),
    ("a registered name the factory cannot pass on", """\
        - {name: fraud, registry_name: "Fraud Model", version: 1, endpoint: p}
        """, ["models.yaml:1:32: models[0].registry_name: must contain only ASCII letters, digits, '.', '_' and '-' "
              "(at most 128 characters); got 'Fraud Model' (hint: register the version under such a name too, e.g. "
              "MlflowClient().copy_model_version('models:/NAME/VERSION', 'fraud-model'), and name that here)"]),
    ("duplicate model name", """\
        - {name: m_a, version: 1, endpoint: p, parameters: [a]}
        - {name: m_a, version: 1, endpoint: p, parameters: [b]}
        """, ["models.yaml:2:10: models[1].name: duplicate model name 'm_a'; first at models[0].name, line 1 "
              "(hint: give every model its own name)"]),
    ("names differing only in case collide", """\
        - {name: m_a, version: 1, endpoint: p, parameters: [a]}
        - {name: M_A, version: 1, endpoint: p, parameters: [b]}
        """, ["models.yaml:2:10: models[1].name: model name 'M_A' collides with 'm_a' at models[0].name, line 1: "
              "service names are lowercase (hint: make the names differ by more than letter case)"]),
    ("duplicate route", """\
        - {name: m_a, version: 1, endpoint: p, parameters: [a]}
        - {name: m_b, version: 1, endpoint: p, parameters: [a]}
        """, ["models.yaml:2:37: models[1].endpoint: route /p/a is already served by models[0].endpoint, line 1 "
              "(hint: change endpoint or parameters so every route is unique)"]),
    ("name reserved for the proxy", """\
        - {name: Proxy, version: 1, endpoint: p}
        """, ["models.yaml:1:10: models[0].name: model name 'Proxy' is reserved for the proxy's own objects "
              "(hint: choose another name)"]),
    ("unknown key with suggestion", """\
        - name: m_a
          version: 1
          endpoint: p
          batching: {max_batchsize: 4}
        """, ["models.yaml:4:14: models[0].batching.max_batchsize: unknown key "
              "(hint: did you mean 'max_batch_size'?)"]),
    ("unknown top-level key", """\
        model: []
        models: [{name: m_a, version: 1, endpoint: p}]
        """, ["models.yaml:1:1: model: unknown top-level key (hint: did you mean 'models'?)"]),
    ("zero batch size", """\
        - name: m_a
          version: 1
          endpoint: p
          batching: {max_batch_size: 0}
        """, ["models.yaml:4:30: models[0].batching.max_batch_size: must be ≥ 1 (got 0)"]),
    ("negative latency", """\
        - {name: m_a, version: 1, endpoint: p, batching: {max_latency_ms: -5}}
        """, ["models.yaml:1:67: models[0].batching.max_latency_ms: must be ≥ 1 (got -5)"]),
    ("zero latency objective", """\
        - {name: m_a, version: 1, endpoint: p, slo: {p99_ms: 0}}
        """, ["models.yaml:1:54: models[0].slo.p99_ms: must be ≥ 1 (got 0)"]),
    ("unknown latency objective key", """\
        defaults: {slo: {p95_ms: 50}}
        models: [{name: m_a, version: 1, endpoint: p}]
        """, ["models.yaml:1:18: defaults.slo.p95_ms: unknown key (hint: did you mean 'p99_ms'?)"]),
    ("latency objective as a string", """\
        - {name: m_a, version: 1, endpoint: p, slo: {p99_ms: "100ms"}}
        """, ["models.yaml:1:54: models[0].slo.p99_ms: must be a whole number (got '100ms')"]),
    ("boolean where a number belongs", """\
        - {name: m_a, version: 1, endpoint: p, batching: {max_batch_size: true}}
        """, ["models.yaml:1:67: models[0].batching.max_batch_size: must be a whole number (got true)"]),
    ("version and alias both set", """\
        - {name: m_a, version: 1, alias: champion, endpoint: p}
        """, ["models.yaml:1:3: models[0]: set exactly one of `version` (e.g. 3) or `alias` (e.g. champion)"]),
    ("neither version nor alias", """\
        - {name: m_a, endpoint: p}
        """, ["models.yaml:1:3: models[0]: set exactly one of `version` (e.g. 3) or `alias` (e.g. champion)"]),
    ("missing endpoint", """\
        - {name: m_a, version: 1}
        """, ["models.yaml:1:3: models[0].endpoint: required key is missing (hint: add `endpoint:`)"]),
    ("package requirement with a URL", """\
        - {name: m_a, version: 1, endpoint: p, serving: {packages: ["x @ https://example.com/x.whl"]}}
        """, ["models.yaml:1:61: models[0].serving.packages[0]: must be a package requirement such as "
              "'lightgbm==4.7.0' or 'tabulate>=0.9' (no spaces, URLs or markers); got 'x @ https://example.com/x.whl'"]),
    ("non-finite switch is a boolean", """\
        defaults:
          serving: {allow_non_finite: "yes"}
        models:
          - {name: m_a, version: 1, endpoint: p}
        """, ["models.yaml:2:31: defaults.serving.allow_non_finite: must be true or false (got 'yes')"]),
    ("image pull secret that is no Secret name", """\
        kubernetes:
          image_pull_secrets: [GitLab_Registry]
        models:
          - {name: m_a, version: 1, endpoint: p}
        """, ["models.yaml:2:24: kubernetes.image_pull_secrets[0]: must be a Secret's name: a DNS-1123 subdomain "
              "(lowercase letters, digits, '-' and '.', at most 253 characters); got 'GitLab_Registry'"]),
    ("gpu_type without gpu", """\
        - {name: m_a, version: 1, endpoint: p, resources: {gpu_type: nvidia-tesla-t4}}
        """, ["models.yaml:1:51: models[0].resources: gpu_type is set but gpu is 0; set gpu: 1 (or more) "
              "or remove gpu_type"]),
    ("bad cpu quantity", """\
        - {name: m_a, version: 1, endpoint: p, resources: {cpu: 0}}
        """, ["models.yaml:1:57: models[0].resources.cpu: must be a positive quantity such as 1, 0.5 or 500m "
              "(got 0)"]),
    ("bad memory quantity", """\
        - {name: m_a, version: 1, endpoint: p, resources: {memory: 12QB}}
        """, ["models.yaml:1:60: models[0].resources.memory: must be a positive quantity such as 512Mi or 2Gi "
              "(got '12QB')"]),
    ("min replicas above max", """\
        - {name: m_a, version: 1, endpoint: p, scaling: {min_replicas: 5, max_replicas: 2}}
        """, ["models.yaml:1:49: models[0].scaling: min_replicas (5) is above max_replicas (2)"]),
    ("YAML boolean as a parameter", """\
        - {name: m_a, version: 1, endpoint: p, parameters: [NO]}
        """, ["models.yaml:1:53: models[0].parameters[0]: must be a string (got false) (hint: YAML reads "
              "unquoted yes/no/on/off as booleans and 1.10 as a number: quote the value, e.g. 'NO')"]),
    ("weights not summing to 100", """\
        models:
          - {name: m_a, version: 1, endpoint: p, parameters: [a]}
          - {name: m_b, version: 1, endpoint: p, parameters: [b]}
        experiments:
          - name: ab
            endpoint: p
            variants: [{model: m_a, weight: 60}, {model: m_b, weight: 30}]
        """, ["models.yaml:7:15: experiments[0].variants: weights sum to 90; they must sum to 100 "
              "(hint: adjust the weights, e.g. 50/50 or 90/10)"]),
    ("experiment naming an unknown model", """\
        models:
          - {name: m_a, version: 1, endpoint: p, parameters: [a]}
          - {name: m_b, version: 1, endpoint: p, parameters: [b]}
        experiments:
          - name: ab
            endpoint: p
            variants: [{model: m_a, weight: 50}, {model: m_c, weight: 50}]
            shadows: [m_d]
        """, ["models.yaml:7:50: experiments[0].variants[1].model: unknown model 'm_c' (hint: did you mean 'm_b'?)",
              "models.yaml:8:15: experiments[0].shadows[0]: unknown model 'm_d' (hint: did you mean 'm_b'?)"]),
    ("experiment route taken by a model", """\
        models:
          - {name: m_a, version: 1, endpoint: p, parameters: [a]}
          - {name: m_b, version: 1, endpoint: p, parameters: [b]}
        experiments:
          - name: ab
            endpoint: p
            parameters: [a]
            variants: [{model: m_a, weight: 50}, {model: m_b, weight: 50}]
        """, ["models.yaml:6:15: experiments[0].endpoint: route /p/a is already served by models[0].endpoint, "
              "line 2 (hint: change endpoint or parameters so every route is unique)"]),
    ("experiment with one variant", """\
        models: [{name: m_a, version: 1, endpoint: p}]
        experiments:
          - {name: ab, endpoint: q, variants: [{model: m_a, weight: 100}]}
        """, ["models.yaml:3:39: experiments[0].variants: must have at least 2 item(s) (got 1)"]),
    ("shadow that is also a variant", """\
        models:
          - {name: m_a, version: 1, endpoint: p, parameters: [a]}
          - {name: m_b, version: 1, endpoint: p, parameters: [b]}
        experiments:
          - name: ab
            endpoint: q
            variants: [{model: m_a, weight: 50}, {model: m_b, weight: 50}]
            shadows: [m_a]
        """, ["models.yaml:8:15: experiments[0].shadows[0]: model 'm_a' is already a variant of this experiment "
              "(hint: a shadow gets copies of traffic; remove it from variants or from shadows)"]),
    ("sticky key with both header and field", """\
        models:
          - {name: m_a, version: 1, endpoint: p, parameters: [a]}
          - {name: m_b, version: 1, endpoint: p, parameters: [b]}
        experiments:
          - name: ab
            endpoint: q
            sticky_key: {header: X-User, field: user}
            variants: [{model: m_a, weight: 50}, {model: m_b, weight: 50}]
        """, ["models.yaml:7:17: experiments[0].sticky_key: set exactly one of `header` (e.g. X-User-Id) or "
              "`field` (a JSON body field such as user_id)"]),
    ("defaults typo", """\
        defaults: {batchin: {max_batch_size: 2}}
        models: [{name: m_a, version: 1, endpoint: p}]
        """, ["models.yaml:1:12: defaults.batchin: unknown key (hint: did you mean 'batching'?)"]),
    ("invalid value in defaults is reported once, at defaults", """\
        defaults: {batching: {max_batch_size: 0}}
        models: [{name: m_a, version: 1, endpoint: p}, {name: m_b, version: 1, endpoint: q}]
        """, ["models.yaml:1:39: defaults.batching.max_batch_size: must be ≥ 1 (got 0)"]),
    ("matrix placeholder that is not a variable", """\
        - matrix: {city: [2, 3]}
          name: m_{city}
          version: 1
          endpoint: p
          parameters: ["{cty}"]
        """, ["models.yaml:5:16: models[0].parameters[0]: uses {cty}, which is not a matrix variable "
              "(hint: did you mean 'city'?)"]),
    ("matrix variable missing from the name", """\
        - matrix: {city: [2, 3], segment: [TAXI]}
          name: m_{city}
          version: 1
          endpoint: p
          parameters: ["{city}", "{segment}"]
        """, ["models.yaml:2:9: models[0].name: must use matrix variable {segment} so every expanded model "
              "gets its own name"]),
    ("matrix value that expands to an unsafe name", """\
        - matrix: {city: [2, "x y"]}
          name: m_{city}
          version: 1
          endpoint: p
          parameters: ["{city}"]
        """, ["models.yaml:2:9: models[0].name: must start with a letter, end with a letter or digit and contain "
              "only ASCII letters, digits and '_' (at most 63 characters); got 'm_x y' (matrix: city=x y)",
              "models.yaml:5:16: models[0].parameters[0]: must start with a letter or digit and contain only ASCII "
              "letters, digits, '.', '_' and '-' (at most 63 characters); got 'x y' (matrix: city=x y)"]),
    ("empty file", "", ["models.yaml:1:1: expected exactly one YAML document, found 0 (hint: add models to the file)"]),
    ("YAML syntax error", "- name: [unclosed\n", [
        "models.yaml:2:1: YAML syntax error: expected ',' or ']', but got '<stream end>' "
        "(hint: check indentation and quoting around this line)"]),
    ("python object tag", "- !!python/object:os.system {name: m_a}\n", [
        "models.yaml:1:3: models[0]: unsupported YAML tag 'tag:yaml.org,2002:python/object:os.system' "
        "(hint: remove the tag; models.yaml takes plain strings, numbers, lists and mappings)"]),
    ("custom tag", "- {name: !shell m_a, version: 1, endpoint: p}\n", [
        "models.yaml:1:10: models[0].name: unsupported YAML tag '!shell' "
        "(hint: remove the tag; models.yaml takes plain strings, numbers, lists and mappings)"]),
    ("merge key", "- {<<: {version: 1}, name: m_a, endpoint: p}\n", [
        "models.yaml:1:4: models[0]: YAML merge keys (<<) are not supported "
        "(hint: put shared settings under `defaults:` instead)"]),
    ("a route the proxy answers itself", """\
        - {name: m_a, version: 1, endpoint: metrics}
        - matrix: {e: [docs]}
          name: m_{e}
          version: 1
          endpoint: "{e}"
          parameters: [oauth2-redirect]
        """, ["models.yaml:1:37: models[0].endpoint: route /metrics is the proxy's own endpoint (it answers /docs, "
              "/docs/oauth2-redirect, /healthz, /metrics, /openapi.json, /readyz, /redoc itself) (hint: change "
              "endpoint or add parameters)",
              "models.yaml:5:13: models[1].endpoint: route /docs/oauth2-redirect is the proxy's own endpoint "
              "(matrix: e=docs) (it answers /docs, /docs/oauth2-redirect, /healthz, /metrics, /openapi.json, /readyz, "
              "/redoc itself) (hint: change endpoint or add parameters)"]),
    ("an experiment on a route the proxy answers itself", """\
        models:
          - {name: m_a, version: 1, endpoint: p, parameters: [a]}
          - {name: m_b, version: 1, endpoint: p, parameters: [b]}
        experiments:
          - {name: ab, endpoint: readyz, variants: [{model: m_a, weight: 50}, {model: m_b, weight: 50}]}
        """, ["models.yaml:5:26: experiments[0].endpoint: route /readyz is the proxy's own endpoint (it answers "
              "/docs, /docs/oauth2-redirect, /healthz, /metrics, /openapi.json, /readyz, /redoc itself) (hint: change "
              "endpoint or add parameters)"]),
    ("a version past the registry's integer column", """\
        - {name: m_a, version: 99999999999999999999, endpoint: p}
        """, ["models.yaml:1:24: models[0].version: must be ≤ 2147483647 (got 99999999999999999999)"]),
    ("a null key, echoed as written", "- {name: m_a, version: 1, endpoint: p, ~: x}\n", [
        "models.yaml:1:40: models[0].~: unknown key (hint: allowed keys: endpoint, parameters, name, registry_name, "
        "version, alias, batching, resources, scaling, serving, compile, slo)"]),
    ("an empty models list", "models: []\n", [
        "models.yaml:1:9: models: must be a non-empty list of models (got an empty list) (hint: see README: "
        "models.yaml reference)"]),
    ("a bare number", "42\n", [
        "models.yaml:1:1: must be a list of models or a mapping with kubernetes, pipeline, defaults, models, "
        "experiments (got a number) (hint: is this the right file? `factory validate -f PATH/TO/models.yaml`)"]),
    ("a route longer than the proxy takes (render failed, 'a bug in the factory')",
     "- {name: m_a, version: 1, endpoint: " + LONG_SEGMENT + ", parameters: [" + ", ".join([LONG_SEGMENT] * 8) + "]}\n",
     ["models.yaml:1:37: models[0].endpoint: route /Zxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx... is 576 characters "
      "long; the proxy takes at most 512 (hint: use fewer or shorter parameters)"]),
    ("a NUL byte, located", "- {name: m_a, version: 1,\n   endpoint: p\x00}\n", [
        "models.yaml:2:15: not a text file: character #x0000 is not allowed in YAML (hint: is this the right file?)"]),
]


@pytest.mark.parametrize("label, text, expected", CASES, ids=[case[0] for case in CASES])
def test_rejection_is_reported_exactly(label: str, text: str, expected: list[str]) -> None:
    with pytest.raises(CatalogError) as caught:
        parse_catalog(textwrap.dedent(text))
    assert caught.value.lines() == expected


def test_several_problems_are_all_reported_in_file_order() -> None:
    text = textwrap.dedent("""\
        - {name: m_a, version: 0, endpoint: p}
        - {name: m_b, version: 1, endpoint: "a b"}
        """)
    with pytest.raises(CatalogError) as caught:
        parse_catalog(text)
    assert [line.split(": ")[0] for line in caught.value.lines()] == ["models.yaml:1:24", "models.yaml:2:37"]


def test_seed_format_is_accepted_verbatim() -> None:
    catalog = parse_catalog(textwrap.dedent("""\
        - name: match_probability_2_TAXI_trafficunaware
          version: 1
          endpoint: probability
          parameters: [2, TAXI, trafficunaware]
        """))
    (model,) = catalog.models
    assert model.route == "/probability/2/TAXI/trafficunaware"
    assert model.registered_as == "match_probability_2_TAXI_trafficunaware"


def test_defaults_apply_unless_overridden() -> None:
    catalog = parse_catalog(textwrap.dedent("""\
        defaults:
          alias: champion
          batching: {max_batch_size: 8, max_latency_ms: 50}
        models:
          - {name: m_a, endpoint: p}
          - {name: m_b, version: 4, endpoint: q, batching: {max_batch_size: 2}}
        """))
    first, second = catalog.models
    assert (first.alias, first.version, first.batching.max_batch_size) == ("champion", None, 8)
    assert (second.alias, second.version, second.batching.max_batch_size) == (None, 4, 2)
    assert second.batching.max_latency_ms == 50


def test_matrix_expands_in_order() -> None:
    catalog = parse_catalog(textwrap.dedent("""\
        - matrix: {city: [2, 5], segment: [TAXI, PHV]}
          name: p_{city}_{segment}
          version: 1
          endpoint: probability
          parameters: ["{city}", "{segment}"]
        """))
    assert [m.route for m in catalog.models] == ["/probability/2/TAXI", "/probability/2/PHV",
                                                  "/probability/5/TAXI", "/probability/5/PHV"]


@pytest.mark.parametrize("label, text, expected", CASES, ids=[case[0] for case in CASES])
def test_render_cli_prints_exactly_these_lines_and_writes_nothing(label: str, text: str, expected: list[str],
                                                                  tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models.yaml").write_text(textwrap.dedent(text))
    result = CliRunner().invoke(main, ["render", "-f", "models.yaml", "-o", "build"])  # click 8.2+: stderr apart
    assert (result.exit_code, result.stderr.splitlines(), result.stdout) == (1, expected, "")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["models.yaml"]


def test_every_independent_problem_in_one_pass() -> None:
    """A type error no longer hides a missing version, a duplicate route or an unknown variant."""
    text = textwrap.dedent("""\
        models:
          - name: a
            endpoint: probability
            parameters: [x]
            batching: {max_batch_size: lots}
          - name: b
            version: 1
            endpoint: probability
            parameters: [y]
          - name: c
            version: 1
            endpoint: probability
            parameters: [y]
        experiments:
          - name: e
            endpoint: e
            parameters: [z]
            variants:
              - {model: a, weight: 50}
              - {model: nope, weight: 50}
        """)
    with pytest.raises(CatalogError) as caught:
        parse_catalog(text)
    assert caught.value.lines() == [
        "models.yaml:2:5: models[0]: set exactly one of `version` (e.g. 3) or `alias` (e.g. champion)",
        "models.yaml:5:32: models[0].batching.max_batch_size: must be a whole number (got 'lots')",
        "models.yaml:12:15: models[2].endpoint: route /probability/y is already served by models[1].endpoint, "
        "line 8 (hint: change endpoint or parameters so every route is unique)",
        "models.yaml:20:17: experiments[0].variants[1].model: unknown model 'nope' (hint: name a model listed "
        "under models:)",
    ]


def test_symlinked_catalog_is_named_and_its_text_not_echoed(tmp_path) -> None:
    secret = tmp_path / "id_rsa"
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU\n")
    link = tmp_path / "models.yaml"
    link.symlink_to(secret)
    result = CliRunner().invoke(main, ["validate", "-f", str(link)])
    assert (result.exit_code, result.stderr) == (1, (
        f"{link} -> {secret}:1:1: must be a list of models or a mapping with kubernetes, pipeline, defaults, "
        "models, experiments (got a plain string of 67 characters) (hint: is this the right file? "
        "`factory validate -f PATH/TO/models.yaml`)\n"))


def test_symlink_loop_is_one_line(tmp_path) -> None:
    link = tmp_path / "models.yaml"
    link.symlink_to(link.name)
    result = CliRunner().invoke(main, ["validate", "-f", str(link)])
    assert (result.exit_code, result.stderr) == (1, f"{link} -> (a symlink loop): cannot read: Too many levels of "
                                                    "symbolic links (hint: pass -f the path of the catalog file "
                                                    "itself)\n")


def _fifo(path) -> None:
    os.mkfifo(path)


FILE_CASES = [
    ("a byte that is not UTF-8", lambda p: p.write_bytes(b"- {name: m_a,\n   version: 1, endpoint: p\xff}\n"),
     "{file}:2:27: not UTF-8 text: byte 0xff (hint: save the file as UTF-8)"),
    ("a UTF-16 file", lambda p: p.write_text("- {name: m_a, version: 1, endpoint: p}\n", encoding="utf-16"),
     "{file}:1:1: not UTF-8 text: byte 0xff (the file is UTF-16) (hint: save the file as UTF-8)"),
    ("a directory", lambda p: p.mkdir(), "{file}: cannot read: is a directory (hint: pass -f the path of the "
                                         "catalog file itself)"),
    ("a FIFO (reading it blocked forever)", _fifo, "{file}: cannot read: not a regular file (hint: pass -f the "
                                                   "path of the catalog file itself)"),
]


@pytest.mark.parametrize("label, make, expected", FILE_CASES, ids=[case[0] for case in FILE_CASES])
def test_a_catalog_file_that_is_no_utf8_text_file_is_one_located_line(tmp_path, label, make, expected) -> None:
    path = tmp_path / "models.yaml"
    make(path)
    result = CliRunner().invoke(main, ["validate", "-f", str(path)])
    assert (result.exit_code, result.stderr) == (1, expected.format(file=path) + "\n")


@pytest.mark.parametrize("command", ["build", "test", "manifests"])
def test_unknown_model_names_on_the_command_line_are_echoed_escaped(tmp_path, command: str) -> None:
    """A name from the command line may hold a line break or a terminal escape: echoed as an escaped literal."""
    (tmp_path / "models.yaml").write_text(VALID_MODEL)
    result = CliRunner().invoke(main, [command, "-f", str(tmp_path / "models.yaml"), "m_a\n\x1b[2Jx", "m_z"],
                                env={"FACTORY_STATE": str(tmp_path / "state")})
    assert (result.exit_code, result.stderr) == (1, "not in models.yaml: 'm_a\\n\\x1b[2Jx', 'm_z'; run `factory "
                                                    "routes` to list the models\n")


LOCATED_ALIKE = [
    "- {name: größe_ä, version: 1, endpoint: p, parameters: ['日本', x]}  # ü\n- {name: b, version: 0, endpoint: q}\n",
    "\ufeff- {name: a, version: 1, endpoint: p, bogus: 1}\n",
    "models:\r\n  - name: a\r\n    version: 1\r\n    version: 2\r\n    endpoint: p\r\n",
    "models:\n  - name: >\n      folded\n      text\n    version: 1\n    endpoint: !shell p\n",
]


@pytest.mark.parametrize("text", LOCATED_ALIKE)
def test_libyaml_and_the_python_composer_locate_every_value_alike(text: str, monkeypatch) -> None:
    """libyaml composes large catalogs (factory/yamlsource.py `_compose`); every line:col must be as PyYAML's."""
    fast = yamlsource.load_located(text, "models.yaml")
    monkeypatch.setattr(yamlsource, "_FAST_LOADER", None)
    slow = yamlsource.load_located(text, "models.yaml")
    assert (fast[1].values, fast[1].keys, fast[2:]) == (slow[1].values, slow[1].keys, slow[2:])


def test_a_large_catalogs_syntax_error_is_libyamls_at_the_same_place() -> None:
    """Past REWORDED_CHARACTERS the Python composer is not run again only to word the error its own way."""
    rows = "".join(f"  - {{name: m_{i}, version: 1, endpoint: p, parameters: [x{i}]}}\n" for i in range(5_000))
    text = "models:\n" + rows + "  - {name: [unclosed\n"
    assert len(text) > yamlsource.REWORDED_CHARACTERS
    with pytest.raises(CatalogError) as caught:
        parse_catalog(text)
    assert caught.value.lines() == ["models.yaml:5003:1: YAML syntax error: did not find expected ',' or ']' "
                                    "(hint: check indentation and quoting around this line)"]
