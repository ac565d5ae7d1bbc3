"""The Bento's opportunistic batcher and its fast /predict path, in process: no waiting when idle, merging
only what queued while the model ran, rows of one request never split, per-row isolation kept, overload
refused with 503 + Retry-After, validation errors shaped as BentoML's path shapes them."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import threading
import time

import httpx
import numpy
import pytest
from pydantic import BaseModel, Field

from factory.runtime import BENTO_TEMPLATES

sys.path.insert(0, str(BENTO_TEMPLATES))
import mf_batch  # noqa: E402
import mf_fast  # noqa: E402
import mf_flavors  # noqa: E402
import mf_http  # noqa: E402
import mf_lag  # noqa: E402
import mf_runtime  # noqa: E402
import mf_schema  # noqa: E402

GUARD_S = 30  # only a guard against a hang; nothing here depends on how fast anything runs


def unlagged() -> mf_lag.LoopLag:
    """A loop-lag timer that never comes due here: tests of the queue's own budget see no lag, however late a
    loaded machine runs the real 5 ms timer (which refused requests these tests expect queued)."""
    return mf_lag.LoopLag(interval_s=3600)


class GatedModel:
    """Doubles every row; each run blocks until the test opens the gate, so 'busy' is under the test's control."""

    def __init__(self, gated: bool = True):
        self.runs: list[list] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        if not gated:
            self.gate.set()

    def __call__(self, rows: list, params: object = None) -> list:
        self.runs.append(list(rows))
        self.entered.set()
        assert self.gate.wait(GUARD_S)
        return [row * 2 for row in rows]


async def _turns(count: int = 5) -> None:
    """Let the event loop run a few turns; no clock time passes on purpose."""
    for _ in range(count):
        await asyncio.sleep(0)


def test_an_idle_batcher_runs_a_request_at_once_and_alone() -> None:
    async def scenario():
        model = GatedModel()
        batcher = mf_batch.Batcher(model, max_rows=32, budget_ms=300)
        first = asyncio.create_task(batcher.submit([1]))
        await _turns()
        # Taken off the queue and handed to the model within loop turns: no timer, no waiting for company.
        assert not batcher.queue and batcher.busy
        assert await asyncio.to_thread(model.entered.wait, GUARD_S)
        model.gate.set()
        assert await first == [2]
        assert model.runs == [[1]] and not batcher.busy

    asyncio.run(scenario())


def test_requests_queued_while_the_model_runs_go_together_in_the_next_run() -> None:
    async def scenario():
        model = GatedModel()
        batcher = mf_batch.Batcher(model, max_rows=32, budget_ms=300)
        first = asyncio.create_task(batcher.submit([1]))
        assert await asyncio.to_thread(model.entered.wait, GUARD_S)
        queued = [asyncio.create_task(batcher.submit(rows)) for rows in ([10], [20, 21], [30])]
        await _turns()
        model.gate.set()
        assert await first == [2]
        assert [await task for task in queued] == [[20], [40, 42], [60]]
        assert model.runs == [[1], [10, 20, 21, 30]]

    asyncio.run(scenario())


def test_a_run_takes_whole_requests_up_to_max_rows() -> None:
    async def scenario():
        model = GatedModel()
        batcher = mf_batch.Batcher(model, max_rows=4, budget_ms=300)
        first = asyncio.create_task(batcher.submit([0]))
        assert await asyncio.to_thread(model.entered.wait, GUARD_S)
        queued = [asyncio.create_task(batcher.submit(rows)) for rows in ([1, 2], [3, 4], [5], [6, 7, 8, 9])]
        await _turns()
        model.gate.set()
        await asyncio.gather(first, *queued)
        assert model.runs == [[0], [1, 2, 3, 4], [5], [6, 7, 8, 9]]

    asyncio.run(scenario())


def test_without_merging_every_request_runs_alone() -> None:
    async def scenario():
        model = GatedModel()
        batcher = mf_batch.Batcher(model, max_rows=32, budget_ms=300, merge=False)
        first = asyncio.create_task(batcher.submit([1]))
        assert await asyncio.to_thread(model.entered.wait, GUARD_S)
        queued = [asyncio.create_task(batcher.submit([value])) for value in (2, 3)]
        await _turns()
        model.gate.set()
        await asyncio.gather(first, *queued)
        assert model.runs == [[1], [2], [3]]

    asyncio.run(scenario())


