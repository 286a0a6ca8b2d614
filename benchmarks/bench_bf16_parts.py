"""Which part of a model run in bf16 costs accuracy: MaP-IoU of bf16 variants against fp32
on TRAINING images (paired per image), for a trained model.

    NUCDET_DATASETS=../shared/data .venv/bin/python benchmarks/bench_bf16_parts.py \
        --model-dir output/accuracy/r60_bf16/train [--images 40] [KEY VALUE ...]

Images: ``bench_accuracy.systematic_sample`` of ``--dataset`` (default
``dsb2018_fold0_train``: never the validation fold). Each variant is a ``Predictor`` with
``TEST.PRECISION bf16`` (autocast + channels_last), in which the named modules run in fp32
(their inputs cast to float32, autocast off inside them); scored after the config's
post-processing (``POSTPROCESS.SCORE_THRESH`` / ``MIN_AREA``, overlaps removed), paired
against the fp32 predictor with ``paired_difference``. ``bf16/GN-fp32`` is what
nucdet's bf16 predictor runs (``nucdet.modeling.precision``); the variant ``bf16/GN-bf16``
undoes it to show what it fixes. The committed table is in
``benchmarks/results/precision_bf16.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from _common import comma_choices
from bench_accuracy import _sample_gt

from nucdet.config import build_cfg
from nucdet.data.imageio import read_image
from nucdet.data.register import register_all
from nucdet.evaluation.mapiou import map_iou_image
from nucdet.evaluation.stats import paired_difference
from nucdet.inference.postprocess import postprocess
from nucdet.inference.predictor import Predictor
from nucdet.modeling.precision import Fp32GroupNorm

# variant -> parts left in fp32 (besides the variant "fp32", where all is)
VARIANTS = {
    "fp32": None,
    "bf16/GN-bf16": [],
    "bf16/GN-bf16/mask-head-fp32": ["mask_head"],
    "bf16/GN-bf16/rpn-fp32": ["rpn"],
    "bf16/GN-bf16/box-head-fp32": ["box_head"],
    "bf16/GN-bf16/heads-fp32": ["rpn", "box_head", "mask_head"],
    "bf16/GN-bf16/bottom-up-fp32": ["bottom_up"],
    "bf16/GN-bf16/backbone-fp32": ["backbone"],
    "bf16/GN-fp32": ["gn"],
}


def _to_float(x):
    if torch.is_tensor(x):
        return x.float()
    if isinstance(x, dict) and all(torch.is_tensor(v) for v in x.values()):
        return {k: v.float() for k, v in x.items()}
    return x


def run_in_fp32(mod: torch.nn.Module) -> None:
    """``mod``'s forward in fp32 inside an autocast region (its tensor inputs cast)."""
    orig = mod.forward

    def forward(*args, **kwargs):
        with torch.autocast("cpu", enabled=False):
            return orig(*[_to_float(a) for a in args], **kwargs)

    mod.forward = forward


def variant_predictor(cfg_path: str, weights: str, name: str, opts: list[str]) -> Predictor:
    parts = VARIANTS[name]
    precision = "fp32" if parts is None else "bf16"
    cfg = build_cfg(cfg_path, ["MODEL.WEIGHTS", weights, *opts, "TEST.PRECISION", precision])
    p = Predictor(cfg)
    if parts is None:
        return p
    m = p.model
    if "gn" not in parts:  # undo nucdet's fp32 GroupNorm: torch's CPU autocast (bf16)
        for mod in m.modules():
            if type(mod) is Fp32GroupNorm:
                mod.__class__ = torch.nn.GroupNorm
    where = {
        "mask_head": lambda: m.roi_heads.mask_head,
        "rpn": lambda: m.proposal_generator,
        "box_head": lambda: m.roi_heads.box_head,
        "bottom_up": lambda: m.backbone.bottom_up,
        "backbone": lambda: m.backbone,
    }
    for part in parts:
        if part != "gn":
            run_in_fp32(where[part]())
    return p


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--dataset", default="dsb2018_fold0_train")
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="test-time KEY VALUE overrides")
    args = ap.parse_args(argv)
    names = comma_choices(args.variants, VARIANTS, "--variants")
    if "fp32" not in names:
        names.insert(0, "fp32")
    md = Path(args.model_dir)
    register_all()
    gt, _ = _sample_gt(args.dataset, args.images)
    results: dict[str, dict[str, float]] = {}
    print("| variant | MaP-IoU | - fp32 [95% CI], images better/worse | seconds |")
    print("|---|---|---|---|")
    for name in names:
        p = variant_predictor(str(md / "config.yaml"), str(md / "model_final.pth"), name, args.opts)
        post = p.cfg.POSTPROCESS
        per, t = {}, time.perf_counter()
        for im in gt.images:
            pred = p(read_image(im.file_name))
            kept = postprocess(
                pred,
                score_thresh=list(post.SCORE_THRESH),
                min_area=list(post.MIN_AREA),
                remove_overlap=True,
            )
            per[im.image_id] = map_iou_image(im.instances(), kept)
        results[name] = per
        diff = "-"
        if name != "fp32":
            d = paired_difference(per, results["fp32"])
            lo, hi = d["ci95"]
            diff = f"{d['mean']:+.4f} [{lo:+.4f}, {hi:+.4f}], {d['better']}/{d['worse']}"
        mean = float(np.mean(list(per.values())))
        print(f"| {name} | {mean:.4f} | {diff} | {time.perf_counter() - t:.0f} |", flush=True)
    return results


if __name__ == "__main__":
    main()
