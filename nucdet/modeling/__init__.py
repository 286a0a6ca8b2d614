"""Models: detectron2 meta architectures nucdet adds (the U-Net family).

A layer between ``data`` / ``evaluation`` below and ``inference`` / ``engine`` above: a
model reads the ``Instances`` the nucdet mappers produce and returns detectron2's output
(``Instances`` with boxes, scores, classes and box-relative mask grids), so the
predictor, TTA, fusion, post-processing, writers and evaluators take it unchanged.

- ``unet``: ``NucleiUNet`` (``MODEL.META_ARCHITECTURE: NucleiUNet``), registered in
  detectron2's ``META_ARCH_REGISTRY`` when this package is imported;
- ``unet_targets``: per-pixel foreground / boundary / distance targets from instance masks;
- ``unet_decode``: marker-controlled watershed of the predicted maps into instances, and
  the instances as box + MxM grid detections.

Importing ``nucdet.engine`` (every entry point) or ``nucdet.inference.predictor`` imports
this package, so ``build_model`` finds the architecture.
"""

from nucdet.modeling import unet  # noqa: F401  (registers NucleiUNet)
