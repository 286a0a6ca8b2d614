"""Instance-segmentation metrics (plain numpy) and their detectron2 evaluator adapter.

Modules:

- ``matching``: pixel-exact pairwise overlaps between two instance sets (label images,
  dense mask stacks, COCO RLE lists, ``ImagePrediction``), as integer counts.
- ``mapiou``: Kaggle MaP-IoU (Sartorius, DSB2018), per image and per dataset.
- ``coco_ap``: COCO segm/bbox AP through pycocotools with a configurable detection cap.
- ``voc``: VOC AP at IoU 0.5 (matterport ``compute_ap`` semantics).
- ``glas``: GlaS object-level F1, object Dice and object Hausdorff.
- ``counting``: per-image counting error.
- ``stats``: paired comparison of two methods on the same images (bootstrap interval).
- ``groundtruth``: ground truth from detectron2 dataset dicts or COCO JSON.
- ``suite``: all of the above on one dataset (shared by the evaluator and the CLI).
- ``evaluator``: ``NucleiEvaluator``, a detectron2 ``DatasetEvaluator``.
- ``score``: command line scoring of a submission file.

Everything but ``evaluator`` works without detectron2 types or a model.
"""
