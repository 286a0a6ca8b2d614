"""Inference speed: nucdet ``Predictor`` against detectron2's ``DefaultPredictor``.

    .venv/bin/python benchmarks/bench_predictor.py \
        [--config configs/dsb2018/mask_rcnn_R_50_FPN_GN_scratch_6k.yaml] \
        [--model-dir output/...] [--images 2] [--fractions 1,0.5,0.25,0.1] [--threads N] \
        [--precision fp32,bf16] [KEY VALUE ...]

Same weights, same images (the 520x696 images of ``nucdet/data/dsb2018_sample``), one process:
after an untimed warm-up, each image runs DefaultPredictor, nucdet, nucdet,
DefaultPredictor (A-B-B-A, so drifts of the machine's load even out) and the two runs of
each are averaged; then nucdet with each mask-score floor once.

Without ``--model-dir`` the model is the config at seeded random init with its class
logits scaled (``--spread``) so that scores are not all equal, and ``SCORE_THRESH_TEST 0``:
1000 detections per image, each with a random ragged mask. The speed-up of the floor
depends only on the fraction of detections above it, which the benchmark sets directly.

Rows per image:
- ``DefaultPredictor``: detectron2's, timed alone (no RLE encoding: conservative);
- ``nucdet, all masks``: ``Predictor`` with no mask-score floor (``raw()`` then
  ``masks.raw_to_prediction``, which is what ``__call__`` runs; the two stages timed
  apart), RLE encoding included; boxes, scores, classes and every mask pixel are checked
  equal to detectron2's;
- ``nucdet, floor keeps f``: the mask head runs only on the detections scoring at least
  the score that keeps a fraction ``f`` of them (the post-processing threshold in real
  use); checked: scores and classes of all detections, masks of those above the floor,
  and the outputs of ``postprocess`` with that threshold, equal to detectron2's.
- ``nucdet <precision>`` (``--precision``, e.g. ``fp32,bf16``): for each precision other
  than fp32, the same two rows (all masks, run twice and averaged; each floor once) with
  ``TEST.PRECISION`` set to it. Not pixel-identical to fp32 (no identity check): the
  accuracy of bf16 is measured on a validation fold, not here. fp32 always runs: it is
  the identity reference. The CPU model and its bf16 flags (``amx_bf16``,
  ``avx512_bf16``) are printed first: without them torch emulates bf16, slower than fp32.
Memory: peak resident memory during the call above the resident memory before it (Linux
``VmHWM`` after ``clear_refs``; freed heap trimmed first).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import time
from pathlib import Path

import numpy as np
import torch
from _common import comma_choices
from detectron2.engine import DefaultPredictor
from detectron2.layers.mask_ops import paste_masks_in_image
from detectron2.modeling import build_model

from nucdet.config import CPU_BF16_FLAGS, PRECISIONS, build_cfg, read_cpuinfo
from nucdet.data.imageio import read_image
from nucdet.inference.masks import raw_to_prediction
from nucdet.inference.postprocess import postprocess
from nucdet.inference.predictor import (
    Predictor,
    find_weights,
    paste_is_exact,
    precision_from_cfg,
)
from nucdet.io.atomic import atomic_write_json
from nucdet.io.rle import mask_to_coco_rle
from nucdet.structures import ImagePrediction

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "nucdet" / "data" / "dsb2018_sample"
DEFAULT_CONFIG = REPO / "configs" / "dsb2018" / "mask_rcnn_R_50_FPN_GN_scratch_6k.yaml"
NO_FLOOR = float("-inf")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="model config (random init)")
    ap.add_argument("--model-dir", help="trained output dir instead (its config and weights)")
    ap.add_argument("--images", type=int, default=2, help="number of 520x696 sample images")
    ap.add_argument("--fractions", default="1,0.25,0.1", help="kept fractions for the floor")
    ap.add_argument("--spread", type=float, default=8.0, help="class-logit scale (random init)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument(
        "--precision", default="fp32", help="TEST.PRECISION values, comma-separated (fp32 runs)"
    )
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return ap.parse_args(argv)


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(f"/proc/self/status has no {field}")


def measured(fn, *args):
    """``fn(*args)`` -> (result, seconds, peak RSS above the starting RSS in MB)."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    start = _rss_kb("VmRSS")
    t = time.perf_counter()
    out = fn(*args)
    sec = time.perf_counter() - t
    return out, sec, (_rss_kb("VmHWM") - start) / 1024


