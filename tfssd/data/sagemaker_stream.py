"""A Pipe-mode channel streamed pass after pass into the input pipelines (``PipeStream``).

A streamed channel is not staged on the volume: its description (``<channel>.pipe.json``)
stands for its files, and the input pipelines read the FIFOs ``<channel>_0``, ``<channel>_1``,
... one after another, converting each image in memory under the bad-data policy. Training
reads them as one stream of passes (``examples``); validation reads the next whole pass each
time it reads its data (``next_pass``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import itertools
import json
import os
import time
from collections.abc import Callable, Iterator

from tfssd.data import mxnet_formats, sagemaker_formats
from tfssd.data.sagemaker_channels import RECORDIO, TFRECORD, checked_im2rec, iter_manifest_items
from tfssd.data.sagemaker_pipes import ChannelError, open_pipe, read_tfrecord_stream
from tfssd.data.sources import SourceImage

STREAM_SUFFIX = ".pipe.json"  # a PipeStream's description: the training "file" streamed
_NEXT_PASS: dict[str, int] = {}  # by pipe prefix: the pass a new reader of a stream starts at


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    """Consecutive lists of ``size`` of ``items`` (the last one shorter)."""
    while chunk := list(itertools.islice(items, size)):
        yield chunk


@contextlib.contextmanager
def _drained_if_closed(stream, drain: bool) -> Iterator[None]:
    """Within a generator reading ``stream``: when the generator is closed early (``drain``),
    the rest of the stream is read unused (SageMaker's writer must see its pipe consumed)."""
    try:
        yield
    except GeneratorExit:
        if drain:
            while stream.read(1 << 20):
                pass
        raise


@dataclasses.dataclass(frozen=True)
class PipeStream:
    """A Pipe-mode channel streamed pass after pass into the input pipeline.

    Saved as ``<channel>.pipe.json`` (``STREAM_SUFFIX``); that file stands for the channel's
    files, and ``tfssd.data.pipeline`` streams it (training: ``examples``; validation, whose
    ``epochs`` and ``num_training_samples`` are 0: ``next_pass``).

    Pass k is the FIFO ``<pipe_prefix>_<k>``, read whole, to its end, before pass k + 1 is
    opened: the passes form one stream of images, from which the input pipeline cuts its epochs
    by count (steps per epoch times the global batch), as the learning-rate schedule counts
    steps. When a pass holds num_training_samples images an epoch is a pass; when it holds fewer
    an epoch reads into the next pass, when more the next epoch starts inside this one (a
    warning says so after the first pass). Nothing is dropped and nothing is read twice.

    Memory: one chunk of images being converted (``CHUNK`` items, with the decoded image of
    each of ``workers`` threads) plus what the input pipeline holds (see
    ``pipeline.build_train_dataset``); nothing grows with the channel's size.
    """

    channel: str
    format: str  # RECORDIO, MANIFEST or TFRECORD
    pipe_prefix: str  # the data folder's <channel>: pass k is <pipe_prefix>_<k>
    class_names: tuple[str, ...]
    label_width: int
    epochs: int
    num_training_samples: int

    CHUNK = 64  # images converted together (by a thread pool), then handed on

    def pipe(self, k: int) -> str:
        return f"{self.pipe_prefix}_{k}"

    def save(self, folder: str) -> str:
        """Writes the description into ``folder``; returns its path. A job starts at pass 0."""
        _NEXT_PASS.pop(self.pipe_prefix, None)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, self.channel + STREAM_SUFFIX)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(dataclasses.asdict(self), f, indent=2)
        return path

    @classmethod
    def load(cls, path: str) -> PipeStream:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return cls(**{**data, "class_names": tuple(data["class_names"])})

    def _items(self, stream, k: int, names_by_id: dict[int, str]
               ) -> Iterator[SourceImage | bytes]:
        """Pass k's images as items (TFRecord: serialized examples as they are); a manifest's
        class-map names go into ``names_by_id``."""
        where, base = self.pipe(k), os.path.basename(self.pipe(k))
        if self.format == TFRECORD:
            yield from read_tfrecord_stream(stream, where)
            return
        records = mxnet_formats.read_record_stream(stream, where)
        if self.format == RECORDIO:
            for number, record in enumerate(checked_im2rec(records, self.channel)):
                yield mxnet_formats.image_item(record, base, number)
        else:
            yield from iter_manifest_items(records, base, names_by_id)

    def next_pass(self, report: Callable[[str], None] = print) -> Iterator[bytes]:
        """The serialized examples of the next pass this job has not read (``<channel>_0`` for
        the first reader of a job), converted in memory; the pipe is opened on the first
        ``next`` and read to its end. Closed early, the generator reads the rest of the pass
        unused, so that SageMaker's writer is never left blocked on a half-read pipe.

        Memory: one chunk of ``CHUNK`` images (encoded, plus the decoded image of each converting
        thread) and the examples converted from it; nothing grows with the pass.
        """
        return self.examples(report=report, passes=1)

    def examples(self, skip: int = 0, limit: int | None = None, spare: int = 0,
                 report: Callable[[str], None] = print, workers: int | None = None,
                 passes: int | None = None) -> Iterator[bytes]:
        """Yields serialized tfssd examples, pass after pass, converted in memory.

        Each image goes through the bad-data policy (data/item_policy.py) as in a conversion;
        a skipped image is left out and named, with the reason, in the pass's summary, which
        ``report`` receives when the pass has been read.

        Args:
          skip: images of the first pass to pass over unconverted (a resumed job's position in
            its epoch; SageMaker starts a new job at ``<channel>_0`` again).
          limit: examples the run needs; once yielded, no further pass is opened: the current
            one gives up to ``spare`` more, and the rest of it is read unconverted (so that
            SageMaker sees the pipe consumed).
          spare: examples beyond ``limit`` taken from the pass that reaches it.
          report: receives one text per pass: what was read, converted and skipped.
          workers: threads converting images; default min(4, CPUs).
          passes: stop after this many passes; such a reader, closed before the end of a pass,
            reads the rest of it unused (``next_pass``).
        """
        from tfssd.data import conversion, item_policy  # TensorFlow
        from tfssd.ops.image_check import DEFAULT_MAX_PIXELS

        names = list(self.class_names)
        index = {name: i for i, name in enumerate(names)}

        def convert(item: SourceImage) -> item_policy.ItemResult:
            return item_policy.process(item, index, len(names), self.label_width, False,
                                       DEFAULT_MAX_PIXELS)

        yielded = 0
        first = _NEXT_PASS.get(self.pipe_prefix, 0)
        with concurrent.futures.ThreadPoolExecutor(workers or min(4, os.cpu_count() or 1)) as pool:
            for k in itertools.count(first):
                _NEXT_PASS[self.pipe_prefix] = k + 1
                summary = conversion.ConversionSummary(class_names=names)
                summary.files = ["the input pipeline, in memory (nothing staged)"]
                passed_over = skip if k == 0 else 0
                drained = 0
                started = time.time()
                with open_pipe(self.pipe(k)) as stream, _drained_if_closed(
                        stream, passes is not None):
                    names_by_id: dict[int, str] = {}
                    items = self._items(stream, k, names_by_id)
                    for _ in itertools.islice(items, passed_over):
                        pass
                    chunks = _chunks(items, self.CHUNK)
                    chunk = next(chunks, [])
                    if not chunk:
                        report(self._pass_text(k, summary, passed_over, drained, names_by_id))
                    while chunk:
                        following = next(chunks, [])  # read ahead: the pass's end is known first
                        records = []
                        if limit is not None and yielded >= limit + spare:
                            drained += len(chunk)
                        elif self.format == TFRECORD:
                            records = chunk
                            summary.images_read += len(chunk)
                        else:
                            for result in pool.map(convert, chunk):
                                summary.images_read += 1
                                summary.max_label_width = max(summary.max_label_width,
                                                              result.label_width)
                                if result.skip_reason:
                                    summary.skipped.append((result.name, result.skip_reason))
                                    continue
                                conversion._account(summary, result)  # noqa: SLF001
                                records.append(result.record)
                        summary.images_written += len(records)
                        if not following:
                            summary.seconds = time.time() - started
                            report(self._pass_text(k, summary, passed_over, drained,
                                                   names_by_id))
                        for record in records:
                            yield record
                            yielded += 1
                        chunk = following
                if not summary.images_written and not passed_over and not drained:
                    raise ChannelError(f"channel {self.channel!r}: pass {k} ({self.pipe(k)}) "
                                       "holds no usable image (the summary above says why)")
                if limit is not None and yielded >= limit:
                    return
                if passes is not None and k + 1 - first >= passes:
                    return

    def _pass_text(self, k: int, summary, passed_over: int, drained: int,
                   names_by_id: dict[int, str]) -> str:
        text = (f"Channel {self.channel}: {summary.images_read} images ({self.format}, Pipe "
                f"mode) of pass {k} ({self.pipe(k)}), converted in memory")
        if passed_over:
            text += (f"; the first {passed_over} images passed over unconverted (the resumed "
                     "epoch's position)")
        if drained:
            text += f"; {drained} more read to the pipe's end, unused (the run needs no more)"
        named = sagemaker_formats.class_names(names_by_id)
        if k == 0 and named and named != list(self.class_names[:len(named)]):
            summary.notes.append(
                f"the manifest's class-map names the classes {named}, the model "
                f"{list(self.class_names)}: a streamed channel's names are not known before "
                "training, so they come from a channel read before it, else the class ids")
        text += ":\n" + summary.format()
        written = summary.images_written
        if (k == 0 and self.num_training_samples and not passed_over and not drained
                and written != self.num_training_samples):
            text += (f"\nnum_training_samples={self.num_training_samples} but the pass held "
                     f"{written} usable images: epochs are cut from the stream of passes by "
                     "count, so an epoch "
                     + ("reads into the next pass." if written < self.num_training_samples
                        else "ends inside a pass and the next one starts there."))
        return text
