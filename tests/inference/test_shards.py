"""Sharded inference (``--shard i/n`` + ``nucdet.tools.merge_shards``) on a small
random-init model: the merged submission is byte-identical to the unsharded run's, and
shard folders that do not cover the inputs exactly once are errors naming the images."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from conftest import REPO, tiny_cfg
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

import infer
from nucdet.inference.pipeline import PARTIAL_NAME, InputImage
from nucdet.inference.shards import MANIFEST, ShardError, parse_shard, select_shard
from nucdet.tools import merge_shards

OPTS = [
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
    "TEST.DETECTIONS_PER_IMAGE", "25",
    "POSTPROCESS.SCORE_THRESH", "[0.0]",
]  # fmt: skip


def test_select_shard_is_round_robin_over_sorted_ids():
    inputs = [InputImage(i, f"{i}.png") for i in ["d", "a", "c", "e", "b"]]
    # sorted: a b c d e -> shard 0/2 = a c e, 1/2 = b d; each in the inputs' own order
    assert [x.image_id for x in select_shard(inputs, (0, 2))] == ["a", "c", "e"]
    assert [x.image_id for x in select_shard(inputs, (1, 2))] == ["d", "b"]
    assert [x.image_id for x in select_shard(inputs, (2, 3))] == ["c"]
    assert parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "1", "-1/2", "a/b"):
        with pytest.raises(ValueError, match="i/n"):
            parse_shard(bad)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    cfg = tiny_cfg(*OPTS, "OUTPUT_DIR", str(d))
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(cfg), save_dir=str(d)).save("model_final")
    (d / "config.yaml").write_text(cfg.dump())
    return d


@pytest.fixture(scope="module")
def images(tmp_path_factory, sample_root):
    """Three small sample images in a flat folder."""
    d = tmp_path_factory.mktemp("images")
    split = json.loads((sample_root / "split.json").read_text())
    samples = json.loads((sample_root / "samples.json").read_text())
    for i in [i for i in split["val"] if samples[i]["height"] == 256][:3]:
        src = sample_root / "stage1_train" / i / "images" / f"{i}.png"
        (d / f"{i}.png").write_bytes(src.read_bytes())
    return d


def run_infer(model_dir, images, out, *extra):
    infer.main(
        ["--model-dir", str(model_dir), "--input", str(images), "--output", str(out)]
        + ["--overlays", "0", *extra]
    )


@pytest.mark.slow  # four inference runs, two of them submitit jobs (fresh interpreters)
def test_merged_shards_are_the_unsharded_submission(
    model_dir, images, tmp_path, registered, monkeypatch
):
    """Two shard jobs (``infer.py --submit local --tasks 2``: submitit's local executor,
    each job ``--shard i/2``) and their merge, against one unsharded run."""
    pytest.importorskip("submitit")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    ids = sorted(p.stem for p in images.glob("*.png"))
    run_infer(model_dir, images, tmp_path / "full")
    metrics = infer.main(
        ["--model-dir", str(model_dir), "--input", str(images), "--output", str(tmp_path / "m")]
        + ["--overlays", "0", "--submit", "local", "--tasks", "2", "--time", "20"]
    )
    shards = [tmp_path / "m" / "shards" / f"shard-{i}-of-2" for i in range(2)]
    shard_ids = [
        [json.loads(ln)["image_id"] for ln in (d / PARTIAL_NAME).open() if "image_id" in ln]
        for d in shards
    ]
    assert shard_ids == [[ids[0], ids[2]], [ids[1]]]  # round-robin over the sorted ids
    full = (tmp_path / "full" / "submission.csv").read_bytes()
    assert (tmp_path / "m" / "submission.csv").read_bytes() == full
    full_metrics = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert metrics["images"] == 3 and metrics["instances"] == full_metrics["instances"]
    assert not list((tmp_path / "m").glob("*.tmp*"))  # written through a temp file + rename
    # The merge on its own (the command after hand-started --shard runs), shards in any order.
    merge_shards.main([str(shards[1]), str(shards[0]), "--output", str(tmp_path / "m2")])
    assert (tmp_path / "m2" / "submission.csv").read_bytes() == full
    shard0, shard1 = shards

    def merge_error(*dirs):
        with pytest.raises(ShardError) as e:
            merge_shards.main([*map(str, dirs), "--output", str(tmp_path / "bad")])
        assert not (tmp_path / "bad" / "submission.csv").exists()
        return str(e.value)

    # A shard not given: its images are named.
    msg = merge_error(shard0)
    assert f"1 image(s) in no shard (shards [1] of 2 are not given): {ids[1]}" in msg
    # The same shard twice.
    shutil.copytree(shard0, tmp_path / "copy0")
    assert "shard 0/2 is given twice" in merge_error(shard0, tmp_path / "copy0", shard1)
    # An image predicted in two shards.
    extra = (shard0 / PARTIAL_NAME).read_text().splitlines(keepends=True)[1]
    with open(tmp_path / "copy0" / PARTIAL_NAME, "w") as f:  # shard 1 + one of shard 0
        f.write((shard1 / PARTIAL_NAME).read_text() + extra)
    manifest = json.loads((shard1 / MANIFEST).read_text())
    (tmp_path / "copy0" / MANIFEST).write_text(json.dumps(manifest))
    msg = merge_error(shard0, tmp_path / "copy0")
    assert f"1 image(s) in more than one shard: {ids[0]} (" in msg
    assert str(tmp_path / "copy0") in msg and str(shard0) in msg
    # An unfinished shard (killed: predictions, no manifest).
    (tmp_path / "copy0" / MANIFEST).unlink()
    assert "has not finished" in merge_error(shard0, tmp_path / "copy0")
    # A shard predicted with other settings.
    run_infer(
        model_dir, images, tmp_path / "other1", "--shard", "1/2", "POSTPROCESS.MIN_AREA", "[5]"
    )
    msg = merge_error(shard0, tmp_path / "other1")
    assert "other settings" in msg and "postprocess" in msg