def images(n: int) -> list[Path]:
    meta = json.loads((SAMPLE / "samples.json").read_text())
    ids = sorted(k for k, v in meta.items() if (v["height"], v["width"]) == (520, 696))
    if len(ids) < n:
        raise ValueError(f"{SAMPLE}: only {len(ids)} images of 520x696, asked for {n}")
    return [SAMPLE / "stage1_train" / i / "images" / f"{i}.png" for i in ids[:n]]


def setup(args, work: Path):
    if args.model_dir:
        cfg = build_cfg(Path(args.model_dir) / "config.yaml", args.opts)
        cfg.MODEL.WEIGHTS = str(find_weights(args.model_dir))
        return cfg
    cfg = build_cfg(
        args.config,
        ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "1000"]
        + list(args.opts),
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(args.spread)
    work.mkdir(parents=True, exist_ok=True)
    cfg.MODEL.WEIGHTS = str(work / "model.pth")
    torch.save({"model": model.state_dict()}, cfg.MODEL.WEIGHTS)
    return cfg


def as_prediction(inst) -> ImagePrediction:
    masks = inst.pred_masks.numpy()
    rles = [mask_to_coco_rle(m) for m in masks]
    return ImagePrediction("", *masks.shape[1:], rles, inst.scores.numpy(), inst.pred_classes)


def same(a: ImagePrediction, b: ImagePrediction, rows: np.ndarray | None = None) -> bool:
    """Equal scores and classes, and equal masks (all, or at ``rows``)."""
    if len(a) != len(b) or not np.array_equal(a.scores, b.scores):
        return False
    if not np.array_equal(a.classes, b.classes):
        return False
    idx = range(len(a)) if rows is None else np.flatnonzero(rows)
    return all(a.rles[i] == b.rles[i] for i in idx)


def run_ours(ours: Predictor, floor: float, image: np.ndarray):
    ours.mask_score_floor = floor
    return measured(ours, image)


def run_all_masks(ours: Predictor, image: np.ndarray):
    """``ours(image)`` with no floor, its two stages timed apart (the same calls)."""
    raw, t_raw, m_raw = measured(ours.raw, image, NO_FLOOR)
    pred, t_masks, m_masks = measured(raw_to_prediction, raw)
    return (pred, raw), t_raw, t_masks, max(m_raw, m_masks)


def cpu_line() -> str:
    """The CPU model and its bf16 flags, for every figure's context."""
    model, flags = read_cpuinfo()
    units = [f for f in CPU_BF16_FLAGS if f in flags]
    note = "" if units else " (no bf16 units: torch emulates bf16, slower than fp32)"
    return f"cpu: {model or 'unknown'}; bf16 flags: {' '.join(units) or 'none'}{note}"


