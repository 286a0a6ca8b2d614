"""Property tests (hypothesis) of the RLE codecs against pixel-by-pixel reference codecs:
random masks and shapes, both pixel orders, COCO <-> Kaggle, crops, and random (often
malformed: out of range, not increasing, odd, non-positive) token lists."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from nucdet.io.rle import (
    coco_rle_to_kaggle,
    coco_rle_to_mask,
    crops_to_rles,
    mask_to_coco_rle,
    rle_decode,
    rle_encode,
    rle_to_indices,
)

SETTINGS = settings(max_examples=150, deadline=None, database=None)  # no .hypothesis/ files
shapes = st.tuples(st.integers(1, 9), st.integers(1, 9))
masks = shapes.flatmap(lambda s: arrays(bool, s))
orders = st.sampled_from(["C", "F"])


def ref_pixels(mask: np.ndarray, order: str) -> list[tuple[int, int]]:
    """(row, col) of every pixel in the Kaggle pixel order, by explicit loops."""
    h, w = mask.shape
    if order == "C":
        return [(r, c) for r in range(h) for c in range(w)]
    return [(r, c) for c in range(w) for r in range(h)]


def ref_encode(mask: np.ndarray, order: str) -> str:
    """Kaggle RLE by walking the pixels one at a time (1-indexed starts)."""
    tokens, run_start, run_len = [], None, 0
    for k, (r, c) in enumerate(ref_pixels(mask, order)):
        if mask[r, c]:
            if run_start is None:
                run_start, run_len = k + 1, 0
            run_len += 1
        elif run_start is not None:
            tokens += [run_start, run_len]
            run_start = None
    if run_start is not None:
        tokens += [run_start, run_len]
    return " ".join(map(str, tokens))


def ref_decode(tokens: list[int], shape: tuple[int, int], order: str) -> np.ndarray | None:
    """The mask of a token list, or None when it is not a valid Kaggle RLE: odd count,
    start < 1, length < 1, a pixel past the image, runs not strictly after each other."""
    if len(tokens) % 2:
        return None
    pixels = ref_pixels(np.zeros(shape, bool), order)
    mask = np.zeros(shape, bool)
    last_end = 0  # 1-indexed pixel after the previous run
    for start, length in zip(tokens[0::2], tokens[1::2]):
        if start < 1 or length < 1 or start < last_end or start + length - 1 > len(pixels):
            return None
        for k in range(start - 1, start - 1 + length):
            mask[pixels[k]] = True
        last_end = start + length
    return mask


@SETTINGS
@given(masks, orders)
def test_encode_decode_indices_match_the_reference(mask, order):
    text = rle_encode(mask, order)
    assert text == ref_encode(mask, order)
    assert np.array_equal(rle_decode(text, mask.shape, order), mask)
    # sparse form: column-major indices col * h + row, whatever the string's order
    h, _ = mask.shape
    expected = sorted(c * h + r for r, c in zip(*np.nonzero(mask)))
    assert rle_to_indices(text, mask.shape, order).tolist() == expected


@SETTINGS
@given(masks, orders)
def test_coco_round_trips(mask, order):
    rle = mask_to_coco_rle(mask)
    assert rle["size"] == list(mask.shape)
    assert np.array_equal(coco_rle_to_mask(rle), mask)
    assert coco_rle_to_kaggle(rle, order) == ref_encode(mask, order)


@SETTINGS
@given(shapes.flatmap(lambda s: st.tuples(st.just(s), st.data())))
def test_crops_to_rles_is_the_full_mask(args):
    (h, w), data = args
    y0 = data.draw(st.integers(0, h - 1))
    x0 = data.draw(st.integers(0, w - 1))
    ch = data.draw(st.integers(1, h - y0))
    cw = data.draw(st.integers(1, w - x0))
    crop = data.draw(arrays(bool, (ch, cw)))
    full = np.zeros((h, w), bool)
    full[y0 : y0 + ch, x0 : x0 + cw] = crop
    rle = crops_to_rles([crop], np.array([[x0, y0, x0 + cw, y0 + ch]]), h, w)[0]
    assert rle == mask_to_coco_rle(full)


@settings(max_examples=300, deadline=None, database=None)
@given(shapes, orders, st.lists(st.integers(-2, 30), max_size=8))
def test_random_token_lists_decode_or_raise_like_the_reference(shape, order, tokens):
    expected = ref_decode(tokens, shape, order)
    text = " ".join(map(str, tokens))
    if expected is None:
        with pytest.raises(ValueError):
            rle_decode(text, shape, order)
        with pytest.raises(ValueError):
            rle_to_indices(text, shape, order)
    else:
        assert np.array_equal(rle_decode(text, shape, order), expected)
        h, _ = shape
        assert rle_to_indices(text, shape, order).tolist() == sorted(
            c * h + r for r, c in zip(*np.nonzero(expected))
        )
