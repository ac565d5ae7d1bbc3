"""Opportunistic batching: run at once when idle; while the model runs, queue; the next run takes
everything queued, up to `max_rows` rows. Overload is refused at the door with a 503.

Why not BentoML's adaptive dispatcher (measurements: BENCHMARKS.md, "Latency and capacity"): it
waits on purpose, for as long as its average wait of the last 50 batches (`Optimizer.wait`), so after
a burst it keeps waiting tens of milliseconds per request at one client for tens of seconds (its own
waits feed the average it waits for); and it sheds with 503 whenever its linear latency model,
refitted on a noisy machine, predicts a miss. Here nothing ever waits for company: a request that finds the model idle
runs alone, and batches form only from what queued while the model was busy, so a batch is as large
as the load makes it and no larger.

Where a run happens: in the model thread, unless recent runs took under INLINE_RUN_S of CPU (their median);
then on the event loop itself. On one core (a pod's CPU limit, the benchmarks' pinned server) handing a
run to the thread and back costs two wake-ups and a GIL hand-over each way (~7 context switches per
request measured) and more CPU than a compiled model's whole run (BENCHMARKS.md, "Latency and
capacity"). Requests still merge: whatever arrived while a run held the loop is parsed in the next loop
turn and goes together into the next run. A slow model keeps its thread, so a long run never holds up
health checks.

What a request must wait for counts twice: the queue ahead of it, and the wait it already had before the
app saw it (mf_lag: the event loop's lag). With runs on the loop the queue stays empty past capacity, and
the wait is all in the second.

Copied verbatim into each model's folder by `factory render`; imports nothing heavy.
"""

from __future__ import annotations

import asyncio
import collections
import math
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional

import mf_lag

# Weight of the newest run in the running estimate of one run's duration.
SMOOTHING = 0.2
# Runs take place on the event loop while the median CPU time of the last RECENT_RUNS is below this: the
# loop is never held longer while it has the core, and neither an outlier nor a machine that preempts
# the server mid-run (wall time) sends a fast model back to the thread. A model that waits rather than
# computes (wall time far above its CPU time, e.g. a pyfunc calling out) keeps the thread.
INLINE_RUN_S = 0.002
INLINE_WALL_S = 0.010
RECENT_RUNS = 9


class Overloaded(Exception):
    """The wait this request already had to be read, and the queue ahead of it, add up to more than the budget."""

    def __init__(self, waited_s: float, queued_s: float, budget_s: float):
        super().__init__(f"the model server is overloaded: about {waited_s * 1000:.0f} ms waiting to be read and "
                         f"{queued_s * 1000:.0f} ms of queued work ahead, over its {budget_s * 1000:.0f} ms budget "
                         "(batching.max_latency_ms)")
        self.retry_after_s = max(1, math.ceil(waited_s + queued_s))