def test_short_runs_run_on_the_event_loop_and_long_unknown_or_waiting_ones_in_the_model_thread() -> None:
    where = []

    def model(rows, params=None):
        where.append(threading.current_thread().name)
        return rows

    async def scenario():
        batcher = mf_batch.Batcher(model, max_rows=32, budget_ms=300)
        await batcher.submit([1])  # nothing measured yet: the model thread
        _measured(batcher, [FAST] * 5 + [SLOW])  # one run the machine preempted is not the model's speed
        await batcher.submit([2])
        _measured(batcher, [SLOW] * 5)
        await batcher.submit([3])
        _measured(batcher, [FAST] * 9, [mf_batch.INLINE_WALL_S * 2] * 9)  # waits rather than computes
        await batcher.submit([4])
        return threading.current_thread().name

    loop_thread = asyncio.run(scenario())
    assert where[0].startswith("model") and where[1] == loop_thread
    assert where[2].startswith("model") and where[3].startswith("model")


FAST, SLOW = mf_batch.INLINE_RUN_S / 4, mf_batch.INLINE_RUN_S * 5


def _measured(batcher: mf_batch.Batcher, cpu_s: list[float], wall_s: list[float] | None = None) -> None:
    batcher.recent_cpu.extend(cpu_s)
    batcher.recent_wall.extend(cpu_s if wall_s is None else wall_s)


def test_runs_on_the_event_loop_still_merge_what_arrived_together_and_learn_their_duration() -> None:
    model = GatedModel(gated=False)

    async def scenario():
        batcher = mf_batch.Batcher(model, max_rows=3, budget_ms=300)
        _measured(batcher, [FAST])
        tasks = [asyncio.create_task(batcher.submit(rows)) for rows in ([1], [2, 3], [4], [5])]
        answers = await asyncio.gather(*tasks)
        return answers, batcher

    answers, batcher = asyncio.run(scenario())
    assert answers == [[2], [4, 6], [8], [10]]
    assert model.runs == [[1, 2, 3], [4, 5]] and batcher.runs == 2 and not batcher.busy


def test_a_full_batch_finding_a_fast_model_idle_runs_without_suspending() -> None:
    model = GatedModel(gated=False)

    async def scenario():
        batcher = mf_batch.Batcher(model, max_rows=3, budget_ms=300)
        _measured(batcher, [FAST])
        full, partial = batcher.submit([1, 2, 3]), batcher.submit([4])
        with pytest.raises(StopIteration) as done:
            full.send(None)  # answered on the first step: no queue, no task, no loop turn
        assert done.value.value == [2, 4, 6] and model.runs == [[1, 2, 3]]
        assert await partial == [8]  # a partial batch waits one loop turn for company
        return batcher

    assert asyncio.run(scenario()).runs == 2


def test_work_that_would_queue_past_the_budget_is_refused() -> None:
    async def scenario():
        model = GatedModel()
        batcher = mf_batch.Batcher(model, max_rows=2, budget_ms=100)
        batcher.lag = unlagged()
        assert batcher.expected_wait_s(1000) == 0  # nothing measured yet: nothing refused
        first = asyncio.create_task(batcher.submit([1]))
        assert await asyncio.to_thread(model.entered.wait, GUARD_S)
        batcher.run_s = 0.05  # as if measured: one run takes 50 ms
        accepted = [asyncio.create_task(batcher.submit([value])) for value in (2, 3, 4, 5)]
        await _turns()
        # The run in progress, then 4 queued rows in runs of 2 before the run that would serve it: 150 ms > 100.
        assert batcher.expected_wait_s(1) == pytest.approx(0.15)
        with pytest.raises(mf_batch.Overloaded) as refused:
            await batcher.submit([6])
        assert refused.value.retry_after_s == 1
        assert str(refused.value) == ("the model server is overloaded: about 0 ms waiting to be read and 150 ms of queued "
                                      "work ahead, over its 100 ms budget (batching.max_latency_ms)")
        model.gate.set()
        assert [await task for task in accepted] == [[4], [6], [8], [10]]
        assert all(6 not in run for run in model.runs)

    asyncio.run(scenario())


