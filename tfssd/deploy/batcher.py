"""Request batching: the images of concurrent requests run through the model together.

``Batcher.detect`` queues a request's images and waits for their detections. One task takes up
to ``max_batch_size`` waiting images (waiting at most ``timeout_s`` for a batch to fill), runs
them in a thread of its own so that the event loop keeps answering, and hands each request its
own results; images that arrive meanwhile form the next batch. An image the model cannot take
(it does not decode) fails alone, not its batch: the batch's images are then run one by one.
Any other failure (out of memory, a bug) fails the batch after its one call.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses

import numpy as np
import tensorflow as tf
from absl import logging

from tfssd.deploy.contracts import RequestError
from tfssd.ops.image_check import ImageError

# What one image can cause: the serving graph (or a host's decode, for .tflite and .xml) cannot
# decode it, or the image check refuses it. Only these are worth running each image alone.
IMAGE_ERRORS = (tf.errors.InvalidArgumentError, ImageError)


@dataclasses.dataclass
class _Item:
    name: str
    image: bytes
    future: asyncio.Future


class Batcher:
    """Runs the images of concurrent requests through the model in batches, one at a time."""

    def __init__(self, model, max_batch_size: int, timeout_s: float):
        self._model, self._max, self._timeout_s = model, max_batch_size, timeout_s
        self._pending: collections.deque[_Item] = collections.deque()
        self._arrived = asyncio.Event()
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tfssd-model")
        self._task: asyncio.Task | None = None
        self.batches = self.images = 0  # run so far: images / batches is the mean batch size

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(RequestError(503, "the server is shutting down"))
        self._thread.shutdown(wait=True)

    async def detect(self, images: list[tuple[str, bytes]]) -> list[dict[str, np.ndarray]]:
        """(name, encoded image) pairs -> one dict of detections per image, in order."""
        loop = asyncio.get_running_loop()
        items = [_Item(name, data, loop.create_future()) for name, data in images]
        self._pending.extend(items)
        self._arrived.set()
        return list(await asyncio.gather(*(item.future for item in items)))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
            deadline = loop.time() + self._timeout_s
            while len(self._pending) < self._max and (left := deadline - loop.time()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except TimeoutError:
                    break
            batch = [self._pending.popleft() for _ in range(min(self._max, len(self._pending)))]
            batch = [item for item in batch if not item.future.done()]
            self.batches, self.images = self.batches + 1, self.images + len(batch)
            try:
                outcomes = await loop.run_in_executor(self._thread, self._run_batch, batch)
            except Exception as e:  # never let the loop die: every later request would hang
                logging.exception("batch failed")
                outcomes = [RequestError(500, f"internal error: {type(e).__name__}")] * len(batch)
            for item, outcome in zip(batch, outcomes):
                if item.future.done():
                    continue
                if isinstance(outcome, Exception):
                    item.future.set_exception(outcome)
                else:
                    item.future.set_result(outcome)

    def _run_batch(self, batch: list[_Item]) -> list:
        if not batch:
            return []
        try:
            detections = self._model([item.image for item in batch])
        except IMAGE_ERRORS as e:
            if len(batch) == 1:
                return [_image_failure(batch[0].name, e)]
            # One image the model cannot take fails its whole batch: run each alone, so that
            # only it fails.
            return [self._run_batch([item])[0] for item in batch]
        except Exception as e:
            logging.error("model call failed on a batch of %d images", len(batch), exc_info=e)
            return [RequestError(500, f"{item.name}: the model failed ({type(e).__name__}); "
                                      "see the log") for item in batch]
        return [{key: value[n] for key, value in detections.items()} for n in range(len(batch))]


def _image_failure(name: str, error: Exception) -> RequestError:
    first_line = (getattr(error, "message", None) or str(error)).strip().splitlines()[:1]
    return RequestError(400, f"{name}: the model cannot decode this image "
                             f"({' '.join(first_line)})")
