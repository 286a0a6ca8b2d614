"""nucdet: Detectron2-based experiment framework for cell and nuclei instance segmentation."""

from nucdet.__about__ import __version__

__all__ = ["__version__"]
