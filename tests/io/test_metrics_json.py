"""nucdet.io.metrics_json on hand-written metrics.json files: torn last line, errors that
name file and line, the cut back to a resumed iteration, and the series/keys taken out."""

from __future__ import annotations

import json
import math

import pytest

from nucdet.io.metrics_json import (
    eval_entries,
    is_eval_key,
    read_metrics,
    series,
    split_eval_key,
    trained_iterations,
    truncate_metrics,
)


def _write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))


def test_read_metrics_partial_last_line(tmp_path):
    p = tmp_path / "metrics.json"
    _write_lines(p, [json.dumps({"iteration": 0, "a": 1}), json.dumps({"iteration": 1}), '{"iter'])
    assert [r["iteration"] for r in read_metrics(p)] == [0, 1]
    with pytest.raises(ValueError, match=r"metrics.json:3: not a JSON record"):
        read_metrics(p, drop_partial_last=False)
    _write_lines(p, ['{"iteration": 0}', "{oops", '{"iteration": 2}'])
    with pytest.raises(ValueError, match=r"metrics.json:2: not a JSON record"):
        read_metrics(p)
    _write_lines(p, ['{"no_iteration": 0}'])
    with pytest.raises(ValueError, match=r":1: record without an 'iteration'"):
        read_metrics(p)
    _write_lines(p, ['{"iteration": 0}', "[1, 2]"])
    with pytest.raises(ValueError, match=r":2: expected a JSON object, got list"):
        read_metrics(p)


def test_read_metrics_skips_blank_lines(tmp_path):
    p = tmp_path / "metrics.json"
    _write_lines(p, ['{"iteration": 0}', "", "  ", '{"iteration": 1}'])
    assert read_metrics(p) == [{"iteration": 0}, {"iteration": 1}]
    p.write_text("")
    assert read_metrics(p) == []


def test_truncate_metrics(tmp_path):
    p = tmp_path / "metrics.json"
    assert truncate_metrics(p, 3) == 0  # missing file is fine
    recs = [{"iteration": i, "loss": 1.0 / (i + 1)} for i in range(6)]
    _write_lines(p, [json.dumps(r) for r in recs] + ['{"iteration": 6, "lo'])
    assert truncate_metrics(p, 4) == 2
    assert read_metrics(p) == recs[:4]
    assert len(p.read_text().splitlines()) == 4  # partial line gone too
    assert truncate_metrics(p, 10) == 0
    assert read_metrics(p) == recs[:4]
    assert truncate_metrics(p, 0) == 4
    assert p.read_text() == ""


def test_eval_keys():
    assert is_eval_key("segm/AP") and is_eval_key("val/segm/MaP-IoU")
    assert is_eval_key("dsb_val/count/MAE")
    assert not is_eval_key("fast_rcnn/cls_accuracy")
    assert not is_eval_key("total_loss")
    assert not is_eval_key("segm")  # a task name alone is not a result
    assert split_eval_key("dsb_val/segm/MaP-IoU") == ("dsb_val", "segm", "MaP-IoU")
    assert split_eval_key("count/MAE") == ("", "count", "MAE")
    with pytest.raises(ValueError, match="fast_rcnn/cls_accuracy"):
        split_eval_key("fast_rcnn/cls_accuracy")


def test_series_entries_and_iterations():
    rows = [
        {"iteration": 0, "total_loss": 2.0, "lr": 0.01},
        {"iteration": 1, "total_loss": 3.0},
        {"iteration": 1, "total_loss": 5.0},  # logged again after a resume: the last wins
        {"iteration": 2, "segm/MaP-IoU": 0.3, "segm/APl": math.nan, "fast_rcnn/fg": 0.1},
    ]
    assert series(rows, "total_loss") == ([0, 1], [2.0, 5.0])
    assert series(rows, "segm/APl") == ([], [])  # NaN dropped
    assert series(rows, "missing") == ([], [])
    assert eval_entries(rows)[0][0] == 2
    assert eval_entries(rows)[0][1]["segm/MaP-IoU"] == 0.3
    assert set(eval_entries(rows)[0][1]) == {"segm/MaP-IoU", "segm/APl"}
    # the evaluation after the last iteration (2) is not a trained iteration
    assert trained_iterations(rows) == 2
    assert trained_iterations([]) == 0
