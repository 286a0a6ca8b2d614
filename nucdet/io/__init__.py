"""File formats: RLE codecs, atomic file writes, submission writers/readers and detectron2's
``metrics.json``."""
