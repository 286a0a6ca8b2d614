"""The shipped ensemble YAMLs against the real loader, the configs they name and the docs."""

from __future__ import annotations

import inspect
import re

import pytest
from conftest import REPO

import ensemble_infer
from nucdet.config import build_cfg
from nucdet.data.register import SARTORIUS_CLASSES
from nucdet.inference.ensemble import EnsembleSpec
from nucdet.inference.fusion import FUSION_METHODS
from nucdet.inference.tta import build_views

ENSEMBLES = sorted((REPO / "configs" / "ensembles").glob("*.yaml"))


@pytest.mark.parametrize("path", ENSEMBLES, ids=lambda p: p.name)
def test_shipped_ensembles_load_and_match_their_dataset(path):
    spec = EnsembleSpec.from_yaml(path)
    build_views(spec.views)
    method = FUSION_METHODS[spec.fusion["method"]]
    accepted = set(inspect.signature(method).parameters)
    assert set(spec.fusion) - {"method"} <= accepted
    cfg = build_cfg(REPO / "configs" / "sartorius" / "mask_rcnn_R_50_FPN_3k.yaml", [])
    assert set(spec.postprocess) <= set(cfg.POSTPROCESS)
    # DSB2018 submissions are ImageId,EncodedPixels column-major; Sartorius id,predicted.
    assert spec.format == ("dsb" if path.name.startswith("dsb") else "kaggle")


def test_sartorius_ensemble():
    spec = EnsembleSpec.from_yaml(REPO / "configs" / "ensembles" / "sartorius_r50_x101_tta.yaml")
    dirs = {}
    for name in ("R_50", "X_101_32x8d"):
        cfg = build_cfg(REPO / "configs" / "sartorius" / f"mask_rcnn_{name}_FPN_3k.yaml", [])
        dirs[name] = cfg.OUTPUT_DIR
    assert [m.model_dir for m in spec.models] == [dirs["R_50"], dirs["X_101_32x8d"]]
    assert {"hflip", "vflip"} <= set(spec.views)
    # [astro, cort, shsy5y]: the public shsy5y/astro/cort = .15/.35/.55 and 75/150/75.
    assert SARTORIUS_CLASSES == ["astro", "cort", "shsy5y"]
    assert spec.postprocess["SCORE_THRESH"] == [0.35, 0.55, 0.15]
    assert spec.postprocess["MIN_AREA"] == [150, 75, 75]
    assert spec.postprocess["MAJORITY_CLASS"] is True


def test_docs_name_only_existing_ensembles():
    texts = [ensemble_infer.__doc__, (REPO / "README.md").read_text()]
    named = {m for t in texts for m in re.findall(r"configs/ensembles/[\w.-]+\.yaml", t)}
    named.discard("configs/ensembles/x.yaml")  # the README's placeholder in the bundle line
    assert "configs/ensembles/sartorius_r50_x101_tta.yaml" in named
    assert all((REPO / n).is_file() for n in named), named
