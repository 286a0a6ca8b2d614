"""Training throughput on CPU: data-loading share of an iteration, and the cost of head settings.

    .venv/bin/python benchmarks/bench_train_throughput.py \
        [--config configs/cpu/mask_rcnn_R_18_FPN_lite_tiny.yaml] [--part data,heads,accuracy] \
        [--data-iters 25] [--workers 0,1] [--rounds 3] [--steps 3] [--threads N] \
        [--acc-iters 400] [--acc-variants "ROI batch 64;RPN top-k 1000/500"] [KEY VALUE ...]

The ``data`` and ``heads`` parts train on ``dsb2018_sample_train`` (``data/dsb2018_sample``)
with the full augmentation set on (``FULL_AUG``: flips, rot90, scale jitter, brightness /
contrast / saturation, blur, noise).

``data``: the real ``nucdet`` Trainer for ``--data-iters`` iterations per
``DATALOADER.NUM_WORKERS`` value; reports detectron2's own ``data_time`` (the wait for the
next batch inside ``run_step``) and ``time`` (the whole step, from ``IterationTimer``),
averaged over the iterations after detectron2's 3 warm-up iterations, and the data share.

``heads``: seconds per training step (forward, backward, optimizer step with the config's
gradient clipping) of each head setting, changed one at a time from the config: box head
4conv1fc vs the config's, ``ROI_HEADS.BATCH_SIZE_PER_IMAGE``, RPN train top-k, and the
other torch thread count (1 <-> 2). All variants get the same pre-mapped batches and the
same seeded init, and run interleaved (``--rounds`` rounds of ``--steps`` steps each,
after one untimed step), so the machine's load drifts hit them alike; reported: median
seconds per step and the ratio to the config as it is.

``precision`` (not in the default parts): the same timed steps for fp32, bf16 autocast
(``SOLVER.AMP.ENABLED`` on the CPU), bf16 + channels_last weights, and fp32 +
channels_last, with each step's total loss (same batches, same init: the bf16 losses
should track fp32's). Only CPUs with ``amx_bf16`` / ``avx512_bf16`` run bf16 natively.

``accuracy`` (not in the default parts: ~10 minutes per run): ``train_net.py`` with the
config and each cheaper variant named in ``--acc-variants`` for ``--acc-iters`` iterations
on ``dsb2018_sample_train`` (one loader worker, same seed), evaluated once at the end on
``dsb2018_sample_val`` (8 images): Kaggle MaP-IoU and mask AP. One seed, a short
schedule, 8 images: only a large loss would show.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.utils.events import EventStorage

from nucdet.config import build_cfg
from nucdet.data.mapper import build_mapper
from nucdet.data.register import register_all
from nucdet.engine.trainer import Trainer
from nucdet.io.metrics_json import read_metrics

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "cpu" / "mask_rcnn_R_18_FPN_lite_tiny.yaml"
FULL_AUG = [
    "INPUT.AUG.HFLIP_PROB", "0.5",
    "INPUT.AUG.VFLIP_PROB", "0.5",
    "INPUT.AUG.ROT90", "True",
    "INPUT.AUG.SCALE_JITTER", "(0.8, 1.25)",
    "INPUT.AUG.BRIGHTNESS", "(0.8, 1.2)",
    "INPUT.AUG.CONTRAST", "(0.8, 1.2)",
    "INPUT.AUG.SATURATION", "(0.8, 1.2)",
    "INPUT.AUG.BLUR_PROB", "0.3",
    "INPUT.AUG.NOISE_PROB", "0.3",
]  # fmt: skip
COMMON = [
    "MODEL.DEVICE", "cpu",
    "DATASETS.TRAIN", "('dsb2018_sample_train',)",
    "DATASETS.TEST", "()",
    "TEST.EVAL_PERIOD", "0",
]  # fmt: skip


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", default=str(DEFAULT_CONFIG))
    ap.add_argument(
        "--part", default="data,heads", help="comma list of: data, heads, precision, accuracy"
    )
    ap.add_argument("--data-iters", type=int, default=25, help="trainer iterations per run")
    ap.add_argument("--workers", default="0,1", help="DATALOADER.NUM_WORKERS values")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (heads)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant and round")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--acc-iters", type=int, default=400, help="iterations per accuracy run")
    ap.add_argument(
        "--acc-variants",
        default="ROI batch 64;RPN top-k 1000/500",
        help="';'-separated substrings of the head variants to train (besides the config)",
    )
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return ap.parse_args(argv)


def _cfg(args, *extra: str):
    return build_cfg(args.config, [*COMMON, *FULL_AUG, *args.opts, *extra])


# ---- data_time share ---------------------------------------------------------------------


def data_share(args, workers: int) -> dict:
    """Train ``--data-iters`` iterations with the real Trainer; mean data_time and time."""
    with tempfile.TemporaryDirectory(prefix="nucdet-bench-train-") as out:
        cfg = _cfg(
            args,
            "DATALOADER.NUM_WORKERS", str(workers),
            "SOLVER.MAX_ITER", str(args.data_iters),
            "SOLVER.CHECKPOINT_PERIOD", str(10**6),
            "SOLVER.LOG_PERIOD", str(10**6),
            "OUTPUT_DIR", out,
        )  # fmt: skip
        register_all(cfg)
        cfg.freeze()
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
        hist = trainer.storage.history
        times = dict((it, v) for v, it in hist("time").values())
        data = dict((it, v) for v, it in hist("data_time").values())
        its = sorted(set(times) & set(data))
    t = float(np.mean([times[i] for i in its]))
    d = float(np.mean([data[i] for i in its]))
    return {"workers": workers, "iters": len(its), "time": t, "data_time": d, "share": d / t}


# ---- head settings -----------------------------------------------------------------------


def head_variants(cfg) -> dict[str, list[str]]:
    """Name -> config overrides, one factor at a time from ``cfg``'s own settings."""
    rpn = cfg.MODEL.RPN
    roi = cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE
    box = cfg.MODEL.ROI_BOX_HEAD
    out: dict[str, list[str]] = {
        f"config as is ({box.NUM_CONV}conv{box.NUM_FC}fc, ROI {roi}, RPN "
        f"{rpn.PRE_NMS_TOPK_TRAIN}/{rpn.POST_NMS_TOPK_TRAIN})": [],
    }
    if (box.NUM_CONV, box.NUM_FC) != (4, 1):
        # detectron2's scratch recipe: 4 convs (256 channels) + 1 fc, normalised like the FPN
        out["box head 4conv1fc"] = [
            "MODEL.ROI_BOX_HEAD.NUM_CONV", "4",
            "MODEL.ROI_BOX_HEAD.NUM_FC", "1",
            "MODEL.ROI_BOX_HEAD.CONV_DIM", "256",
            "MODEL.ROI_BOX_HEAD.NORM", cfg.MODEL.FPN.NORM,
        ]  # fmt: skip
    if (box.NUM_CONV, box.NUM_FC) != (0, 2):
        out["box head 2fc"] = ["MODEL.ROI_BOX_HEAD.NUM_CONV", "0", "MODEL.ROI_BOX_HEAD.NUM_FC", "2"]
    for n in (64, 128, 256, 512):
        if n != roi:
            out[f"ROI batch {n}"] = ["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", str(n)]
    for pre, post in ((1000, 500), (4000, 2000)):
        if (pre, post) != (rpn.PRE_NMS_TOPK_TRAIN, rpn.POST_NMS_TOPK_TRAIN):
            out[f"RPN top-k {pre}/{post}"] = [
                "MODEL.RPN.PRE_NMS_TOPK_TRAIN", str(pre),
                "MODEL.RPN.POST_NMS_TOPK_TRAIN", str(post),
            ]  # fmt: skip
    return out


