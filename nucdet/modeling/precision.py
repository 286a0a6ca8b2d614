"""Normalisation layers in fp32 inside a bf16 autocast region.

On the CPU, ``torch.autocast(dtype=torch.bfloat16)`` runs ``group_norm`` in bf16 when its
input is bf16 (the output of a bf16 convolution): the mean and variance of each group, and
the normalised values, then carry 8 bits of mantissa. CUDA's autocast keeps ``group_norm``
in fp32. Measured on 40 training images of ``dsb2018_fold0_train`` with the bf16 recipe
model (``benchmarks/results/precision_bf16.md``): bf16 with GroupNorm in bf16 scored
-0.021 MaP-IoU [-0.032, -0.012] below fp32, with GroupNorm in fp32 -0.0003 [-0.0029,
+0.0017] (at some cost in speed on GroupNorm-heavy heads); running the RPN, box or mask
head in fp32 did not help.

``fp32_group_norms(model)`` makes every ``nn.GroupNorm`` of ``model`` (detectron2's GN is
``torch.nn.GroupNorm``) compute in fp32 from a float32 copy of its input and return fp32
(the next convolution casts to bf16 again). The weights and ``state_dict`` are unchanged;
outside autocast, in fp32, the layer computes exactly what ``nn.GroupNorm`` does.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["Fp32GroupNorm", "fp32_group_norms"]


class Fp32GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` that computes in fp32 under autocast (and returns fp32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # On an fp32 input outside autocast the casts are no-ops: nn.GroupNorm's forward.
        with torch.autocast(x.device.type, enabled=False):
            weight = None if self.weight is None else self.weight.float()
            bias = None if self.bias is None else self.bias.float()
            return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps)


def fp32_group_norms(model: nn.Module) -> int:
    """Turn every ``nn.GroupNorm`` of ``model`` into an ``Fp32GroupNorm`` in place (same
    parameters, same ``state_dict``); returns how many layers changed."""
    n = 0
    for mod in model.modules():
        if type(mod) is nn.GroupNorm:
            mod.__class__ = Fp32GroupNorm
            n += 1
    return n
