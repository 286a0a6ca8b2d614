"""``NucleiUNet``: a U-Net for instance segmentation in detectron2's model interface.

``MODEL.META_ARCHITECTURE: NucleiUNet`` (keys under ``MODEL.UNET``, ``nucdet.config``).

- Encoder (``MODEL.UNET.ENCODER``): ``"plain"``, a from-scratch U-Net encoder (two 3x3
  conv + norm + ReLU per level, max-pooling between levels, widths ``MODEL.UNET.CHANNELS``
  at strides 1, 2, 4, ...); or ``"resnet"``, detectron2's ``build_resnet_backbone``
  (``MODEL.RESNETS.*``, ``MODEL.BACKBONE.FREEZE_AT``; its ``RESNETS.OUT_FEATURES`` at
  strides 4..32) below two plain levels at strides 1 and 2 (``CHANNELS[:2]``), so that
  ImageNet / model-zoo ResNet weights load through ``MODEL.WEIGHTS`` as for Mask R-CNN.
- Decoder: from the deepest level up, bilinear up-sampling to the next level's size,
  concatenation with its features, two 3x3 conv + norm + ReLU (``DECODER_CHANNELS``).
- Heads (1x1 conv on the full-resolution decoder output): foreground, boundary and
  distance logits, plus ``MODEL.ROI_HEADS.NUM_CLASSES`` class logits when there are
  several classes (the class count has one home for both families, the dataset's base
  config).

Training: targets come from the ``gt_masks`` (``BitMasks`` or polygons) and
``gt_classes`` the nucdet mappers put in ``Instances`` (``unet_targets.pixel_targets``),
so the same registered datasets, mapper and augmentations serve both families. Losses:
binary cross-entropy for foreground and boundary, mean squared error of the sigmoid for
the distance, cross-entropy of the classes on pixels of one instance; padding is ignored.

Inference: the maps are decoded by marker-controlled watershed (``unet_decode``) into
``Instances`` with ``pred_boxes``, ``scores`` (mean foreground probability),
``pred_classes`` and ``pred_masks`` as (N, 1, M, M) box-relative grids
(``MODEL.UNET.DECODE.MASK_GRID``), the layout of detectron2's Mask R-CNN before pasting:
``inference(inputs, do_postprocess=False)`` is what ``nucdet.inference.predictor`` calls,
and ``forward`` in eval mode pastes them with ``detector_postprocess`` for the evaluators.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.backbone import build_resnet_backbone
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import BitMasks, Boxes, ImageList, Instances, PolygonMasks
from torch import nn

from nucdet.modeling.unet_decode import box_grids, labels_to_detections, watershed_instances
from nucdet.modeling.unet_targets import pixel_targets

logger = logging.getLogger(__name__)

__all__ = ["NucleiUNet", "PlainEncoder", "ResNetEncoder", "UNetDecoder"]

ENCODERS = ("plain", "resnet")
NORMS = ("GN", "BN", "")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "GN":
        # 32 groups as detectron2's GN, fewer for narrow layers (tiny test models).
        return nn.GroupNorm(math.gcd(32, channels), channels)
    if kind == "BN":
        return nn.BatchNorm2d(channels)
    return nn.Identity()


class ConvBlock(nn.Sequential):
    """Two 3x3 conv (+ norm) + ReLU."""

    def __init__(self, cin: int, cout: int, norm: str):
        bias = norm == ""
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=bias),
            _norm(norm, cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=bias),
            _norm(norm, cout),
            nn.ReLU(inplace=True),
        )


class PlainEncoder(nn.Module):
    """U-Net encoder: ``ConvBlock`` per level, 2x2 max-pooling between levels.

    ``forward(x)`` -> list of features at strides 1, 2, 4, ... (one per channel width).
    """

    def __init__(self, in_channels: int, channels: list[int], norm: str):
        super().__init__()
        self.blocks = nn.ModuleList()
        cin = in_channels
        for c in channels:
            self.blocks.append(ConvBlock(cin, c, norm))
            cin = c
        self.out_channels = list(channels)
        self.size_divisibility = 2 ** (len(channels) - 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, block in enumerate(self.blocks):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            out.append(x)
        return out


class ResNetEncoder(nn.Module):
    """Two plain levels (strides 1, 2) + detectron2's ResNet (``RESNETS.OUT_FEATURES``).

    The ResNet is the attribute ``backbone`` with detectron2's own parameter names
    (``backbone.stem.conv1``, ``backbone.res2.0.conv1``, ...), so model-zoo and ImageNet
    ``.pkl`` weights match by name as they do for Mask R-CNN's ``backbone.bottom_up``.
    """

    def __init__(self, cfg: CfgNode, in_channels: int, stem_channels: list[int], norm: str):
        super().__init__()
        if len(stem_channels) != 2:
            raise ValueError(
                f"MODEL.UNET.CHANNELS: the resnet encoder takes 2 widths (its stride-1 and "
                f"stride-2 levels), got {list(stem_channels)}"
            )
        self.stem1 = ConvBlock(in_channels, stem_channels[0], norm)
        self.stem2 = ConvBlock(stem_channels[0], stem_channels[1], norm)
        self.backbone = build_resnet_backbone(cfg, ShapeSpec(channels=in_channels))
        shapes = self.backbone.output_shape()
        self.names = sorted(shapes, key=lambda k: shapes[k].stride)
        strides = [shapes[k].stride for k in self.names]
        if strides != [4 * 2**i for i in range(len(strides))]:
            raise ValueError(
                f"MODEL.RESNETS.OUT_FEATURES {self.names} have strides {strides}; the U-Net "
                "needs consecutive levels from stride 4 (e.g. res2, res3, res4, res5)"
            )
        self.out_channels = list(stem_channels) + [shapes[k].channels for k in self.names]
        self.size_divisibility = strides[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        s1 = self.stem1(x)
        s2 = self.stem2(F.max_pool2d(s1, 2))
        feats = self.backbone(x)
        return [s1, s2] + [feats[k] for k in self.names]


class UNetDecoder(nn.Module):
    """Up-sample, concatenate the skip, ``ConvBlock``; from the deepest level to stride 1."""

    def __init__(self, in_channels: list[int], channels: list[int], norm: str):
        super().__init__()
        if len(channels) != len(in_channels) - 1:
            raise ValueError(
                f"MODEL.UNET.DECODER_CHANNELS: one width per decoder level, i.e. "
                f"{len(in_channels) - 1} for an encoder with {len(in_channels)} levels "
                f"(widths {in_channels}), got {list(channels)}"
            )
        self.blocks = nn.ModuleList()
        below = in_channels[-1]
        for i in reversed(range(len(channels))):
            self.blocks.append(ConvBlock(below + in_channels[i], channels[i], norm))
            below = channels[i]
        self.out_channels = channels[0]

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for block, skip in zip(self.blocks, reversed(feats[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return x


@META_ARCH_REGISTRY.register()
class NucleiUNet(nn.Module):
    """U-Net with foreground / boundary / distance heads, decoded by watershed (module
    docstring)."""

    @configurable
    def __init__(
        self,
        *,
        encoder: nn.Module,
        decoder: UNetDecoder,
        num_classes: int,
        pixel_mean: list[float],
        pixel_std: list[float],
        boundary_width: float,
        loss_weights: dict[str, float],
        decode: dict,
        mask_grid: int,
        max_detections: int,
    ):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.num_classes = int(num_classes)
        c = decoder.out_channels
        self.fg_head = nn.Conv2d(c, 1, 1)
        self.boundary_head = nn.Conv2d(c, 1, 1)
        self.distance_head = nn.Conv2d(c, 1, 1)
        self.class_head = nn.Conv2d(c, self.num_classes, 1) if self.num_classes > 1 else None
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.boundary_width = float(boundary_width)
        self.loss_weights = dict(loss_weights)
        self.decode = dict(decode)
        self.mask_grid = int(mask_grid)
        self.max_detections = int(max_detections)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        u = cfg.MODEL.UNET
        in_ch = len(cfg.MODEL.PIXEL_MEAN)
        if u.ENCODER not in ENCODERS:
            raise ValueError(f"MODEL.UNET.ENCODER must be one of {ENCODERS}, got {u.ENCODER!r}")
        if u.NORM not in NORMS:
            raise ValueError(f"MODEL.UNET.NORM must be one of {NORMS}, got {u.NORM!r}")
        channels = [int(c) for c in u.CHANNELS]
        if u.ENCODER == "plain":
            if len(channels) < 2:
                raise ValueError(f"MODEL.UNET.CHANNELS: at least 2 levels, got {channels}")
            encoder = PlainEncoder(in_ch, channels, u.NORM)
        else:
            encoder = ResNetEncoder(cfg, in_ch, channels, u.NORM)
        decoder = UNetDecoder(encoder.out_channels, [int(c) for c in u.DECODER_CHANNELS], u.NORM)
        d = u.DECODE
        return {
            "encoder": encoder,
            "decoder": decoder,
            "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "boundary_width": u.BOUNDARY_WIDTH,
            "loss_weights": {
                "loss_fg": u.FG_LOSS_WEIGHT,
                "loss_boundary": u.BOUNDARY_LOSS_WEIGHT,
                "loss_distance": u.DISTANCE_LOSS_WEIGHT,
                "loss_class": u.CLASS_LOSS_WEIGHT,
            },
            "decode": {
                "fg_thresh": d.FG_THRESH,
                "boundary_thresh": d.BOUNDARY_THRESH,
                "marker_thresh": d.MARKER_THRESH,
                "min_marker_area": d.MIN_MARKER_AREA,
                "min_area": d.MIN_AREA,
            },
            "mask_grid": d.MASK_GRID,
            "max_detections": cfg.TEST.DETECTIONS_PER_IMAGE,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: list[dict]) -> ImageList:
        """Normalise, pad to the encoder's stride and batch (GeneralizedRCNN's way)."""
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std
                  for x in batched_inputs]  # fmt: skip
        return ImageList.from_tensors(images, self.encoder.size_divisibility)

    def logits(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-pixel logits of a normalised, padded (B, C, H, W) batch."""
        x = self.decoder(self.encoder(pixels))
        out = {
            "fg": self.fg_head(x)[:, 0],
            "boundary": self.boundary_head(x)[:, 0],
            "distance": self.distance_head(x)[:, 0],
        }
        if self.class_head is not None:
            out["classes"] = self.class_head(x)
        return out

    def forward(self, batched_inputs: list[dict]):
        if not self.training:
            return self.inference(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        out = self.logits(images.tensor)
        targets = self._targets(batched_inputs, images)
        return self.losses(out, targets)

    # ---- training -----------------------------------------------------------------------

    def _targets(self, batched_inputs: list[dict], images: ImageList) -> dict[str, torch.Tensor]:
        b, (hp, wp) = len(batched_inputs), images.tensor.shape[-2:]
        fg = np.zeros((b, hp, wp), np.float32)
        boundary = np.zeros_like(fg)
        distance = np.zeros_like(fg)
        classes = np.full((b, hp, wp), -1, np.int64)
        valid = np.zeros((b, hp, wp), bool)
        for i, (d, (h, w)) in enumerate(zip(batched_inputs, images.image_sizes)):
            valid[i, :h, :w] = True
            if "instances" not in d:
                raise ValueError(
                    f"{d.get('file_name', f'input {i}')}: training input without 'instances' "
                    "(the mapper must run with is_train=True)"
                )
            inst = d["instances"]
            masks = _bit_masks(inst, h, w, d.get("file_name", f"input {i}"))
            t = pixel_targets(masks, self.boundary_width, inst.gt_classes.cpu().numpy())
            fg[i, :h, :w], boundary[i, :h, :w] = t.fg, t.boundary
            distance[i, :h, :w], classes[i, :h, :w] = t.distance, t.classes
        dev = self.device
        return {
            "fg": torch.from_numpy(fg).to(dev),
            "boundary": torch.from_numpy(boundary).to(dev),
            "distance": torch.from_numpy(distance).to(dev),
            "classes": torch.from_numpy(classes).to(dev),
            "valid": torch.from_numpy(valid).to(dev),
        }

    def losses(
        self, out: dict[str, torch.Tensor], t: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The weighted losses of the logits ``out`` against the targets ``t``."""
        valid = t["valid"].float()
        n = valid.sum().clamp(min=1.0)

        def bce(key: str) -> torch.Tensor:
            x = F.binary_cross_entropy_with_logits(out[key].float(), t[key], reduction="none")
            return (x * valid).sum() / n

        dist = (torch.sigmoid(out["distance"].float()) - t["distance"]) ** 2
        losses = {
            "loss_fg": bce("fg"),
            "loss_boundary": bce("boundary"),
            "loss_distance": (dist * valid).sum() / n,
        }
        if "classes" in out:
            target = torch.where(t["valid"], t["classes"], torch.full_like(t["classes"], -1))
            if (target >= 0).any():
                losses["loss_class"] = F.cross_entropy(
                    out["classes"].float(), target, ignore_index=-1
                )
            else:  # no labelled pixel in the batch: a zero that keeps the graph
                losses["loss_class"] = out["classes"].sum() * 0.0
        return {k: v * self.loss_weights[k] for k, v in losses.items()}

    # ---- inference ----------------------------------------------------------------------

    def probabilities(self, batched_inputs: list[dict]) -> list[dict[str, np.ndarray]]:
        """Per image, the (H, W) float32 ``fg``, ``boundary``, ``distance`` probabilities
        (and (C, H, W) ``classes``) at network resolution, padding removed."""
        images = self.preprocess_image(batched_inputs)
        out = self.logits(images.tensor)
        probs = {k: torch.sigmoid(out[k].float()) for k in ("fg", "boundary", "distance")}
        if "classes" in out:
            probs["classes"] = torch.softmax(out["classes"].float(), dim=1)
        maps = []
        for i, (h, w) in enumerate(images.image_sizes):
            maps.append({k: v[i, ..., :h, :w].cpu().numpy() for k, v in probs.items()})
        return maps

    def decode_maps(self, maps: dict[str, np.ndarray], decode: dict | None = None) -> Instances:
        """Watershed instances of one image's probability maps, as Mask R-CNN's raw output
        (``pred_masks``: (N, 1, M, M) grids), at most ``TEST.DETECTIONS_PER_IMAGE``.

        ``decode``: ``watershed_instances`` keywords replacing the config's
        (``MODEL.UNET.DECODE``) for this call, e.g. to sweep them on stored maps."""
        params = self.decode if decode is None else {**self.decode, **decode}
        unknown = set(params) - set(self.decode)
        if unknown:
            raise KeyError(f"decode: unknown keys {sorted(unknown)}; known: {sorted(self.decode)}")
        labels = watershed_instances(maps["fg"], maps["boundary"], maps["distance"], **params)
        det = labels_to_detections(labels, maps["fg"], maps.get("classes"), self.mask_grid)
        order = np.argsort(-det.scores, kind="stable")[: self.max_detections]
        inst = Instances(maps["fg"].shape)
        dev = self.device
        inst.pred_boxes = Boxes(torch.from_numpy(det.boxes[order]).reshape(-1, 4).to(dev))
        inst.scores = torch.from_numpy(det.scores[order]).to(dev)
        inst.pred_classes = torch.from_numpy(det.classes[order]).to(dev)
        grids = det.grids[order].reshape(-1, 1, self.mask_grid, self.mask_grid)
        inst.pred_masks = torch.from_numpy(grids).to(dev)
        return inst

    def box_grids(self, maps: dict[str, np.ndarray], boxes: np.ndarray) -> np.ndarray:
        """(K, M, M) foreground probabilities of one image's ``maps`` in any xyxy ``boxes``
        (network resolution): the U-Net as a "mask head" for fusion."""
        return box_grids(maps["fg"], boxes, self.mask_grid)

    def inference(
        self,
        batched_inputs: list[dict],
        do_postprocess: bool = True,
        maps_out: list | None = None,
    ):
        """Instances per image; ``do_postprocess``: scaled to each input's height/width and
        pasted (``detector_postprocess``) as ``[{"instances": ...}]``, as detectron2's
        models return them; else at network resolution with grid masks. ``maps_out``
        receives every image's probability maps (``probabilities``)."""
        maps = self.probabilities(batched_inputs)
        if maps_out is not None:
            maps_out.extend(maps)
        results = [self.decode_maps(m) for m in maps]
        if not do_postprocess:
            return results
        out = []
        for inst, d in zip(results, batched_inputs):
            h, w = d.get("height", inst.image_size[0]), d.get("width", inst.image_size[1])
            out.append({"instances": detector_postprocess(inst, h, w)})
        return out


def _bit_masks(inst: Instances, h: int, w: int, source: str) -> np.ndarray:
    """(N, h, w) bool masks of ``inst.gt_masks`` (``BitMasks`` or ``PolygonMasks``)."""
    if len(inst) == 0 or not inst.has("gt_masks"):
        return np.zeros((0, h, w), bool)
    m = inst.gt_masks
    if isinstance(m, PolygonMasks):
        from detectron2.structures.masks import polygons_to_bitmask

        return np.stack([polygons_to_bitmask(p, h, w) for p in m.polygons]).astype(bool)
    if isinstance(m, BitMasks):
        t = m.tensor.cpu().numpy().astype(bool)
    else:
        t = np.asarray(m, bool)
    if t.shape[1:] != (h, w):
        raise ValueError(f"{source}: gt_masks are {t.shape[1:]}, the image is {(h, w)}")
    return t
