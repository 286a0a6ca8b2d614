"""Inference: single-model prediction, TTA views, ensemble fusion and post-processing.

Modules (import what you need; this package imports nothing at load time, so the numeric
parts stay usable without torch/detectron2):

- ``predictor``: a detectron2 model -> ``RawDetections`` / ``ImagePrediction``;
- ``tta``: views by name (``build_view("hflip")``), exact inversion of detections;
- ``masks``: crop-level masks: detectron2-exact pasting, fusion, RLE conversion;
- ``fusion``: ``fuse(raws, weights, method=...)`` (``wbf_mask_vote``, ``nms``,
  ``mask_nms``);
- ``postprocess``: thresholds, majority class, overlap removal, hole filling;
- ``tune``: per-class score thresholds tuned for MaP-IoU, written into a YAML;
- ``ensemble``: models x views -> one prediction (``EnsemblePredictor``);
- ``cli``: the shared flags and the job of ``infer.py`` / ``ensemble_infer.py``;
- ``shards``: ``--shard i/n`` of an image set and the merge into one submission.
"""
