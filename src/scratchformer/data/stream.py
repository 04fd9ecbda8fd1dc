"""Training windows streamed from a token file to the devices, ahead of use.

A background thread builds each jitted call's windows (k steps x B rows x T+1 tokens)
`depth` calls ahead. Step s's window starts come from the same function of the run's
key and s as the on-device path's (`starts_of`, computed here on the CPU), so both paths
train on identical batches. Each process reads only the rows that its own
devices hold of the global batch, with pread rather than through the memmap's pages: a
page fault maps the pages read ahead around it too, and those stay in the process's
resident memory, which would grow towards the whole file's size over a long run
(BENCHMARKS.md, "Streaming from token files").
"""

from __future__ import annotations

import os
import queue
import threading

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from ..parallel import AXIS


class WindowStream:
    """An iterator of {"windows": k x B x (T+1) int32, split over the mesh along B}, one
    per training call from `first_step` on; `close()` stops the thread."""

    def __init__(self, tokens: np.memmap, *, block: int, batch: int, rng, mesh, first_step: int, k: int, starts_of,
                 depth: int = 2):
        """`starts_of(rng, step)`: where step's B windows of block+1 tokens start."""
        self.block, self.batch, self.k = block, batch, k
        self._fd, self._dtype = os.open(tokens.filename, os.O_RDONLY), tokens.dtype
        self._base = tokens.offset
        self.sharding = self.sharding_of(mesh)
        cpu = jax.local_devices(backend="cpu")[0]  # this process's: the window starts are computed apart
        self._rng = jax.device_put(rng, cpu)
        self._starts = jax.jit(lambda r, steps: jax.vmap(lambda s: starts_of(r, s))(steps))
        self._steps = lambda first: jax.device_put(np.arange(first, first + k, dtype=np.int32), cpu)
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(first_step,), daemon=True)
        self._thread.start()

    @staticmethod
    def sharding_of(mesh) -> NamedSharding:
        """k x B x (T+1) windows split over the mesh along the batch."""
        return NamedSharding(mesh, P(None, AXIS))

    def _fill(self, step: int) -> None:
        try:
            while not self._stop.is_set():
                item = self._call_data(step)
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        pass
                step += self.k
        except BaseException as e:  # handed to the training loop, raised there
            self._queue.put(e)

    def _call_data(self, first_step: int) -> dict:
        starts = np.asarray(self._starts(self._rng, self._steps(first_step)))  # k x B
        width = self.block + 1

        def rows(index):  # this device's part: all k steps, its slice of the batch
            picked = starts[:, index[1]]
            out = np.empty(picked.shape + (width,), np.int32)
            size = self._dtype.itemsize
            for i, j in np.ndindex(picked.shape):
                raw = os.pread(self._fd, width * size, self._base + int(picked[i, j]) * size)
                out[i, j] = np.frombuffer(raw, self._dtype)
            return out
        return {"windows": jax.make_array_from_callback((self.k, self.batch, width), self.sharding, rows)}

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        os.close(self._fd)
