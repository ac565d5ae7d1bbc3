"""`factory summary`: per route and variant, what was fuzzed, how fast, and how it was sized.

Printed for people and saved as a Summary record (`summary.json`, plus `summary.md` for the merge request).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from factory import manifests
from factory.capacity import capacity_cell
from factory.catalog import Catalog, ModelSpec
from factory.loader import load_catalog
from factory.state import StateDir, Summary, SummaryRow, write_set
from factory.tables import markdown_table, table


HEADERS = ["route", "variant", "model", "fuzz", "requests", "p99 ms", "capacity rps", "peak MiB", "memory request",
           "limit"]


def summary_command(catalog_path: Path) -> str:
    catalog = load_catalog(catalog_path)
    state = StateDir.from_env()
    summary = Summary(rows=summary_rows(catalog, state))
    rows = [list(row.model_dump().values()) for row in summary.rows]
    markdown = state.summary_markdown()
    write_set({state.summary_json(): summary.text(),
               markdown: "## Model Factory summary\n\n" + markdown_table(HEADERS, rows) + "\n"})
    return "\n".join([table(HEADERS, rows), "", f"reports:   {state.reports_root()}/<model>/ (JSON, JUnit)",
                      f"manifests: {state.manifests_dir()} (kustomization.yaml)", f"summary:   {markdown}"])


def summary_rows(catalog: Catalog, state: StateDir) -> list[SummaryRow]:
    rows, by_name = [], {model.name: model for model in catalog.models}
    for model in catalog.models:
        rows.append(_row(model.route, "-", model, state))
    for experiment in catalog.experiments:
        for variant in experiment.variants:
            rows.append(_row(experiment.route, f"{variant.weight}%", by_name[variant.model], state))
        for shadow in experiment.shadows:
            rows.append(_row(experiment.route, "shadow", by_name[shadow], state))
    return rows


def _row(route: str, variant: str, model: ModelSpec, state: StateDir) -> SummaryRow:
    report = state.test_report(model.name)
    if report is None or report.fuzz is None:
        cells = ["not tested" if report is None else "FAIL", "", "", "", "", *_sizing(model, None)]
    else:
        cells = ["pass" if report.passed else "FAIL", str(report.fuzz.requests_fuzzed),
                 f"{report.fuzz.latency_p99_ms:.1f}", capacity_cell(report.capacity), f"{report.memory.peak_mib:.0f}",
                 *_sizing(model, report.peak_bytes)]
    return SummaryRow(**dict(zip(SummaryRow.model_fields, [route, variant, model.name, *cells])))


def _sizing(model: ModelSpec, peak: Optional[int]) -> list[str]:
    if peak is None and model.resources.memory is None:
        return ["(unmeasured)", ""]
    sizing = manifests.sizing_for(model, peak)
    return [sizing.memory_request, sizing.memory_limit]
