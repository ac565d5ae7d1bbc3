"""uvicorn's HTTP protocol (httptools) answering the pod's POST /predict itself, without an ASGI request.

Per request, uvicorn's ASGI path costs a task, a receive and two sends of message dicts, each send's header checks,
and the awaits between them: ~20-40 µs, as much as a compiled model's one-row predict. Answered inside the protocol,
one-row requests at 16 connections cost 0.62-0.67x the CPU (`python -m bench.bare --rows 1 --connections 16`,
BENCHMARKS.md "Session 16"); full batches, whose predict and decode dominate, 0.92-1.0x. Here a JSON POST to the
predict path whose declared body fits uvicorn's read buffer goes to `mf_fast.FastPredict.reply` as soon as its body
is in, on the event loop, and the answer is written straight to the transport; a request that queues for the model
(a partial batch, a model run in its thread) is answered from its future's callback.

Everything else stays uvicorn's: parsing (llhttp), keep-alive and its timeout, pipelining (a request waits for the
answer before it), graceful shutdown (a pending answer still goes out, then the connection closes), and every other
request through the ASGI app as before: probes, other paths and methods, chunked bodies, bodies over 64 KiB (which
includes the 413s), `Expect: 100-continue`. This leans on HttpToolsProtocol's internals (`_start_asgi_task`, the
request cycle's state): the serving venv's uvicorn is always the lock's (factory/runtime.py, SERVICE_PACKAGES) and
tests/test_pod_protocol.py runs this class on it. Copied verbatim into each model's folder by `factory render`.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, Optional

from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

import mf_fast
import mf_http


def protocol(fast: mf_fast.FastPredict) -> type:
    """uvicorn's `http` protocol class for a pod whose POST /predict `fast` answers."""
    return type("PodProtocol", (PredictProtocol,), {"fast": fast})


class PredictProtocol(HttpToolsProtocol):
    fast: mf_fast.FastPredict

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.waiting: Optional[RequestResponseCycle] = None  # ours, its body still arriving

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        if app is not self.app or not self._ours(cycle):
            super()._start_asgi_task(cycle, app)
        elif cycle.more_body:
            self.waiting = cycle  # answered when its body is in (on_message_complete)
        else:  # pipelined, read while the answer before it was pending; no recursion through on_response
            self.loop.call_soon(self._answer, cycle)

    def _ours(self, cycle: RequestResponseCycle) -> bool:
        """A JSON POST to the predict path with a declared length uvicorn reads without pausing, for a running
        service. Other bodies (chunked, larger, over the limit, waiting for 100 Continue) take the ASGI path."""
        declared = self.fast.ours(cycle.scope)
        return (declared is not None and declared.isdigit() and int(declared) <= HIGH_WATER_LIMIT
                and not cycle.waiting_for_100_continue and self.fast.submit() is not None)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self.waiting is not None and self.waiting is self.cycle:
            cycle, self.waiting = self.waiting, None
            self._answer(cycle)

    def _answer(self, cycle: RequestResponseCycle) -> None:
        if cycle.disconnected:
            return
        try:
            reply = self.fast.reply(bytes(cycle.body))
        except Exception as exc:  # a defect of ours: the ASGI path's run_asgi would answer 500 too
            reply = mf_fast.settled(exc)
        if isinstance(reply, asyncio.Future):
            reply.add_done_callback(functools.partial(self._settle, cycle))
        else:
            self._write(cycle, reply)

    def _settle(self, cycle: RequestResponseCycle, done: asyncio.Future) -> None:
        if done.cancelled():  # shutdown cancelled what the answer waited for: nothing to answer with
            self.transport.close()
        else:
            self._write(cycle, mf_fast.finished(done))

    def _write(self, cycle: RequestResponseCycle, reply: mf_http.Reply) -> None:
        """The answer as RequestResponseCycle.send writes one (uvicorn's default headers, `connection: close` when
        the connection ends), then the cycle's end as uvicorn's: the next pipelined request or the keep-alive
        timer."""
        if cycle.disconnected or cycle.response_complete or self.transport.is_closing():
            return  # the client left (uvicorn marks only its newest request disconnected), or shutdown closed it
        content = [STATUS_LINE[reply.status]]
        for name, value in (*self.server_state.default_headers, *reply.framed()):
            content += [name, b": ", value, b"\r\n"]
        if not cycle.keep_alive:
            content.append(b"connection: close\r\n")
        content += [b"\r\n", reply.body]
        self.transport.write(b"".join(content))
        cycle.response_started = cycle.response_complete = True
        cycle.message_event.set()
        if not cycle.keep_alive:
            self.transport.close()
        cycle.on_response()
        if self.flow.write_paused:
            # The client is not reading its answers: read no more requests until it does (the ASGI path waits in
            # its send instead, with the same effect).
            self.flow.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.waiting is None and (self.cycle is None or self.cycle.response_complete):
            self.flow.resume_reading()
