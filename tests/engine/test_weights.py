"""MODEL.WEIGHTS: "" (scratch), local files, model-zoo URLs; offline errors tested for real."""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest
import torch
from conftest import tiny_cfg

from nucdet.engine.checkpoint import NucleiCheckpointer
from nucdet.engine.trainer import Trainer
from nucdet.engine.weights import (
    WeightsUnavailableError,
    cache_path,
    resolve_weights,
    to_url,
)

ZOO = (
    "https://dl.fbaipublicfiles.com/detectron2/COCO-InstanceSegmentation/"
    "mask_rcnn_R_50_FPN_3x/137849600/model_final_f10217.pkl"
)
D2_ZOO = (
    "detectron2://COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x/137849600/model_final_f10217.pkl"
)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_scratch_and_local(tmp_path):
    assert resolve_weights("") == ""
    assert resolve_weights("  ") == ""
    f = tmp_path / "w.pth"
    f.write_bytes(b"x")
    assert resolve_weights(str(f)) == str(f)
    with pytest.raises(FileNotFoundError, match=r"MODEL.WEIGHTS .*nope\.pth: no such file"):
        resolve_weights(str(tmp_path / "nope.pth"))
    with pytest.raises(FileNotFoundError, match=r"rel/nope\.pth: no such file \(resolved to /"):
        resolve_weights("rel/nope.pth")


def test_cache_layout_matches_iopath(cache):
    # the same place detectron2 (iopath's HTTPURLHandler) caches downloads
    expected = (
        cache
        / "detectron2/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x/137849600"
        / "model_final_f10217.pkl"
    )
    assert cache_path(ZOO) == expected
    assert cache_path(D2_ZOO) == expected
    assert to_url(D2_ZOO) == ZOO


def test_offline_url_gives_clear_error(cache):
    t0 = time.monotonic()
    try:
        got = resolve_weights(ZOO, timeout=5)
    except WeightsUnavailableError as e:
        err = e
    else:  # pragma: no cover - only with internet access
        pytest.skip(f"the machine is online (downloaded {got})")
    assert time.monotonic() - t0 < 30
    dest, msg = cache_path(ZOO), str(err)
    assert ZOO in msg
    assert f"place the file at {dest}" in msg
    assert "MODEL.WEIGHTS /local/path/model_final_f10217.pkl" in msg
    assert "_scratch config" in msg
    assert err.__cause__ is None and err.__suppress_context__  # no socket traceback chained
    # nothing half-written left behind
    assert not dest.parent.exists() or not any(dest.parent.iterdir())


def test_offline_error_through_the_trainer(cache):
    cfg = tiny_cfg("MODEL.WEIGHTS", D2_ZOO, "SOLVER.MAX_ITER", "1", "DATASETS.TEST", "()")
    model = Trainer.build_model(cfg)
    try:
        NucleiCheckpointer(model).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    except WeightsUnavailableError as e:
        assert str(cache_path(D2_ZOO)) in str(e)
    else:  # pragma: no cover - only with internet access
        pytest.skip("the machine is online")


def test_placed_file_is_used_offline(cache):
    """Way out 1: a model-zoo file placed at the cache path loads without a network."""
    cfg = tiny_cfg("DATASETS.TEST", "()")
    src = Trainer.build_model(cfg)
    # detectron2 model-zoo format: a pickle of numpy arrays
    zoo = {
        "model": {k: v.detach().numpy() for k, v in src.state_dict().items()},
        "__author__": "Detectron2 Model Zoo",
    }
    dest = cache_path(D2_ZOO)
    dest.parent.mkdir(parents=True)
    with open(dest, "wb") as f:
        pickle.dump(zoo, f)
    assert resolve_weights(ZOO, timeout=1) == str(dest)
    dst = Trainer.build_model(cfg)
    assert not torch.equal(
        dst.roi_heads.box_predictor.cls_score.weight, src.roi_heads.box_predictor.cls_score.weight
    )
    NucleiCheckpointer(dst).resume_or_load(D2_ZOO, resume=False)
    for k, v in src.state_dict().items():
        np.testing.assert_array_equal(dst.state_dict()[k].numpy(), v.numpy(), err_msg=k)
