"""The end-of-pipeline summary: per route and variant, what was fuzzed, how fast, and how it was sized.

Printed for people and written as markdown (`<state>/summary.md`) for the merge request.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from factory import manifests
from factory.catalog import Catalog, ModelSpec
from factory.loader import load_catalog
from factory.state import StateDir
from factory.summary import table

HEADERS = ["route", "variant", "model", "fuzz", "requests", "p99 ms", "peak MiB", "memory request", "limit"]


def summary_command(catalog_path: Path) -> str:
    catalog = load_catalog(catalog_path)
    state = StateDir.from_env()
    rows = summary_rows(catalog, state)
    markdown = state.root / "summary.md"
    markdown.write_text(markdown_table(rows), encoding="utf-8")
    return "\n".join([table(HEADERS, rows), "", f"reports:   {state.root / 'reports'}/<model>/ (JSON, JUnit)",
                      f"manifests: {state.manifests_dir()} (kustomization.yaml)", f"summary:   {markdown}"])


def summary_rows(catalog: Catalog, state: StateDir) -> list[list[str]]:
    rows = []
    for model in catalog.models:
        rows.append([model.route, "-", *_model_cells(model, state)])
    for experiment in catalog.experiments:
        for variant in experiment.variants:
            model = next(m for m in catalog.models if m.name == variant.model)
            rows.append([experiment.route, f"{variant.weight}%", *_model_cells(model, state)])
        for shadow in experiment.shadows:
            model = next(m for m in catalog.models if m.name == shadow)
            rows.append([experiment.route, "shadow", *_model_cells(model, state)])
    return rows


def _model_cells(model: ModelSpec, state: StateDir) -> list[str]:
    report = _report(state, model)
    if report is None:
        return [model.name, "not tested", "", "", "", *_sizing(model, None)]
    fuzz = report["fuzz"]
    verdict = "pass" if report["passed"] else "FAIL"
    return [model.name, verdict, str(fuzz["requests_fuzzed"]), f"{fuzz['latency_p99_ms']:.1f}",
            f"{report['memory']['peak_mib']:.0f}", *_sizing(model, report["peak_bytes"])]


def _sizing(model: ModelSpec, peak: Optional[int]) -> list[str]:
    if peak is None and model.resources.memory is None:
        return ["(unmeasured)", ""]
    sizing = manifests.sizing_for(model, peak)
    return [sizing.memory_request, sizing.memory_limit]


def _report(state: StateDir, model: ModelSpec) -> Optional[dict]:
    path = state.root / "reports" / model.name / "report.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "## Model Factory summary\n\n" + "\n".join(lines) + "\n"
