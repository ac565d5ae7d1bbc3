"""Text graphs open without the en_US locale, answering as they did under it (factory/onnx_locale.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from factory.onnx_locale import PORTABLE, portable

# Every code point below U+30000 but surrogates, each as its own string, lowered and uppered by a StringNormalizer.
CASES = """
import json, sys
import numpy as np, onnxruntime
from onnx import TensorProto, helper
chars = [chr(c) for c in range(1, 0x30000) if not 0xD800 <= c < 0xE000]
answers = {}
for action in ("LOWER", "UPPER"):
    named = {"locale": sys.argv[1]} if sys.argv[1] else {}
    node = helper.make_node("StringNormalizer", ["x"], ["y"], case_change_action=action, **named)
    values = [helper.make_tensor_value_info(name, TensorProto.STRING, [None]) for name in ("x", "y")]
    graph = helper.make_model(helper.make_graph([node], "g", values[:1], values[1:]),
                              opset_imports=[helper.make_opsetid("", 17)])
    session = onnxruntime.InferenceSession(graph.SerializeToString())
    answers[action] = session.run(None, {"x": np.array(chars, dtype=object)})[0].tolist()
print(json.dumps(answers))
"""


def _cased(locale: str, env: dict) -> dict:
    ran = subprocess.run([sys.executable, "-c", CASES, locale], capture_output=True, text=True, env=env, timeout=120)
    assert ran.returncode == 0, ran.stderr[-2000:]
    return json.loads(ran.stdout)


def test_c_utf8_cases_every_code_point_as_en_us_utf8_does(tmp_path: Path) -> None:
    """The graph's own default, en_US.UTF-8, compiled here from glibc's sources (Debian's `locales`) into a LOCPATH of
    the test's, against the C.UTF-8 the factory names: 194,559 code points, lowered and uppered."""
    if not shutil.which("localedef") or not Path("/usr/share/i18n/locales/en_US").is_file():
        pytest.skip("glibc's locale sources are not installed (Debian: apt-get install locales)")
    subprocess.run(["localedef", "-i", "en_US", "-c", "-f", "UTF-8", str(tmp_path / "en_US.UTF-8")], check=True,
                   capture_output=True, timeout=120)
    env = {"PATH": "/usr/bin:/bin", "LOCPATH": str(tmp_path)}
    assert _cased("", env) == _cased(PORTABLE, env)


def _normalizer(**named) -> object:
    from onnx import helper

    return helper.make_node("StringNormalizer", ["x"], ["y"], case_change_action="LOWER", **named)


def test_only_a_normalizer_naming_no_locale_is_given_c_utf8_in_its_graph_subgraphs_and_functions() -> None:
    from onnx import TensorProto, helper

    values = [helper.make_tensor_value_info(name, TensorProto.STRING, [None]) for name in ("x", "y")]
    branch = helper.make_graph([_normalizer()], "branch", [], values[1:])
    model = helper.make_model(helper.make_graph(
        [_normalizer(), _normalizer(locale="fr_FR.UTF-8"),
         helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)], "g", values[:1], values[1:]),
        functions=[helper.make_function("local", "f", ["x"], ["y"], [_normalizer()], [helper.make_opsetid("", 17)])])
    assert portable(model)
    locales = [[helper.get_attribute_value(a) for a in node.attribute if a.name == "locale"]
               for node in [*model.graph.node[:2], model.graph.node[2].attribute[0].g.node[0],
                            model.functions[0].node[0]]]
    assert locales == [[b"C.UTF-8"], [b"fr_FR.UTF-8"], [b"C.UTF-8"], [b"C.UTF-8"]]
    assert not portable(model)  # once is enough: nothing left to name


@pytest.mark.parametrize("words", [("Good", "bad", "GREAT", "awful", "Service", "day", "FOOD"),
                                   ("Good", "bad", "GREAT", "awful", "Café", "ÉTÉ", "day", "Ölçü")],
                         ids=["ascii", "accented"])
def test_a_scikit_learn_text_pipeline_compiles_where_its_graph_tokenizes_as_the_vectorizer(tmp_path: Path,
                                                                                         words: tuple) -> None:
    """Its converted graph opens (before, not here, and the pipeline stayed native) and lowers the text as the
    vectorizer does. skl2onnx's tokenizer splits an accented word otherwise than the vectorizer's pattern ("Café"),
    which the rows around the input example show: that pipeline stays native, saying so."""
    import numpy as np
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from e2e_support.compiled_forms import golden_cases, registry_answers, served_rows
    from factory.catalog import Compile
    from factory.compiled import COMPILED_FILE, decide
    from factory.exactness import compare

    rng = np.random.default_rng(4)
    frame = pd.DataFrame({"review": [" ".join(rng.choice(words, rng.integers(1, 6))) for _ in range(300)],
                          "title": rng.choice(["Short", "LONG read"], 300)})
    liked = [("good" in text.lower()) or ("great" in text.lower()) for text in frame.review]
    model = make_pipeline(ColumnTransformer([("review", TfidfVectorizer(), "review"),
                                             ("title", CountVectorizer(), "title")]), LogisticRegression()).fit(frame,
                                                                                                              liked)
    signature = {"inputs": [{"type": "string", "name": name, "required": True} for name in ("review", "title")]}
    answer = registry_answers(model.predict_proba, signature)
    decision = decide(lambda: model, {"loader": "cloudpickle", "predict_fn": "predict_proba"}, signature,
                      golden_cases(answer, signature), Compile(), tmp_path / COMPILED_FILE, answer,
                      frame.head(16).to_dict("records"))
    if "Café" in words:
        assert not decision.compiled and "differs from the registry model" in decision.reason, decision.reason
        return
    assert decision.compiled, decision.reason
    rows = [{"review": review, "title": title} for review in ("FOOD good", "Day", "", "service DAY awful", "unknown")
            for title in ("short", "Long READ", "")]
    outcome = compare(answer([{"inputs": rows}])[0]["outputs"],
                      served_rows(decision.flavor, tmp_path / COMPILED_FILE, rows, signature), 1e-6, 0.0)
    assert outcome.agrees, outcome.describe(rows)
