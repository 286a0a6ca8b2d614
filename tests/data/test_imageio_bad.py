"""Image files that are not one whole 2-D image: truncated PNG/JPEG/TIFF,
channel-first and multi-page TIFFs. Each is an ImageReadError naming the file, or (a
channel-first TIFF that says so) read as HxWxC with the same pixels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import tifffile

from nucdet.data.imageio import ImageReadError, read_image, read_raw

RNG = np.random.default_rng(14)
RGB = RNG.integers(0, 256, (40, 50, 3), dtype=np.uint8)  # H=40, W=50


def _cut(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_truncated_images_are_named(tmp_path, suffix):
    path = tmp_path / f"half{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, RGB, photometric="rgb")
    else:
        assert cv2.imwrite(str(path), RGB)
    read_image(path)  # complete: fine
    _cut(path)
    with pytest.raises(ImageReadError, match=rf"{path}"):
        read_image(path)


def test_jpeg_with_data_after_its_end_is_still_read(tmp_path):
    path = tmp_path / "tail.jpg"
    assert cv2.imwrite(str(path), RGB)
    expected = cv2.imread(str(path))
    path.write_bytes(path.read_bytes() + b"\0" * 200)  # padding some cameras write
    assert np.array_equal(read_image(path), expected)


def test_channel_first_tiff_is_transposed(tmp_path):
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, RGB.transpose(2, 0, 1), photometric="rgb", planarconfig="separate")
    img = read_raw(path)
    assert img.shape == (40, 50, 3) and np.array_equal(img, RGB)
    assert np.array_equal(read_image(path), RGB[:, :, ::-1])  # BGR
    # ImageJ's explicit channel axis
    ij = tmp_path / "ij.tif"
    tifffile.imwrite(ij, RGB.transpose(2, 0, 1), imagej=True, metadata={"axes": "CYX"})
    assert np.array_equal(read_raw(ij), RGB)


def test_multi_page_and_stacked_tiffs_are_refused(tmp_path):
    pages = tmp_path / "pages.tif"
    with tifffile.TiffWriter(pages) as w:  # pages written one by one: tifffile reads page 1
        for c in range(3):
            w.write(RGB[:, :, c])
    with pytest.raises(ImageReadError, match=rf"{pages}: multi-page TIFF with 3 images"):
        read_image(pages)
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.zeros((5, 40, 50), np.uint16))  # a z-stack: 5 planes
    with pytest.raises(ImageReadError, match=r"shape \(5, 40, 50\) \(axes QYX\): a stack of 5"):
        read_image(stack)
    # a single-plane 16-bit TIFF is still an image
    single = tmp_path / "one.tif"
    tifffile.imwrite(single, np.arange(40 * 50, dtype=np.uint16).reshape(40, 50))
    assert read_image(single).shape == (40, 50, 3)
