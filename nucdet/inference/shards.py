"""Sharded inference: shard ``i/n`` of an image set, and the merge of the shards into the
one submission.

A shard is every n-th image of the job's inputs sorted by image id, starting at the i-th
(round-robin: shards of one size within one image, whatever the folder's order). Each
shard is an ordinary inference job into its own output folder (resumable through its
``predictions.jsonl``); when it has finished it writes ``shard.json``: the shard, the full
input list in submission order, the run's settings fingerprint (models, weights, views,
fusion, post-processing: ``pipeline.run_fingerprint`` without the input part) and what the
submission format needs.

``merge_shards(dirs, output)`` checks that the shards belong to one job (same settings,
same full input list, same n, every shard index once) and that every image of the input
list is predicted in exactly one shard (an error names the missing and the duplicated
image ids and their folders), then writes the submission in the full input order,
atomically: byte-identical to the file an unsharded run writes. Images a shard skipped as
unreadable (``--skip-unreadable``) are left out as the unsharded run leaves them out.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nucdet.io.atomic import atomic_write_json

if TYPE_CHECKING:
    from nucdet.inference.pipeline import InputImage

# The pipeline (images, writers) is imported where it is used: parse_shard is also the
# sweep's, which must start fast.
MANIFEST = "shard.json"


class ShardError(ValueError):
    """Shard folders that do not make one complete submission."""


def parse_shard(text: str) -> tuple[int, int]:
    """``i/n`` -> (i, n) with 0 <= i < n."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise ValueError(f"--shard expects i/n with 0 <= i < n, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def select_shard(inputs: Sequence[InputImage], shard: tuple[int, int]) -> list[InputImage]:
    """Shard ``(i, n)`` of ``inputs``: the k-th image by sorted image id for k % n == i,
    in the inputs' own order."""
    i, n = shard
    ranks = {image_id: k for k, image_id in enumerate(sorted(x.image_id for x in inputs))}
    return [x for x in inputs if ranks[x.image_id] % n == i]


def settings_parts(inputs: Sequence[InputImage], run_key: dict | None) -> dict[str, str]:
    """The run fingerprint's parts that identify the settings (not the input list)."""
    from nucdet.inference.pipeline import run_fingerprint

    parts = dict(run_fingerprint(inputs, run_key)["parts"])
    parts.pop("inputs")
    return parts


def write_manifest(
    output_dir: str | os.PathLike,
    shard: tuple[int, int],
    inputs: Sequence[InputImage],
    run_key: dict | None,
    fmt: str,
    category_ids: dict[int, int] | None = None,
) -> Path:
    """``shard.json`` of a finished shard (see module docstring); ``inputs``: all of them."""
    path = Path(output_dir) / MANIFEST
    atomic_write_json(
        path,
        {
            "shard": list(shard),
            "image_ids": [x.image_id for x in inputs],
            "settings": settings_parts(inputs, run_key),
            "format": fmt,
            "coco_ids": {x.image_id: x.coco_id for x in inputs if x.coco_id is not None},
            "category_ids": {str(k): v for k, v in (category_ids or {}).items()},
        },
        indent=1,
    )
    return path


def _read_manifest(d: Path) -> dict[str, Any]:
    from nucdet.inference.pipeline import PARTIAL_NAME

    path = d / MANIFEST
    if not path.is_file():
        hint = (
            "this shard has not finished: rerun its command (it resumes)"
            if (d / PARTIAL_NAME).is_file()
            else "not an output folder of a --shard run"
        )
        raise ShardError(f"{d}: no {MANIFEST} ({hint})")
    return json.loads(path.read_text())


def _names(ids: Sequence[str], limit: int = 10) -> str:
    ids = list(ids)
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return ", ".join(ids[:limit]) + more


