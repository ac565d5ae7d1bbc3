"""The proxy's routing table, derived from the catalog."""

from __future__ import annotations

from typing import Callable

from factory.catalog import Catalog, ExperimentSpec, ModelSpec
from proxy.routing import Route, RouteTable, StickyKey, Upstream, Variant

UpstreamUrl = Callable[[ModelSpec], str]


def cluster_upstream(catalog: Catalog) -> UpstreamUrl:
    """Each model's Bento predict API behind its Kubernetes Service."""
    settings = catalog.kubernetes

    def url(model: ModelSpec) -> str:
        return f"http://{model.k8s_name}.{settings.namespace}.svc.cluster.local:{settings.service_port}/predict"

    return url


def route_table(catalog: Catalog, upstream_url: UpstreamUrl | None = None) -> RouteTable:
    url = upstream_url or cluster_upstream(catalog)
    upstreams = {model.name: Upstream(url=url(model), model_version=model.registry_ref.lstrip("@"))
                 for model in catalog.models}
    routes = [_model_route(model) for model in catalog.models]
    routes += [_experiment_route(experiment) for experiment in catalog.experiments]
    return RouteTable(upstreams=upstreams, routes=tuple(sorted(routes, key=lambda route: route.path)))


def _model_route(model: ModelSpec) -> Route:
    return Route(path=model.route, variants=(Variant(name=model.name, upstream=model.name, weight=100),))


def _experiment_route(experiment: ExperimentSpec) -> Route:
    sticky = None
    if experiment.sticky_key is not None:
        sticky = StickyKey(source=experiment.sticky_key.source, name=experiment.sticky_key.key_name)
    return Route(
        path=experiment.route,
        experiment=experiment.name,
        sticky_key=sticky,
        variants=tuple(Variant(name=v.model, upstream=v.model, weight=v.weight) for v in experiment.variants),
        shadows=tuple(experiment.shadows),
    )
