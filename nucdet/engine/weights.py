"""Resolve ``MODEL.WEIGHTS`` to a local file before anything tries to load it.

Accepted forms:

- ``""``: train from scratch (nothing to load);
- a local path (``~`` expanded): must exist;
- a URL (``https://dl.fbaipublicfiles.com/...``, ``http://``) or ``detectron2://<name>``
  (detectron2's model zoo, ``https://dl.fbaipublicfiles.com/detectron2/<name>``).

URLs are cached where detectron2/iopath cache them (``$FVCORE_CACHE`` or
``~/.torch/iopath_cache``, then the URL path), so a file downloaded once by detectron2 or
copied there by hand is found without a network. A missing file is downloaded with a
timeout and written atomically. When that fails (offline machine, Kaggle notebook), the
error names the URL, the reason and the two ways out: place the file at the cache path
(or pass ``MODEL.WEIGHTS /local/file.pkl``), or train from scratch with a ``*_scratch``
config. It never surfaces as a socket stack trace from inside the checkpointer.
"""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from tqdm import tqdm

from nucdet.io.atomic import atomic_open

logger = logging.getLogger(__name__)

D2_PREFIX = "detectron2://"
D2_URL = "https://dl.fbaipublicfiles.com/detectron2/"
URL_PREFIXES = ("http://", "https://")
DOWNLOAD_TIMEOUT = 60.0  # seconds without a byte before a download gives up
SCRATCH_HINT = "configs/dsb2018/mask_rcnn_R_50_FPN_GN_scratch_6k.yaml"


class WeightsUnavailableError(FileNotFoundError):
    """``MODEL.WEIGHTS`` names a file that is neither local nor downloadable."""


def is_url(weights: str) -> bool:
    return weights.startswith(URL_PREFIXES + (D2_PREFIX,))


def to_url(weights: str) -> str:
    """``detectron2://name`` -> its https URL; other strings unchanged."""
    if weights.startswith(D2_PREFIX):
        return D2_URL + weights[len(D2_PREFIX) :]
    return weights


def cache_root() -> Path:
    """iopath's download cache: ``$FVCORE_CACHE`` or ``~/.torch/iopath_cache``."""
    return Path(os.path.expanduser(os.environ.get("FVCORE_CACHE", "~/.torch/iopath_cache")))


def cache_path(url: str) -> Path:
    """Where a URL's file is cached (the same place iopath's ``HTTPURLHandler`` uses)."""
    url = to_url(url)
    parsed = urlparse(url)
    return cache_root() / os.path.dirname(parsed.path.lstrip("/")) / url.split("/")[-1]


def _download(url: str, dest: Path, timeout: float) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        with (
            atomic_open(dest, "wb") as f,
            tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar,
        ):
            while chunk := response.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))
    if dest.stat().st_size == 0:
        dest.unlink()
        raise OSError(f"downloaded an empty file from {url}")


def resolve_weights(weights: str, *, timeout: float = DOWNLOAD_TIMEOUT) -> str:
    """The local file for ``MODEL.WEIGHTS`` (``""`` stays ``""``); see module docstring.

    Raises:
        WeightsUnavailableError: a URL that is not cached and cannot be downloaded.
        FileNotFoundError: a local path that does not exist.
    """
    weights = str(weights).strip()
    if not weights:
        return ""
    if is_url(weights):
        url = to_url(weights)
        dest = cache_path(url)
        if dest.is_file():
            return str(dest)
        logger.info("downloading %s to %s", url, dest)
        try:
            _download(url, dest, timeout)
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            reason = getattr(e, "reason", None) or e
            raise WeightsUnavailableError(
                f"MODEL.WEIGHTS {weights}: cannot download the weights ({reason}). Either "
                f"(1) place the file at {dest} (download it on a machine with internet), or "
                f"pass MODEL.WEIGHTS /local/path/{dest.name}; or (2) train from scratch with "
                f'a *_scratch config (e.g. {SCRATCH_HINT}) or MODEL.WEIGHTS "" with '
                f"GroupNorm/BatchNorm (FrozenBN diverges from scratch)."
            ) from None
        return str(dest)
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"MODEL.WEIGHTS {weights}: no such file"
            + (f" (resolved to {path.resolve()})" if not path.is_absolute() else "")
            + '; pass an existing .pth/.pkl file, a model-zoo URL, or "" to train from '
            "scratch"
        )
    return str(path)
