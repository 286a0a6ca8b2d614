"""Weighted box fusion with membership: boxes, scores and labels bit-identical to
ensemble_boxes' ``weighted_boxes_fusion``, membership rebuilding the library's clusters,
verify mode and input validation."""

from __future__ import annotations

import numpy as np
import pytest
from ensemble_boxes import weighted_boxes_fusion
from ensemble_boxes.ensemble_boxes_wbf import get_weighted_box

from nucdet.inference.wbf import wbf_clusters

# The library warns about the zero-area boxes the inputs contain on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:Zero area box skipped")


def _tta_like(rng, n_obj=60, n_in=6, labels=2):
    """Boxes of n_obj objects seen by n_in inputs, with jitter, misses, duplicates
    (several boxes of one input in a cluster), exact ties and zero-area boxes."""
    c = rng.uniform(0.05, 0.95, (n_obj, 2))
    s = rng.uniform(0.02, 0.08, (n_obj, 2))
    lab = rng.integers(0, labels, n_obj)
    boxes, scores, labs = [], [], []
    for t in range(n_in):
        seen = rng.random(n_obj) < 0.85
        k = np.concatenate([np.flatnonzero(seen), rng.choice(n_obj, 8)])  # duplicates
        b = np.concatenate([c[k] - s[k], c[k] + s[k]], axis=1) + rng.normal(0, 0.004, (len(k), 4))
        b = np.clip(b, 0, 1)
        b[:, 2:] = np.maximum(b[:, 2:], b[:, :2])
        sc = rng.uniform(0.05, 1, len(k)).astype(np.float32)
        if t == 1:  # exact copies of input 0's first boxes and scores: ties everywhere
            b[:5], sc[:5] = boxes[0][:5], scores[0][:5]
        b[-1, 2] = b[-1, 0]  # a zero-area box (dropped by the library)
        boxes.append(b)
        scores.append(sc)
        labs.append(lab[k])
    return boxes, scores, labs


@pytest.mark.parametrize("conf_type", ["box_and_model_avg", "absent_model_aware_avg"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wbf_clusters_bit_identical_to_ensemble_boxes(conf_type, seed):
    rng = np.random.default_rng(seed)
    boxes, scores, labels = _tta_like(rng)
    weights = rng.uniform(0.5, 3, len(boxes))
    for iou_thr, skip in [(0.55, 0.0), (0.4, 0.2), (0.7, 0.0)]:
        ref_b, ref_s, ref_l = weighted_boxes_fusion(
            boxes,
            scores,
            labels,
            weights=weights,
            iou_thr=iou_thr,
            skip_box_thr=skip,
            conf_type=conf_type,
        )
        got = wbf_clusters(
            boxes,
            scores,
            labels,
            weights,
            iou_thr=iou_thr,
            skip_box_thr=skip,
            conf_type=conf_type,
        )
        assert len(ref_b) > 50
        np.testing.assert_array_equal(got.boxes, ref_b)
        np.testing.assert_array_equal(got.scores, ref_s)
        np.testing.assert_array_equal(got.labels, ref_l)


@pytest.mark.parametrize("conf_type", ["box_and_model_avg", "absent_model_aware_avg"])
def test_membership_rebuilds_the_librarys_clusters(conf_type):
    """Each cluster rebuilt from our membership with the library's own get_weighted_box and
    confidence formula gives exactly the library's fused box and score; the members
    partition the boxes the library keeps."""
    rng = np.random.default_rng(5)
    boxes, scores, labels = _tta_like(rng)
    weights = rng.uniform(0.5, 3, len(boxes))
    got = wbf_clusters(boxes, scores, labels, weights, conf_type=conf_type, skip_box_thr=0.1)
    ref_b, ref_s, _ = weighted_boxes_fusion(
        boxes, scores, labels, weights=weights, conf_type=conf_type, skip_box_thr=0.1
    )
    used = set()
    for k, mem in enumerate(got.members):
        rows = np.array(
            [
                [labels[t][j], float(scores[t][j]) * weights[t], weights[t], t, *boxes[t][j]]
                for t, j in mem.tolist()
            ]
        )
        assert (np.diff(rows[:, 1]) <= 0).all()  # joined in descending score order
        assert len(set(rows[:, 0])) == 1 and rows[0, 0] == got.labels[k]
        # The library stores the weighted box in its float64 ``weighted_boxes`` array.
        row = rows[0] if len(rows) == 1 else get_weighted_box(rows, conf_type).astype(np.float64)
        np.testing.assert_array_equal(row[4:], ref_b[k])
        models = np.unique(rows[:, 3]).astype(int)
        if conf_type == "box_and_model_avg":
            score = row[1] * len(rows) / row[2] * weights[models].sum() / weights.sum()
        else:
            absent = np.ones(len(weights), bool)
            absent[models] = False
            score = row[1] * len(rows) / (row[2] + weights[absent].sum())
        assert score == ref_s[k]
        used.update(map(tuple, mem.tolist()))
    expected = {
        (t, j)
        for t in range(len(boxes))
        for j in range(len(boxes[t]))
        if scores[t][j] >= 0.1
        and (boxes[t][j][2] - boxes[t][j][0]) * (boxes[t][j][3] - boxes[t][j][1])
    }
    assert used == expected
    assert sum(len(m) for m in got.members) == len(expected)


def test_verify_mode_and_bad_normalised_boxes():
    rng = np.random.default_rng(6)
    boxes, scores, labels = _tta_like(rng, n_obj=20, n_in=3)
    wbf_clusters(boxes, scores, labels, verify=True)  # raises if it differs from the library
    bad = [b.copy() for b in boxes]
    bad[2][3, 2] = 1.2
    with pytest.raises(ValueError, match="view hflip.*outside"):
        wbf_clusters(bad, scores, labels, names=["a", "b", "view hflip"])
    with pytest.raises(ValueError, match="conf_type"):
        wbf_clusters(boxes, scores, labels, conf_type="avg")
