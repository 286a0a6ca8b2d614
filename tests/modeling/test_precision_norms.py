"""GroupNorm in fp32 inside bf16 autocast (nucdet.modeling.precision), and the bf16
Predictor using it: against torch's own group_norm on a float32 input as the reference."""

from __future__ import annotations

import torch
from conftest import tiny_cfg
from detectron2.modeling import build_model
from torch import nn
from torch.nn import functional as F

from nucdet.inference.predictor import Predictor
from nucdet.modeling.precision import Fp32GroupNorm, fp32_group_norms


def _gn() -> nn.GroupNorm:
    torch.manual_seed(0)
    gn = nn.GroupNorm(4, 16)
    with torch.no_grad():
        gn.weight.uniform_(0.5, 1.5)
        gn.bias.uniform_(-0.5, 0.5)
    return gn


def test_under_bf16_autocast_it_computes_fp32_group_norm_of_its_input():
    gn = _gn()
    x = (torch.randn(2, 16, 9, 7) * 3 + 5).bfloat16()  # what a bf16 convolution hands on
    ref = F.group_norm(x.float(), 4, gn.weight, gn.bias, gn.eps)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = gn(x)  # torch's CPU autocast: group_norm in bf16
    assert plain.dtype == torch.bfloat16
    assert fp32_group_norms(gn) == 1 and type(gn) is Fp32GroupNorm
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = gn(x)
    assert out.dtype == torch.float32
    assert torch.equal(out, ref)
    # the bf16 layer's error is what the fp32 one removes (8 bits of mantissa: ~2**-8)
    assert (plain.float() - ref).abs().max() > 1e-3


def test_outside_autocast_it_is_nn_group_norm_exactly():
    gn, ref_gn = _gn(), _gn()
    fp32_group_norms(gn)
    x = torch.randn(3, 16, 5, 6)
    assert torch.equal(gn(x), ref_gn(x))
    assert gn.state_dict().keys() == ref_gn.state_dict().keys()
    assert all(torch.equal(gn.state_dict()[k], ref_gn.state_dict()[k]) for k in gn.state_dict())


def test_the_bf16_predictor_turns_every_group_norm_of_a_gn_model_fp32(tmp_path):
    opts = [
        "MODEL.RESNETS.NORM",
        "GN",
        "MODEL.FPN.NORM",
        "GN",
        "MODEL.RESNETS.STRIDE_IN_1X1",
        "False",
    ]
    torch.manual_seed(0)
    model = build_model(tiny_cfg(*opts))
    n_gn = sum(type(m) is nn.GroupNorm for m in model.modules())
    assert n_gn > 0
    path = tmp_path / "model.pth"
    torch.save({"model": model.state_dict()}, path)
    bf16 = Predictor(tiny_cfg(*opts, "MODEL.WEIGHTS", str(path), "TEST.PRECISION", "bf16"))
    assert sum(type(m) is Fp32GroupNorm for m in bf16.model.modules()) == n_gn
    assert not any(type(m) is nn.GroupNorm for m in bf16.model.modules())
    fp32 = Predictor(tiny_cfg(*opts, "MODEL.WEIGHTS", str(path), "TEST.PRECISION", "fp32"))
    assert sum(type(m) is nn.GroupNorm for m in fp32.model.modules()) == n_gn