class Batcher:
    """Merges the row lists of concurrent requests into model runs, one run at a time, in a worker thread.

    `run` takes a list of rows and the requests' params, and returns one output per row
    (mf_runtime.Predictor.predict, which isolates rows the model fails on). Requests merge only with
    requests of equal params: one model run takes one set. `merge=False` runs each request alone
    (batching.enabled: false).
    """

    def __init__(self, run: Callable[[list, Any], list], max_rows: int, budget_ms: int, merge: bool = True):
        self.run = run
        self.max_rows = max_rows
        self.budget_s = budget_ms / 1000
        self.merge = merge
        self.queue: collections.deque[tuple[list, Any, asyncio.Future]] = collections.deque()
        self.queued_rows = 0
        self.busy = False
        self.run_s: Optional[float] = None  # unknown until the first run: nothing is refused before it
        self.recent_cpu: collections.deque[float] = collections.deque(maxlen=RECENT_RUNS)
        self.recent_wall: collections.deque[float] = collections.deque(maxlen=RECENT_RUNS)
        self.runs = 0
        self.lag = mf_lag.LoopLag()
        # One thread: the model runs one batch at a time, while the event loop keeps parsing requests.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    async def submit(self, rows: list, params: Any = None) -> list:
        """The outputs for `rows` (with `params`, None for the model's defaults), or Overloaded (`answer`)."""
        answered = self.answer(rows, params)
        return await answered if isinstance(answered, asyncio.Future) else answered

    def answer(self, rows: list, params: Any = None) -> "list | asyncio.Future[list]":
        """The outputs for `rows` when they run at once, else a future of them (the request queues); Overloaded when
        the wait it had before the app saw it and the work queued ahead would not be done within the budget.
        Called on the event loop, it never yields to it: the pod's protocol (mf_protocol) answers without a task."""
        waited, queued = self.lag.seen(), self.expected_wait_s(len(rows))
        if waited + queued > self.budget_s:
            raise Overloaded(waited, queued, self.budget_s)
        if not self.busy and self.inline() and (len(rows) >= self.max_rows or not self.merge):
            # Nothing could join it and nothing can queue while it holds the loop: straight to the model,
            # without the queue, a task and two loop turns (~70 µs of a full batch's ~350).
            outputs, seconds, cpu_s = self._timed(rows, params)
            self._learn(seconds, cpu_s)
            return outputs
        future = asyncio.get_running_loop().create_future()
        self.queue.append((rows, params, future))
        self.queued_rows += len(rows)
        if not self.busy:
            self.busy = True
            asyncio.get_running_loop().create_task(self._drain())
        return future

    def expected_wait_s(self, rows: int) -> float:
        """Runs ahead of `rows` (the one in progress, then the queue packed in max_rows, or one run per queued
        request when requests never merge) × one run's duration."""
        if self.run_s is None:
            return 0.0
        queued_runs = math.ceil((self.queued_rows + rows) / self.max_rows) - 1 if self.merge else len(self.queue)
        return ((1 if self.busy else 0) + queued_runs) * self.run_s

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.queue:
                taken = self._take()
                rows, params = [row for request, _, _ in taken for row in request], taken[0][1]
                try:
                    if self.inline():
                        outputs, seconds, cpu_s = self._timed(rows, params)
                    else:
                        outputs, seconds, cpu_s = await loop.run_in_executor(self.executor, self._timed, rows, params)
                except Exception as exc:  # the predictor isolates model errors; this is a defect of ours
                    for _, _, future in taken:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                self._learn(seconds, cpu_s)
                self._answer(taken, outputs)
                if self.queue:
                    await asyncio.sleep(0)  # answers go out and new requests join the queue before the next run
        finally:
            self.busy = False

    def _timed(self, rows: list, params: Any) -> tuple[list, float, float]:
        """The outputs, the run's wall time and its CPU time, both taken where it runs: a hand-off to the
        thread and back is not the model's time."""
        started, cpu_started = time.perf_counter(), time.thread_time()
        outputs = self.run(rows, params)
        return outputs, time.perf_counter() - started, time.thread_time() - cpu_started

    def inline(self) -> bool:
        """Whether the next run happens on the event loop: only once runs are known to be short."""
        return bool(self.recent_cpu) and statistics.median(self.recent_cpu) < INLINE_RUN_S \
            and statistics.median(self.recent_wall) < INLINE_WALL_S

    def _take(self) -> list[tuple[list, Any, asyncio.Future]]:
        """The oldest request, then as many queued after it as fit in max_rows and have its params (requests are
        never split, nor reordered: one with other params waits for the next run)."""
        taken = [self.queue.popleft()]
        rows, params = len(taken[0][0]), taken[0][1]
        while (self.merge and self.queue and rows + len(self.queue[0][0]) <= self.max_rows
               and self.queue[0][1] == params):
            taken.append(self.queue.popleft())
            rows += len(taken[-1][0])
        self.queued_rows -= rows
        return taken

    def _learn(self, seconds: float, cpu_s: float) -> None:
        self.runs += 1
        self.recent_cpu.append(cpu_s)
        self.recent_wall.append(seconds)
        self.run_s = seconds if self.run_s is None else (1 - SMOOTHING) * self.run_s + SMOOTHING * seconds

    @staticmethod
    def _answer(taken: list[tuple[list, Any, asyncio.Future]], outputs: list[Any]) -> None:
        start = 0
        for request, _, future in taken:
            if not future.done():  # a client that went away cancelled it
                future.set_result(outputs[start:start + len(request)])
            start += len(request)
