"""nucdet.evaluation.stats.paired_difference on per-image scores whose differences are
known by hand."""

import pytest

from nucdet.evaluation.stats import paired_difference


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


def test_fixed_seed_and_no_shared_image():
    a = {"x": 0.9, "y": 0.1, "z": 0.5}
    b = {"x": 0.2, "y": 0.3, "z": 0.5}
    assert paired_difference(a, b) == paired_difference(a, b)  # same seed, same interval
    with pytest.raises(ValueError, match="no image scored by both"):
        paired_difference({"x": 1.0}, {"y": 1.0})
