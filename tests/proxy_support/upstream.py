"""A stand-in model service for proxy tests, run as its own process.

Every POST answers JSON naming this upstream and echoing what arrived. A request header
`x-test-behaviour` makes it misbehave: `status:<code>`, `sleep:<seconds>`, `close`
(drop the connection without answering) or `pad:<bytes>` (that many more bytes in the answer); `--sleep` delays every answer. GET /_stats counts
POSTs received, which is how tests observe shadow copies.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from aiohttp import web


def make_app(name: str, sleep: float) -> web.Application:
    stats = {"posts": 0}

    async def predict(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        stats["posts"] += 1
        behaviour = request.headers.get("x-test-behaviour", "")
        delay = float(behaviour[6:]) if behaviour.startswith("sleep:") else sleep
        if delay:
            await asyncio.sleep(delay)
        if behaviour == "close":
            request.transport.abort()
            raise asyncio.CancelledError
        status = int(behaviour[7:]) if behaviour.startswith("status:") else 200
        echo = {"upstream": name, "path": request.path_qs, "headers": dict(request.headers),
                "body": body.decode("utf-8", "replace")}
        if behaviour.startswith("pad:"):
            echo["pad"] = "x" * int(behaviour[4:])
        headers = {}
        if "x-test-hop" in request.headers:
            # Hop-by-hop and spoofed headers the proxy must not pass on to its client.
            headers = {"Keep-Alive": "timeout=5", "X-Secret-Hop": "1", "Connection": "X-Secret-Hop",
                       "Proxy-Authenticate": "Basic", "X-Model-Variant": "spoofed", "X-Kept": "yes"}
        return web.Response(status=status, body=json.dumps(echo), content_type="application/json",
                            headers=headers)

    async def stats_view(_: web.Request) -> web.Response:
        return web.json_response(stats)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/_stats", stats_view)
    app.router.add_route("POST", "/{tail:.*}", predict)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sleep", type=float, default=0.0)
    args = parser.parse_args()
    web.run_app(make_app(args.name, args.sleep), host="127.0.0.1", port=args.port, print=None,
                access_log=None, handle_signals=True)


if __name__ == "__main__":
    main()
