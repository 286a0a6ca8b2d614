#!/usr/bin/env python
"""Stand-in for train_net.py in the fast sweep tests: same command line, same output files.

It accepts ``--config-file X [--resume] KEY VALUE ... OUTPUT_DIR D`` and writes what
detectron2's trainer writes and the sweep reads: ``config.yaml``, ``metrics.json`` (JSONWriter
rows, then one evaluation row at iteration MAX_ITER), ``model_*.pth`` and ``last_checkpoint``.
No model is trained: the sweep's orchestration (naming, skipping, resuming, tables) is what
these tests check, in seconds; tests/tools/test_sweep_train.py runs the real train_net.py.

Test-only keys: STANDIN.SLEEP (seconds per iteration), STANDIN.SCORE (added to the reported
MaP-IoU), STANDIN.FAIL ("1": exit 3 before training), STANDIN.NO_METRICS ("1": exit 0
without writing metrics.json). Every start is logged to
``OUTPUT_DIR/standin_starts.txt`` as "resume=<0|1> start=<iteration>".
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    resume = "--resume" in argv
    args = [a for a in argv if a != "--resume"]
    if args[:1] != ["--config-file"]:
        raise SystemExit("standin_train: expected --config-file first")
    opts = dict(zip(args[2::2], args[3::2]))
    out = Path(opts["OUTPUT_DIR"])
    out.mkdir(parents=True, exist_ok=True)
    if opts.get("STANDIN.FAIL") == "1":
        print("standin_train: failing as asked", file=sys.stderr)
        return 3
    if opts.get("STANDIN.NO_METRICS") == "1":
        return 0  # "succeeds" without writing anything the sweep could read
    max_iter = int(opts.get("SOLVER.MAX_ITER", 3))
    sleep = float(opts.get("STANDIN.SLEEP", 0))
    start = 0
    if resume and (out / "last_checkpoint").is_file():
        start = int((out / (out / "last_checkpoint").read_text()).read_text()) + 1
    with open(out / "standin_starts.txt", "a") as f:
        f.write(f"resume={int(resume)} start={start}\n")
    lines = [
        "SOLVER:",
        f"  MAX_ITER: {max_iter}",
        "  BEST_CHECKPOINT:",
        "    METRIC: segm/MaP-IoU",
        "    MODE: max",
        f"OUTPUT_DIR: {out}",
    ]
    (out / "config.yaml").write_text("\n".join(lines) + "\n")
    with open(out / "metrics.json", "a") as metrics:
        for it in range(start, max_iter):
            time.sleep(sleep)
            metrics.write(
                json.dumps(
                    {
                        "iteration": it,
                        "total_loss": 1.0 / (it + 1),
                        "lr": 0.01,
                        "fast_rcnn/cls_accuracy": 0.5,
                    }
                )
                + "\n"
            )
            metrics.flush()
            (out / f"model_{it:07d}.pth").write_text(str(it))
            (out / "last_checkpoint").write_text(f"model_{it:07d}.pth")
        score = 0.5 + float(opts.get("STANDIN.SCORE", 0))
        metrics.write(
            json.dumps(
                {
                    "iteration": max_iter,
                    "segm/MaP-IoU": score,
                    "segm/AP": 100 * score,
                    "segm/AP50": 100 * score + 1,
                    "segm/AP75": 100 * score - 1,
                    "segm/AP-nucleus": 100 * score,
                    "bbox/AP": 100 * score - 2,
                }
            )
            + "\n"
        )
    (out / "model_final.pth").write_text(str(max_iter))
    (out / "last_checkpoint").write_text("model_final.pth")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