def test_without_merging_every_queued_request_is_a_run_ahead() -> None:
    """batching.enabled false: the queue drains one request per run, so its budget counts requests, not rows
    packed in max_rows (which let requests wait 1.8 s behind a 60 ms budget in session 9's stranger sweep)."""
    async def scenario():
        model = GatedModel()
        batcher = mf_batch.Batcher(model, max_rows=32, budget_ms=100, merge=False)
        batcher.lag = unlagged()
        first = asyncio.create_task(batcher.submit([1]))
        assert await asyncio.to_thread(model.entered.wait, GUARD_S)
        batcher.run_s = 0.04
        accepted = [asyncio.create_task(batcher.submit([value])) for value in (2,)]
        await _turns()
        assert batcher.expected_wait_s(1) == pytest.approx(0.08)  # the run in progress and one queued request
        accepted.append(asyncio.create_task(batcher.submit([3])))
        await _turns()
        with pytest.raises(mf_batch.Overloaded, match="0 ms waiting to be read and 120 ms of queued work ahead, over its 100 ms budget"):
            await batcher.submit([4])
        model.gate.set()
        assert [await task for task in [first, *accepted]] == [[2], [4], [6]]

    asyncio.run(scenario())


def test_a_request_read_after_the_loop_was_held_past_the_budget_is_refused() -> None:
    """Runs on the event loop (a compiled model): past capacity the queue stays empty and the wait is in
    requests not yet read. The loop's lag counts it: a turn held 150 ms refuses what is read next, at once,
    and once turns are short again requests are served."""
    async def scenario():
        batcher = mf_batch.Batcher(lambda rows, params=None: rows, max_rows=32, budget_ms=100)
        assert await batcher.submit([1]) == [1]  # starts the loop's timer
        time.sleep(0.15)  # a turn that holds the loop, as a backlog of inline runs does
        with pytest.raises(mf_batch.Overloaded) as refused:
            await batcher.submit([2])
        assert refused.value.retry_after_s == 1 and not batcher.queue
        assert re.fullmatch(r"the model server is overloaded: about (1\d\d|[2-9]\d\d) ms waiting to be read and 0 ms "
                            r"of queued work ahead, over its 100 ms budget \(batching.max_latency_ms\)", str(refused.value))
        await asyncio.sleep(mf_lag.INTERVAL_S * 3)  # the timer fires on time again
        assert await batcher.submit([3]) == [3]

    asyncio.run(scenario())


def test_waiting_to_be_read_and_queued_work_add_up() -> None:
    async def scenario():
        model = GatedModel()
        batcher = mf_batch.Batcher(model, max_rows=32, budget_ms=100)
        first = asyncio.create_task(batcher.submit([1]))
        assert await asyncio.to_thread(model.entered.wait, GUARD_S)
        batcher.run_s = 0.06  # the run in progress: 60 ms ahead of the next request, within 100 ms alone
        time.sleep(0.05)  # and 50 ms without reading anything
        with pytest.raises(mf_batch.Overloaded, match=r"waiting to be read and 60 ms of queued work ahead"):
            await batcher.submit([2])
        model.gate.set()
        assert await first == [2]

    asyncio.run(scenario())


@pytest.mark.parametrize("late_ms, before_ms, overdue_ms, waited_ms", [
    (150, 140, -5, 139),  # turn after turn held: past capacity, what is read now waited
    (6, 0, -5, 0),  # one stall: a lone client's request read after it arrived once it was over
    (0.9, 0.9, -4, 0),  # a timer within its grain (uvloop counts whole milliseconds) is on time
    (0, 0, 30, 29),  # the timer is overdue now: the loop is held as the request is read
])
def test_a_late_tick_counts_once_the_loop_stays_late(late_ms, before_ms, overdue_ms, waited_ms) -> None:
    async def scenario():
        lag = mf_lag.LoopLag(interval_s=3600)
        lag.seen()  # starts it on this loop
        now = asyncio.get_running_loop().time()
        lag.late_s, lag.before_s, lag.due = late_ms / 1000, before_ms / 1000, now - overdue_ms / 1000
        return lag.seen() * 1000

    assert asyncio.run(scenario()) == pytest.approx(waited_ms, abs=0.5)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_loop_held_turn_after_turn_counts_its_lag_and_a_short_stall_nothing(loop: str) -> None:
    """Past capacity every turn is long: what is read after the first long turns waited about a turn. Holds of a
    few ms now and then (a lone client, a busy machine) count at most about a hold (measured: 0 under uvloop, whose
    timers run first in a turn; up to 0.7 ms under asyncio's loop, which may read a request while a tick is due)."""
    import uvloop

    async def turns(hold_s: float) -> list[float]:
        lag, waited = mf_lag.LoopLag(), []
        lag.seen()
        for _ in range(6):
            time.sleep(hold_s)  # a turn holding the loop, as a backlog of inline runs does
            await asyncio.sleep(0)
            waited.append(lag.seen())
        return waited

    run = asyncio.run if loop == "asyncio" else uvloop.run
    assert all(waited > 0.1 for waited in run(turns(0.15))[2:])
    assert all(waited < 0.003 for waited in run(turns(0.002)))


