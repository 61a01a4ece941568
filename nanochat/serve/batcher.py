"""Dynamic batching for the served chat: requests from many clients answered by one batched Engine.

Requests wait in a bounded queue (full -> the caller answers 503 with Retry-After). One worker thread takes
whatever is queued, up to batch_size requests (waiting at most batch_wait_s for more once one is there),
retrieves for all of them at once, and decodes them side by side with Engine.generate_many, streaming each
request's text as its tokens come. A request past its deadline, or whose client has gone, leaves the batch at
its next token. Torch runs on the worker thread only; the event loop just forwards events.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field

logger = logging.getLogger("nanochat.serve")


class QueueFull(Exception):
    pass


@dataclass
class Job:
    """One request in flight. `emit(kind, payload)` is called from the worker thread: retrieved (Prepared),
    text (a piece of the answer), done (Answer), error ((status, reason))."""
    question: str
    max_tokens: int
    temperature: float
    seed: int
    deadline: float  # time.monotonic() by which it must be answered
    emit: callable
    cancelled: bool = False
    enqueued: float = field(default_factory=time.monotonic)
    _tokens: list = field(default_factory=list)
    _sent: str = ""

    def expired(self) -> bool:
        return self.cancelled or time.monotonic() > self.deadline


class Batcher:
    """A bounded request queue and the worker that serves it in batches (see module docstring)."""

    def __init__(self, pipeline, batch_size: int, max_queue: int = 64, batch_wait_s: float = 0.01):
        self.pipeline, self.batch_size, self.batch_wait_s = pipeline, batch_size, batch_wait_s
        self.queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self.max_queue = max_queue
        self.stats = {"served": 0, "batches": 0, "rejected": 0, "timed_out": 0, "errors": 0, "largest_batch": 0}
        self._thread = None
        self._stop = threading.Event()
        self._busy_s = []  # seconds of recent batches, for Retry-After

    # ---- the caller's side

    def submit(self, job: Job) -> None:
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            self.stats["rejected"] += 1
            raise QueueFull from None

    def retry_after(self) -> int:
        """Seconds a rejected client should wait: about one batch's time, at least 1."""
        recent = self._busy_s[-8:]
        return max(1, round(sum(recent) / len(recent))) if recent else 1

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="nanochat-batcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            try:
                self.queue.put_nowait(None)
            except queue.Full:
                pass
            self._thread.join(timeout)
            self._thread = None

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---- the worker

    def _run(self) -> None:
        while not self._stop.is_set():
            job = self.queue.get()
            if job is None:
                break
            batch = [job]
            until = time.monotonic() + self.batch_wait_s
            while len(batch) < self.batch_size:
                try:
                    more = self.queue.get(timeout=max(0.0, until - time.monotonic()))
                except queue.Empty:
                    break
                if more is None:
                    self._stop.set()
                    break
                batch.append(more)
            t0 = time.monotonic()
            try:
                self._serve(batch)
            except Exception:  # one bad batch must not stop the server: its requests get a 500, the worker goes on
                logger.exception("batch of %d requests failed", len(batch))
                self.stats["errors"] += len(batch)
                for j in batch:
                    j.emit("error", (500, "internal error while generating the answer"))
            self._busy_s = (self._busy_s + [time.monotonic() - t0])[-8:]

    def _serve(self, batch: list[Job]) -> None:
        live = []
        for j in batch:
            if j.expired():
                self._time_out(j)
            else:
                live.append(j)
        if not live:
            return
        self.stats["batches"] += 1
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(live))
        prepared = [None] * len(live)
        for limit in sorted({j.max_tokens for j in live}):  # a prompt's budget depends on its own max_tokens only
            idx = [i for i, j in enumerate(live) if j.max_tokens == limit]
            for i, p in zip(idx, self.pipeline.prepare_many([live[i].question for i in idx], limit, errors="return")):
                prepared[i] = p
        ready = []
        for j, p in zip(live, prepared):
            if isinstance(p, Exception):
                j.emit("error", (400, str(p)))
            else:
                j.emit("retrieved", p)
                ready.append((j, p))
        for temperature in sorted({j.temperature for j, _ in ready}):  # one decode per sampling temperature
            group = [(j, p) for j, p in ready if j.temperature == temperature]
            self._decode(group, temperature)

    def _decode(self, group, temperature: float) -> None:
        engine, tok = self.pipeline.engine, self.pipeline.engine.tokenizer

        def on_token(i, token):
            job = group[i][0]
            if job.expired():
                return False
            job._tokens.append(token)
            text = tok.decode(job._tokens)
            if not text.endswith("\ufffd"):  # a character split across tokens: wait for its end
                shown = text.strip()
                if shown.startswith(job._sent) and len(shown) > len(job._sent):
                    job.emit("text", shown[len(job._sent):])
                    job._sent = shown
            return True

        gens = engine.generate_many([p.prompt for _, p in group], [j.max_tokens for j, _ in group],
                                    temperature=temperature, seeds=[j.seed for j, _ in group],
                                    batch_size=self.batch_size, on_token=on_token)
        for (job, prepared), gen in zip(group, gens):
            if gen.stopped == "cancelled":
                self._time_out(job)
                continue
            self.stats["served"] += 1
            job.emit("done", self.pipeline.finish(prepared, gen))

    def _time_out(self, job: Job) -> None:
        if not job.cancelled:  # a client that left needs no answer
            self.stats["timed_out"] += 1
            job.emit("error", (504, "the request timed out before its answer was complete"))
