"""Where nucdet's inference time goes, per network stage, in fp32 and bf16, and what moves it.

    .venv/bin/python benchmarks/bench_precision_profile.py \
        [--config configs/dsb2018/mask_rcnn_R_50_FPN_GN_scratch_6k.yaml] [--model-dir DIR] \
        [--variants fp32,bf16,bf16-nocl,bf16-1t,bf16-compile] [--repeats 3] [KEY VALUE ...]

The model and image are ``bench_predictor.py``'s (seeded random init, ``SCORE_THRESH_TEST
0``: 1000 detections with every mask computed, on the first 520x696 sample image; or a
trained ``--model-dir``). Each variant is a ``Predictor`` on the same weights; after one
untimed call each, the variants run round-robin ``--repeats`` times (so load drifts hit
them alike) and the medians are reported, with the time of each stage measured by forward
hooks on detectron2's modules:

- ``backbone`` (ResNet + FPN), ``rpn`` (proposal generator, its NMS included),
  ``box pool`` / ``box head`` / ``box predictor`` (ROIAlign, the head, the two linear
  layers and the box NMS of ``inference``), ``mask pool`` / ``mask head`` (ROIAlign and
  the mask head over every detection), ``other`` (pre-processing and what is between the
  stages), and ``paste + RLE`` (``masks.raw_to_prediction``, fp32 in every variant).

Variants (``--variants``):
- ``fp32``: ``TEST.PRECISION fp32``; ``bf16``: ``TEST.PRECISION bf16`` (autocast +
  channels_last, what nucdet runs);
- ``bf16-nocl``: bf16 autocast with the weights left in the default (NCHW) layout;
- ``fp32-1t`` / ``bf16-1t``: with one torch thread instead of the default;
- ``bf16-compile``: bf16 with the backbone through ``torch.compile`` (Inductor, CPU,
  ``freezing`` on: weights pre-packed for oneDNN and conv + pointwise fused); the first
  call compiles and is not timed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch
from _common import comma_choices
from bench_predictor import cpu_line, images, setup, with_precision

from nucdet.data.imageio import read_image
from nucdet.inference.masks import raw_to_prediction
from nucdet.inference.predictor import Predictor

STAGES = {
    "backbone": lambda m: m.backbone,
    "rpn": lambda m: m.proposal_generator,
    "box pool": lambda m: m.roi_heads.box_pooler,
    "box head": lambda m: m.roi_heads.box_head,
    "box predictor": lambda m: m.roi_heads.box_predictor,
    "mask pool": lambda m: m.roi_heads.mask_pooler,
    "mask head": lambda m: m.roi_heads.mask_head,
}
VARIANTS = ("fp32", "bf16", "bf16-nocl", "fp32-1t", "bf16-1t", "bf16-compile")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", default="configs/dsb2018/mask_rcnn_R_50_FPN_GN_scratch_6k.yaml")
    ap.add_argument("--model-dir", help="trained output dir instead (its config and weights)")
    ap.add_argument("--spread", type=float, default=8.0, help="class-logit scale (random init)")
    ap.add_argument("--variants", default="fp32,bf16,bf16-nocl,fp32-1t,bf16-1t,bf16-compile")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return ap.parse_args(argv)


class StageTimer:
    """Seconds spent in each of ``STAGES`` (forward hooks; the box predictor's own
    ``inference``, which the R-CNN heads call outside ``forward``, is wrapped too)."""

    def __init__(self, model):
        self.times: dict[str, float] = defaultdict(float)
        self._start: dict[str, float] = {}
        for name, get in STAGES.items():
            mod = get(model)
            mod.register_forward_pre_hook(self._pre(name))
            mod.register_forward_hook(self._post(name))
        bp = model.roi_heads.box_predictor
        inner = bp.inference

        def timed_inference(*a, **k):
            t = time.perf_counter()
            out = inner(*a, **k)
            self.times["box predictor"] += time.perf_counter() - t
            return out

        bp.inference = timed_inference

    def _pre(self, name):
        def hook(mod, args):
            self._start[name] = time.perf_counter()

        return hook

    def _post(self, name):
        def hook(mod, args, out):
            self.times[name] += time.perf_counter() - self._start[name]

        return hook

    def reset(self) -> None:
        self.times.clear()


class Variant:
    def __init__(self, name: str, cfg):
        self.name = name
        precision = "fp32" if name.startswith("fp32") else "bf16"
        self.threads = 1 if name.endswith("-1t") else torch.get_num_threads()
        self.pred = Predictor(with_precision(cfg, precision))
        model = self.pred.model
        if name == "bf16-nocl":
            model.to(memory_format=torch.contiguous_format)
        self.timer = StageTimer(model)
        if name == "bf16-compile":
            import torch._inductor.config as inductor

            inductor.freezing = True
            model.backbone = torch.compile(model.backbone, dynamic=False)
        self.rows: list[dict[str, float]] = []

    def __call__(self, image, record: bool = True) -> None:
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            self.timer.reset()
            t0 = time.perf_counter()
            raw = self.pred.raw(image)
            t1 = time.perf_counter()
            pred = raw_to_prediction(raw)
            t2 = time.perf_counter()
        finally:
            torch.set_num_threads(before)
        row = dict(self.timer.times)
        row["other"] = (t1 - t0) - sum(row.values())
        row["paste + RLE"] = t2 - t1
        row["total"] = t2 - t0
        row["detections"] = len(pred)
        if record:
            self.rows.append(row)

    def median(self, key: str) -> float:
        return statistics.median(r[key] for r in self.rows)


def main(argv=None) -> dict:
    args = parse_args(argv)
    names = comma_choices(args.variants, VARIANTS, "--variants")
    cfg = setup(args, Path("/tmp/nucdet-bench-profile"))
    cfg.freeze()
    print(f"config: {args.model_dir or args.config} {' '.join(args.opts)}")
    print(cpu_line())
    print(f"torch {torch.__version__}, default threads {torch.get_num_threads()}")
    print(f"load average before: {Path('/proc/loadavg').read_text().split()[:3]}", flush=True)
    image = read_image(images(1)[0])
    variants = {}
    for n in names:
        v = Variant(n, cfg)
        t = time.perf_counter()
        try:
            v(image, record=False)  # warm-up (and, for bf16-compile, the compilation)
        except Exception as e:  # noqa: BLE001 - a variant that cannot run is a result
            print(f"  {n}: failed ({type(e).__name__}: {str(e)[:300]})")
            continue
        print(f"  {n}: first call {time.perf_counter() - t:.1f} s", flush=True)
        variants[n] = v
    for r in range(args.repeats):
        order = list(variants)[r % len(variants) :] + list(variants)[: r % len(variants)]
        for n in order:
            variants[n](image)
    cols = [*STAGES, "other", "paste + RLE", "total"]
    print(f"\nmedian seconds over {args.repeats} calls, one 520x696 image")
    print("| variant | detections | " + " | ".join(cols) + " | vs fp32 |")
    print("|---|---|" + "---|" * len(cols) + "---|")
    base = variants["fp32"].median("total") if "fp32" in variants else float("nan")
    out = {}
    for n, v in variants.items():
        med = {c: v.median(c) for c in cols}
        out[n] = med
        cells = " | ".join(f"{med[c]:.2f}" for c in cols)
        print(f"| {n} | {v.rows[0]['detections']} | {cells} | {base / med['total']:.2f}x |")
    print(cpu_line())
    print(f"load average after: {Path('/proc/loadavg').read_text().split()[:3]}")
    return out


if __name__ == "__main__":
    main()