def fixed_batches(cfg, n: int) -> list[list[dict]]:
    """``n`` batches of ``IMS_PER_BATCH`` mapped training images (seeded, augmented)."""
    register_all(cfg)
    dicts = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])
    mapper = build_mapper(cfg, True)
    rng = np.random.default_rng(0)
    np.random.seed(0)  # the augmentations draw from NumPy's global generator
    k = cfg.SOLVER.IMS_PER_BATCH
    return [[mapper(dicts[i]) for i in rng.choice(len(dicts), k)] for _ in range(n)]


class Step:
    """One variant: model + optimizer built as the Trainer builds them, timed steps.

    ``bf16``: the forward (and the losses) under CPU bf16 autocast, as
    ``nucdet.engine.amp.CPUAMPTrainer`` runs it; ``channels_last``: the model's weights in
    channels_last memory format (as ``SOLVER.AMP.ENABLED`` training on the CPU does)."""

    def __init__(self, cfg, threads: int | None, bf16: bool = False, channels_last: bool = False):
        torch.manual_seed(0)
        self.model = Trainer.build_model(cfg)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.model.train()
        self.optimizer = Trainer.build_optimizer(cfg, self.model)
        self.threads = threads
        self.bf16 = bf16
        self.times: list[float] = []
        self.forward: list[float] = []
        self.losses: list[float] = []

    def __call__(self, batch: list[dict], record: bool = True) -> None:
        before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            losses = self.model(batch)
            total = sum(losses.values())
        t1 = time.perf_counter()
        self.optimizer.zero_grad()
        total.float().backward()
        self.optimizer.step()
        t2 = time.perf_counter()
        torch.set_num_threads(before)
        if record:
            self.times.append(t2 - t0)
            self.forward.append(t1 - t0)
            self.losses.append(float(total.detach()))


