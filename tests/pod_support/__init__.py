"""The pod's one-process app (templates/bento/mf_serve.py) in process, around a stand-in service: one double
column `x`, answered doubled, 1..4 rows a request. Importing this puts the Bento templates on sys.path."""

from __future__ import annotations

import sys

from pydantic import BaseModel, Field

from factory.runtime import BENTO_TEMPLATES

sys.path.insert(0, str(BENTO_TEMPLATES))
import mf_fast  # noqa: E402
import mf_http  # noqa: E402
import mf_schema  # noqa: E402
import mf_serve  # noqa: E402

ROW = mf_schema.row_model([{"type": "double", "name": "x", "required": True}])


class Inputs(BaseModel):
    inputs: list[ROW] = Field(min_length=1, max_length=4)


class Service:
    async def answer(self, rows: list, params: object = None) -> list:
        return [row["x"] * 2 for row in rows]


def pod_app(pod: mf_serve.Pod, max_bytes: int) -> mf_fast.FastPredict:
    """As mf_serve stacks them: mf_fast's POST /predict in front of ErrorShape around the Pod."""
    return mf_fast.FastPredict(mf_http.ErrorShape(pod, max_bytes=max_bytes), Inputs, pod.answer, max_bytes=max_bytes)
