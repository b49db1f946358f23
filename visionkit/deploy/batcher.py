"""Micro-batching for `visionkit serve`: one thread owns the model and runs queued requests together.

Requests that arrive within `max_wait_ms` of each other run as one batch of at most `max_batch` images; each
job gets only its own records. A batch that fails is rerun a job at a time, so one bad image fails only its
own request, and nothing a job does stops the thread."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from visionkit.deploy.uploads import Limits

log = logging.getLogger("visionkit.serve")


class Busy(Exception):
    """The queue already holds `max_queue` requests: answered 503, try again."""

    status = 503


@dataclass
class Job:
    """One request's images (or, for /sample, the call to make) and where its records go."""

    images: list[np.ndarray]
    draw: bool  # the first image's drawings are made too
    call: Callable[[], Any] | None = None  # run alone on the batcher's thread instead of predicting `images`
    notify: Callable[[], None] | None = None  # called (from the batcher's thread) once the result is in
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class Batcher:
    """Runs queued jobs in batches of up to `max_batch` images, waiting at most `max_wait_ms` for company."""

    def __init__(self, predictor: Any, options: dict[str, Any], limits: Limits) -> None:
        self.predictor, self.options, self.limits = predictor, options, limits
        self.queue: list[Job] = []
        self.lock = threading.Condition()
        self.batches: collections.deque[int] = collections.deque(maxlen=1000)  # images in each recent batch
        self.batches_run = 0
        self.stopped = False
        self.thread = threading.Thread(target=self._loop, daemon=True, name="visionkit-batcher")
        self.thread.start()

    def enqueue(self, job: Job) -> None:
        """Queue a job (Busy when `max_queue` wait already); its `done` is set and `notify` called when done."""
        with self.lock:
            if len(self.queue) >= self.limits.max_queue:
                raise Busy(f"the server is busy: {len(self.queue)} requests are waiting; try again shortly.")
            self.queue.append(job)
            self.lock.notify()

    def submit(self, job: Job) -> Job:
        """Queue a job and wait for its result (from any thread but the batcher's)."""
        self.enqueue(job)
        job.done.wait()
        return job

    def stop(self) -> None:
        """End the thread once the queue is empty (it lets go of the model)."""
        with self.lock:
            self.stopped = True
            self.lock.notify()

    def alive(self) -> bool:
        """Whether the thread still takes jobs (GET /health)."""
        return self.thread.is_alive() and not self.stopped

    def _loop(self) -> None:
        while True:
            with self.lock:
                jobs = self._take()
            if jobs is None:
                self.predictor = None
                return
            try:
                if jobs[0].call is not None:
                    self._call(jobs[0])
                else:
                    self._run(jobs)
            except BaseException:  # noqa: BLE001 - never reached by a job's own error; kept alive regardless
                log.exception("the batcher failed between jobs")
            finally:
                for job in jobs:
                    self._finish(job)

    def _take(self) -> list[Job] | None:
        """The next jobs to run (lock held): a /sample call alone, or requests of up to `max_batch` images."""
        while not self.queue:
            if self.stopped:
                return None
            self.lock.wait()
        if self.queue[0].call is not None:
            return [self.queue.pop(0)]
        deadline = time.perf_counter() + self.limits.max_wait_ms / 1000
        while sum(len(j.images) for j in self.queue) < self.limits.max_batch:
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            self.lock.wait(left)
        jobs, size = [], 0
        while self.queue and self.queue[0].call is None:
            if jobs and size + len(self.queue[0].images) > self.limits.max_batch:
                break
            jobs.append(self.queue.pop(0))
            size += len(jobs[-1].images)
        return jobs

    def _call(self, job: Job) -> None:
        try:
            job.result = job.call()
        except Exception as exc:  # noqa: BLE001 - the request gets the error; the loop goes on
            job.error = exc

    def _run(self, jobs: list[Job]) -> None:
        try:
            self._predict(jobs)
        except Exception as exc:  # noqa: BLE001 - rerun alone, so only the job at fault gets its error
            if len(jobs) == 1:
                jobs[0].error = exc
                return
            for job in jobs:
                try:
                    self._predict([job])
                except Exception as alone:  # noqa: BLE001 - this request's own error
                    job.error = alone

    def _predict(self, jobs: list[Job]) -> None:
        images = [image for job in jobs for image in job.images]
        self.batches.append(len(images))
        self.batches_run += 1
        outputs = self.predictor.predict_frames(images, self.options)
        at = 0
        for job in jobs:
            mine = outputs[at : at + len(job.images)]
            pairs = enumerate(zip(job.images, mine, strict=True))
            job.result = [self.record(img, out, job.draw and k == 0) for k, (img, out) in pairs]
            at += len(job.images)

    def record(self, image: np.ndarray, output: Any, draw: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        """One image's record, and its drawings by name when `draw`."""
        task, opts = self.predictor.task, self.options
        record = task.postprocess(output, image, opts)
        pictures = (task.draw(image, output, {**opts, "draw": True}) or {}) if draw else {}
        return record, pictures

    @staticmethod
    def _finish(job: Job) -> None:
        job.done.set()
        try:
            if job.notify is not None:
                job.notify()
        except Exception:  # noqa: BLE001 - the client's event loop is gone (server shutting down)
            log.warning("a finished request could not be handed back", exc_info=True)
