"""Dynamic batching: requests for the same net at the same image size that arrive within
`batch_window` seconds of each other run as one net pass, as serving systems do (Triton's
queue delay, TorchServe's batch delay).

One inference thread runs the passes, one after another (a CPU net already uses every core;
two passes at once would only fight over them). While a pass runs, new requests queue; the
next pass takes the oldest request and every queued one of its net and size, up to
`max_batch` images and `max_batch_pixels` pixels (an image larger than that runs alone,
tiled by `fcnseg.predict` when it is over AUTO_TILE_PIXELS). A request whose client left or
whose time ran out before its pass began is dropped from the queue: it costs nothing more.
The pass itself is `fcnseg.predict`'s (`_run`): a batch gives each image what `predict` gives.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .limits import Limits

__all__ = ["Batcher", "Job"]


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return None


_LIBC = _libc() if sys.platform.startswith("linux") else None


def _trim() -> None:
    """Hand the memory a batch's activations freed back to the system (glibc keeps it in
    its arenas otherwise: the server's RSS would stay at its largest batch's)."""
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


@dataclass(eq=False)
class Job:
    """One request's inputs: `key` says which requests can share a pass (net, size, whether
    probabilities are wanted); `future` gets (labels {head: (H, W)}, confidence {head:
    (H, W) uint8} or None, batch size, seconds of the pass)."""

    key: tuple
    sample: dict[str, np.ndarray]
    pixels: int
    future: asyncio.Future
    arrival: float = field(default_factory=time.monotonic)
    started: float | None = None

    def cancel(self) -> None:
        if not self.future.done():
            self.future.cancel()


# run(key, samples) -> (labels {head: (N, H, W)}, confidence {head: (N, H, W) uint8} | None)
Runner = Callable[[tuple, Sequence[dict]], tuple[dict, dict | None]]


class Batcher:
    def __init__(self, run: Runner, limits: Limits):
        self._run, self.limits = run, limits
        self._queue: deque[Job] = deque()
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="fcnseg-infer")
        self._task: asyncio.Task | None = None
        self.passes = 0  # net passes run (one per batch)
        self.images = 0  # images they held
        self.seconds = 0.0  # time spent in passes
        self._dirty = False  # passes ran since memory was last handed back

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for job in self._queue:
            job.cancel()
        self._queue.clear()
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)

    @property
    def waiting(self) -> int:
        return sum(not j.future.done() for j in self._queue)

    def submit(self, job: Job) -> asyncio.Future:
        self._queue.append(job)
        self._wake.set()
        return job.future

    def _take(self) -> list[Job]:
        """The oldest live job and the queued ones that can share its pass."""
        first = self._queue[0]
        group, budget = [], self.limits.max_batch_pixels
        for job in list(self._queue):
            if job.key != first.key or len(group) >= self.limits.max_batch:
                continue
            if group and budget - job.pixels < 0:
                break
            group.append(job)
            budget -= job.pixels
        for job in group:
            self._queue.remove(job)
        return group

    def _drop_dead(self) -> None:
        while self._queue and self._queue[0].future.done():  # client gone or timed out
            self._queue.popleft()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._drop_dead()
            if not self._queue:
                self._wake.clear()
                try:  # idle for half a second after passes: hand their memory back
                    await asyncio.wait_for(self._wake.wait(), 0.5 if self._dirty else None)
                except TimeoutError:
                    self._dirty = False
                    await loop.run_in_executor(self._executor, _trim)
                continue
            first = self._queue[0]
            same = sum(j.key == first.key and not j.future.done() for j in self._queue)
            wait = first.arrival + self.limits.batch_window - time.monotonic()
            if wait > 0 and same < self.limits.max_batch:  # let its companions arrive
                await asyncio.sleep(wait)
                continue
            group = [j for j in self._take() if not j.future.done()]
            if not group:
                continue
            t0 = time.monotonic()
            for job in group:
                job.started = t0
            try:
                labels, conf = await loop.run_in_executor(
                    self._executor, self._run, group[0].key, [j.sample for j in group]
                )
            except Exception as e:  # out of memory, NaN scores: every job of the pass
                for job in group:
                    if not job.future.done():
                        job.future.set_exception(e)
                continue
            seconds = time.monotonic() - t0
            self.passes, self.images = self.passes + 1, self.images + len(group)
            self.seconds += seconds
            for k, job in enumerate(group):
                if not job.future.done():
                    c = None if conf is None else {h: v[k] for h, v in conf.items()}
                    job.future.set_result(({h: v[k] for h, v in labels.items()}, c,
                                           len(group), seconds))  # fmt: skip
            self._dirty = True