def merge_shards(dirs: Sequence[str | os.PathLike], output: str | os.PathLike) -> dict:
    """Write the submission of the shards in ``dirs`` to ``output`` (see module docstring);
    returns the merged metrics (also written to ``output/metrics.json``)."""
    import numpy as np

    from nucdet.inference.pipeline import PARTIAL_NAME, SUBMISSION_NAMES, read_partial
    from nucdet.io.writers import make_writer

    dirs = [Path(d) for d in dirs]
    if not dirs:
        raise ShardError("no shard folders given")
    manifests = [_read_manifest(d) for d in dirs]
    first, d0 = manifests[0], dirs[0]
    for d, m in zip(dirs[1:], manifests[1:]):
        for key, what in (
            ("settings", "other settings (models, weights, views, fusion, post-processing)"),
            ("image_ids", "another input list"),
            ("format", "another submission format"),
        ):
            if m[key] != first[key]:
                differ = ""
                if key == "settings":
                    keys = sorted(set(m[key]) | set(first[key]))
                    differ = ": " + ", ".join(k for k in keys if m[key].get(k) != first[key].get(k))
                raise ShardError(f"{d} was predicted with {what} than {d0}{differ}")
        if m["shard"][1] != first["shard"][1]:
            raise ShardError(f"{d} is shard {m['shard']} but {d0} is shard {first['shard']}")
    n = first["shard"][1]
    seen: dict[int, Path] = {}
    for d, m in zip(dirs, manifests):
        i = m["shard"][0]
        if i in seen:
            raise ShardError(f"shard {i}/{n} is given twice: {seen[i]} and {d}")
        seen[i] = d
    missing_shards = sorted(set(range(n)) - set(seen))

    image_ids = first["image_ids"]
    where: dict[str, list[Path]] = {}
    preds, skipped, per_image = {}, [], {}
    for d, m in zip(dirs, manifests):
        header, done = read_partial(d / PARTIAL_NAME)
        if header is None:
            raise ShardError(f"{d / PARTIAL_NAME}: no run fingerprint")
        parts = dict(header.get("parts", {}))
        parts.pop("inputs", None)
        if parts != m["settings"]:
            raise ShardError(f"{d}: {PARTIAL_NAME} and {MANIFEST} are of different runs")
        for image_id, pred in done.items():
            where.setdefault(image_id, []).append(d)
            preds[image_id] = pred
        metrics_path = d / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
        skipped += metrics.get("skipped_unreadable", [])
        per_image.update(metrics.get("per_image", {}))
    known = set(image_ids)
    strangers = sorted(set(where) - known)
    if strangers:
        raise ShardError(
            f"predictions of images that are not inputs of the job: {_names(strangers)}"
        )
    skipped_ids = {s["image_id"] for s in skipped}
    missing = [i for i in image_ids if i not in where and i not in skipped_ids]
    twice = [i for i in image_ids if len(where.get(i, [])) > 1]
    if missing or twice:
        problems = []
        if missing:
            shards = f" (shards {missing_shards} of {n} are not given)" if missing_shards else ""
            problems.append(f"{len(missing)} image(s) in no shard{shards}: {_names(missing)}")
        if twice:
            problems.append(
                f"{len(twice)} image(s) in more than one shard: "
                + _names([f"{i} ({', '.join(map(str, where[i]))})" for i in twice])
            )
        raise ShardError(
            f"the shards do not cover the {len(image_ids)} inputs once: " + "; ".join(problems)
        )

    fmt = first["format"]
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    writer_args = {}
    if fmt == "coco":
        cats = {int(k): v for k, v in first["category_ids"].items()} or None
        writer_args = {"image_ids": first["coco_ids"], "category_ids": cats}
    predicted = [i for i in image_ids if i in preds]
    with make_writer(fmt, output / SUBMISSION_NAMES[fmt], **writer_args) as writer:
        for image_id in predicted:
            writer.add(preds[image_id])
    metrics: dict[str, Any] = {
        "images": len(predicted),
        "instances": int(sum(len(preds[i]) for i in predicted)),
        "submission": str(output / SUBMISSION_NAMES[fmt]),
        "shards": [str(d) for d in dirs],
    }
    if skipped:
        metrics["skipped_unreadable"] = skipped
    if per_image and set(per_image) == set(predicted):
        metrics["MaP-IoU"] = float(np.mean([per_image[i] for i in predicted]))
        metrics["per_image"] = {i: per_image[i] for i in predicted}
    atomic_write_json(output / "metrics.json", metrics, indent=1)
    return metrics
