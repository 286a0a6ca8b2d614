"""stats: exact per-channel mean/std; show: outlines drawn where the mask boundary is."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from nucdet.data.coco import CocoBuilder
from nucdet.data.show import draw_instances, outline
from nucdet.data.show import main as show_main
from nucdet.data.stats import compute_stats, dataset_stats
from nucdet.data.stats import main as stats_main
from nucdet.io.rle import mask_to_coco_rle


def _two_images(tmp_path):
    """img1: grey 10 everywhere; img2: B, G, R = 0, 100, 200 (both 2x2)."""
    (tmp_path / "im").mkdir()
    cv2.imwrite(str(tmp_path / "im" / "a.png"), np.full((2, 2), 10, np.uint8))
    bgr = np.zeros((2, 2, 3), np.uint8)
    bgr[:] = (0, 100, 200)
    cv2.imwrite(str(tmp_path / "im" / "b.png"), bgr)
    m = np.zeros((2, 2), bool)
    m[0, 0] = True
    b = CocoBuilder(["cell"])
    b.add_image("a.png", 2, 2, [m])
    b.add_image("b.png", 2, 2, [m])
    return b.write(tmp_path / "c.json")


def test_stats_by_hand(tmp_path):
    js = _two_images(tmp_path)
    s = compute_stats([str(tmp_path / "im" / "a.png"), str(tmp_path / "im" / "b.png")])
    assert s["mean"] == pytest.approx([5.0, 55.0, 105.0])
    assert s["std"] == pytest.approx([5.0, 45.0, 95.0])
    assert s["num_pixels"] == 8
    out = tmp_path / "stats.json"
    assert stats_main([str(js), "--image-root", str(tmp_path / "im"), "--output", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["mean"] == pytest.approx([5.0, 55.0, 105.0]) and saved["format"] == "BGR"
    assert not list(tmp_path.glob(".stats.json*"))


def test_stats_of_a_registered_name(tmp_path):
    from nucdet.data.register import register_coco

    js = _two_images(tmp_path)
    register_coco("test_stats_two_images", js, tmp_path / "im")
    s = dataset_stats("test_stats_two_images", tmp_path / "s.json", max_images=1)
    assert s["mean"] == pytest.approx([10.0, 10.0, 10.0]) and s["std"] == [0.0, 0.0, 0.0]
    with pytest.raises(KeyError, match="no_such_dataset"):
        dataset_stats("no_such_dataset", tmp_path / "x.json")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        dataset_stats(str(tmp_path / "missing.json"), tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_outline_is_the_inner_ring():
    m = np.zeros((9, 9), bool)
    m[2:7, 2:7] = True
    ring = m.copy()
    ring[3:6, 3:6] = False
    assert np.array_equal(outline(m), ring)
    thick = m.copy()
    thick[4, 4] = False
    assert np.array_equal(outline(m, thickness=2), thick)
    edge = np.zeros((4, 4), bool)
    edge[:, :2] = True  # touches the image border: border pixels are boundary
    assert np.array_equal(outline(edge), edge)


def test_draw_instances_colours_and_inputs():
    img = np.full((9, 9), 50, np.uint8)
    a = np.zeros((9, 9), bool)
    a[1:5, 1:5] = True
    b = np.zeros((9, 9), bool)
    b[3:8, 3:8] = True
    out = draw_instances(img, [a, b], [(255, 0, 0), (0, 0, 255)])
    assert out.shape == (9, 9, 3) and img.shape == (9, 9)  # input untouched
    assert out[1, 1].tolist() == [255, 0, 0] and out[7, 7].tolist() == [0, 0, 255]
    assert out[2, 2].tolist() == [50, 50, 50]  # inside a, not on its ring
    # b is drawn last: where the rings cross, b's colour wins
    assert out[4, 3].tolist() == [0, 0, 255]
    rle_out = draw_instances(
        img, [mask_to_coco_rle(a), mask_to_coco_rle(b)], [(255, 0, 0), (0, 0, 255)]
    )
    assert np.array_equal(rle_out, out)
    same = draw_instances(img, np.stack([a, b]), (0, 255, 0))
    assert (same[outline(a) | outline(b)] == [0, 255, 0]).all()
    with pytest.raises(ValueError, match="colours"):
        draw_instances(img, [a, b], [(1, 2, 3)])


def test_show_cli_writes_overlays(tmp_path):
    js = _two_images(tmp_path)
    out = tmp_path / "vis"
    rc = show_main(
        [
            "--dataset",
            str(js),
            "--image-root",
            str(tmp_path / "im"),
            "--output",
            str(out),
            "--num",
            "1",
        ]
    )
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png"]
    vis = cv2.imread(str(out / "a.png"))
    assert vis[0, 0].tolist() == [0, 255, 0] and vis[1, 1].tolist() == [10, 10, 10]
