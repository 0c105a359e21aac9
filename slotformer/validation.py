"""One switch for the input checks that cost a host sync.

Shape, rank and dtype checks read only tensor metadata and always run. Checks that read
tensor *values* (NaN/inf, out-of-range indices, rows with no valid action) force a
device-to-host synchronisation, so they run only while validation is enabled (the default)
and never inside ``torch.compile`` tracing. Switch them off for production rollouts::

    import slotformer
    slotformer.set_validation(False)          # the process-wide default
    with slotformer.validation(False):        # or for a block, in this thread / task only
        ...

`validation` is scoped by a `contextvars.ContextVar`: it affects the thread or asyncio task
that enters it (and tasks that task starts inside the block), never another thread or a
concurrent task. `set_validation` sets the default that every context without its own
`validation` block sees.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch

_ENABLED = True  # the process-wide default (set_validation)
_SCOPED: ContextVar[bool | None] = ContextVar("slotformer_validation", default=None)


def set_validation(enabled: bool) -> None:
    """Enable or disable value checks (those that cost a host sync) by default, for every
    thread and task that is not inside a `validation` block."""
    global _ENABLED
    _ENABLED = bool(enabled)


def validation_enabled() -> bool:
    """True when value checks should run now: enabled in this context (the innermost
    `validation` block, else the `set_validation` default) and not being traced by
    torch.compile."""
    if torch.compiler.is_compiling():
        return False
    scoped = _SCOPED.get()
    return _ENABLED if scoped is None else scoped


@contextmanager
def validation(enabled: bool) -> Iterator[None]:
    """Set the validation switch for a block, in this thread or asyncio task only, and
    restore it after.

    Example:
        >>> with validation(False):
        ...     validation_enabled()
        False
    """
    token = _SCOPED.set(bool(enabled))
    try:
        yield
    finally:
        _SCOPED.reset(token)


def describe_shape(tensor: torch.Tensor) -> str:
    """``tuple(tensor.shape)`` as text, for error messages."""
    return str(tuple(tensor.shape))


def check_positive_int(name: str, value: Any) -> int:
    """Return ``value`` if it is an int >= 1 (not a bool), else raise ``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value
