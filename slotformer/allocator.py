"""An explicit, opt-in tuning of glibc's ``malloc`` for training steps on CPU.

glibc serves every allocation above its mmap threshold (128 KiB at first, adapted up to at
most 32 MiB) with a fresh ``mmap`` and returns it with ``munmap`` on free. CPU tensors of a
training step are that large (at N = 50 slots, B = 32, T = 64 one ``[B*T*N, 256]`` fp32
activation is 105 MB), so each step maps them anew and the kernel zero-fills every page on
first touch: measured here, a 100 MB matmul + ReLU took 145 ms with the default setting and
63 ms with the threshold raised, and the Slot Transformer's N = 50 update step ran 1.6-2x
faster (`docs/benchmarks.md` has both settings for both networks).

`configure_malloc` raises the mmap threshold and switches heap trimming off, so freed blocks
stay in the heap and are reused by the next step (a finite trim threshold gives back the top
of the heap whenever a step's peak exceeds it; at N = 50 the peak is 1.1 GB, and 1 GiB, 2 GiB
and no trimming measured the same there, within noise). The price is resident memory: the process keeps its high-water mark instead
of returning it to the system after each step. Nothing here runs on import: a process opts in
by calling it (the example trainer and the benchmarks do), or sets glibc's own environment
variables before it starts (``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=-1``),
which do the same. On a C library without ``mallopt`` (macOS, Windows, musl) it does nothing
and returns False.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Any

__all__ = ["DEFAULT_MALLOC_THRESHOLD", "configure_malloc"]

DEFAULT_MALLOC_THRESHOLD = 1 << 30
"""1 GiB: no tensor of a default-sized training step is served by ``mmap`` below it."""

# glibc's mallopt parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


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
    mmap_threshold: int = DEFAULT_MALLOC_THRESHOLD,
    trim_threshold: int | None = None,
) -> bool:
    """Keep large CPU allocations in glibc's heap so that training steps reuse them.

    Process-wide and lasting (a C library setting, not a torch one): call it once at the
    start of a training process, never from library code.

    Args:
        mmap_threshold: allocations at least this large (bytes) are served by ``mmap``;
            in ``[1, 2**31 - 1]``.
        trim_threshold: free memory at the top of the heap above this many bytes is
            returned to the system; in ``[1, 2**31 - 1]``, or None (the default) to never
            return it (glibc's ``-1``).

    Returns:
        True if both settings took effect, False where glibc's ``mallopt`` is absent or
        refused a value (nothing is changed then, or only the first setting).

    Example:
        >>> import slotformer
        >>> slotformer.configure_malloc() in (True, False)   # False off glibc
        True
    """
    for name, value in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold)):
        if name == "trim_threshold" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**31:
            raise ValueError(f"{name} must be an int in [1, 2**31 - 1], got {name}={value!r}")
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    never_trim = -1  # glibc: "setting M_TRIM_THRESHOLD to -1 disables trimming completely"
    trim = never_trim if trim_threshold is None else trim_threshold
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim)
    )
