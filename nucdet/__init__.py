"""nucdet: Detectron2-based experiment framework for cell and nuclei instance segmentation."""

__version__ = "0.1.0"