def test_the_loop_timer_runs_only_while_requests_arrive() -> None:
    """An idle pod never wakes for it; the first request after idling has waited for nothing."""
    async def scenario():
        lag = mf_lag.LoopLag(interval_s=0.005, idle_s=0.05)
        assert lag.seen() == 0.0 and lag.due is not None
        await asyncio.sleep(0.01)
        assert lag.seen() < 0.05 and lag.due is not None
        await asyncio.sleep(0.2)  # no request for longer than idle_s: the timer stopped
        assert lag.due is None and not [handle for handle in asyncio.get_running_loop()._scheduled
                                        if not handle.cancelled()]
        time.sleep(0.1)  # a loop held while no timer ran is no request's wait
        assert lag.seen() == 0.0
        return lag

    lag = asyncio.run(scenario())
    time.sleep(0.05)

    async def on_a_new_loop():  # the old loop's timer never fires again: its overdue time is no wait
        return lag.seen()

    assert asyncio.run(on_a_new_loop()) == 0.0


def test_a_loop_busy_in_short_turns_refuses_nothing() -> None:
    """Below capacity the loop is busy but each turn is short: nothing waits near the budget, nothing refused."""
    async def scenario():
        batcher = mf_batch.Batcher(lambda rows, params=None: rows, max_rows=32, budget_ms=100)
        for value in range(200):
            time.sleep(0.001)  # each turn holds the loop 1 ms, as an inline run does
            assert await batcher.submit([value]) == [value]
            await asyncio.sleep(0)

    asyncio.run(scenario())


def test_the_overload_answer_has_the_error_shape_and_retry_after() -> None:
    reply = mf_http.overloaded("the model server is overloaded", 2)
    assert reply.status == 503 and reply.headers == ((b"retry-after", b"2"),)
    assert json.loads(reply.body) == {"error": {"code": "overloaded", "message": "the model server is overloaded",
                                                "field": None}}
    # As BentoML's own API path answers it (`bentoml serve`), with its Retry-After.
    response = mf_http.response(reply)
    assert (response.status_code, response.headers["retry-after"], response.body) == (503, "2", reply.body)
    assert response.headers["content-type"] == "application/json"
    # Already in shape: the middleware passes it through with its Retry-After.
    assert mf_http._rewrite(503, response.body) is None


def test_rows_the_model_fails_on_fail_alone_inside_a_merged_run() -> None:
    def raising_on_negative(batch):
        if (batch[:, 0] < 0).any():
            raise ValueError("negative")
        return batch[:, 0] * 2

    predictor = mf_runtime.Predictor.__new__(mf_runtime.Predictor)
    predictor.inputs = [{"type": "double", "name": "x", "required": True}]
    predictor.tensor, predictor.allow_non_finite = False, False
    predictor.model = mf_flavors.LoadedModel(raising_on_negative, "array")
    row = mf_schema.row_model(predictor.inputs)

    async def scenario():
        gate = threading.Event()

        def run(rows, params=None):
            assert gate.wait(GUARD_S)
            return predictor.predict(rows)

        batcher = mf_batch.Batcher(run, max_rows=32, budget_ms=300)
        tasks = [asyncio.create_task(batcher.submit([row(x=value) for value in values]))
                 for values in ([1.0], [2.0, -1.0], [3.0])]
        await _turns()
        gate.set()
        return [await task for task in tasks]

    first, second, third = asyncio.run(scenario())
    assert first == [2.0] and third == [6.0]
    assert second[0] == 4.0 and second[1][mf_http.FAILURE_MARK.decode()]["code"] == "model_error"


def test_a_failing_run_fails_its_requests_and_the_batcher_goes_on() -> None:
    calls = []

    def run(rows, params=None):
        calls.append(rows)
        if len(calls) == 1:
            raise RuntimeError("broken")
        return rows

    async def scenario():
        batcher = mf_batch.Batcher(run, max_rows=32, budget_ms=300)
        with pytest.raises(RuntimeError, match="broken"):
            await batcher.submit([1])
        assert await batcher.submit([2]) == [2]

    asyncio.run(scenario())


# --- mf_fast: POST /predict in front of BentoML's stack -------------------------------------------------

ROW = mf_schema.row_model([{"type": "double", "name": "surge multiplier", "required": True}])


