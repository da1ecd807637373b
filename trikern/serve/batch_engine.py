"""The batched decoder: up to `max_batch` requests decode together in one `trikern.batch.BatchDecoder`.

Same contract as engine.py's `Engine` (submit / cancel / close, a Job's events, the bounded queue and
its 429), same single decoder thread owning the Model; between two batched steps that thread
admits the requests at the head of the queue into free sequence regions (their prompts are
prefilled in chunks while the others keep decoding), and after each step turns every sequence's new
tokens into text (trikern.text, the layer `Model.stream` uses too, so text, stop strings,
finish_reason and usage are what the single path gives) and ends the ones that are done: EOS,
max_tokens, a stop string, or a client that left (cancelled between steps, its region freed, the
others untouched).

One (mode, block size) per batch. Requests are admitted in arrival order: when the oldest waiting
request needs another (mode, block size), or must run alone, nothing more joins until the batch
has drained; then its batch starts (FIFO: no request waits behind later arrivals). What runs
alone, on engine.py's single path (`Model.stream`): draft trees (`tree_nodes`), a mode the batch
decoder does not run, and a request that does not fit a batch region (prompt + max_tokens over
`context` when that is below the model's). `auto` is batched as a mode of its own
(trikern/batch/auto.py picks the step per batch): auto requests batch with auto requests.

Prefix reuse: the BatchDecoder keeps each finished sequence's region (its token ids and K/V); a
request whose prompt extends one -- the next turn of a chat -- is admitted into that region and
prefills only the rest. A decoder made for another mode takes the kept prefixes over (`adopt`).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from ..batch import BatchDecoder
from ..batch.driver import MODES as BATCH_MODES
from ..decode.context import check_prompt_length
from ..text import TextEmitter
from .engine import Engine, EngineClosed, Job

log = logging.getLogger("trikern.serve")

# Prompt tokens fed per step to joining requests, all together: the others wait about one such
# pass per step while a long prompt arrives, instead of for the whole prompt.
PREFILL_CHUNK = 256


@dataclass
class Plan:
    """A checked request: its prompt ids and settings, and the batch it runs in (None: alone)."""
    ids: list[int]
    gen: object  # GenerationConfig
    stops: object  # StopStrings or None
    key: tuple[str, int] | None  # (mode, block size) of its batch


class Running:
    """A request decoding in the batch: its sequence and its text."""

    def __init__(self, seq, text: TextEmitter):
        self.seq, self.text, self.first = seq, text, True


class BatchEngine(Engine):
    def __init__(self, model, max_queue: int, metrics=None, max_batch: int = 4, context: int | None = None,
                 cuda_graphs: bool | None = None):
        """`context`: the tokens (prompt + completion) of one batched request; every one of the
        `max_batch` cache regions is sized for it (default: the model's context)."""
        limit = model.cfg.max_position_embeddings
        self.max_batch = max_batch
        self.context = limit if context is None else min(context, limit)
        self._active: dict[Job, Running] = {}
        self._staged: tuple[Job, Plan | None] | None = None  # the head of the queue, taken out to be admitted
        self._solo: Job | None = None  # running alone on the single path
        self._dec: BatchDecoder | None = None
        self._key: tuple[str, int] | None = None
        super().__init__(model, max_queue, metrics, cuda_graphs)
        self._thread.name = "trikern-batch-decoder"

    # -- what the queue bound and the gauges count ------------------------------------------
    def queued(self) -> int:
        return len(self._waiting) + (self._staged is not None)

    def running(self) -> int:
        return len(self._active) + (self._solo is not None)

    def _idle_slots(self) -> int:
        return max(0, self.max_batch - self.running())

    def _running_jobs(self) -> list[Job]:
        jobs = list(self._active) + ([self._solo] if self._solo is not None else [])
        return jobs + ([self._staged[0]] if self._staged is not None else [])

    # -- decoder thread -------------------------------------------------------------------
    def _loop(self):
        while True:
            try:
                if not self._fill():
                    break
                if self._active:
                    self._step()
            except BaseException:  # noqa: BLE001 - the decoder thread must outlive any one request
                log.exception("decoder thread: unexpected failure")
                self._fail_batch()
        for job in list(self._active):  # closing: the running requests stop here
            self._dec.cancel(self._active[job].seq)
            self._end(job, ("cancelled", None))
        if self._staged is not None:
            job, self._staged = self._staged[0], None
            job.emit("error", EngineClosed("the server is shutting down"))

    def _fill(self) -> bool:
        """Admit every request that can join the batch now, or run the one that must run alone when
        the batch is empty; False once the engine is closed."""
        while True:
            with self._cond:
                while not (self._waiting or self._staged or self._active) and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return False
                if self._staged is None:
                    if not self._waiting or len(self._active) >= self.max_batch:
                        return True
                    self._staged = (self._waiting.popleft(), None)
            job, plan = self._staged
            if job.cancelled.is_set():  # left while staged (Engine.cancel found it out of the queue)
                self._unstage()
                self.metrics.cancelled.inc()
                job.emit("cancelled")
                continue
            if plan is None:
                try:
                    plan = self._plan(job)
                except Exception as e:  # noqa: BLE001 - ValueError is the client's; the HTTP side maps the rest to 500
                    if not isinstance(e, ValueError):
                        log.exception("request failed before decoding")
                    self._unstage()
                    job.emit("error", e)
                    continue
                self._staged = (job, plan)
            if plan.key is not None and plan.key != self._key and not self._active:
                try:
                    self._switch(plan.key)
                except ValueError:  # the batch cannot run these settings: the single path answers
                    plan.key = None
                except Exception as e:  # noqa: BLE001 - e.g. out of memory for the regions: this request fails
                    log.exception("could not make a batched decoder for %s", plan.key)
                    self._unstage()
                    job.emit("error", RuntimeError(f"internal error: {type(e).__name__}"))
                    continue
            if self._active and plan.key != self._key:
                return True  # it waits for the batch to drain
            if plan.key is None:
                self._run_alone(job)
            else:
                self._admit(job, plan)

    def _unstage(self):
        with self._cond:
            self._staged = None

    def _plan(self, job: Job) -> Plan:
        """Check the request as the single path does (same errors, in the same order) and pick its batch."""
        w, m = job.work, self.model
        # The Model's own checks and encoding, without the cache a single-path generation allocates.
        if w.messages is not None:
            ids = m._chat_ids(w.messages, w.template_kwargs)
            gen, stops = m._check(w.mode, w.stop, dict(w.options))
        else:
            gen, stops = m._check(w.mode, w.stop, dict(w.options))
            ids = m._encode(w.prompt)
        limit = m.cfg.max_position_embeddings
        check_prompt_length(len(ids), limit)  # the single path's refusal, now rather than after the batch drains
        mode = w.mode
        fits = len(ids) < self.context and (len(ids) + gen.max_new_tokens <= self.context or self.context == limit)
        if mode not in BATCH_MODES or gen.tree_nodes is not None or not fits:
            return Plan(ids, gen, stops, None)
        return Plan(ids, gen, stops, (mode, 1 if mode == "ar" else gen.block_size or m.cfg.block_size))

    def _switch(self, key: tuple[str, int]):
        """A decoder for another (mode, block size), holding the prefixes the last one kept."""
        dec = BatchDecoder(self.model.model, self.max_batch, key[0], key[1], context=self.context,
                           prefill_chunk=PREFILL_CHUNK, reuse_prefix=True, cuda_graphs=self.cuda_graphs)
        if self._dec is not None:
            dec.adopt(self._dec)
        self._dec, self._key = dec, key

    def _run_alone(self, job: Job):
        with self._cond:
            self._solo, self._staged = job, None
        try:
            event = self._run(job)
        except BaseException:  # noqa: BLE001 - as Engine._loop
            log.exception("decoder thread: unexpected failure")
            event = ("error", RuntimeError("internal error"))
        with self._cond:
            self._solo = None
        job.emit(*event)

    def _admit(self, job: Job, plan: Plan):
        try:
            seq = self._dec.add(plan.ids, plan.gen, ident=job)
        except ValueError as e:
            self._unstage()
            job.emit("error", e)
            return
        job.started = time.monotonic()
        self.metrics.queue_wait.observe(job.started - job.submitted)
        run = Running(seq, TextEmitter(self.model.tokenizer, plan.ids, plan.gen.stop_token_ids, plan.stops))
        with self._cond:
            self._active[job], self._staged = run, None
        if seq.done:  # max_tokens 0: nothing to decode
            self._finish(job, run)

    def _step(self):
        dec, m = self._dec, self.metrics
        for job, run in list(self._active.items()):
            if job.cancelled.is_set():  # the client left: its region is free for the next request
                dec.cancel(run.seq)
                m.cancelled.inc()
                self._end(job, ("cancelled", None))
        if not self._active:
            return
        decoding = sum(s.decoding for s in dec.active)
        steps, prefilled = dec.steps, dec.prefill_tokens
        # Batched auto rates a step by what it does for a waiting request: a region freed early serves
        # it at once, unless the head of the queue needs another decoder (then the batch must drain).
        head = self._staged[1] if self._staged is not None else None
        dec.waiting_elsewhere = 0 if head is not None and head.key != self._key else self.queued()
        t0 = time.perf_counter()
        out = dec.step()
        if dec.steps > steps:
            m.batch_step_seconds.inc(time.perf_counter() - t0, batch_size=decoding)
            m.batch_step_tokens.inc(sum(map(len, out.values())), batch_size=decoding)
            if decoding:
                m.batch_size.observe(decoding)
        m.batch_prefill_tokens.inc(dec.prefill_tokens - prefilled)
        for job, run in list(self._active.items()):
            tokens = out.get(run.seq)
            if tokens is None:  # still prefilling
                continue
            m.batch_tokens.inc(len(tokens), mode=dec.mode)
            piece = run.text.feed(tokens)
            if job.cancelled.is_set():  # left during this step: what it decoded reaches nobody
                if piece:
                    m.pieces_after_cancel.inc()
                if not run.seq.done:
                    dec.cancel(run.seq)
                m.cancelled.inc()
                self._end(job, ("cancelled", None))
                continue
            if piece:
                self._piece(job, run, piece)
            if run.text.stopped and not run.seq.done:  # a stop string: the rest is not wanted
                dec.cancel(run.seq)
            if run.seq.done:
                self._finish(job, run)

    def _piece(self, job: Job, run: Running, piece: str):
        if run.first:
            self.metrics.ttft.observe(time.monotonic() - job.submitted, mode=run.seq.stats.mode)
            run.first = False
        job.emit("piece", piece)

    def _finish(self, job: Job, run: Running):
        tail = run.text.flush()
        if tail:
            self._piece(job, run, tail)
        w = self.model.model.embed_tokens.weight
        stats = {**run.seq.stats.as_dict(), "dtype": str(w.dtype).removeprefix("torch."),
                 "dtype_reason": self.model.dtype_reason}
        self._count(stats, run.seq.stats.mode)
        self._end(job, ("done", run.text.result(stats)))

    def _end(self, job: Job, event: tuple[str, object]):
        # Free the slot before the client hears the outcome (as Engine._loop does).
        with self._cond:
            self._active.pop(job, None)
        job.emit(*event)

    def _fail_batch(self):
        """Something failed unexpectedly: the requests in the batch (and the one being admitted, which
        would otherwise be retried forever) get a server error, and the next batch starts on a fresh
        decoder (this one's state is unknown)."""
        for job in list(self._active):
            self._end(job, ("error", RuntimeError("internal error")))
        if self._staged is not None:
            job = self._staged[0]
            self._unstage()
            job.emit("error", RuntimeError("internal error"))
        self._dec = self._key = None
