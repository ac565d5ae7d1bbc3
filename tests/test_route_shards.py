"""The routing table split across ConfigMaps (each under Kubernetes' 1 MiB), read back whole by the proxy."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from bench.render import generated_catalog
from factory.cli import main
from factory.loader import parse_catalog
from factory.render import render_catalog
from factory.routes import route_table, routes_shards
from proxy.routing import load_route_table


def _write(shards: list[str], folder: Path) -> Path:
    folder.mkdir()
    for index, text in enumerate(shards):
        (folder / f"routes-{index:03d}.yaml").write_text(text, encoding="utf-8")
    return folder


def test_small_catalog_is_one_shard_equal_to_routes_yaml(tmp_path: Path) -> None:
    catalog = parse_catalog(generated_catalog(40))
    [shard] = routes_shards(catalog, "models.yaml")
    assert load_route_table(_write([shard], tmp_path / "routes")) == route_table(catalog)


@pytest.mark.parametrize("max_bytes", [2_000, 5_000, 20_000])
def test_shards_stay_under_the_limit_and_merge_back(tmp_path: Path, max_bytes: int) -> None:
    catalog = parse_catalog(generated_catalog(200))
    shards = routes_shards(catalog, "models.yaml", max_bytes=max_bytes)
    assert len(shards) > 1 and all(len(shard.encode()) <= max_bytes for shard in shards)
    assert load_route_table(_write(shards, tmp_path / "routes")) == route_table(catalog)


def test_render_writes_the_shards_it_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = parse_catalog(generated_catalog(200))
    shards = routes_shards(catalog, "models.yaml", max_bytes=5_000)
    monkeypatch.setattr("factory.render.routes_shards", functools.partial(routes_shards, max_bytes=5_000))
    files = render_catalog(catalog)
    written = [yaml.safe_load(files[name]) for name in sorted(files) if name.startswith("k8s/proxy/routes-")]
    assert [next(iter(configmap["data"].values())) for configmap in written] == shards


def test_conflicting_shards_are_refused(tmp_path: Path) -> None:
    catalog = parse_catalog(generated_catalog(40))
    first, second = routes_shards(catalog, "models.yaml", max_bytes=4_000)[:2]
    document = yaml.safe_load(second)
    name = next(iter(document["upstreams"]))
    clash = yaml.safe_load(first)
    clash["upstreams"][name] = {**document["upstreams"][name], "model_version": "999"}
    folder = _write([yaml.safe_dump(clash), second], tmp_path / "routes")
    with pytest.raises(ValueError, match=f"routes-001.yaml: upstream '{name}' differs from the one in an earlier"):
        load_route_table(folder)


def test_ten_thousand_models_render_and_pass_manifests_validation(tmp_path: Path) -> None:
    """Issue 9: one ConfigMap went over 1 MiB at ~2,700 models; 10,000 now deploy.

    The shards `factory manifests` writes are the ones render writes (test_render_writes_the_shards_it_validates,
    on a smaller catalog): rendering 10,000 Bentos here would cost minutes and prove nothing more."""
    (tmp_path / "models.yaml").write_text(generated_catalog(10_000), encoding="utf-8")
    result = CliRunner().invoke(main, ["manifests", "--proxy", "-f", str(tmp_path / "models.yaml")],
                                env={"FACTORY_STATE": str(tmp_path / "state")})
    assert result.exit_code == 0, result.output
    configmaps = sorted((tmp_path / "state" / "k8s" / "proxy").glob("routes-*.yaml"))
    assert len(configmaps) > 1
    assert f"{len(configmaps) + 2} manifests validated (Kubernetes 1.33, strict)" in result.stdout
    folder = tmp_path / "mounted"
    folder.mkdir()
    for configmap in configmaps:  # as the kubelet mounts them
        [(key, value)] = yaml.safe_load(configmap.read_text())["data"].items()
        (folder / key).write_text(value, encoding="utf-8")
    assert len(load_route_table(folder).routes) == 10_000 + 250
