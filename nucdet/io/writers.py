"""Submission writers: Kaggle Sartorius CSV, DSB2018 CSV and COCO results JSON.

Each writer is picked by name from ``WRITERS``, fed one ``ImagePrediction`` per image in
any order, and written atomically on ``close()`` (temp file + rename): an interrupted run
never leaves a half-written submission, and an existing one is replaced only whole.
Every image given to ``add`` appears in the output, with no instance if it has none.
Writers do not post-process: remove overlaps first where the format requires it.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import IO

from nucdet.io.atomic import atomic_open
from nucdet.io.rle import coco_rle_to_kaggle
from nucdet.structures import ImagePrediction


class SubmissionWriter:
    """Base class: context manager; ``add`` per image, output renamed into place on close."""

    suffix = ""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._ctx = atomic_open(self.path, "w", newline="")
        self._f: IO = self._ctx.__enter__()
        self._seen: set[str] = set()
        self.start()

    def start(self) -> None:
        """Write the header."""

    def add(self, pred: ImagePrediction) -> None:
        if pred.image_id in self._seen:
            raise ValueError(f"{self.path}: image {pred.image_id} added twice")
        self._seen.add(pred.image_id)
        self.write_image(pred)

    def write_image(self, pred: ImagePrediction) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Write what goes after the last image."""

    def close(self) -> Path:
        self.finish()
        self._ctx.__exit__(None, None, None)
        return self.path

    def abort(self, exc: BaseException) -> None:
        self._ctx.__exit__(type(exc), exc, exc.__traceback__)

    def __enter__(self) -> SubmissionWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close()
        else:
            self.abort(exc)


class _RleCsvWriter(SubmissionWriter):
    suffix = ".csv"
    header: tuple[str, str] = ("", "")
    order = "C"

    def start(self) -> None:
        self._csv = csv.writer(self._f, lineterminator="\n")
        self._csv.writerow(self.header)

    def write_image(self, pred: ImagePrediction) -> None:
        strings = [s for s in (coco_rle_to_kaggle(r, self.order) for r in pred.rles) if s]
        for s in strings or [""]:
            self._csv.writerow((pred.image_id, s))


class KaggleCsvWriter(_RleCsvWriter):
    """Sartorius: ``id,predicted``, row-major 1-indexed RLE, one row per instance."""

    header = ("id", "predicted")
    order = "C"


class DsbCsvWriter(_RleCsvWriter):
    """DSB2018: ``ImageId,EncodedPixels``, column-major 1-indexed RLE."""

    header = ("ImageId", "EncodedPixels")
    order = "F"


class CocoJsonWriter(SubmissionWriter):
    """COCO results JSON: a list of ``{image_id, category_id, score, bbox, segmentation}``.

    ``image_ids`` maps submission ids to the dataset's integer COCO ids (the inference job
    passes the dataset's ``image_id``s) and ``category_ids`` contiguous class indices to
    COCO category ids; without them (a folder of images), images are numbered from 1 in
    order and categories from 1. A results list cannot hold an
    image with no detection, so the full image list is written beside it as
    ``<name>.images.json`` (``[{id, file_name, height, width}]``).
    """

    suffix = ".json"

    def __init__(
        self,
        path,
        image_ids: dict[str, int] | None = None,
        category_ids: dict[int, int] | None = None,
    ):
        self.image_ids = dict(image_ids or {})
        self.category_ids = category_ids
        self._images: list[dict] = []
        self._first = True
        super().__init__(path)

    def start(self) -> None:
        self._f.write("[")

    def write_image(self, pred: ImagePrediction) -> None:
        if pred.image_id not in self.image_ids:  # a number no other image has
            self.image_ids[pred.image_id] = max(self.image_ids.values(), default=0) + 1
        coco_id = self.image_ids[pred.image_id]
        self._images.append(
            {"id": coco_id, "file_name": pred.image_id, "height": pred.height, "width": pred.width}
        )
        boxes = pred.boxes_xywh()
        for rle, score, cls, box in zip(pred.rles, pred.scores, pred.classes, boxes):
            counts = rle["counts"]
            det = {
                "image_id": coco_id,
                "category_id": (self.category_ids or {}).get(int(cls), int(cls) + 1),
                "score": round(float(score), 5),
                "bbox": [round(float(v), 2) for v in box],
                "segmentation": {
                    "size": list(rle["size"]),
                    "counts": counts.decode() if isinstance(counts, bytes) else counts,
                },
            }
            self._f.write(("" if self._first else ",\n") + json.dumps(det))
            self._first = False

    def finish(self) -> None:
        self._f.write("]\n")
        images_path = self.path.with_name(self.path.stem + ".images.json")
        with atomic_open(images_path, "w") as f:
            json.dump(self._images, f)


WRITERS: dict[str, type[SubmissionWriter]] = {
    "kaggle": KaggleCsvWriter,
    "dsb": DsbCsvWriter,
    "coco": CocoJsonWriter,
}


def make_writer(fmt: str, path: str | os.PathLike, **kwargs) -> SubmissionWriter:
    """Writer for format ``fmt`` (one of ``WRITERS``)."""
    if fmt not in WRITERS:
        raise ValueError(f"unknown submission format {fmt!r}; choose from {sorted(WRITERS)}")
    return WRITERS[fmt](path, **kwargs)
