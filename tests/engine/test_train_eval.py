"""The real trainer with periodic evaluation on two small validation images: MaP-IoU and COCO
AP reach metrics.json at every evaluation, model_best.pth changes exactly when the tracked
metric improves, the curves tool plots the run, and resuming the finished run is a no-op."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch
from conftest import SAMPLE_ROOT, tiny_cfg
from detectron2.engine import hooks
from single_thread import one_torch_thread

from nucdet.data.dsb import dsb_to_coco
from nucdet.data.register import register_all
from nucdet.engine.trainer import Trainer
from nucdet.tools.curves import write_curves

VAL_IDS = ("a3a1b8f9", "2255d5ab")  # 256x256 (16 nuclei) and 256x320 (15 nuclei)
MAX_ITER = 3


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Train MAX_ITER iterations, evaluating after every one; record model_best.pth's hash
    after every step and after training."""
    tmp = tmp_path_factory.mktemp("train_eval")
    split = json.loads((SAMPLE_ROOT / "split.json").read_text())
    ids = [i for i in split["val"] if i.startswith(VAL_IDS)]
    assert len(ids) == 2
    val_json = dsb_to_coco(SAMPLE_ROOT / "stage1_train", tmp / "val2.json", image_ids=ids)
    out = tmp / "out"
    register = [["engine_val2", str(val_json), str(SAMPLE_ROOT / "stage1_train")]]
    cfg = tiny_cfg(
        "DATASETS.REGISTER", str(register),
        "DATASETS.TEST", "('engine_val2',)",
        "TEST.EVAL_PERIOD", "1",
        "TEST.DETECTIONS_PER_IMAGE", "50",
        "MODEL.RPN.PRE_NMS_TOPK_TEST", "1000",  # test-sized: the config keeps 6000/3000
        "MODEL.RPN.POST_NMS_TOPK_TEST", "300",
        "INPUT.CROP.SIZE", "[128, 128]",
        "SOLVER.MAX_ITER", str(MAX_ITER),
        "SOLVER.CHECKPOINT_PERIOD", "100",
        "SOLVER.LOG_PERIOD", "1",
        # an untrained model's MaP-IoU is 0 at every evaluation; the count error moves
        "SOLVER.BEST_CHECKPOINT.METRIC", "count/MAE",
        "SOLVER.BEST_CHECKPOINT.MODE", "min",
        "OUTPUT_DIR", str(out),
    )  # fmt: skip
    register_all(cfg)
    cfg.freeze()
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    best = out / "model_best.pth"
    hashes: dict[int, str | None] = {}

    def record(t):
        hashes[t.iter] = hashlib.sha1(best.read_bytes()).hexdigest() if best.is_file() else None

    # after the trainer's hooks, so it sees this step's best-checkpoint decision
    trainer.register_hooks([hooks.CallbackHook(after_step=record, after_train=record)])
    with one_torch_thread():
        results = trainer.train()
    return cfg, out, results, hashes


def test_eval_metrics_in_metrics_json(run):
    cfg, out, results, _ = run
    recs = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    evals = [r for r in recs if "segm/MaP-IoU" in r]
    # after steps 0 and 1 (periodic), and after training (logged at MAX_ITER)
    assert [r["iteration"] for r in evals] == [0, 1, MAX_ITER]
    for r in evals:
        for key in ("segm/MaP-IoU", "segm/AP", "segm/AP50", "bbox/AP", "count/MAE"):
            assert key in r and not math.isnan(r[key]), key
        assert 0.0 <= r["segm/MaP-IoU"] <= 1.0
        assert r["count/n_gt"] == 31  # both images, every nucleus counted
    assert results["segm"]["MaP-IoU"] == evals[-1]["segm/MaP-IoU"]
    per_image = (out / "inference" / "engine_val2" / "per_image_metrics.csv").read_text()
    assert len(per_image.strip().splitlines()) == 1 + 2  # header + the two images
    assert [r["iteration"] for r in recs if "total_loss" in r] == list(range(MAX_ITER))
    assert list(out.glob("events.out.tfevents.*"))  # TensorBoard


def test_best_checkpoint_follows_the_metric(run):
    cfg, out, _, hashes = run
    recs = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    history = [(r["iteration"], r["count/MAE"]) for r in recs if "count/MAE" in r]
    expected, best = [], None
    for it, value in history:  # strict improvement (mode min) saves
        if best is None or value < best[1]:
            best = (it, value)
            expected.append(it)
    changed, prev = [], None
    for it in sorted(hashes):
        if hashes[it] != prev:
            changed.append(it)
        prev = hashes[it]
    assert changed == expected, (history, hashes)
    ckpt = torch.load(out / "model_best.pth", weights_only=False)
    assert ckpt["iteration"] == best[0]
    assert ckpt["best_metric"] == {"count/MAE": best[1]}


def test_curves_of_the_run(run, tmp_path):
    _, out, _, _ = run
    written = write_curves(out, tmp_path)
    assert [p.name for p in written] == ["curves_training.png", "curves_validation.png"]
    for p in written:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resuming_a_finished_run_does_nothing(run):
    cfg, out, _, _ = run
    before = (out / "metrics.json").read_text()
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == MAX_ITER
    assert trainer.train() is None
    assert (out / "metrics.json").read_text() == before
