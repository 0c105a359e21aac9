"""One switch for the input checks that cost a host sync.

Shape, rank and dtype checks read only tensor metadata and always run. Checks that read
tensor *values* (NaN/inf, out-of-range indices, rows with no valid action) force a
device-to-host synchronisation, so they run only while validation is enabled (the default)
and never inside ``torch.compile`` tracing. Switch them off for production rollouts::

    import slotformer
    slotformer.set_validation(False)          # globally
    with slotformer.validation(False):        # or for a block
        ...
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

_ENABLED = True


def set_validation(enabled: bool) -> None:
    """Enable or disable value checks (those that cost a host sync) globally."""
    global _ENABLED
    _ENABLED = bool(enabled)


def validation_enabled() -> bool:
    """True when value checks should run now: enabled and not being traced by torch.compile."""
    return _ENABLED and not torch.compiler.is_compiling()


@contextmanager
def validation(enabled: bool) -> Iterator[None]:
    """Context manager that sets the validation switch for a block and restores it after."""
    global _ENABLED
    previous = _ENABLED
    _ENABLED = bool(enabled)
    try:
        yield
    finally:
        _ENABLED = previous


def describe_shape(tensor: torch.Tensor) -> str:
    """``tuple(tensor.shape)`` as text, for error messages."""
    return str(tuple(tensor.shape))


def check_positive_int(name: str, value: Any) -> int:
    """Return ``value`` if it is an int >= 1 (not a bool), else raise ``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value
