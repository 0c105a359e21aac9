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

from collections.abc import Iterator, Sequence
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


def expect(
    name: str,
    value: object,
    *,
    dtype: torch.dtype | Sequence[torch.dtype] | None = None,
    floating: bool = False,
    device: torch.device | None = None,
    shape: Sequence[int] | Sequence[Sequence[int]] | None = None,
    hint: str = "",
) -> torch.Tensor:
    """State what ``value`` must be; raise ``ValueError`` naming ``name`` if it is not.

    The one way the package checks a tensor argument: its type, then ``dtype`` (one, or a
    sequence of accepted ones; or any floating dtype with ``floating``), ``device`` and ``shape`` (one shape, or several
    accepted ones), in that order. Metadata only: no host sync. The message names the
    argument, what it got and what was expected, followed by ``hint`` (e.g. which head a
    mask belongs to).

    Example:
        >>> expect("op_mask", torch.ones(2, 6, dtype=torch.bool), dtype=torch.bool, shape=(2, 6)).shape
        torch.Size([2, 6])
        >>> expect("op_mask", torch.ones(2, 5, dtype=torch.bool), shape=[(2, 3, 6), (2, 6)])
        Traceback (most recent call last):
        ...
        ValueError: op_mask has shape (2, 5), expected (2, 3, 6) or (2, 6)
    """
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}{hint}")
    if dtype is not None:
        dtypes = (dtype,) if isinstance(dtype, torch.dtype) else tuple(dtype)
        if value.dtype not in dtypes:
            expected_dtype = " or ".join(str(d) for d in dtypes)
            raise ValueError(f"{name} has dtype {value.dtype}, expected {expected_dtype}{hint}")
    if floating and not value.is_floating_point():
        raise ValueError(f"{name} has dtype {value.dtype}, expected a floating dtype{hint}")
    if device is not None and value.device != device:
        raise ValueError(f"{name} is on device {value.device}, expected {device}{hint}")
    if shape is not None:
        # Several shapes are a sequence of tuples (sizes may be SymInts under compile).
        one = len(shape) == 0 or not isinstance(shape[0], tuple | list)
        shapes = [tuple(shape)] if one else [tuple(s) for s in shape]  # type: ignore[arg-type]
        if tuple(value.shape) not in shapes:
            expected = " or ".join(str(s) for s in shapes)
            raise ValueError(f"{name} has shape {describe_shape(value)}, expected {expected}{hint}")
    return value


def check_positive_int(name: str, value: Any) -> int:
    """Return ``value`` if it is an int >= 1 (not a bool), else raise ``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value