def with_precision(cfg, precision: str):
    out = cfg.clone()
    out.defrost()
    out.TEST.PRECISION = precision
    out.freeze()
    return out


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    precisions = comma_choices(args.precision, PRECISIONS, "--precision")
    cfg = setup(args, Path("/tmp/nucdet-bench-predictor"))
    cfg.freeze()
    d2 = DefaultPredictor(cfg)
    ours = Predictor(with_precision(cfg, "fp32"))  # the identity reference
    others = {}  # resolved precision -> Predictor, besides fp32
    for p in precisions:
        c = with_precision(cfg, p)
        if precision_from_cfg(c) != "fp32":
            others[precision_from_cfg(c)] = Predictor(c)
    # The floor infer.py uses: min(POSTPROCESS.SCORE_THRESH), a row of its own.
    cfg_floor = ours.mask_score_floor
    fractions = [float(f) for f in args.fractions.split(",")]
    print(f"config: {args.model_dir or args.config} {' '.join(args.opts)}")
    print(cpu_line())
    print(f"precisions: fp32 (DefaultPredictor, nucdet) {' '.join(others)}")
    # With an exact numba paste, Predictor.__call__ is raw() + masks.raw_to_prediction().
    if not paste_is_exact():
        raise RuntimeError("numba mask pasting is not bit-exact on this CPU: see predictor.py")
    print(f"torch threads: {torch.get_num_threads()}")
    print(f"load average before: {Path('/proc/loadavg').read_text().split()[:3]}")
    rows = []
    for k, path in enumerate(images(args.images)):
        image = read_image(path)

        if k == 0:
            # Untimed warm-up (oneDNN kernels, allocator): the box stage and a small mask head.
            for p in (ours, *others.values()):
                p.raw(image, float(np.quantile(p.raw(image, np.inf).scores, 0.99)))
        # A-B-B-A: each predictor runs twice per image, so load drifts even out.
        out, t_d2a, m_d2 = measured(d2, image)
        (full, raw), t_raw_a, t_masks_a, m_all = run_all_masks(ours, image)
        _, t_raw_b, t_masks_b, _ = run_all_masks(ours, image)
        _, t_d2b, _ = measured(d2, image)
        t_d2 = (t_d2a + t_d2b) / 2
        t_raw, t_masks = (t_raw_a + t_raw_b) / 2, (t_masks_a + t_masks_b) / 2
        t_all = t_raw + t_masks
        inst = out["instances"]
        ref = as_prediction(inst)
        n = len(ref)
        ok = same(full, ref) and np.array_equal(raw.boxes, inst.pred_boxes.tensor.numpy())
        # Where detectron2's time goes: its paste, on the same grids.
        grids, boxes = torch.from_numpy(raw.mask_probs), torch.from_numpy(raw.boxes)
        _, t_d2_paste, m_d2_paste = measured(
            paste_masks_in_image, grids, boxes, (raw.height, raw.width)
        )
        row = {
            "image": path.stem[:12],
            "detections": n,
            "default_s": t_d2,
            "default_runs_s": [t_d2a, t_d2b],
            "all_runs_s": [t_raw_a + t_masks_a, t_raw_b + t_masks_b],
            "default_mb": m_d2,
            "all_s": t_all,
            "all_mb": m_all,
            "all_identical": ok,
            "raw_s": t_raw,
            "masks_rle_s": t_masks,
            "d2_paste_s": t_d2_paste,
            "d2_paste_mb": m_d2_paste,
            "floors": [],
            "precisions": {},
        }
        scores = np.sort(ref.scores.astype(np.float64))[::-1]
        floors = [(f, float(scores[max(int(np.ceil(f * n)) - 1, 0)])) for f in fractions if f < 1]
        if args.model_dir and cfg_floor > NO_FLOOR:
            floors.append(("config", cfg_floor))
        for f, floor in floors:
            pred, t, m = run_ours(ours, floor, image)
            above = ref.scores.astype(np.float64) >= floor
            masks_ok = same(pred, ref, above) and all(
                int(pred.areas()[i]) == 0 for i in np.flatnonzero(~above)
            )
            post = dict(score_thresh=floor, majority_class=bool(cfg.POSTPROCESS.MAJORITY_CLASS))
            post_ok = same(postprocess(pred, **post), postprocess(ref, **post))
            row["floors"].append(
                {
                    "fraction": f,
                    "floor": floor,
                    "kept": int(above.sum()),
                    "s": t,
                    "mb": m,
                    "identical_above_floor": masks_ok,
                    "identical_after_postprocess": post_ok,
                }
            )
        for name, pred in others.items():
            (p_full, _), ra, ma, mem = run_all_masks(pred, image)
            _, rb, mb, _ = run_all_masks(pred, image)
            entry = {
                "detections": len(p_full),
                "all_s": (ra + ma + rb + mb) / 2,
                "all_runs_s": [ra + ma, rb + mb],
                "raw_s": (ra + rb) / 2,
                "all_mb": mem,
                "floors": [],
            }
            for f, floor in floors:
                p_pred, t, m = run_ours(pred, floor, image)
                kept = int((p_pred.scores.astype(np.float64) >= floor).sum())
                entry["floors"].append(
                    {"fraction": f, "floor": floor, "kept": kept, "s": t, "mb": m}
                )
            row["precisions"][name] = entry
        rows.append(row)
        print(
            f"{row['image']} {n} detections: DefaultPredictor {t_d2:.1f} s "
            f"({t_d2a:.1f}, {t_d2b:.1f}; {m_d2:.0f} MB), nucdet all masks {t_all:.1f} s "
            f"({row['all_runs_s'][0]:.1f}, {row['all_runs_s'][1]:.1f}; {m_all:.0f} MB) = "
            f"{t_d2 / t_all:.2f}x, "
            f"identical {ok} [raw {t_raw:.1f} s + masks/RLE {t_masks:.2f} s; detectron2 "
            f"paste alone {t_d2_paste:.1f} s, {m_d2_paste:.0f} MB]"
        )
        for fl in row["floors"]:
            what = "config floor" if fl["fraction"] == "config" else f"{fl['fraction']:.0%}"
            print(
                f"    floor {fl['floor']:.4f} ({what}) keeps {fl['kept']}/{n}: "
                f"{fl['s']:.1f} s ({fl['mb']:.0f} MB) = {t_d2 / fl['s']:.2f}x, identical above "
                f"floor {fl['identical_above_floor']}, after postprocess "
                f"{fl['identical_after_postprocess']}"
            )
        for name, e in row["precisions"].items():
            print(
                f"  nucdet {name} all masks: {e['detections']} detections, {e['all_s']:.1f} s "
                f"({e['all_runs_s'][0]:.1f}, {e['all_runs_s'][1]:.1f}; {e['all_mb']:.0f} MB) = "
                f"{t_d2 / e['all_s']:.2f}x DefaultPredictor, {t_all / e['all_s']:.2f}x nucdet fp32"
                f" [raw {e['raw_s']:.1f} s]"
            )
            for fl in e["floors"]:
                what = "config floor" if fl["fraction"] == "config" else f"{fl['fraction']:.0%}"
                print(
                    f"    floor {fl['floor']:.4f} ({what}) keeps {fl['kept']}: {fl['s']:.1f} s "
                    f"({fl['mb']:.0f} MB) = {t_d2 / fl['s']:.2f}x DefaultPredictor"
                )
    d2_total = sum(r["default_s"] for r in rows)
    print(f"\nseconds/image: DefaultPredictor {d2_total / len(rows):.1f}")
    all_total = sum(r["all_s"] for r in rows)
    print(f"  nucdet all masks {all_total / len(rows):.1f} ({d2_total / all_total:.2f}x)")
    for j, fl in enumerate(rows[0]["floors"]):
        tot = sum(r["floors"][j]["s"] for r in rows)
        kept = np.mean([r["floors"][j]["kept"] / r["detections"] for r in rows])
        what = "config floor" if fl["fraction"] == "config" else "floor"
        print(f"  nucdet {what} (keeps {kept:.0%}) {tot / len(rows):.1f} ({d2_total / tot:.2f}x)")
    for name in others:
        tot = sum(r["precisions"][name]["all_s"] for r in rows)
        print(f"  nucdet {name} all masks {tot / len(rows):.1f} ({d2_total / tot:.2f}x)")
        for j, fl in enumerate(rows[0]["precisions"][name]["floors"]):
            t = sum(r["precisions"][name]["floors"][j]["s"] for r in rows)
            what = "config floor" if fl["fraction"] == "config" else f"floor {fl['fraction']:.0%}"
            print(f"  nucdet {name} {what} {t / len(rows):.1f} ({d2_total / t:.2f}x)")
    print(cpu_line())
    print(f"load average after: {Path('/proc/loadavg').read_text().split()[:3]}")
    if args.json:
        atomic_write_json(args.json, rows, indent=1)
    return rows


if __name__ == "__main__":
    main()
