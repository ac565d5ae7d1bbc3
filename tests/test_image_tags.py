"""An image is named from the registry of the build that pushes it, not from the record an earlier build left:
a Bento recorded by `factory build --no-image` (or pushed under another FACTORY_IMAGE_REGISTRY) and unchanged
since is pushed where this build was asked to push. The engine is replaced in process: what is checked is the
name handed to it and recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from factory import images
from factory.loader import parse_catalog
from factory.state import BuildRecord, PushedImage, StateDir

CATALOG = "kubernetes: {image_registry: registry.example.com/team}\nmodels:\n  - {name: m, version: 1, endpoint: e}\n"
UNBUILT = {"model": "m", "content_hash": "h", "registry": {"name": "m", "version": 1}, "bento_model_tag": "m:r1",
           "bento_tag": "m:0123abcd", "bento_export": "/x.bento", "image": "registry.example.com/team/m:0123abcd",
           "image_ref": "", "image_size_bytes": 0, "image_build_seconds": 0.0, "dockerfile": "/Dockerfile",
           "golden": "/golden.json"}


def test_an_unchanged_bento_is_pushed_under_this_builds_registry(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACTORY_IMAGE_REGISTRY", "127.0.0.1:5000/sweep")
    pushed = []

    def build_and_push(context, dockerfile, tag, log, what):
        pushed.append((tag, what))
        return PushedImage(tag=tag, reference=f"{tag.rsplit(':', 1)[0]}@sha256:{'0' * 64}", size_bytes=7,
                           build_seconds=1.0, push_seconds=0.5, log=str(log))

    monkeypatch.setattr(images, "build_and_push", build_and_push)
    monkeypatch.setattr(images, "model_context", lambda export, context, dockerfile: context)
    catalog = parse_catalog(CATALOG)
    step = images.ImageStep(catalog, StateDir(tmp_path), enabled=False)
    monkeypatch.setattr(step, "base", lambda: "model-factory/python-base:x")
    model = catalog.models[0]

    update = step.build(model, BuildRecord(**UNBUILT))

    assert pushed == [("127.0.0.1:5000/sweep/m:0123abcd",
                       "models.yaml:3: model 'm': image 127.0.0.1:5000/sweep/m:0123abcd")]
    assert update["image"] == "127.0.0.1:5000/sweep/m:0123abcd"
    assert update["image_ref"] == f"127.0.0.1:5000/sweep/m@sha256:{'0' * 64}"
    assert step.tag(model, "m:0123abcd") == update["image"] != UNBUILT["image"]