def head_costs(args) -> list[dict]:
    base = _cfg(args)
    variants = {k: (_cfg(args, *v), None) for k, v in head_variants(base).items()}
    # The other thread count (1 <-> 2): on a shared machine it can matter more than heads.
    other = 2 if torch.get_num_threads() == 1 else 1
    variants[f"config as is, {other} torch thread{'s' if other > 1 else ''}"] = (base, other)
    steps = {k: Step(c, threads) for k, (c, threads) in variants.items()}
    return interleaved(args, base, steps)


def precision_costs(args) -> list[dict]:
    """fp32 vs bf16 autocast vs bf16 + channels_last on the same batches, interleaved."""
    base = _cfg(args)
    steps = {
        "fp32": Step(base, None),
        "bf16 autocast": Step(base, None, bf16=True),
        "bf16 autocast + channels_last": Step(base, None, bf16=True, channels_last=True),
        "fp32 + channels_last": Step(base, None, channels_last=True),
    }
    return interleaved(args, base, steps)


def interleaved(args, base, steps: dict[str, Step]) -> list[dict]:
    """Time every variant on the same pre-mapped batches, round-robin (see the module doc)."""
    batches = fixed_batches(base, 1 + args.rounds * args.steps)
    with EventStorage(0):  # the models log training statistics into it
        for s in steps.values():
            s(batches[0], record=False)  # first step: allocator and oneDNN warm-up
        for r in range(args.rounds):
            # Rotate the order every round so no variant always runs right after a slow one.
            names = list(steps)
            names = names[r % len(names) :] + names[: r % len(names)]
            for name in names:
                for j in range(args.steps):
                    steps[name](batches[1 + r * args.steps + j])
            print(f"  round {r + 1}/{args.rounds} done", flush=True)
    base_s = statistics.median(next(iter(steps.values())).times)
    rows = []
    for name, s in steps.items():
        med = statistics.median(s.times)
        rows.append(
            {
                "variant": name,
                "s_per_step": med,
                "forward_s": statistics.median(s.forward),
                "ratio": med / base_s,
                "losses": s.losses,
            }
        )
    return rows


# ---- accuracy of the cheaper settings (short runs) -----------------------------------------


