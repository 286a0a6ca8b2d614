"""Report: comparison table (final/best metrics, config differences) and side-by-side curves."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from nucdet.tools import report


def make_run(d: Path, lr: float, depth: int, evals: list[tuple[int, float]]) -> Path:
    """An output dir as detectron2 writes it: config.yaml (with a python tuple) + metrics.json."""
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(
        "MODEL:\n"
        f"  RESNETS:\n    DEPTH: {depth}\n"
        "  ANCHOR_GENERATOR:\n    SIZES: [[8], [16]]\n"
        "INPUT:\n  MIN_SIZE_TRAIN: !!python/tuple\n  - 0\n"
        f"SOLVER:\n  BASE_LR: {lr}\n  MAX_ITER: 40\n"
        "  BEST_CHECKPOINT:\n    METRIC: segm/MaP-IoU\n    MODE: max\n"
        f"OUTPUT_DIR: {d}\n"
    )
    rows = []
    for it in range(0, 40, 10):
        rows.append(
            {
                "iteration": it + 9,
                "total_loss": 2.0 / (it + 10),
                "lr": lr,
                "fast_rcnn/cls_accuracy": 0.9,
            }
        )
    for it, v in evals:
        rows.append(
            {
                "iteration": it,
                "segm/MaP-IoU": v,
                "segm/AP": 100 * v,
                "segm/AP50": 100 * v + 5,
                "bbox/AP": 100 * v - 5,
            }
        )
    rows.sort(key=lambda r: r["iteration"])
    (d / "metrics.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_report_table_and_png(tmp_path):
    a = make_run(tmp_path / "exp" / "r18", 0.02, 18, [(19, 0.30), (40, 0.25)])
    b = make_run(tmp_path / "exp" / "r50", 0.01, 50, [(19, 0.10), (40, 0.35)])
    out = report.main([str(a), str(b), "--output", str(tmp_path / "cmp")])
    with open(out["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["r18", "r50"]
    assert [r["iterations"] for r in rows] == ["40", "40"]
    assert [float(r["segm/MaP-IoU"]) for r in rows] == [0.25, 0.35]  # last evaluation
    assert [float(r["best:segm/MaP-IoU"]) for r in rows] == [0.30, 0.35]
    assert [r["best_iteration"] for r in rows] == ["19", "40"]
    # Only the differing config keys, never OUTPUT_DIR.
    cfg_cols = [c for c in rows[0] if c.startswith("cfg:")]
    assert cfg_cols == ["cfg:MODEL.RESNETS.DEPTH", "cfg:SOLVER.BASE_LR"]
    assert [r["cfg:MODEL.RESNETS.DEPTH"] for r in rows] == ["18", "50"]
    header = list(rows[0])
    assert header.index("segm/MaP-IoU") < header.index("segm/AP") < header.index("segm/AP50")
    assert header.index("segm/AP50") < header.index("bbox/AP")
    md = out["md"].read_text()
    assert "| r18 |" in md and "0.2500" in md and "| 0.3500 |" in md

    import matplotlib.image

    img = matplotlib.image.imread(out["png"])
    assert img.ndim == 3 and img.shape[0] >= 300 and img.shape[1] >= 1000
    assert img[..., :3].std() > 0.05  # something was drawn


def test_report_errors_name_the_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty: no metrics.json"):
        report.main([str(tmp_path / "empty"), "--output", str(tmp_path / "o")])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.json").write_text('{"iteration": 0}\nnot json\n{"iteration": 1}\n')
    with pytest.raises(ValueError, match=r"metrics.json:2"):
        report.summarize_run(bad)


def test_labels_are_unique_when_names_collide(tmp_path):
    a = make_run(tmp_path / "x" / "model", 0.02, 18, [(40, 0.2)])
    b = make_run(tmp_path / "y" / "model", 0.02, 18, [(40, 0.3)])
    out = report.build_report([a, b], tmp_path / "o")
    with open(out["csv"], newline="") as f:
        assert [r["run"] for r in csv.DictReader(f)] == ["x/model", "y/model"]


def test_write_table_markdown_drops_all_empty_columns(tmp_path):
    rows = [
        {"run": "a", "x": 1.23456, "APl": float("nan"), "e": None},
        {"run": "b|c", "x": 2, "APl": float("nan")},
    ]
    csv_path, md_path = report.write_table(rows, ["run", "x", "APl", "e"], tmp_path / "t")
    assert csv_path.read_text().splitlines() == ["run,x,APl,e", "a,1.23456,nan,", "b|c,2,nan,"]
    assert md_path.read_text().splitlines() == [
        "| run | x |",
        "|---|---|",
        "| a | 1.2346 |",
        "| b\\|c | 2 |",
    ]
