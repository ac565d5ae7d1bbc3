"""Serve this Bento as ONE process: the BentoML service app under uvicorn, without the circus arbiter.

`bentoml serve` runs an arbiter (~80 MiB) beside the worker; in a Kubernetes pod the kubelet already
restarts a failed container, so the arbiter buys nothing there but memory. POST /predict is answered
in front of BentoML's HTTP stack (mf_fast); everything else by BentoML's service app. Copied verbatim into each model's folder by `factory render`.

Usage (from the Bento's src directory): python -m mf_serve [--host 0.0.0.0] [--port 3000]
"""

from __future__ import annotations

import argparse
import os


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve this Bento in one process.")
    parser.add_argument("--host", default=os.environ.get("MF_HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("MF_PORT", "3000")))
    args = parser.parse_args()
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

    import uvicorn

    import mf_fast
    import mf_http
    from service import MAX_BODY_BYTES, ModelService

    # to_asgi is private BentoML API: requirements pin bentoml, and tests serve every model this way.
    bento_app = ModelService.to_asgi(is_main=True)
    app = mf_http.ErrorShape(mf_fast.FastPredict(bento_app, ModelService.apis["predict"].input_spec, _answer),
                             max_bytes=MAX_BODY_BYTES)
    # proxy_headers off: nothing here reads the client's address, and the middleware costs ~3 % of a request.
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="warning", proxy_headers=False,
                timeout_graceful_shutdown=20)


def _answer():
    """The running service's `answer`; None until BentoML has created the service (then BentoML answers)."""
    import bentoml
    from bentoml.exceptions import BentoMLException

    try:
        return bentoml.get_current_service().answer
    except BentoMLException:
        return None


if __name__ == "__main__":
    main()
