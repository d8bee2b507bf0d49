"""SageMaker's side of a training job, for tests: the /opt/ml tree, channels in the algorithm's
formats (MXNet RecordIO, images with one JSON each, augmented manifests) and Pipe mode's FIFOs."""

import errno
import json
import os
import shutil
import threading
import time

import numpy as np
from PIL import Image

from tests.data.format_writers import pack_image_record, write_record
from tfssd.data import voc

CLASS_NAMES = ["circle", "square", "triangle"]  # the shapes dataset's, sorted


def voc_pictures(voc_root, split):
    """[(file path, width, height, [(class id, xmin, ymin, xmax, ymax) in pixels])]."""
    items = voc.read_voc(os.path.join(voc_root, "Annotations"),
                         os.path.join(voc_root, "JPEGImages"),
                         voc.read_ids(os.path.join(voc_root, "ImageSets", "Main", f"{split}.txt")))
    pictures = []
    for item in items:
        with Image.open(item.path) as image:
            width, height = image.size
        boxes = [(CLASS_NAMES.index(o.label), o.xmin, o.ymin, o.xmax, o.ymax)
                 for o in item.objects]
        pictures.append((item.path, width, height, boxes))
    return pictures


def im2rec_bytes(pictures):
    """The pictures as im2rec packs a detection .rec: normalised corners, header width 2."""
    import io

    out = io.BytesIO()
    for index, (path, width, height, boxes) in enumerate(pictures):
        label = [2.0, 5.0]
        for c, x0, y0, x1, y1 in boxes:
            label += [c, x0 / width, y0 / height, x1 / width, y1 / height]
        with open(path, "rb") as f:
            record = pack_image_record(np.array(label), index, f.read())
        write_record(out, record)
    return out.getvalue()


def _annotation(width, height, boxes):
    return {"image_size": [{"width": width, "height": height, "depth": 3}],
            "annotations": [{"class_id": c, "left": x0, "top": y0, "width": x1 - x0,
                             "height": y1 - y0} for c, x0, y0, x1, y1 in boxes]}


def write_image_json(pictures, images_dir, annotations_dir):
    """SageMaker's image format: the images, and one JSON per image with the same base name."""
    os.makedirs(images_dir, exist_ok=True)
    os.makedirs(annotations_dir, exist_ok=True)
    categories = [{"class_id": i, "name": n} for i, n in enumerate(CLASS_NAMES)]
    for path, width, height, boxes in pictures:
        name = os.path.basename(path)
        shutil.copy(path, os.path.join(images_dir, name))
        with open(os.path.join(annotations_dir, os.path.splitext(name)[0] + ".json"), "w") as f:
            json.dump({"file": name, **_annotation(width, height, boxes),
                       "categories": categories}, f)


def manifest_pipe_bytes(pictures, attribute="bounding-box", metadata=True):
    """An augmented manifest as Pipe mode streams it with AttributeNames [source-ref,
    bounding-box(, bounding-box-metadata)]: one RecordIO record per attribute."""
    import io

    out = io.BytesIO()
    for path, width, height, boxes in pictures:
        with open(path, "rb") as f:
            write_record(out, f.read())
        write_record(out, json.dumps(_annotation(width, height, boxes)).encode())
        if metadata:
            write_record(out, json.dumps({
                "class-map": {str(i): n for i, n in enumerate(CLASS_NAMES)},
                "type": "groundtruth/object_detection"}).encode())
    return out.getvalue()


def make_job(root, hyperparameters, channels, checkpoints=False):
    """An /opt/ml tree under ``root``; ``channels``: name -> inputdataconfig.json entry."""
    config = os.path.join(root, "input", "config")
    os.makedirs(config, exist_ok=True)
    os.makedirs(os.path.join(root, "input", "data"), exist_ok=True)
    os.makedirs(os.path.join(root, "model"), exist_ok=True)
    os.makedirs(os.path.join(root, "output", "data"), exist_ok=True)
    if checkpoints:
        os.makedirs(os.path.join(root, "checkpoints"), exist_ok=True)
    with open(os.path.join(config, "hyperparameters.json"), "w") as f:
        json.dump({k: str(v) for k, v in hyperparameters.items()}, f)  # strings, as SageMaker
    with open(os.path.join(config, "inputdataconfig.json"), "w") as f:
        json.dump({name: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated",
                          "RecordWrapperType": "None", **spec}
                   for name, spec in channels.items()}, f)
    with open(os.path.join(config, "resourceconfig.json"), "w") as f:
        json.dump({"current_host": "algo-1", "hosts": ["algo-1"],
                   "network_interface_name": "eth0"}, f)


class PipeWriter(threading.Thread):
    """Streams ``data`` into a new FIFO at ``path`` once a reader opens it, as SageMaker's Pipe
    mode does; gives up after ``timeout`` seconds without a reader."""

    def __init__(self, path, data, timeout=300.0):
        super().__init__(daemon=True)
        if os.path.exists(path):
            os.remove(path)
        os.mkfifo(path)
        self.path, self.data, self.timeout = path, data, timeout
        self.written = 0
        self.start()

    def run(self):
        deadline = time.time() + self.timeout
        while True:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError as e:
                if e.errno != errno.ENXIO or time.time() > deadline:
                    return
                time.sleep(0.05)
        os.set_blocking(fd, True)
        try:
            view = memoryview(self.data)
            while self.written < len(view):
                self.written += os.write(fd, view[self.written:self.written + 65536])
        except BrokenPipeError:
            pass
        finally:
            os.close(fd)


class PipePasses(threading.Thread):
    """Pipe mode for a channel read an unknown number of times (validation): ``<prefix>_0``,
    ``<prefix>_1``, ... each offered by its own ``PipeWriter`` once the one before has been
    written whole, as SageMaker does, until ``stop``. ``written``: the bytes each offered pass
    got (the last one offered is never opened by a job that has ended)."""

    def __init__(self, prefix, data, timeout=300.0):
        super().__init__(daemon=True)
        self.prefix, self.data, self.timeout = str(prefix), data, timeout
        self.writers = []
        self._ending = threading.Event()
        self.start()

    @property
    def written(self):
        return [writer.written for writer in self.writers]

    def run(self):
        k = 0
        while not self._ending.is_set():
            writer = PipeWriter(f"{self.prefix}_{k}", self.data, self.timeout)
            self.writers.append(writer)
            while writer.is_alive() and not self._ending.is_set():
                writer.join(0.05)
            k += 1

    def stop(self):
        """Ends the offer once the job has ended: the pass waiting for a reader is removed, which
        ends its writer's wait."""
        self._ending.set()
        self.join(timeout=30)
        for writer in self.writers:
            if writer.is_alive() and not writer.written and os.path.exists(writer.path):
                os.remove(writer.path)
            writer.join(timeout=30)
        return self.written
