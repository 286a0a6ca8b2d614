"""Leak-free K-fold splits of a COCO dataset: grouped by a column, stratified by category.

Images of one Sartorius ``sample_id`` are near-duplicates, so a random split by image
leaks; every image of a group must land in the same fold. ``stratified_group_kfold`` is a
small deterministic implementation (no scikit-learn dependency):

1. each group takes the majority stratum of its items (ties: the smallest name; items
   whose stratum is None, e.g. images without annotations, count only if all are None);
2. strata are processed in sorted order; inside a stratum, groups are shuffled by the seed
   and then ordered by size, largest first (a stable sort, so equal sizes stay shuffled);
3. each group goes to the fold that (a) has no group of this stratum yet, then (b) holds the
   fewest items of this stratum, then (c) the fewest items overall, then (d) comes first
   in a seed-shuffled fold order.

Rule (a) guarantees that a stratum with at least K groups appears in every fold; (b) and (c)
balance image counts. The same inputs and seed always give the same folds, independent of
the input order.

``coco_folds`` writes ``<stem>_fold{k}_train.json`` / ``<stem>_fold{k}_val.json`` next to the
input (or into ``out_dir``): plain COCO files with the original ids, file names and
categories, registrable with ``nucdet.data.register.register_coco`` under the same image
root as the full file.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Hashable, Sequence
from pathlib import Path

import numpy as np

from nucdet.data.coco import load_coco
from nucdet.io.atomic import atomic_write_json

logger = logging.getLogger(__name__)

PER_IMAGE = "image"  # group_key meaning "every image is its own group" (DSB2018)


def _majority(values: Sequence[Hashable], weights: Sequence[int] | None = None) -> Hashable:
    counts: Counter = Counter()
    for v, w in zip(values, weights if weights is not None else [1] * len(values)):
        counts[v] += w
    if len(counts) > 1:
        counts.pop(None, None)  # items without a stratum do not outvote the others
    best = max(counts.values())
    return min((v for v, c in counts.items() if c == best), key=str)


def stratified_group_kfold(
    groups: Sequence[Hashable], strata: Sequence[Hashable], k: int, seed: int = 0
) -> np.ndarray:
    """Fold index in ``0..k-1`` of every item (see module docstring for the rules).

    Args:
        groups: group of each item; items of one group always share a fold.
        strata: stratum (e.g. category) of each item.
        k: number of folds, at least 2 and at most the number of groups.
        seed: shuffling seed; the result is a pure function of (groups, strata, k, seed).
    """
    if len(groups) != len(strata):
        raise ValueError(f"{len(groups)} groups but {len(strata)} strata")
    members: dict[Hashable, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    if k < 2:
        raise ValueError(f"need at least 2 folds, got {k}")
    if len(members) < k:
        raise ValueError(f"{len(members)} groups cannot fill {k} folds")
    stratum_of = {g: _majority([strata[i] for i in idx]) for g, idx in members.items()}
    by_stratum: dict[Hashable, list[Hashable]] = {}
    for g in sorted(members, key=str):
        by_stratum.setdefault(stratum_of[g], []).append(g)

    rng = np.random.default_rng(seed)
    fold_rank = rng.permutation(k)  # tie-break so that fold 0 is not always the largest
    total = np.zeros(k, np.int64)
    fold_of_group: dict[Hashable, int] = {}
    for s in sorted(by_stratum, key=str):
        gs = [by_stratum[s][j] for j in rng.permutation(len(by_stratum[s]))]
        gs.sort(key=lambda g: -len(members[g]))
        n_groups = np.zeros(k, np.int64)
        n_items = np.zeros(k, np.int64)
        for g in gs:
            f = min(range(k), key=lambda f: (n_groups[f] > 0, n_items[f], total[f], fold_rank[f]))
            fold_of_group[g] = f
            n_groups[f] += 1
            n_items[f] += len(members[g])
            total[f] += len(members[g])
    out = np.empty(len(groups), np.int64)
    for g, idx in members.items():
        out[idx] = fold_of_group[g]
    return out


def image_groups_and_strata(
    coco: dict, group_key: str = "sample_id", stratify_key: str | None = None, source: str = ""
) -> tuple[list[Hashable], list[Hashable]]:
    """Group and stratum of every image of a COCO dict, in ``coco["images"]`` order.

    ``group_key``: an image-entry key (``sample_id``) or ``"image"`` (each image its own
    group). ``stratify_key``: an image-entry key (``cell_type``, ``modality``) or None for
    the majority category of the image's annotations (images without any: stratum None).
    """
    names = {c["id"]: c["name"] for c in coco["categories"]}
    cats_of: dict = {}
    for a in coco.get("annotations", []):
        cats_of.setdefault(a["image_id"], []).append(names.get(a["category_id"], ""))
    groups, strata = [], []
    for img in coco["images"]:
        if group_key == PER_IMAGE:
            groups.append(f"image:{img['id']}")
        elif group_key in img:
            groups.append(img[group_key])
        else:
            raise KeyError(
                f"{source}: image {img.get('file_name')} (id {img.get('id')}) has no "
                f"{group_key!r} key (use group_key='{PER_IMAGE}' to group by image)"
            )
        if stratify_key is None:
            cats = cats_of.get(img["id"])
            strata.append(_majority(cats) if cats else None)
        elif stratify_key in img:
            strata.append(img[stratify_key])
        else:
            raise KeyError(
                f"{source}: image {img.get('file_name')} (id {img.get('id')}) has no "
                f"{stratify_key!r} key to stratify by"
            )
    return groups, strata


def fold_paths(out_dir: str | os.PathLike, stem: str, k: int) -> list[tuple[Path, Path]]:
    """``[(<stem>_fold{f}_train.json, <stem>_fold{f}_val.json) for f in range(k)]``."""
    out_dir = Path(out_dir)
    return [
        (out_dir / f"{stem}_fold{f}_train.json", out_dir / f"{stem}_fold{f}_val.json")
        for f in range(k)
    ]


def subset_coco(coco: dict, image_ids: set, info: dict | None = None) -> dict:
    """The images with ``image_ids`` and their annotations (ids unchanged)."""
    return {
        "info": {**coco.get("info", {}), **(info or {})},
        "images": [i for i in coco["images"] if i["id"] in image_ids],
        "annotations": [a for a in coco.get("annotations", []) if a["image_id"] in image_ids],
        "categories": coco["categories"],
    }


def coco_folds(
    coco_json: str | os.PathLike,
    k: int = 5,
    seed: int = 0,
    group_key: str = "sample_id",
    stratify_key: str | None = None,
    out_dir: str | os.PathLike | None = None,
    stem: str | None = None,
) -> list[tuple[Path, Path]]:
    """Split ``coco_json`` into ``k`` grouped, stratified folds and write train/val files.

    Returns ``[(train_json, val_json), ...]`` per fold. Each file is written atomically;
    all assignments are computed before the first file is written.
    """
    coco_json = Path(coco_json)
    coco = load_coco(coco_json)
    groups, strata = image_groups_and_strata(coco, group_key, stratify_key, str(coco_json))
    folds = stratified_group_kfold(groups, strata, k, seed)
    out_dir = Path(out_dir) if out_dir is not None else coco_json.parent
    stem = stem or coco_json.stem
    paths = fold_paths(out_dir, stem, k)
    ids = np.array([img["id"] for img in coco["images"]], dtype=object)
    for f, (train_path, val_path) in enumerate(paths):
        val_ids = set(ids[folds == f].tolist())
        meta = {"fold": f, "num_folds": k, "seed": seed, "group_key": group_key}
        atomic_write_json(train_path, subset_coco(coco, set(ids.tolist()) - val_ids, meta))
        atomic_write_json(val_path, subset_coco(coco, val_ids, meta))
        per_stratum = Counter(s for s, fo in zip(strata, folds) if fo == f)
        logger.info(
            "fold %d: %d val images, %d groups, strata %s",
            f,
            len(val_ids),
            len({g for g, fo in zip(groups, folds) if fo == f}),
            dict(sorted(per_stratum.items(), key=lambda kv: str(kv[0]))),
        )
    return paths
