"""The decoder: one worker thread that owns the Model, fed by a bounded FIFO queue.

The Model is not thread-safe (one static KV cache, its default prompt cache), so every generation runs
on this one thread, in arrival order. The HTTP side submits a `Work`, gets a `Job`, and awaits its events on
the event loop: ("piece", str)* then exactly one of ("done", GenerationResult), ("error", exception),
("cancelled", None). A job is cancelled when its client goes away: a queued job is dropped at once,
a running one stops after its current decode step (the Model checks `should_stop` between steps),
and the thread moves on to the next job; the cache stays valid for the next request's prefix reuse.

This is `trikern serve --max-batch 1`; batch_engine.py's `BatchEngine` (the default) keeps this
class's queue, cancelling and single path, and decodes several requests together.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from .metrics import Metrics

log = logging.getLogger("trikern.serve")


class QueueFull(Exception):
    """Every queue slot is taken; the client should retry later."""


class EngineClosed(Exception):
    """The server is shutting down."""


@dataclass
class Work:
    """One generation, in the Model API's own terms (no HTTP here)."""
    messages: list | None  # chat: rendered with the checkpoint's template
    prompt: object  # completion: text or token ids (None for chat)
    mode: str
    stop: list[str] | None = None
    options: dict = field(default_factory=dict)  # Model keyword options: max_new_tokens, temperature, ...
    template_kwargs: dict | None = None

    def open(self, model, should_stop=None):
        """The Model's Stream (text pieces, then `.result`); the request is fully checked here
        (ValueError names the field). `should_stop` is checked after every decode step (a client that left)."""
        if self.messages is not None:
            return model.chat_stream(self.messages, mode=self.mode, stop=self.stop,
                                     template_kwargs=self.template_kwargs, should_stop=should_stop, **self.options)
        return model.stream(self.prompt, mode=self.mode, stop=self.stop, should_stop=should_stop, **self.options)


class Job:
    """A submitted Work: its events (filled from the decoder thread) and its cancel flag."""

    def __init__(self, work: Work, loop: asyncio.AbstractEventLoop):
        self.work = work
        self.loop = loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.submitted = time.monotonic()
        self.started: float | None = None  # when the decoder took it

    def emit(self, kind: str, value=None):
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is gone: the server is shutting down, nobody listens
            pass

    async def next(self) -> tuple[str, object]:
        return await self.events.get()


class Engine:
    def __init__(self, model, max_queue: int, metrics: Metrics | None = None, cuda_graphs: bool | None = None):
        """`cuda_graphs`: False runs every decode step eagerly on CUDA (`trikern serve --no-cuda-graphs`);
        None: graphs where the decoder captures them."""
        self.model = model
        self.cuda_graphs = cuda_graphs
        self.max_queue = max_queue
        self.metrics = metrics or Metrics()
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._running: Job | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="trikern-decoder", daemon=True)
        self.metrics.add_gauge("trikern_queue_depth", "Requests waiting for the decoder.", self.queued)
        self.metrics.add_gauge("trikern_running", "Requests being decoded.", self.running)

    # What the queue bound and the gauges count (the batched engine has more places a job can be).
    def queued(self) -> int:
        return len(self._waiting)

    def running(self) -> int:
        return int(self._running is not None)

    def _idle_slots(self) -> int:
        """Requests the decoder could start now without any waiting."""
        return 1 - self.running()

    def _running_jobs(self) -> list[Job]:
        return [] if self._running is None else [self._running]

    # -- event-loop side ------------------------------------------------------------------
    def start(self):
        self._thread.start()

    def submit(self, work: Work) -> Job:
        """Queue `work` (call from the event loop); QueueFull when `max_queue` requests already wait."""
        if self.cuda_graphs is not None:  # a server setting, not a request field
            work.options["cuda_graphs"] = self.cuda_graphs
        job = Job(work, asyncio.get_running_loop())
        with self._cond:
            if self._closed:
                raise EngineClosed("the server is shutting down")
            # The slot of the running request is not part of the queue: an idle decoder takes one
            # request even with max_queue == 0.
            free = self.max_queue + self._idle_slots() - self.queued()
            if free <= 0:
                raise QueueFull(f"{len(self._waiting)} requests are waiting (--max-queue {self.max_queue})")
            self._waiting.append(job)
            self._cond.notify()
        return job

    def cancel(self, job: Job):
        """The client went away: drop the job if it is still queued, else stop it at its next piece."""
        if job.cancelled.is_set():
            return
        with self._cond:
            job.cancelled.set()
            try:
                self._waiting.remove(job)
            except ValueError:
                return  # running or finished: the decoder thread sees the flag
        self.metrics.cancelled.inc()
        job.emit("cancelled")

    def close(self, timeout: float = 10.0):
        """Refuse new work, end queued jobs, stop the running one and join the thread."""
        with self._cond:
            self._closed = True
            waiting, self._waiting = list(self._waiting), deque()
            running = self._running_jobs()
            self._cond.notify_all()
        for job in waiting:
            job.emit("error", EngineClosed("the server is shutting down"))
        for job in running:
            job.cancelled.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- decoder thread -------------------------------------------------------------------
    def _loop(self):
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job = self._running = self._waiting.popleft()
            try:
                event = self._run(job)
            except BaseException:  # noqa: BLE001 - the decoder thread must outlive any one request
                log.exception("decoder thread: unexpected failure")
                event = ("error", RuntimeError("internal error"))
            # Free the slot before the client hears the outcome: a client that sends its next request
            # as soon as this one is answered must find the decoder idle (max_queue 0 would 429 it).
            with self._cond:
                self._running = None
            job.emit(*event)

    def _run(self, job: Job) -> tuple[str, object]:
        """Run one job, emitting its pieces; returns its final event."""
        job.started = time.monotonic()
        m = self.metrics
        m.queue_wait.observe(job.started - job.submitted)
        mode = job.work.mode
        try:
            pieces = job.work.open(self.model, should_stop=job.cancelled.is_set)
        except Exception as e:  # noqa: BLE001 - ValueError is the client's; the HTTP side maps the rest to 500
            if not isinstance(e, ValueError):
                log.exception("request failed before decoding")
            return ("error", e)
        first = True
        try:
            for piece in pieces:
                if job.cancelled.is_set():
                    # Decoded after the client left: stop here, within one piece of the disconnect.
                    m.pieces_after_cancel.inc()
                    m.cancelled.inc()
                    return ("cancelled", None)
                if first:
                    m.ttft.observe(time.monotonic() - job.submitted, mode=mode)
                    first = False
                job.emit("piece", piece)
            if job.cancelled.is_set():  # the decode loop saw it after a step and ended early
                m.cancelled.inc()
                return ("cancelled", None)
        except Exception as e:  # noqa: BLE001 - reported to the client as a server error, logged here
            log.exception("decoding failed")
            return ("error", e)
        finally:
            pieces.close()  # closes the decode loop: its cache is released now, not at the next GC
        result = pieces.result
        self._count(result.stats, mode)
        return ("done", result)

    def _count(self, s: dict, mode: str):
        """The per-generation metrics of a finished generation's stats."""
        m = self.metrics
        m.prompt_tokens.inc(s.get("prompt_tokens", 0), mode=mode)
        m.generated_tokens.inc(s.get("generated_tokens", 0), mode=mode)
        m.forwards.inc(s.get("forwards", 0), mode=mode)
        if s.get("forwards"):
            m.tokens_per_forward.observe(s.get("tokens_per_forward", 0.0), mode=mode)
        if s.get("decode_s", 0) > 0:
            m.decode_tps.observe(s.get("tokens_per_second", 0.0), mode=mode)
