"""An explicit, opt-in tuning of glibc's ``malloc`` for training steps on CPU.

glibc serves every allocation above its mmap threshold (128 KiB at first, adapted up to at
most 32 MiB) with a fresh ``mmap`` and returns it on free. A training step's CPU tensors are
that large (at N = 50, B = 32, T = 64 one ``[B*T*N, 256]`` fp32 activation is 105 MB), so each
step maps them anew and the kernel zero-fills every page on first touch. `configure_malloc`
raises the threshold and switches heap trimming off, so freed blocks are reused by the next
step: the Slot Transformer's N = 50 update step ran 1.6-2x faster (`docs/benchmarks.md`), at
the price of resident memory (the process keeps its high-water mark, 1.1 GB at N = 50).

Nothing runs on import: a process opts in by calling it (the example trainer and the
benchmarks do), or sets glibc's own variables before it starts
(``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=-1``), which do the same. On a C
library without ``mallopt`` (macOS, Windows, musl) it does nothing and returns False.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Any

from slotformer.validation import check_positive_int

__all__ = ["DEFAULT_MALLOC_THRESHOLD", "configure_malloc"]

DEFAULT_MALLOC_THRESHOLD = 1 << 30
"""1 GiB: no tensor of a default-sized training step is served by ``mmap`` below it."""

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)


def _glibc_mallopt() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt  # AttributeError: a C library without mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt


def configure_malloc(
    mmap_threshold: int = DEFAULT_MALLOC_THRESHOLD, trim_threshold: int | None = None
) -> bool:
    """Keep large CPU allocations in glibc's heap so that training steps reuse them.

    Process-wide and lasting (a C library setting, not a torch one): call it once at the
    start of a training process, never from library code.

    Args:
        mmap_threshold: bytes from which an allocation is served by ``mmap``, in ``[1, 2**31)``.
        trim_threshold: free bytes at the heap's top above which they go back to the system,
            in ``[1, 2**31)``; None = never (glibc's ``-1``).

    Returns:
        True if both settings took effect, False where glibc's ``mallopt`` is absent or
        refused a value (nothing is changed then, or only the first setting).

    Example:
        >>> import slotformer
        >>> slotformer.configure_malloc() in (True, False)   # False off glibc
        True
    """
    check_positive_int("mmap_threshold", mmap_threshold, below=2**31)
    if trim_threshold is not None:
        check_positive_int("trim_threshold", trim_threshold, below=2**31)
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    trim = -1 if trim_threshold is None else trim_threshold  # glibc: -1 = never trim
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim))
