"""What nucdet is built and tested against: the one place the set-up, the Kaggle bundle and
the environment test read the pinned detectron2 commit and the default stack from.

``scripts/build_detectron2.sh`` builds detectron2 from this commit with the version
``0.6+git<commit[:12]>.torch<torch version>`` (detectron2's own ``D2_VERSION_SUFFIX``), so
``importlib.metadata.version("detectron2")`` says which source and which torch a build is of.
"""

from __future__ import annotations

import re

__version__ = "0.2.0"

DETECTRON2_REPO = "https://github.com/facebookresearch/detectron2.git"
DETECTRON2_COMMIT = "02b5c4e295e990042a714712c21dc79b731e8833"  # 2026-06-06
DETECTRON2_SHORT = DETECTRON2_COMMIT[:12]
PYTHON = "3.11"  # default; 3.12 also works (see README)
TORCH = "2.14.1"
TORCHVISION = "0.29.1"

_LOCAL = re.compile(r"^(?P<base>[^+]+)\+git(?P<commit>[0-9a-f]{7,40})\.torch(?P<torch>[0-9.]+)$")


def parse_detectron2_version(version: str) -> dict[str, str] | None:
    """``{"base", "commit", "torch"}`` of a version written by build_detectron2.sh
    (``0.6+git02b5c4e295e9.torch2.14.1``), or None for any other detectron2 build."""
    m = _LOCAL.match(version)
    return m.groupdict() if m else None


def torch_release(version: str) -> str:
    """``2.14.1+cu128`` -> ``2.14.1``: the release a compiled extension must match."""
    return version.split("+", 1)[0]
