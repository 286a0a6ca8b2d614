"""Peak memory (RSS) of inference + fusion: 3000 detections on one image, and a 2000x2000
image.

    .venv/bin/python benchmarks/bench_memory.py [--json out.json] [--max-mb 2000]

Each case runs in its own fresh process (peaks do not mix) and reports, from
``/proc/self/status``: the RSS once the model is built and the image read (``base``), the
peak RSS of the whole job (``VmHWM``) and their difference (what inference + fusion add).
The model is the tiny CPU config with random weights (no training needed), its class
logits scaled so that scores spread, ``SCORE_THRESH_TEST 0`` and enough proposals to keep
the requested number of detections; two models' worth of input come from two views
(identity + hflip) of the same model, fused with ``wbf_mask_vote`` and post-processed
exactly as ``ensemble_infer.py`` does (``EnsemblePredictor``), masks computed for every
detection (``POSTPROCESS.SCORE_THRESH [0.0]``).

Cases:

- ``dets3000``: a 1040x1392 image (a sample image tiled 2x2), 3000 detections per view;
- ``img2000``: a 2000x2000 image (tiled sample), 1000 detections per view (the default
  ``TEST.DETECTIONS_PER_IMAGE``).

For scale, the line ``dense`` gives what one (N, H, W) bool mask stack of the fused
detections would take (the layout nucdet avoids). ``--max-mb`` makes the run fail when a
case's added peak is above it (the bound stated in benchmarks/results/memory.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "nucdet" / "data" / "dsb2018_sample" / "stage1_train"
CONFIG = REPO / "configs" / "cpu" / "mask_rcnn_R_18_FPN_lite_tiny.yaml"
CASES = {
    "dets3000": {"size": (1040, 1392), "dets": 3000},
    "img2000": {"size": (2000, 2000), "dets": 1000},
}


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def tiled_image(size: tuple[int, int]):
    """A sample image tiled (and cut) to ``size``: real nuclei texture at any size."""
    import cv2
    import numpy as np

    src = sorted(SAMPLE.glob("*/images/*.png"))[0]
    tile = cv2.imread(str(src))
    h, w = size
    reps = (-(-h // tile.shape[0]), -(-w // tile.shape[1]), 1)
    return np.ascontiguousarray(np.tile(tile, reps)[:h, :w])


def run_case(name: str) -> dict:
    """One case in this process (called in a child)."""
    import numpy as np
    import torch
    from detectron2.modeling import build_model

    from nucdet.config import build_cfg
    from nucdet.inference.ensemble import EnsemblePredictor, EnsembleSpec, ModelSpec
    from nucdet.inference.pipeline import InputImage

    case = CASES[name]
    n = case["dets"]
    opts = [
        "MODEL.DEVICE", "cpu",
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
        "MODEL.ROI_HEADS.NMS_THRESH_TEST", "0.9",
        "MODEL.RPN.PRE_NMS_TOPK_TEST", str(4 * n),
        "MODEL.RPN.POST_NMS_TOPK_TEST", str(2 * n),
        "TEST.DETECTIONS_PER_IMAGE", str(n),
        "POSTPROCESS.SCORE_THRESH", "[0.0]",
    ]  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    cfg = build_cfg(CONFIG, opts)
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(8.0)
    torch.save({"model": model.state_dict()}, work / "model.pth")
    (work / "config.yaml").write_text(cfg.dump())
    del model
    spec = EnsembleSpec(
        [ModelSpec("m", config=str(work / "config.yaml"), weights=str(work / "model.pth"))],
        views=["identity", "hflip"],
        fusion={"method": "wbf_mask_vote"},
    )
    predictor = EnsemblePredictor(spec, opts)
    image = tiled_image(case["size"])
    item = InputImage("bench", "bench.png")
    predictor(image[:64, :64], item)  # warm-up (numba compilation, allocator pools)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    base = _status_kb("VmRSS")
    t = time.perf_counter()
    raws, _, _ = predictor.raw_views(image, item)
    per_view = [len(r) for r in raws]
    del raws
    pred = predictor(image, item)  # views again + fusion + post-processing
    sec = time.perf_counter() - t
    peak = _status_kb("VmHWM")
    h, w = case["size"]
    return {
        "case": name,
        "image": f"{h}x{w}",
        "detections_per_view": per_view,
        "fused_instances": len(pred),
        "base_mb": round(base / 1024, 1),
        "peak_mb": round(peak / 1024, 1),
        "added_mb": round((peak - base) / 1024, 1),
        "dense_stack_mb": round(len(pred) * h * w / 2**20, 1),
        "seconds": round(sec, 1),
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "torch": torch.__version__,
    }


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--max-mb", type=float, help="fail when a case adds more than this")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run_case(args.child)))
        return []
    rows = []
    for name in args.cases.split(","):
        proc = subprocess.run(
            [sys.executable, __file__, "--child", name],
            capture_output=True, text=True, check=False, cwd=REPO,
        )  # fmt: skip
        if proc.returncode:
            sys.exit(f"case {name} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    info = {"machine": platform.machine(), "python": platform.python_version(), "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=1) + "\n")
    over = [r["case"] for r in rows if args.max_mb is not None and r["added_mb"] > args.max_mb]
    if over:
        sys.exit(f"added peak RSS above {args.max_mb} MB: {over}")
    return rows


if __name__ == "__main__":
    main()