class _Inputs(BaseModel):  # what BentoML generates for `predict(self, inputs: list[Row])`
    inputs: list[ROW] = Field(min_length=1, max_length=4)


async def _bentoml(scope, receive, send) -> None:
    await mf_fast._answer(send, mf_http.Reply(299, b'"bentoml answered"'))


def _client(answer) -> httpx.AsyncClient:
    app = mf_fast.FastPredict(mf_http.ErrorShape(_bentoml, max_bytes=1000), _Inputs, lambda: answer, max_bytes=1000)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://model")


def _fast(answer, *requests: tuple) -> list[httpx.Response]:
    async def scenario():
        async with _client(answer) as client:
            return [await client.request(method, path, **options) for method, path, options in requests]

    return asyncio.run(scenario())


async def _doubled(rows: list, params: object = None) -> list:
    return [row["surge multiplier"] * 2 for row in rows]


def test_fast_path_answers_predict_and_leaves_the_rest_to_bentoml() -> None:
    valid = {"json": {"inputs": [{"surge multiplier": 1.5}, {"surge multiplier": 2}]}}
    answers = _fast(_doubled, ("POST", "/predict", valid), ("GET", "/readyz", {}),
                    ("POST", "/predict", {**valid, "headers": {"content-type": "multipart/form-data"}}))
    assert [(r.status_code, r.json()) for r in answers] == [(200, [3.0, 4.0]), (299, "bentoml answered"),
                                                          (299, "bentoml answered")]
    assert _fast(None, ("POST", "/predict", valid))[0].json() == "bentoml answered"  # service not created yet


@pytest.mark.parametrize("body, field", [
    (b'{"inputs": [{"surge multiplier": "1"}]}', 'inputs[0]["surge multiplier"]'),
    (b'{"inputs": []}', "inputs"),
    (b'{"inputs": [{"surge multiplier": 1}', None),  # not JSON
    (b"", "inputs"),
])
def test_fast_path_rejects_like_bentoml_in_the_error_shape(body: bytes, field) -> None:
    answer, = _fast(_doubled, ("POST", "/predict", {"content": body}))
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_input"
    assert answer.json()["error"]["field"] == field


def test_fast_path_keeps_per_row_failures_overload_and_the_body_limit() -> None:
    async def one_failed(rows, params=None):
        return [1.0, mf_runtime.failure("model_error", "boom")]

    async def refused(rows, params=None):
        return mf_http.overloaded("busy", 3)

    two_rows = {"json": {"inputs": [{"surge multiplier": 1.0}, {"surge multiplier": -1.0}]}}
    failed, = _fast(one_failed, ("POST", "/predict", two_rows))
    assert (failed.status_code, failed.json()["error"]["field"]) == (500, "inputs[1]")
    shed, = _fast(refused, ("POST", "/predict", two_rows))
    assert (shed.status_code, shed.headers["retry-after"], shed.json()["error"]["code"]) == (503, "3", "overloaded")

    async def streamed():  # no content-length: counted as it arrives
        for _ in range(3):
            yield b"x" * 400

    too_large = {"error": {"code": "body_too_large", "field": None,
                           "message": "request body is larger than 1000 bytes; send fewer rows per request"}}
    for body in (b"x" * 2000, streamed()):
        large, = _fast(_doubled, ("POST", "/predict", {"content": body}))
        assert (large.status_code, large.json()) == (413, too_large)


@pytest.mark.parametrize("outputs, expected", [
    ([numpy.float32(0.5), [numpy.int64(3)]], [0.5, [3]]),  # numpy scalars a pyfunc model may leave in its outputs
    ([2**70, 0.5], [2**70, 0.5]),  # integers beyond 64 bits (orjson refuses them)
    ([{0: 1.5}, {0: 2.5}], [{"0": 1.5}, {"0": 2.5}]),  # records of a frame whose column is named 0
    ([object(), object()], {"error": {"code": "internal", "field": None,
                                      "message": "the model server failed; see its log"}}),  # nothing encodes it
])
def test_fast_path_encodes_outputs_as_json_dumps_would(outputs: list, expected: object) -> None:
    async def given(rows, params=None):
        return outputs

    two_rows = {"json": {"inputs": [{"surge multiplier": 1.0}, {"surge multiplier": -1.0}]}}
    encoded, = _fast(given, ("POST", "/predict", two_rows))
    assert (encoded.status_code, encoded.json()) == (500 if "error" in expected else 200, expected)
