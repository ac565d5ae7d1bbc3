"""Plain-text tables for people: what the catalog serves, and where."""

from __future__ import annotations

from pathlib import Path

from factory.catalog import Catalog
from factory.loader import load_catalog


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in [headers, ["-" * width for width in widths], *rows]]
    return "\n".join(lines)


def catalog_table(catalog: Catalog) -> str:
    rows = []
    for model in catalog.models:
        batching = (f"{model.batching.max_batch_size}/{model.batching.max_latency_ms}ms"
                    if model.batching.enabled else "off")
        gpu = f"{model.resources.gpu}x {model.resources.gpu_type or 'any'}" if model.resources.gpu else "-"
        rows.append([model.route, model.name, model.registry_ref, batching, model.resources.cpu, gpu])
    for experiment in catalog.experiments:
        rows.append([experiment.route, f"experiment {experiment.name}", "", "", "", ""])
        rows += [["", f"  {v.weight}% -> {v.model}", "", "", "", ""] for v in experiment.variants]
        rows += [["", f"  shadow -> {shadow}", "", "", "", ""] for shadow in experiment.shadows]
    header = f"{len(catalog.models)} models, {len(catalog.experiments)} experiments"
    return header + "\n" + table(["route", "model", "version", "batching", "cpu", "gpu"], rows)


def catalog_summary(catalog_path: Path) -> str:
    return catalog_table(load_catalog(catalog_path))