def short_run_map(args, name: str, overrides: list[str], out_root: Path) -> dict:
    """``train_net.py`` for ``--acc-iters`` iterations, MaP-IoU on ``dsb2018_sample_val``."""
    out = out_root / name.replace(" ", "_").replace("/", "-")
    cmd = [
        sys.executable, str(REPO / "train_net.py"), "--config-file", args.config,
        *args.opts,
        "DATASETS.TRAIN", "('dsb2018_sample_train',)",
        "DATASETS.TEST", "('dsb2018_sample_val',)",
        "SOLVER.MAX_ITER", str(args.acc_iters),
        "TEST.EVAL_PERIOD", "0",  # evaluated once, after the last iteration
        "SOLVER.CHECKPOINT_PERIOD", str(10**6),
        "DATALOADER.NUM_WORKERS", "1",
        "SEED", "1",
        "OUTPUT_DIR", str(out),
        *overrides,
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    minutes = (time.perf_counter() - t) / 60
    if proc.returncode:
        raise RuntimeError(f"{name}: train_net.py failed:\n{proc.stderr[-3000:]}")
    final = {}
    for rec in read_metrics(out / "metrics.json"):
        if "segm/MaP-IoU" in rec:
            final = rec
    if not final:
        raise RuntimeError(f"{name}: no segm/MaP-IoU in {out / 'metrics.json'}")
    return {
        "variant": name,
        "map_iou": final["segm/MaP-IoU"],
        "ap": final.get("segm/AP", float("nan")),
        "minutes": minutes,
    }


def accuracy(args) -> list[dict]:
    base = _cfg(args)
    variants = head_variants(base)
    wanted = [w.strip() for w in args.acc_variants.split(";") if w.strip()]
    names = [next(iter(variants))] + [k for k in variants if any(w in k for w in wanted)]
    with tempfile.TemporaryDirectory(prefix="nucdet-bench-acc-") as root:
        rows = []
        for name in names:
            rows.append(short_run_map(args, name, variants[name], Path(root)))
            print(f"  {name}: MaP-IoU {rows[-1]['map_iou']:.3f}", flush=True)
    return rows


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = set(args.part.split(","))
    print(f"config: {args.config} {' '.join(args.opts)}; torch threads {torch.get_num_threads()}")
    print(f"load average before: {Path('/proc/loadavg').read_text().split()[:3]}", flush=True)
    if "data" in parts:
        print("\n| NUM_WORKERS | iterations | s/iteration | data_time s | data share |")
        print("|---|---|---|---|---|")
        for w in (int(x) for x in args.workers.split(",")):
            r = data_share(args, w)
            print(
                f"| {w} | {r['iters']} | {r['time']:.2f} | {r['data_time']:.3f} | "
                f"{r['share']:.1%} |",
                flush=True,
            )
    if "heads" in parts:
        rows = head_costs(args)
        print("\n| setting | s/step (median) | forward s | vs config |")
        print("|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['variant']} | {r['s_per_step']:.2f} | {r['forward_s']:.2f} | "
                f"{r['ratio']:.2f}x |"
            )
    if "precision" in parts:
        rows = precision_costs(args)
        print("\n| precision | s/step (median) | forward s | vs fp32 | losses of the steps |")
        print("|---|---|---|---|---|")
        for r in rows:
            losses = " ".join(f"{x:.3f}" for x in r["losses"])
            print(
                f"| {r['variant']} | {r['s_per_step']:.2f} | {r['forward_s']:.2f} | "
                f"{r['ratio']:.2f}x | {losses} |"
            )
    if "accuracy" in parts:
        rows = accuracy(args)
        print(f"\n| setting ({args.acc_iters} iterations) | MaP-IoU | mask AP | minutes |")
        print("|---|---|---|---|")
        for r in rows:
            print(f"| {r['variant']} | {r['map_iou']:.3f} | {r['ap']:.1f} | {r['minutes']:.1f} |")
    print(f"load average after: {Path('/proc/loadavg').read_text().split()[:3]}")


if __name__ == "__main__":
    main()
