"""The paired comparison that benchmarks/bench_accuracy.py reports against the baseline."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import json  # noqa: E402

from bench_accuracy import compare, paired_difference  # noqa: E402


def test_constant_difference_has_a_zero_width_interval():
    a = {f"im{i}": 0.1 * i + 0.25 for i in range(8)}
    b = {f"im{i}": 0.1 * i for i in range(8)}
    d = paired_difference(a, b, n_boot=500)
    assert d["mean"] == pytest.approx(0.25)
    assert d["ci95"] == pytest.approx([0.25, 0.25])
    assert (d["better"], d["worse"], d["n"]) == (8, 0, 8)


def test_only_shared_images_count_and_ties_are_neither():
    a = {"a": 0.5, "b": 0.7, "c": 0.2}
    b = {"a": 0.4, "b": 0.7, "c": 0.3, "only_b": 1.0}
    d = paired_difference(a, b, n_boot=2000)
    # differences +0.1, 0, -0.1: mean 0 by hand; resampled means lie within [-0.1, 0.1]
    assert d["mean"] == pytest.approx(0.0, abs=1e-12)
    assert (d["better"], d["worse"], d["n"]) == (1, 1, 3)
    lo, hi = d["ci95"]
    assert -0.1 - 1e-12 <= lo < 0 < hi <= 0.1 + 1e-12


def test_systematic_sample_is_evenly_spaced_by_file_name():
    from bench_accuracy import systematic_sample

    dicts = [{"file_name": f"img{i:03d}.png"} for i in range(100)][::-1]  # any input order
    got = [d["file_name"] for d in systematic_sample(dicts, 10)]
    assert got == [f"img{i:03d}.png" for i in range(0, 100, 10)]
    assert len(systematic_sample(dicts, 500)) == 100  # never more than there is


def test_settings_opts_take_each_methods_best_row():
    from bench_accuracy import settings_opts

    sweep = {
        "recipe": [{"mask_thresh": 0.5, "score_thresh": 0.8, "min_area": 15, "MaP-IoU": 0.5},
                   {"mask_thresh": 0.4, "score_thresh": 0.6, "min_area": 0, "MaP-IoU": 0.4}],
        "ensemble": [{"mask_thresh": 0.4, "score_thresh": 0.6, "min_area": 0, "MaP-IoU": 0.6}],
    }  # fmt: skip
    opts = settings_opts(sweep)
    assert opts["recipe"] == ["POSTPROCESS.MASK_THRESH", "0.5", "POSTPROCESS.SCORE_THRESH",
                              "[0.8]", "POSTPROCESS.MIN_AREA", "[15]"]  # fmt: skip
    assert opts["ensemble"][1::2] == ["0.4", "[0.6]", "[0]"]


def test_compare_rows_of_two_result_files(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"results": {"recipe": {"per_image": {"x": 0.5, "y": 0.7, "z": 0.4}}}}))
    b.write_text(
        json.dumps({"results": {"watershed": {"per_image": {"x": 0.3, "y": 0.7, "z": 0.5}}}})
    )
    d = compare(f"{a}:recipe", f"{b}:watershed")
    # by hand: differences +0.2, 0, -0.1
    assert d["mean"] == pytest.approx(0.1 / 3)
    assert (d["better"], d["worse"], d["n"]) == (1, 1, 3)
    assert compare(f"{b}:watershed", f"{a}:recipe")["mean"] == pytest.approx(-0.1 / 3)
    with pytest.raises(KeyError, match="no method 'second'"):
        compare(f"{a}:second", f"{b}:watershed")


def test_compare_refuses_different_images(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"results": {"m": {"per_image": {"x": 0.5, "y": 0.7}}}}))
    b.write_text(json.dumps({"results": {"m": {"per_image": {"x": 0.5}}}}))
    with pytest.raises(ValueError, match="different images"):
        compare(f"{a}:m", f"{b}:m")
