"""Who runs when: admission control, fair turns on the inference threads, the per-request time limit, and
handing memory back when the server goes idle.

- At most ``max_inflight`` requests are admitted at once (running or waiting); the next one is answered 503
  with Retry-After once its body is in and before it is parsed, so the parsed arrays, intermediate tensors
  and answers in memory are bounded by that many requests of at most ``max_elements`` each.
- A batch runs in chunks of ``chunk_rows`` rows. Each chunk waits for a thread on one FIFO semaphore, so a
  large request gets back in line after every chunk, and a small request waits behind at most one chunk of
  each request ahead of it, never behind whole batches.
- A request that takes longer than ``request_timeout_s`` (waiting included) is answered 504; its ONNX Runtime
  run is told to stop (``RunOptions.terminate``), and its thread is counted busy until it has.
- When no request has been in flight for a second, glibc is asked to return freed memory to the system
  (``malloc_trim``): large JSON bodies and outputs leave freed pages behind that it otherwise keeps.
"""

from __future__ import annotations

import asyncio
import ctypes
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from slimops.serving.limits import Limits
from slimops.serving.model import ServedModel
from slimops.serving.oip import RequestError, tensor_output

_IDLE_TRIM_S = 1.0


class Overloaded(Exception):
    """Admission refused: answered 503 with Retry-After."""


class TimedOut(Exception):
    """The request ran past its time limit: answered 504."""


class Scheduler:
    def __init__(self, workers: int, limits: Limits):
        self.limits = limits
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="slimops-infer")
        self._turns = asyncio.Semaphore(workers)  # one per thread: FIFO, so chunks of all requests take turns
        self.inflight = 0
        self._trim_timer: asyncio.TimerHandle | None = None

    def admit(self) -> None:
        if self.inflight >= self.limits.max_inflight:
            raise Overloaded(f"this server is busy ({self.inflight} requests in flight, its limit); retry shortly")
        self.inflight += 1
        if self._trim_timer is not None:
            self._trim_timer.cancel()
            self._trim_timer = None

    def leave(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            loop = asyncio.get_running_loop()
            self._trim_timer = loop.call_later(_IDLE_TRIM_S, lambda: loop.run_in_executor(None, _trim))

    async def infer(self, model: ServedModel, arrays: dict, requested: list[str] | None) -> list[dict]:
        """The request's outputs; TimedOut past the limit, RequestError for a client's mistake."""
        options = model.run_options()
        try:
            async with asyncio.timeout(self.limits.request_timeout_s):
                return await self._infer(model, arrays, model.output_names(requested), options)
        except TimeoutError:
            options.terminate = True  # the chunk now running stops between two nodes and frees its thread
            raise TimedOut(f"inference took longer than this server's limit of {self.limits.request_timeout_s:g} s; "
                           "send fewer rows or retry later") from None

    async def _infer(self, model: ServedModel, arrays: dict, names: list[str], options) -> list[dict]:
        feeds = await asyncio.to_thread(model.feeds, arrays) if model.text else arrays
        rows = min((a.shape[0] for a in feeds.values() if a.ndim), default=1)
        step = self.limits.chunk_rows if all(a.ndim for a in feeds.values()) else rows
        parts, produced = [], 0
        for start in range(0, rows, step):
            chunk = {name: a[start:start + step] for name, a in feeds.items()}
            part = await self._turn(model.run, chunk, names, options)
            produced += sum(v.size for v in part.values())
            if produced > self.limits.max_elements:
                raise RequestError(f"the answer holds more than this server's limit of {self.limits.max_elements} "
                                   "elements; send fewer rows or ask for fewer outputs", status=413)
            parts.append(part)
        return await asyncio.to_thread(_join, parts, names)

    async def _turn(self, fn, *args):
        """Run ``fn`` on an inference thread once it is this caller's turn."""
        await self._turns.acquire()
        loop = asyncio.get_running_loop()
        future = self.executor.submit(fn, *args)
        # The turn ends when the thread is done, not when a timed-out caller stops waiting for it.
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(self._turns.release))
        return await asyncio.wrap_future(future)


def _join(parts: list[dict], names: list[str]) -> list[dict]:
    return [tensor_output(name, parts[0][name] if len(parts) == 1 else np.concatenate([p[name] for p in parts]))
            for name in names]


def _trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to ask
        pass
