"""numba compilation with numba's on-disk cache, for the package's hand-written kernels.

Kernels (mask pasting, the COCO RLE encoder, weighted box fusion) are compiled once after
an install and loaded from the cache (``__pycache__``, else numba's user cache) by later
processes. numba is imported only when a kernel is decorated: it costs seconds to import,
and modules that merely read or write formats must not pay that.
"""

from __future__ import annotations

from collections.abc import Callable


def njit_cached(fn: Callable) -> Callable:
    """``numba.njit`` with its on-disk cache, or without it where no cache dir is writable."""
    import numba

    try:
        return numba.njit(cache=True, nogil=True)(fn)
    except RuntimeError:  # numba found no writable cache location: compile per process
        return numba.njit(cache=False, nogil=True)(fn)
