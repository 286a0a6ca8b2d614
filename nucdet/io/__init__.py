"""File formats: RLE codecs, atomic file writes and submission writers/readers."""
