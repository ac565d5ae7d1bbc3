"""What each model's HorizontalPodAutoscaler targets, from the capacity `factory test` measured.

The HPA scales on CPU utilization (CPU used / CPU requested), not on requests per second: CPU needs no
Prometheus adapter in the cluster, and for these single-process servers CPU follows the request rate.
`factory test` measured the server's CPU at its capacity (the highest rate within the latency objective,
nothing shed), given the CPU its pod is guaranteed (its request, as a quota); the target is that
utilization × CAPACITY_MARGIN, so replicas are added while every pod is still below capacity. A target is
never above what the request guarantees (100 % × the margin): a pod on a busy node gets no more than its
request, so a target above it would never be reached there, and no replica added, however slow the
answers. A GPU model's capacity was measured without its GPU (the test machine's CPU ran it), so its CPU
figures say nothing about the pod: it keeps the default target. The capacity figures ride along as
annotations on the HPA, for the platform team (README: "Capacity and autoscaling").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional

from factory.catalog import ModelSpec
from factory.state import CapacityReport

CAPACITY_MARGIN = Fraction(8, 10)
# Before a model's capacity is measured (or where its CPU was not visible): Kubernetes' usual figure.
UNMEASURED_TARGET_PERCENT = 70
GUARANTEED_PERCENT = 100  # of the request: what a pod on a busy node gets
ANNOTATION = "model-factory/"


@dataclass(frozen=True)
class Autoscaling:
    target_cpu_percent: int
    source: str  # where the target comes from, as `factory manifests` prints it
    annotations: dict[str, str]


def autoscaling_for(model: ModelSpec, capacity: Optional[CapacityReport]) -> Autoscaling:
    """models.yaml's explicit target wins; else the CPU at measured capacity × margin; else 70 %."""
    annotations = capacity_annotations(capacity)
    if model.scaling.target_cpu_percent is not None:
        return Autoscaling(model.scaling.target_cpu_percent, "scaling.target_cpu_percent", annotations)
    if model.resources.gpu:
        return Autoscaling(UNMEASURED_TARGET_PERCENT, "gpu model: capacity measured without a GPU", annotations)
    if capacity is None or not capacity.steps:
        return Autoscaling(UNMEASURED_TARGET_PERCENT, "unmeasured default", annotations)
    if not capacity.rps:
        return Autoscaling(UNMEASURED_TARGET_PERCENT, "capacity 0: see `factory test`", annotations)
    if not capacity.cpu_percent:
        return Autoscaling(UNMEASURED_TARGET_PERCENT, "unmeasured default (CPU not visible)", annotations)
    # % of the request, as the HPA counts it; no more than the request guarantees
    at_capacity = min(Fraction(str(capacity.cpu_percent)) / model.resources.cores, GUARANTEED_PERCENT)
    target = max(1, math.floor(at_capacity * CAPACITY_MARGIN))
    return Autoscaling(target, "slo.p99_ms capacity", annotations)


def capacity_annotations(capacity: Optional[CapacityReport]) -> dict[str, str]:
    if capacity is None or not capacity.steps:
        return {}
    figures = {"capacity-rps": f"{capacity.rps:g}", "capacity-slo-p99-ms": str(capacity.slo_p99_ms),
               "capacity-p99-ms": f"{capacity.p99_ms:g}", "capacity-connections": str(capacity.connections)}
    if capacity.cpu_percent is not None:
        figures["capacity-cpu-percent-of-core"] = f"{capacity.cpu_percent:g}"
    figures["capacity-measured-on-cpus"] = f"{capacity.cpu_limit:g}" if capacity.cpu_limit else "unlimited"
    return {ANNOTATION + key: value for key, value in figures.items()}
