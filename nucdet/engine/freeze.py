"""Freeze parameters by name (``SOLVER.FREEZE_PATTERNS``): staged fine-tuning as config.

Stage 1 of a staged fine-tune trains the heads on a pretrained backbone
(``SOLVER.FREEZE_PATTERNS ["^backbone\\."]``); stage 2 trains everything from stage 1's
weights. Frozen parameters get ``requires_grad = False`` before the optimizer is built, so
detectron2's optimizer skips them and DDP does not synchronise them. BatchNorm running
statistics are buffers, not parameters: they still update unless the norm is FrozenBN.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from torch import nn

logger = logging.getLogger(__name__)


def freeze_parameters(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Set ``requires_grad = False`` on every parameter whose name matches a pattern.

    Patterns are regular expressions searched (``re.search``) in the parameter names of
    ``model.named_parameters()`` (e.g. ``backbone.bottom_up.res2.0.conv1.weight``).
    Returns the frozen names. A pattern that is not a valid regex or matches nothing raises
    ``ValueError`` naming it (a typo would otherwise silently train everything).
    """
    if not patterns:
        return []
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p))
        except re.error as e:
            raise ValueError(f"SOLVER.FREEZE_PATTERNS: {p!r} is not a valid regex ({e})") from e
    names = [n for n, _ in model.named_parameters()]
    unused = [c.pattern for c in compiled if not any(c.search(n) for n in names)]
    if unused:
        raise ValueError(
            f"SOLVER.FREEZE_PATTERNS {unused} match no parameter; names look like "
            f"{names[:3]} ... {names[-2:]}"
        )
    frozen = []
    for name, param in model.named_parameters():
        if any(c.search(name) for c in compiled):
            param.requires_grad_(False)
            frozen.append(name)
    total = sum(p.numel() for p in model.parameters())
    frozen_set = set(frozen)
    n_frozen = sum(p.numel() for n, p in model.named_parameters() if n in frozen_set)
    logger.info(
        "froze %d parameter tensors (%d of %d values, %.1f%%) matching %s",
        len(frozen),
        n_frozen,
        total,
        100.0 * n_frozen / max(total, 1),
        list(patterns),
    )
    return frozen
